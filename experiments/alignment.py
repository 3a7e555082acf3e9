"""Image alignment over training time (paper App. G.3, Fig. 16-19).

    python -m experiments.alignment --run=runs/train/cifar10_s0 --run=runs/train/cifar10_s10 \\
        --run=runs/train/cifar10_s42 --n=2048 --steps=100 --batch=128

For every saved checkpoint c of each jtaba training run (``python -m jtaba.train``; one --run per training seed,
upstream three: 0, 10, 42), its **EMA** parameters sample one fixed noise set (sample i's noise depends only on
(--seed, i); seed 420 as upstream) and samples_c is compared with the samples of the run's final checkpoint
(upstream ``similarity_last_sample.py``). Per checkpoint, with x̃ = (x − min) / (max − min) over each whole set:

- pixel space (always): ``knn`` = per-sample overlap of the --knn-k (upstream 50; at most N − 1) Euclidean nearest
  neighbours of x̃ (self excluded) in the two sets, mean and std (ddof 0) of the counts; ``cka`` = linear CKA of the
  flattened x̃ (biased HSIC, + 1e-6); ``svcca`` = mean of the 10 canonical correlations of the top-10 left singular
  vectors of the standardised x̃ (``jtaba.metrics.svcca(n_components=10, standardize=True)``: exact SVD and CCA;
  upstream approximated them with ``torch.svd_lowrank(q=10)``, sklearn's iterative ``CCA`` and 1e-10 jitter, which
  ``--svcca-method=upstream`` reproduces with Gaussian test matrices drawn from --seed: lower values, as App. G.3's);
  ``ssim`` / ``psnr`` per image pair on x̃ as upstream (skimage SSIM per channel, data_range 1; ``cv2.PSNR`` with
  R = 255 on the [0, 1] arrays, i.e. 48.13 dB above the standard PSNR, 361.2 dB for identical images), mean and
  std (ddof 0);
- with the converted networks (else listed under "skipped" with the convert command): ``dino_cos_sim`` (DINO
  ViT-S/16 CLS), ``clip_cos_sim`` (CLIP-I, ViT-B/32 image embeddings) of the uint8 images upstream made from x̃
  (torchvision ``ToPILImage``: ⌊255·x̃⌋), and ``inception_cos_sim`` (FID Inception pool3) of the raw [-1, 1]
  samples fed as if in [0, 1], as upstream did (``inception.features(input_range="unit", protocol="pytorch_fid")``);
  per-pair cosine mean and std (ddof 1, torch's); and, not in upstream's table, CKA / SVCCA / knn of the DINO and
  CLIP features (``dino_cka``, ``dino_svcca``, ``dino_knn``, ``clip_*``) with the pixel-space definitions.
  Upstream's ViT-annotator cosine is not computed.

Aggregation over the runs (upstream ``get_full_stats_dict``), on the steps every run has: ``*_mean`` averaged,
``*_std`` combined as sqrt(mean(std²)), ``cka`` / ``svcca`` (and the network-space ones) -> mean and std (ddof 0)
across the runs (0 with one run).

Samples come from ``jtaba.runs`` with the settings of ``experiments.training_dynamics`` (same --n / --steps / --seed
/ --batch / --precision / --runs-dir, workspace <runs-dir>/<training run>/step<step>/): a finished training_dynamics
G.2 run of a checkpoint is reused as it is, otherwise only sampling runs (no inversion).

Written into --out: alignment.json (settings, per-run rows, the aggregate, skipped metrics), alignment.csv (the
aggregate: one row per step, every metric's mean and std), alignment_runs.csv (one row per run and step),
alignment.png (Fig. 16: CLIP-I, DINO, SVCCA, SSIM and CKA vs training step, mean ± std over the runs; feature-space
CKA / SVCCA and the knn overlaps beside it), generations_<run>.png (Fig. 16 right, Figs. 17-19: the first 8 noises
as each checkpoint samples them, rows = up to 10 checkpoints evenly spread, read from the checkpoint runs) and
alignment.md. Re-running resumes: checkpoints whose rows exist are
skipped (rows made without a network that is now present are recomputed from the finished runs).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from jtaba import cli, io, plotting
from jtaba.analyses import alignment as analysis
from jtaba.analyses.alignment import aggregate, compare, metric_role, set_features
from jtaba.metrics.alignment import SVCCA_METHODS
from jtaba.precision import PRECISIONS
from jtaba.runs import StandardOptions
from jtaba.train.export import run_name

ROWS_DIR = "rows"
SETTINGS = "settings.json"
NETWORK_ROLES = analysis.NETWORK_ROLES
SVCCA_COMPONENTS = analysis.SVCCA_COMPONENTS
# Fig. 16's metrics (upstream plot_trainstep_alignment: label, key, colour).
PAPER_METRICS = (("CLIP-I", "clip_cos_sim", "lightseagreen"), ("DINO", "dino_cos_sim", "#8E51F8"),
                 ("SVCCA", "svcca", "#FF6464"), ("SSIM", "ssim", "#DDA217"), ("CKA", "cka", "#003049"))


@dataclasses.dataclass(frozen=True)
class Options(StandardOptions):
    """The standard-run fields take training_dynamics' defaults (the runs are shared); ``runs`` the training run
    folders, ``select`` a save-schedule spec (None: every saved step), ``final`` the reference step (None: each
    run's last), ``knn_k`` the neighbour count (capped at N − 1)."""
    n: int = 2048
    steps: int = 100
    seed: int = 420
    batch: int = 128
    runs: tuple = ()
    select: str | None = None
    final: int | None = None
    knn_k: int = 50
    runs_dir: str = "runs"
    svcca_method: str = "exact"

    def __post_init__(self):
        if self.n < SVCCA_COMPONENTS + 1:
            raise ValueError(f"--n must be at least {SVCCA_COMPONENTS + 1} (SVCCA keeps {SVCCA_COMPONENTS} "
                             "directions)")
        if self.knn_k < 1:
            raise ValueError(f"--knn-k must be positive, got {self.knn_k}")
        names = [run_name(r) for r in self.runs]
        if len(set(names)) != len(names):
            raise ValueError(f"the --run folders need distinct names (their rows and runs are kept by name): {names}")


def build_parser():
    p = cli.parser("python -m experiments.alignment", __doc__)
    d = Options()
    p.add_argument("--run", dest="runs", action="append", required=True, metavar="DIR",
                   help="training run directory of `python -m jtaba.train` (repeat it for each training seed: "
                        "upstream averaged three); the EMA parameters of each checkpoint are analysed (required, no "
                        "default)")
    p.add_argument("--n", type=int, default=d.n,
                   help="number of noises / samples N per checkpoint (upstream 2048; at least 11: SVCCA keeps 10 "
                        "directions; the built-in model samples --n=256 --steps=20 in well under a minute per "
                        "checkpoint on a 2-core CPU)")
    p.add_argument("--steps", type=int, default=d.steps, help="DDIM steps T of the sampling (upstream 100)")
    p.add_argument("--batch", type=int, default=d.batch,
                   help="samples per batch over all devices (memory / speed only; results do not depend on it)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the fixed noise set shared by all checkpoints (upstream generate_noises(2048, 420))")
    p.add_argument("--select", default=None, metavar="SPEC",
                   help="analyse only the saved steps matching this schedule, items joined by '+': every:N, "
                        "at:S1,S2,..., paper_cifar10, paper_imagenet64 (default: every saved step)")
    p.add_argument("--final", type=int, default=None, metavar="STEP",
                   help="the reference checkpoint every checkpoint is compared with, a saved step of every run "
                        "(default: each run's last saved step; upstream 700,000 for CIFAR-10)")
    p.add_argument("--knn-k", type=int, default=d.knn_k,
                   help="nearest neighbours of the knn overlap (upstream 50; capped at N - 1)")
    p.add_argument("--svcca-method", choices=SVCCA_METHODS, default=d.svcca_method,
                   help="exact: exact SVD and CCA; upstream: App. G.3's randomized svd_lowrank(q=10, niter=2) and "
                        "sklearn's iterative CCA with 1e-10 jitter (seeded by --seed)")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="float32: true fp32 (matmul precision highest); tf32: fast fp32 on GPUs; bfloat16: network "
                        "compute in bfloat16")
    p.add_argument("--runs-dir", default=d.runs_dir,
                   help="where the sampling runs are stored (<runs-dir>/<training run>/step<step>/...) and looked "
                        "up for reuse (training_dynamics' runs of the same settings serve)")
    p.add_argument("--out", default=None,
                   help="output directory (default <runs-dir>/<run names joined by +>/alignment/T<T>_n<N>_seed<S>); "
                        "re-run to resume")
    return p


