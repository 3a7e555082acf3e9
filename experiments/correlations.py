"""Pixel correlations of noise, latents and samples against pure chance (paper Sec. 3.2, Tab. 2).

    python -m experiments.correlations                     # the built-in default model, quick settings
    python -m experiments.correlations --model=adm32 --n=10240 --steps=100 --batch=256 --upstream-fp16

Samples N images from seed-indexed noise and inverts them with DDIM (the standard run that the analyses share,
``jtaba.runs``: batched, resumable, reused when finished), then for the noise x_T, the latents x̂_T and the samples
x_0 the paper's correlation metric (``jtaba.metrics.top_k_corr_in_patches``, upstream ``get_top_k_corr_in_patches``
with patch 8 and top 20): in every non-overlapping 8x8 patch, the 20 largest |Pearson r| between two of its
C*64 features (pixel x channel) measured across the N samples; mean and std over all patches' values.

At small N even independent Gaussians show sizeable top-20 correlations (the largest of C*64*(C*64-1)/2 sample
correlations of N draws), so a null row is added: ``--null-sets`` fresh standard Gaussian sets of the noise's
shape (numpy ``default_rng(--null-seed)``, drawn patch by patch: set 1 patch (0,0), (0,8), ..., set 2, ...), each
measured the same way; the row reports the mean over sets of each set's mean / std and their sd over sets. The
noise row should lie inside that spread; the distance of the latents from it (in null sds, ``z_vs_null``) is what
the paper's comparison means at this N.

``--upstream-fp16`` rounds every input (the null sets included) to float16 and computes the coefficients in float16
arithmetic (torch's half corrcoef, op by op), as upstream's correlation.py ``__main__`` (the Tab. 2 producer)
does; otherwise the arithmetic is float64. Without it the latents row equals
the run's metrics.json ``correlation``.

Writes correlations.json, correlations.csv (rows noise / latents / samples / null; columns mean, std and the null's
sd over sets) and correlations.png (the four means as bars with the null band) into --out. The default --out
folder names each analysis setting that differs from its default.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from jtaba import cli, io, plotting
from jtaba.analyses import correlations as analysis
from jtaba.runs import StandardOptions

ROWS = analysis.ROWS
LABELS = {"noise": r"noise $x_T$", "latents": r"latent $\hat{x}_T$", "samples": r"sample $x_0$",
          "null": "null (fresh Gaussian)"}


@dataclasses.dataclass(frozen=True)
class Options(StandardOptions):
    null_sets: int = 5
    null_seed: int = 0
    upstream_fp16: bool = False


def build_parser():
    p = cli.parser("python -m experiments.correlations", __doc__)
    cli.add_analysis_flags(p, Options,
                           n_help="number of samples N (the standard run: computed once and shared with the "
                                  "other analyses; the paper used 10,240 and T = 100)")
    p.add_argument("--null-sets", type=int, default=Options.null_sets,
                   help="number of fresh standard Gaussian sets (shape of the noise) measured for the null row; "
                        "0 leaves the null row out")
    p.add_argument("--null-seed", type=int, default=Options.null_seed,
                   help="seed of the numpy generator drawing the null sets (independent of --seed)")
    p.add_argument("--upstream-fp16", action="store_true",
                   help="round noise, latents, samples and null sets to float16 and compute the coefficients in "
                        "float16 arithmetic, as upstream's correlation.py __main__ (Tab. 2)")
    return p


def options_from_args(args) -> Options:
    if args.null_sets < 0:
        raise ValueError(f"--null-sets must be >= 0, got {args.null_sets}")
    return cli.options_from_args(Options, args)


def compute(ws, opts: Options) -> dict:
    """Sample and invert (or reuse the standard run), then the correlation rows and the null row."""
    run = ws.run(opts.run_settings())
    table = analysis.of_run(run, null_sets=opts.null_sets, null_seed=opts.null_seed, fp16=opts.upstream_fp16)
    return {"model": ws.tag, "n": opts.n, "steps": opts.steps, "seed": opts.seed, "precision": opts.precision,
            "run": run.path, **table.to_json()}


def csv_rows(result: dict) -> list[dict]:
    """One row per source (noise, latents, samples, null): mean and std of the top-k values; for the null row
    also their sd over the null sets."""
    head = {"model": result["model"], "n": result["n"], "steps": result["steps"], "seed": result["seed"],
            "upstream_fp16": result["upstream_fp16"]}
    rows = [{**head, "row": k, "mean": result["correlation"][k]["mean"], "std": result["correlation"][k]["std"],
             "mean_sd_over_null_sets": None, "std_sd_over_null_sets": None, "null_sets": None} for k in ROWS]
    null = result["null"]
    if null is not None:
        rows.append({**head, "row": "null", "mean": null["mean"], "std": null["std"],
                     "mean_sd_over_null_sets": null["mean_sd"], "std_sd_over_null_sets": null["std_sd"],
                     "null_sets": result["null_sets"]})
    return rows


def plot(result: dict, path: str) -> str:
    """correlations.png: the mean top-k |r| per source as bars (error bars: std of the top-k values), the null
    row's mean ± 1 sd over sets as a grey band across the panel."""
    fig, ax = plotting.new_figure(1, 1, size=(6.4, 4.4))
    ax = ax[0, 0]
    names = list(ROWS) + (["null"] if result["null"] is not None else [])
    stats = {**result["correlation"], **({"null": result["null"]} if result["null"] is not None else {})}
    colours = {"noise": plotting.VERTEX_COLORS["noise"], "latents": plotting.VERTEX_COLORS["latent"],
               "samples": plotting.VERTEX_COLORS["image"], "null": "0.55"}
    xs = np.arange(len(names))
    means = [stats[k]["mean"] for k in names]
    ax.bar(xs, means, yerr=[stats[k]["std"] for k in names], capsize=5, width=0.6,
           color=[colours[k] for k in names], alpha=0.85)
    for x, m in zip(xs, means):
        ax.annotate(f"{m:.3f}", (x, m), textcoords="offset points", xytext=(12, 3), fontsize=8)
    null = result["null"]
    if null is not None:
        sd = null["mean_sd"]
        if sd is not None:
            ax.axhspan(null["mean"] - sd, null["mean"] + sd, color="0.7", alpha=0.5, zorder=0,
                       label=f"null mean ± 1 sd over {result['null_sets']} Gaussian sets")
        ax.axhline(null["mean"], color="0.3", ls="--", lw=1, zorder=0,
                   label="null mean" if sd is not None else "null mean (1 Gaussian set)")
    ax.set_xticks(xs, [LABELS[k] for k in names])
    ax.set_xlabel(f"bars: mean, whiskers: ± std of the top-{result['top_k']} values of all patches", fontsize=9)
    ax.set_ylabel(f"mean of top-{result['top_k']} |Pearson r| in {result['patch_size']}x{result['patch_size']} "
                  "patches")
    ax.set_ylim(0, min(1.05, max(m + stats[k]["std"] for m, k in zip(means, names)) * 1.25))
    if null is not None:
        ax.legend(fontsize=8, loc="upper left")
    fp16 = " (float16 arithmetic)" if result["upstream_fp16"] else ""
    ax.set_title(plotting.run_title(f"pixel correlation in patches{fp16}", result["model"], result["n"],
                                    result["steps"]), fontsize=10)
    return plotting.save(fig, path)


