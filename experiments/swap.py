"""Replacing the first inversion steps with ground truth, and the forward-diffusion fix (paper Sec. 5, Tab. 9;
upstream ``run_*_invert_swap.py`` and ``run_*_invert_forward.py``).

    python -m experiments.swap                                  # the built-in default model, quick settings
    python -m experiments.swap --model=adm64 --n=1024 --steps=50 --k-list=1,2,3,5,10

One table over K, the number of first DDIM inversion steps replaced, for three kinds of replacement:
* eps swap: inversion step i < K uses the noise prediction ε of its mirror step in a recorded sampling run
  (upstream ``run_*_invert_swap.py swap_type=eps``, the paper's Tab. 9);
* x_t swap: the state after inversion step i < K is replaced by the recorded sampling state at that level
  (``swap_type=xt``);
* forward replacement ("our method", ``run_*_invert_forward.py``): the first K steps are replaced by closed-form
  forward diffusion q(x_t | x_0) with fresh noise (``--forward-seed``), at level "exact" (where K inversion steps
  land) and "upstream" (the diffusers scripts' level, one step further). For ADM models both levels are the
  same (upstream ``taba/models/adm/ddim.py`` is exact), so the forward run is computed once and reported for both.
Per row, as Tab. 9: pixel correlation of the latents (top-20 absolute Pearson correlations in 8x8 patches, mean
over patches), image reconstruction error (mean |samples2 - samples|), noise reconstruction error (mean |noise -
latents|) and KL(noise || latents) of 1-D Gaussians fitted to all elements, both against the sampling run's own
noise (paper Tab. 9). Row K = 0 is plain DDIM inversion (the standard run shared by the analyses), the last row
the noise itself (its correlation; KL and noise error 0). A K beyond what a swap type can mirror
(``jtaba.engine.mirror_indices``: K <= T-1 for ADM, K <= T for diffusers models) or K > T for forward replacement is
skipped with a note in the JSON.

Runs (``jtaba.runs``, reused when finished): the standard run (sample, invert, reconstruct), one recorded sampling
run (no inversion: its every step is the ground truth), and per kind and K one inversion + reconstruction of the
same samples. The paper used T = 50 and K in {1, 2, 3, 5} (2-10 % of the steps; slurm files also 10, 50). The
defaults (N = 64, T = 20, K in {1, 2, 3, 5, 10}) are sized for the built-in model on 2 CPU cores: 34 network passes
over N samples, about 4 minutes (not the shared N = 512, T = 50 of the other analyses: 34 passes of those would
take over an hour there, so at the defaults the K = 0 run is this analysis's own); the swap type and K are
compiled into the inversion loop, so every (type, K) also compiles once (the persistent compilation cache keeps
them for later runs).

Writes into --out: swap.json (every number, run paths and skip notes), swap.csv (one row per K as Tab. 9: K, % of
T, then per method the correlation mean / std, image error, noise error, KL) and swap.png (each metric against K,
one line per method, the noise as reference).
"""
from __future__ import annotations

import dataclasses
import os

from jtaba import checks, cli, io, plotting
from jtaba.analyses import swap as analysis
from jtaba.analyses.swap import forward_levels_coincide, run_metrics, swap_range_note
from jtaba.runs import StandardOptions
from jtaba.runs.settings import SWAP_TYPES

METHODS = ("eps_swap", "xt_swap", "forward_exact", "forward_upstream")
METHOD_LABELS = {"eps_swap": "ε swap (ground truth)", "xt_swap": "$x_t$ swap (ground truth)",
                 "forward_exact": "forward, exact level", "forward_upstream": "forward, upstream level"}
MD_LABELS = {"eps_swap": "ε swap", "xt_swap": "x_t swap", "forward_exact": "forward exact",
             "forward_upstream": "forward upstream"}
# Tab. 9 column order: pixel correlation, image reconstruction, noise reconstruction, KL divergence.
COLUMNS = ("correlation", "image_error", "noise_error", "kl")
COLUMN_TITLES = {"correlation": "pixel correlation of the latents (top-20 in 8x8 patches)",
                 "image_error": "image reconstruction error mean |samples2 - samples|",
                 "noise_error": "noise reconstruction error mean |noise - latents|",
                 "kl": "KL(noise || latents), 1-D Gaussians"}