def options_from_args(args) -> Options:
    return dataclasses.replace(cli.options_from_args(Options, args), runs=tuple(args.runs))


# ---- the experiment ------------------------------------------------------------------------------------------
def samples_run(train_run: str, step: int, opts: Options):
    """The finished run holding checkpoint ``step``'s samples of the fixed noise: training_dynamics' G.2 run of the
    same settings if there is one, else a sampling-only run (computed or resumed) in the same workspace."""
    from jtaba.train.export import checkpoint_workspace

    ws = checkpoint_workspace(train_run, step, opts.runs_dir)
    return ws.run(opts.run_settings(inversion=False, reconstruction=False))


def checkpoint_plan(opts: Options) -> dict[str, tuple[int, list[int]]]:
    """{run name: (final step, steps to analyse)}; ValueError for a run without checkpoints or the --final."""
    from jtaba.train.export import analysed_steps

    return {run_name(run): analysed_steps(run, opts.select, opts.final) for run in opts.runs}


def default_out(opts: Options) -> str:
    parts = ["svcca_upstream"] if opts.svcca_method == "upstream" else []
    return os.path.join(opts.runs_dir, "+".join(run_name(r) for r in opts.runs), "alignment",
                        cli.settings_name(opts, *parts))


def row_path(out: str, name: str, step: int) -> str:
    return os.path.join(out, ROWS_DIR, name, f"{step:09d}.json")