def report(result: dict) -> str:
    """Human-readable summary printed at the end."""
    k, p = result["top_k"], result["patch_size"]
    lines = [f"top-{k} |Pearson r| in {p}x{p} patches, {result['n']} samples, T={result['steps']} "
             f"({result['model']}{', float16 arithmetic' if result['upstream_fp16'] else ''}):",
             f"  {'row':8s} {'mean':>8s} {'std':>8s}"]
    for name in ROWS:
        r = result["correlation"][name]
        z = f"   {result['z_vs_null'][name]:+.1f} null sd" if result["z_vs_null"] else ""
        lines.append(f"  {name:8s} {r['mean']:8.4f} {r['std']:8.4f}{z}")
    null = result["null"]
    if null is not None:
        spread = f" (sd over {result['null_sets']} sets: {null['mean_sd']:.4f}, {null['std_sd']:.4f})" \
            if null["mean_sd"] is not None else ""
        lines.append(f"  {'null':8s} {null['mean']:8.4f} {null['std']:8.4f}{spread}")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The paper's Tab. 2 row (noise, latent, sample: mean ± std) with the null as a fourth column."""
    c = result["correlation"]
    cells = [f"{c[k]['mean']:.3f} ± {c[k]['std']:.3f}" for k in ROWS]
    head = "| | noise $x_T$ | latent $\\hat{x}_T$ | sample $x_0$ |"
    sep = "|---|---|---|---|"
    null = result["null"]
    if null is not None:
        head += " null (Gaussian) |"
        sep += "---|"
        spread = f" (sd over {result['null_sets']} sets {null['mean_sd']:.3f})" if null["mean_sd"] is not None else ""
        cells.append(f"{null['mean']:.3f} ± {null['std']:.3f}{spread}")
    k, p = result["top_k"], result["patch_size"]
    note = (f"Mean ± std of the top-{k} |Pearson r| in {p}x{p} patches over N = {result['n']} samples"
            f"{', float16 inputs and arithmetic' if result['upstream_fp16'] else ''}.")
    columns = ("Columns: the noise x_T, the latents x̂_T (DDIM inversions of the samples) and the samples x_0"
               + ("; null (Gaussian) = the same metric on fresh standard Gaussian sets of the noise's shape (mean "
                  "over sets, sd over sets in brackets): at this N, values near it are chance." if null is not None
                  else "."))
    return "\n".join([head, sep, f"| {result['model']} | " + " | ".join(cells) + " |", "", note, "", columns])


def write_outputs(result: dict, out: str) -> dict:
    """correlations.json, correlations.csv and correlations.png in ``out``."""
    io.write_json(os.path.join(out, "correlations.json"), result)
    io.write_csv(os.path.join(out, "correlations.csv"), csv_rows(result))
    plot(result, os.path.join(out, "correlations.png"))
    return result


def out_parts(opts: Options) -> list[str]:
    """Out-folder name parts for the analysis settings that differ from their defaults."""
    parts = cli.changed_parts(opts, (("null_sets", "null{}"), ("null_seed", "nullseed{}")))
    return parts + (["fp16"] if opts.upstream_fp16 else [])


ANALYSIS = cli.Analysis(
    name="correlations", paper_ref="Sec. 3.2, Tab. 2", options_class=Options, build_parser=build_parser,
    compute=compute, write_outputs=write_outputs, markdown=markdown, options_from_args=options_from_args,
    out_parts=out_parts, console=report,
)
main = cli.analysis_main(ANALYSIS)


if __name__ == "__main__":
    main()