MD_COLUMNS = {"correlation": "Corr.", "image_error": "Image", "noise_error": "Noise", "kl": "KL"}


@dataclasses.dataclass(frozen=True)
class Options(StandardOptions):
    n: int = 64
    steps: int = 20
    k_list: tuple = (1, 2, 3, 5, 10)
    forward_seed: int = 42


def build_parser():
    p = cli.parser("python -m experiments.swap", __doc__)
    cli.add_analysis_flags(p, Options,
                           n_help="number of samples N (64 with T = 20: about 4 minutes on 2 CPU cores with the "
                                  "built-in model; the correlation of N independent samples has a floor that "
                                  "falls with N, see the noise row)")
    p.add_argument("--k-list", default=",".join(map(str, Options.k_list)),
                   help="numbers K of first inversion steps replaced (comma-separated; K = 0 is always the plain "
                        "row; the paper: T = 50, K = 1,2,3,5); a K a swap type cannot mirror is skipped")
    p.add_argument("--forward-seed", type=int, default=Options.forward_seed,
                   help="seed of the forward-replacement noise (its own stream, per sample index; upstream "
                        "forward_seed 42)")
    return p


def options_from_args(args) -> Options:
    return Options(n=args.n, steps=args.steps, seed=args.seed, batch=args.batch, precision=args.precision,
                   k_list=cli.parse_step_counts(args.k_list, "--k-list"), forward_seed=args.forward_seed)


def out_parts(opts: Options) -> tuple:
    """The analysis settings in the default output folder name (beyond T, N, seed, precision)."""
    return "K" + "-".join(map(str, opts.k_list)), f"fseed{opts.forward_seed}"


def compute(ws, opts: Options) -> dict:
    """The standard run (K = 0), one recorded sampling run, then per method and K an inversion + reconstruction."""
    standard = ws.run(opts.run_settings())  # the standard run every analysis shares
    # The ground truth: every sampling step of the same noise (inversion not needed).
    record = ws.run(opts.run_settings(record=True, inversion=False, reconstruction=False), "recorded sampling")
    noise_row = analysis.noise_row(standard["noise"]).to_json()
    coincide = forward_levels_coincide(ws.model)
    notes = []
    methods = {}
    for kind in SWAP_TYPES:
        rows = []
        for k in opts.k_list:
            why = swap_range_note(ws.model, opts.steps, kind, k)
            if why is not None:
                rows.append({"k": k, "skipped": why})
                notes.append(f"{kind} swap K={k} skipped: {why}")
                continue
            run = ws.run(opts.run_settings(swap_from=record, swap_before=k, swap_type=kind), f"{kind} swap K={k}")
            rows.append({"k": k, **run_metrics(run).to_json()})
        methods[f"{kind}_swap"] = {"rows": rows}
    for level in checks.FORWARD_LEVELS:
        if level == "upstream" and coincide:
            methods["forward_upstream"] = {"same_as": "forward_exact",
                                           "rows": [dict(r) for r in methods["forward_exact"]["rows"]]}
            notes.append(f"forward levels 'exact' and 'upstream' coincide for {ws.model.diffusion.kind} models "
                         f"(upstream's ADM path is exact): computed once, forward_upstream repeats forward_exact")
            continue
        rows = []
        for k in opts.k_list:
            if k > opts.steps:
                why = f"forward_before={k} exceeds steps={opts.steps}"
                rows.append({"k": k, "skipped": why})
                notes.append(f"forward {level} K={k} skipped: {why}")
                continue
            run = ws.run(opts.run_settings(samples=standard["samples"], forward_before=k, forward_level=level,
                                           forward_seed=opts.forward_seed), f"forward {level} K={k}")
            rows.append({"k": k, **run_metrics(run).to_json()})
        methods[f"forward_{level}"] = {"rows": rows}
    return {"model": ws.tag, "n": opts.n, "steps": opts.steps, "seed": opts.seed, "precision": opts.precision,
            "diffusion": ws.model.diffusion.kind, "k_list": list(opts.k_list), "forward_seed": opts.forward_seed,
            "forward_levels_coincide": coincide, "runs": {"standard": standard.path, "record": record.path},
            "plain": run_metrics(standard).to_json(), "noise": noise_row, "methods": methods, "notes": notes}


def _cell(row, col):
    return None if row is None or "skipped" in row else row[col]


