"""Variance of the latents against the noise's (paper Tab. 4).

    python -m experiments.variances                        # the built-in default model, quick settings
    python -m experiments.variances --model=adm32 --n=10240 --steps=100 --batch=256

Samples N images from seed-indexed noise and inverts them with DDIM (the standard run that the analyses share,
``jtaba.runs``: batched, resumable, reused when finished), then for the noise x_T and the latents x̂_T (upstream has
no script for Tab. 4; both readings of "average variance of the latent encodings" are given, as
``jtaba.metrics.latent_variance``):
(a) the global variance over all N*C*H*W elements (unbiased; equals metrics.json ``latent_stats.std`` squared,
    which the result repeats under ``metrics_json`` as the parity check),
(b) the mean over samples of each sample's variance over its C*H*W elements (unbiased),
with the per-sample variances (listed, and their sd / min / max), the latent / noise ratios, and a shared-bin
histogram of the per-sample variances. Standard Gaussian noise has variance 1; the paper finds latents below it.

Writes variances.json, variances.csv (rows noise / latents; columns global variance, mean per-sample variance,
their sd / min / max over samples) and variances.png (the per-sample variance histograms of noise and latents, and
each sample's latent variance against its noise's) into --out.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from jtaba import cli, io, plotting
from jtaba.analyses import variances as analysis
from jtaba.runs import StandardOptions

ROWS = analysis.ROWS
COLOURS = {"noise": plotting.VERTEX_COLORS["noise"], "latents": plotting.VERTEX_COLORS["latent"]}
LABELS = {"noise": r"noise $x_T$", "latents": r"latent $\hat{x}_T$"}


@dataclasses.dataclass(frozen=True)
class Options(StandardOptions):
    """The standard run's settings (``jtaba.runs.StandardOptions``)."""


def build_parser():
    p = cli.parser("python -m experiments.variances", __doc__)
    cli.add_analysis_flags(p, Options,
                           n_help="number of samples N (the standard run: computed once and shared with the "
                                  "other analyses; the paper used 10,000 and T = 100)")
    return p


def compute(ws, opts: Options) -> dict:
    """Sample and invert (or reuse the standard run), then the variances of noise and latents, with the run's
    metrics.json variances as the parity check."""
    run = ws.run(opts.run_settings())
    metrics = run.metrics
    return {"model": ws.tag, "n": opts.n, "steps": opts.steps, "seed": opts.seed, "precision": opts.precision,
            "run": run.path, **analysis.of_run(run).to_json(),
            "metrics_json": {f"{s}_variance": metrics[f"{s}_stats"]["std"] ** 2
                             for s in ("latent", "noise") if f"{s}_stats" in metrics}}


def csv_rows(result: dict) -> list[dict]:
    """Tab. 4: one row per source (noise, latents)."""
    head = {"model": result["model"], "n": result["n"], "steps": result["steps"], "seed": result["seed"]}
    return [{**head, "row": k, **{f"variance_{c}" if c in ("global", "mean_per_sample") else c: v
                                  for c, v in result["variance"][k].items()}} for k in ROWS]


def plot(result: dict, path: str) -> str:
    """variances.png: histograms of the per-sample variances (shared bins, means marked) and each sample's latent
    variance against its noise's variance (y = x dotted)."""
    fig, axes = plotting.new_figure(1, 2, size=(5.2, 4.2))
    hist, var = result["histogram"], result["variance"]
    edges = np.asarray(hist["bin_edges"])
    ax = axes[0, 0]
    for k in ROWS:
        ax.stairs(hist[k], edges, fill=True, alpha=0.35, color=COLOURS[k])
        ax.stairs(hist[k], edges, color=COLOURS[k], lw=1.3, label=f"{LABELS[k]} (mean {var[k]['mean_per_sample']:.3f})")
        ax.axvline(var[k]["mean_per_sample"], color=COLOURS[k], ls="--", lw=1)
    ax.set_xlabel("per-sample variance over C·H·W")
    ax.set_ylabel("number of samples")
    ax.legend(fontsize=8)
    ax.set_title(plotting.run_title("per-sample variance", result["model"], result["n"], result["steps"]),
                 fontsize=10)

    ax = axes[0, 1]
    vn, vl = (np.asarray(result["per_sample_variance"][k]) for k in ROWS)
    ax.plot(vn, vl, ".", ms=4, alpha=0.6, color=COLOURS["latents"], label="one sample")
    lo, hi = min(vn.min(), vl.min()), max(vn.max(), vl.max())
    ax.plot([lo, hi], [lo, hi], ":", color="0.3", lw=1.2, label="latent = noise")
    ax.plot(var["noise"]["mean_per_sample"], var["latents"]["mean_per_sample"], "X", ms=10, color="black",
            label="means")
    ax.set_xlabel(r"variance of the noise $x_T$ (per sample)")
    ax.set_ylabel(r"variance of its latent $\hat{x}_T$ (per sample)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    r = result["ratio_latents_to_noise"]
    ax.set_title(plotting.run_title(f"latent vs noise variance (ratio {r['global']:.3f} global)", result["model"],
                                    result["n"], result["steps"]), fontsize=10)
    return plotting.save(fig, path)


def report(result: dict) -> str:
    """Human-readable summary printed at the end."""
    var, r = result["variance"], result["ratio_latents_to_noise"]
    lines = [f"variance of noise and latents, {result['n']} samples, T={result['steps']} ({result['model']}):",
             f"  {'row':8s} {'global':>10s} {'per-sample':>11s} {'(sd over samples)':>18s}"]
    for k in ROWS:
        v = var[k]
        sd = f"{v['per_sample_sd']:.4f}" if v["per_sample_sd"] is not None else "-"
        lines.append(f"  {k:8s} {v['global']:10.4f} {v['mean_per_sample']:11.4f} {sd:>18s}")
    lines.append(f"  latents / noise: {r['global']:.4f} (global), {r['mean_per_sample']:.4f} (per-sample)")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The paper's Tab. 4 (latent variance next to the noise's) as a markdown table."""
    var = result["variance"]
    rows = ["| | latent $\\hat{x}_T$ | noise $x_T$ |", "|---|---|---|",
            f"| global variance | {var['latents']['global']:.4f} | {var['noise']['global']:.4f} |",
            f"| mean per-sample variance | {var['latents']['mean_per_sample']:.4f} | "
            f"{var['noise']['mean_per_sample']:.4f} |"]
    return "\n".join(rows + ["", f"{result['model']}, N = {result['n']}, T = {result['steps']}. Columns: the latents "
                                 "x̂_T and the noise x_T they should recover (standard Gaussian: variance 1). Rows: "
                                 "global variance = unbiased variance over all N·C·H·W elements; mean per-sample "
                                 "variance = mean over samples of each sample's unbiased variance over its C·H·W "
                                 "elements."])


def write_outputs(result: dict, out: str) -> dict:
    """variances.json, variances.csv and variances.png in ``out``."""
    io.write_json(os.path.join(out, "variances.json"), result)
    io.write_csv(os.path.join(out, "variances.csv"), csv_rows(result))
    plot(result, os.path.join(out, "variances.png"))
    return result


ANALYSIS = cli.Analysis(
    name="variances", paper_ref="Sec. 3.3, Tab. 4", options_class=Options, build_parser=build_parser, compute=compute,
    write_outputs=write_outputs, markdown=markdown, console=report,
)
main = cli.analysis_main(ANALYSIS)


if __name__ == "__main__":
    main()