def stored_row(out: str, name: str, step: int, absent: set) -> dict | None:
    """The row kept from an earlier invocation, unless it lacks a network that is present now."""
    path = row_path(out, name, step)
    if not os.path.exists(path):
        return None
    row = io.read_json(path)
    return row if set(row["skipped"]) <= absent else None


def compute(opts: Options, out: str) -> dict:
    """Rows of every run and checkpoint (computed, or read back from ``out``), the aggregate and what was skipped."""
    from jtaba.metrics import networks

    plan = checkpoint_plan(opts)
    skipped = networks.missing(NETWORK_ROLES)
    absent = set(skipped)
    k = min(opts.knn_k, opts.n - 1)
    io.claim_settings(os.path.join(out, SETTINGS), {
        "runs": [os.path.abspath(r) for r in opts.runs], "n": opts.n, "steps": opts.steps, "seed": opts.seed,
        "precision": opts.precision, "finals": {name: final for name, (final, _) in plan.items()}, "knn_k": k,
        **({"svcca_method": opts.svcca_method} if opts.svcca_method != "exact" else {})})
    todo = {name: [s for s in steps if stored_row(out, name, s, absent) is None]
            for name, (_, steps) in plan.items()}
    total = sum(len(v) for v in todo.values())
    cli.warn_if_slow(opts.n * (total + len(plan)), opts.steps, 1, "alignment")
    nets = {role: networks.load(role) for role in NETWORK_ROLES if role not in absent} if total else {}
    done = 0
    for train_run in opts.runs:
        name = run_name(train_run)
        final = plan[name][0]
        if not todo[name]:
            continue
        reference = samples_run(train_run, final, opts)
        ref = set_features(reference["samples"], nets)
        for step in todo[name]:
            done += 1
            print(f"[{done}/{total}] {name} checkpoint {step}", flush=True)
            run = reference if step == final else samples_run(train_run, step, opts)
            cur = ref if step == final else set_features(run["samples"], nets)
            row = {"step": step, **compare(ref, cur, k, opts.svcca_method, opts.seed).to_json(), "run": run.path,
                   "skipped": sorted(absent)}
            io.write_json(row_path(out, name, step), row)
    runs = {}
    for train_run in opts.runs:
        name = run_name(train_run)
        final, steps = plan[name]
        rows = [io.read_json(row_path(out, name, s)) for s in steps]
        rows = [{k_: v for k_, v in r.items() if metric_role(k_) not in absent} for r in rows]
        runs[name] = {"path": os.path.abspath(train_run), "final": final, "rows": rows}
    return {"model": "+".join(runs), "n": opts.n, "steps": opts.steps, "seed": opts.seed, "precision": opts.precision,
            "knn_k": k, "svcca_components": SVCCA_COMPONENTS, "svcca_method": opts.svcca_method, "runs": runs,
            "aggregate": [a.to_json() for a in aggregate({name: r["rows"] for name, r in runs.items()})],
            "skipped": {role: f"no converted {role} network ({role}_* metrics); make it with: {command}"
                        for role, command in skipped.items()}}