def _row_at(result: dict, method: str, k: int):
    return next((r for r in result["methods"][method]["rows"] if r["k"] == k), None)


def csv_rows(result: dict) -> list[dict]:
    """Tab. 9 layout: one row per K (plain K = 0 first, the noise last); per method its four columns and the
    correlation std (empty where a K was skipped)."""
    head = {"model": result["model"], "n": result["n"], "steps": result["steps"], "seed": result["seed"]}

    def line(k, label, pick):
        row = {**head, "replaced": label, "k": k, "percent": None if k is None else 100.0 * k / result["steps"]}
        for m in METHODS:
            r = pick(m)
            for col in COLUMNS:
                row[f"{m}_{col}"] = _cell(r, col)
            row[f"{m}_correlation_std"] = _cell(r, "correlation_std")
        return row

    rows = [line(0, "none (plain DDIM)", lambda m: result["plain"])]
    rows += [line(k, f"first {k}", lambda m, k=k: _row_at(result, m, k)) for k in result["k_list"]]
    rows.append(line(None, "noise", lambda m: result["noise"]))
    return rows


def _series(result: dict, method: str, col: str):
    """(K values, values) of one method, K = 0 (plain) first, skipped K left out."""
    ks, vs = [0], [result["plain"][col]]
    for r in result["methods"][method]["rows"]:
        if "skipped" not in r:
            ks.append(r["k"])
            vs.append(r[col])
    return ks, vs


def plot(result: dict, path: str) -> str:
    """swap.png: the four Tab. 9 metrics against K, one line per method (K = 0 is plain DDIM for all), the noise's
    value dotted. Coinciding forward levels (ADM) are drawn once, named so."""
    fig, axes = plotting.new_figure(1, 4, size=(4.2, 3.8))
    methods = [m for m in METHODS if not result["methods"][m].get("same_as")]
    labels = dict(METHOD_LABELS)
    if result["forward_levels_coincide"]:
        labels["forward_exact"] = f"forward, exact = upstream level ({result['diffusion']})"
    ks_all = [0, *result["k_list"]]
    for ax, col in zip(axes[0], COLUMNS):
        for i, m in enumerate(methods):
            ks, vs = _series(result, m, col)
            ax.plot(ks, vs, marker=plotting.MARKERS[i % len(plotting.MARKERS)],
                    ls=plotting.LINESTYLES[i % len(plotting.LINESTYLES)], ms=8 - 1.5 * i, lw=1.3, alpha=0.85,
                    mfc="none" if i % 2 else None, label=labels[m])
        ref = result["noise"][col]
        if ref is not None:
            ax.axhline(ref, color="0.3", ls=":", lw=1.2,
                       label=f"the noise itself: corr. {result['noise']['correlation']:.3g}, noise error 0, KL 0")
        ax.set_xticks(ks_all)
        ax.set_xlabel(f"first K of T = {result['steps']} inversion steps replaced")
        ax.set_title(COLUMN_TITLES[col], fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="best")
    fig.suptitle(plotting.run_title("replacing the first inversion steps (Tab. 9)", result["model"], result["n"],
                                    result["steps"]), fontsize=11)
    return plotting.save(fig, path)


def _fmt(v, spec=".4g"):
    return "–" if v is None else format(v, spec)


MD_METHODS = {"eps_swap": "ε", "xt_swap": "x_t", "forward_exact": "fwd-exact", "forward_upstream": "fwd-upstream"}
MD_METHOD_DEFINITIONS = {
    "eps_swap": "ε swap, the first K inversion steps use the ground-truth noise prediction ε of the sampling run",
    "xt_swap": "x_t swap, the state after each of the first K inversion steps is the sampling run's",
    "forward_exact": "forward replacement at the exact level, the first K steps replaced by forward diffusion "
                     "q(x_t | x_0) with fresh noise to where K inversion steps land",
    "forward_upstream": "forward replacement at the upstream level, one step further (the diffusers scripts')"}
MD_COLUMN_DEFINITIONS = ("Corr. = pixel correlation of the latents (mean of the top-20 |Pearson r| in 8x8 patches); "
                         "Image = image reconstruction error, mean |x_0 reconstructed from the latent - x_0|; "
                         "Noise = noise reconstruction error, mean |x_T - x̂_T|; KL = KL(noise || latents) of 1-D "
                         "Gaussians fitted to all elements")