# ---- outputs -------------------------------------------------------------------------------------------------
FEATURE_SERIES = (("DINO CKA", "dino_cka", "#8E51F8", 1.0), ("DINO SVCCA", "dino_svcca", "#C9A7FF", 1.0),
                  ("CLIP CKA", "clip_cka", "#0B6E69", 1.0), ("CLIP SVCCA", "clip_svcca", "lightseagreen", 1.0))


def _band_panel(ax, rows: list[dict], series, finals, ylabel: str, title: str) -> None:
    """Mean lines (x scale) with ±std bands clipped to [0, 1] (as upstream) vs step for the (label, key, colour,
    scale) series present in ``rows`` (at most 5: later ones thinner, drawn on top); the final step(s) marked."""
    steps = [r["step"] for r in rows]
    for i, (label, key, color, scale) in enumerate(series):
        if f"{key}_mean" not in rows[0]:
            continue
        mean = scale * np.array([r[f"{key}_mean"] for r in rows])
        std = scale * np.array([r[f"{key}_std"] for r in rows])
        ax.plot(steps, mean, color=color, marker=plotting.MARKERS[i % len(plotting.MARKERS)],  # later = thinner,
                ls=plotting.LINESTYLES[i % len(plotting.LINESTYLES)], ms=8 - 1.2 * i, lw=2.4 - 0.35 * i,  # on top
                label=label)
        ax.fill_between(steps, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), color=color, alpha=0.15,
                        lw=0)
    for j, step in enumerate(sorted(set(finals))):
        ax.axvline(step, color="black", ls="--", lw=1, alpha=0.6, label="final checkpoint" if j == 0 else None)
    plotting.step_axis(ax, steps)
    if ax.get_xscale() == "symlog":  # no empty negative decade left of step 0
        ax.set_xlim(min(steps) - 0.3 * min([s for s in steps if s > 0], default=1), 1.3 * max(steps))
    ax.set_ylim(-0.02, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")


def plot(result: dict, path: str) -> str:
    """Fig. 16 (CLIP-I, DINO, SVCCA, SSIM, CKA vs step), the DINO / CLIP feature-space CKA and SVCCA, and the
    mutual-kNN overlaps (fractions of k) with the Inception cosine."""
    rows, finals, k = result["aggregate"], [r["final"] for r in result["runs"].values()], result["knn_k"]
    runs = len(result["runs"])
    spread = (f"mean over {runs} runs; bands ± std (over samples; CKA, SVCCA: over runs)" if runs > 1 else
              "one run; bands ± std over samples")
    skipped = f"; skipped (no network): {', '.join(result['skipped'])}" if result["skipped"] else ""
    fig, axes = plotting.new_figure(1, 3, size=(5.2, 4.6))
    title = plotting.run_title("G.3 image alignment with the final checkpoint (Fig. 16)", result["model"],
                               result["n"], result["steps"])
    fig.suptitle(f"{title}\n{spread}{skipped}", fontsize=10)
    _band_panel(axes[0, 0], rows, [(*m, 1.0) for m in PAPER_METRICS], finals, "image alignment",
                "CLIP-I, DINO, SVCCA, SSIM, CKA")
    _band_panel(axes[0, 1], rows, FEATURE_SERIES, finals, "CKA / SVCCA", "DINO / CLIP feature-space CKA, SVCCA")
    inception = "" if "inception" in result["skipped"] else ", Inception pool3 cosine"
    _band_panel(axes[0, 2], rows, (("pixel kNN overlap / k", "knn", "darkred", 1 / k),
                                   ("DINO kNN overlap / k", "dino_knn", "#8E51F8", 1 / k),
                                   ("CLIP kNN overlap / k", "clip_knn", "lightseagreen", 1 / k),
                                   ("Inception cosine", "inception_cos_sim", "darkorange", 1.0)),
                finals, "overlap fraction / cosine", f"mutual kNN (k = {k}){inception}")
    return plotting.save(fig, path)


MARKDOWN_COLUMNS = (("CLIP-I", "clip_cos_sim"), ("DINO", "dino_cos_sim"), ("SVCCA", "svcca"), ("SSIM", "ssim"),
                    ("CKA", "cka"), ("kNN", "knn"), ("PSNR (cv2, R=255)", "psnr"),
                    ("Inception", "inception_cos_sim"), ("DINO CKA", "dino_cka"), ("DINO SVCCA", "dino_svcca"),
                    ("CLIP CKA", "clip_cka"), ("CLIP SVCCA", "clip_svcca"))


def markdown(result: dict) -> str:
    """The aggregate table (mean ± std per step) and the skipped metrics."""
    rows = result["aggregate"]
    cols = [(label, key) for label, key in MARKDOWN_COLUMNS if rows and f"{key}_mean" in rows[0]]
    runs = ", ".join(f"{name} (final {r['final']})" for name, r in result["runs"].items())
    head = (f"G.3 image alignment with the final checkpoint (App. G.3, Fig. 16): {runs}; N = {result['n']}, "
            f"T = {result['steps']}, noise seed {result['seed']}, kNN k = {result['knn_k']}; mean ± std over "
            f"{len(result['runs'])} run(s).")
    lines = [head, "", "| step | " + " | ".join(label for label, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['step']} | " + " | ".join(f"{r[key + '_mean']:.4g} ± {r[key + '_std']:.2g}"
                                                       for _, key in cols) + " |")
    lines += ["", "Columns (each checkpoint's samples of the fixed noise against the final checkpoint's): CLIP-I, "
                  "DINO, Inception = mean cosine of the pairs' CLIP image, DINO and Inception features; SVCCA, CKA = "
                  "of the min-max scaled pixel sets (DINO / CLIP CKA, SVCCA: of those features); SSIM, PSNR = per "
                  "image pair "
                  "as upstream (cv2 PSNR with R = 255 on [0, 1] images); kNN = overlap of the pairs' k nearest "
                  "neighbours in the two sets."]
    lines += [f"\nskipped {role}: {reason}" for role, reason in result["skipped"].items()]
    return "\n".join(lines)