def markdown(result: dict) -> str:
    """Tab. 9 as markdown: rows K (ø, each K, noise), per method the columns Corr. / Image / Noise / KL, every row,
    method and column defined under the table."""
    methods = [m for m in METHODS if not result["methods"][m].get("same_as")]
    names, defs = dict(MD_METHODS), dict(MD_METHOD_DEFINITIONS)
    if result["forward_levels_coincide"]:
        names["forward_exact"] = "fwd"
        defs["forward_exact"] = (f"forward (exact = upstream), {defs['forward_exact']} (for {result['diffusion']} "
                                 "models the upstream level is the same)")
    cols = [f"{names[m]} {MD_COLUMNS[c]}" for m in methods for c in COLUMNS]
    lines = ["| K (% of T) | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    T = result["steps"]

    def line(label, pick):
        return f"| {label} | " + " | ".join(_fmt(_cell(pick(m), c)) for m in methods for c in COLUMNS) + " |"

    lines.append(line("ø (0 %)", lambda m: result["plain"]))
    for k in result["k_list"]:
        lines.append(line(f"{k} ({100 * k / T:.0f} %)", lambda m, k=k: _row_at(result, m, k)))
    lines.append(line("Noise", lambda m: result["noise"]))
    foot = [f"{result['model']}, N = {result['n']}, T = {T}. Rows: K, the number of first inversion steps replaced "
            "(% of T); ø: none, plain DDIM inversion; Noise: the noise x_T itself (its correlation; its errors are "
            "0). Methods: " + "; ".join(f"{names[m]}: {defs[m]}" for m in methods) + ". Columns: "
            + MD_COLUMN_DEFINITIONS + ". –: not applicable or K out of range."]
    return "\n".join(lines + [""] + ["\n\n".join(foot + result["notes"])])


def report(result: dict) -> str:
    """Human-readable summary printed at the end."""
    lines = [f"replacing the first K inversion steps, {result['n']} samples, T={result['steps']} ({result['model']}):",
             f"  {'method':26s} {'K':>3s} {'corr':>7s} {'image':>8s} {'noise':>8s} {'KL':>9s}"]

    def add(name, k, r):
        lines.append(f"  {name:26s} {k:>3} {_fmt(r['correlation'], '.4f'):>7s} {_fmt(r['image_error'], '.5f'):>8s} "
                     f"{_fmt(r['noise_error'], '.5f'):>8s} {_fmt(r['kl'], '.3g'):>9s}")

    add("plain DDIM", 0, result["plain"])
    for m in METHODS:
        if result["methods"][m].get("same_as"):
            continue
        for r in result["methods"][m]["rows"]:
            if "skipped" in r:
                lines.append(f"  {MD_LABELS[m]:26s} {r['k']:>3} skipped (out of range)")
            else:
                add(MD_LABELS[m], r["k"], r)
    add("noise", "-", result["noise"])
    if result["forward_levels_coincide"]:
        lines.append("  (forward exact and upstream levels coincide for this model: computed once)")
    return "\n".join(lines)


def write_outputs(result: dict, out: str) -> dict:
    """swap.json, swap.csv and swap.png in ``out``."""
    io.write_json(os.path.join(out, "swap.json"), result)
    io.write_csv(os.path.join(out, "swap.csv"), csv_rows(result))
    plot(result, os.path.join(out, "swap.png"))
    return result


def network_passes(ws, opts: Options) -> int:
    """N x T network passes: the standard and recorded runs, then inversion + reconstruction per method and K."""
    per_k = len(SWAP_TYPES) + (1 if forward_levels_coincide(ws.model) else len(checks.FORWARD_LEVELS))
    return 4 + 2 * per_k * len(opts.k_list)


ANALYSIS = cli.Analysis(
    name="swap", paper_ref="Sec. 5, Tab. 9", options_class=Options, build_parser=build_parser, compute=compute,
    write_outputs=write_outputs, markdown=markdown, options_from_args=options_from_args, out_parts=out_parts,
    network_passes=network_passes, console=report, own_sizes=("n", "steps"),
    sizes_note=("a recorded sampling run and per method and K an inversion + reconstruction of the same "
                "samples; its T is --swap-steps"),
)
main = cli.analysis_main(ANALYSIS)


if __name__ == "__main__":
    main()