def write_outputs(result: dict, out: str) -> None:
    """alignment.json, alignment.csv (aggregate), alignment_runs.csv (per run), alignment.png, alignment.md."""
    io.write_json(os.path.join(out, "alignment.json"), result)
    io.write_csv(os.path.join(out, "alignment.csv"), result["aggregate"])
    io.write_csv(os.path.join(out, "alignment_runs.csv"),
                 [{"training_run": name, **{k: v for k, v in row.items() if k not in ("run", "skipped")}}
                  for name, r in result["runs"].items() for row in r["rows"]])
    if result["aggregate"]:
        plot(result, os.path.join(out, "alignment.png"))
    for name, r in result["runs"].items():
        plot_generations(name, r["rows"], os.path.join(out, f"generations_{name}.png"), result)
    io.write_text(os.path.join(out, "alignment.md"), markdown(result) + "\n")


GRID_NOISES, GRID_ROWS = 8, 10


def plot_generations(name: str, rows: list[dict], path: str, result: dict) -> str | None:
    """Fig. 16 (right), Figs. 17-19: the same noises sampled by each checkpoint of one training run (rows = up to
    ``GRID_ROWS`` checkpoints whose run files exist, evenly spread; columns = the first ``GRID_NOISES`` noises)."""
    from jtaba.runs import open_run

    rows = [r for r in rows if os.path.isdir(r["run"])]
    if not rows:
        return None
    grid = [(f"step {r['step']}", np.asarray(open_run(r["run"])["samples"][:GRID_NOISES], np.float32))
            for r in plotting.evenly_spaced(rows, GRID_ROWS)]
    title = (f"the same noises sampled by each checkpoint (EMA; Fig. 16 right, Figs. 17-19)\n{name}, "
             f"N = {result['n']}, T = {result['steps']}")
    return plotting.generation_grid(grid, path, title)


ANALYSIS = cli.Analysis(
    name="alignment", paper_ref="App. G.3, Fig. 16-19", options_class=Options, build_parser=build_parser,
    compute=compute, write_outputs=write_outputs, markdown=markdown, options_from_args=options_from_args,
    default_out=default_out, training=True,
)
main = cli.analysis_main(ANALYSIS)


if __name__ == "__main__":
    main()
