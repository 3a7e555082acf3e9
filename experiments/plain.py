"""Plain vs non-plain image areas: how far latents are from their noise there (paper Tab. 5, App. C,
Fig. 11).

    python -m experiments.plain                            # the built-in default model, quick settings
    python -m experiments.plain --model=adm32 --n=10240 --steps=100 --batch=256

Samples N images from seed-indexed noise and inverts them with DDIM (the standard run shared by the analyses,
``jtaba.runs``: a finished run with the same model and settings is reused). Plain masks come from the final samples
in the diffusion space (pixels in [-1, 1]; VAE latents for latent models): a position is plain when the mean of its
absolute differences to the next row and the next column is below --threshold in every channel (upstream
``find_plain_areas``, 0.025). Over the plain and the non-plain positions (all channels and samples): the mean
absolute error between noise and latent and the standard deviation of the latent values (Tab. 5), with the noise's
own std there as a control row (the masks come from the samples, which the noise made: the control shows what the
selection alone does to the std), and the share of plain positions. Writes plain.json, plain.csv (the Tab. 5
rows: latent and noise control) and plain.png (Fig. 11: a few samples, from the most plain one down to the median,
with their masks, noise, latent and |noise − latent|) into --out.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from jtaba import cli, io, plotting
from jtaba.analyses import plain as analysis
from jtaba.runs import StandardOptions

STAT_KEYS = analysis.STAT_KEYS


@dataclasses.dataclass(frozen=True)
class Options(StandardOptions):
    threshold: float = analysis.THRESHOLD
    examples: int = 4


def build_parser():
    p = cli.parser("python -m experiments.plain", __doc__)
    cli.add_analysis_flags(p, Options)
    p.add_argument("--threshold", type=float, default=Options.threshold,
                   help="plain-area threshold on the mean neighbour difference, in the diffusion space's units "
                        "(paper App. C: 0.025 for images in [-1, 1])")
    p.add_argument("--examples", type=int, default=Options.examples,
                   help="samples shown in plain.png (ranked by their share of plain pixels, from the most plain "
                        "one down to the median)")
    return p


def options_from_args(args) -> Options:
    if args.examples < 1:
        raise ValueError(f"--examples must be at least 1, got {args.examples}")
    if not args.threshold > 0:
        raise ValueError(f"--threshold must be positive, got {args.threshold}")
    return Options(args.n, args.steps, args.seed, args.batch, args.precision, args.threshold, args.examples)


def example_indices(per_sample_fraction, k: int) -> list[int]:
    """``k`` samples for the figure: ranks spread evenly from the most plain sample to the median one (ties by
    sample index), so the masks shown range from large plain areas to typical ones."""
    frac = np.asarray(per_sample_fraction)
    order = np.lexsort((np.arange(frac.size), -frac))  # most plain first, then by index
    k = min(k, frac.size)
    ranks = np.unique(np.round(np.linspace(0, (frac.size - 1) / 2, k)).astype(int))
    if ranks.size < k:  # tiny N: fill with the next ranks
        ranks = np.arange(k)
    return [int(i) for i in order[ranks]]


def compute(ws, opts: Options) -> dict:
    """Sample and invert (or reuse the standard run), then masks and plain / non-plain statistics."""
    run = ws.run(opts.run_settings())
    table = analysis.of_run(run, opts.threshold)
    examples = example_indices(table.per_sample_fraction, opts.examples)
    return {"model": ws.tag, "n": opts.n, "steps": opts.steps, "seed": opts.seed, "precision": opts.precision,
            "threshold": opts.threshold, "run": run.path, **table.to_json(), "examples": examples,
            "example_plain_fraction": [float(table.per_sample_fraction[i]) for i in examples]}


def csv_rows(result: dict) -> list[dict]:
    """Tab. 5: one row for the latents, one for the noise control (no MAE: noise against itself)."""
    head = {"model": result["model"], "n": result["n"], "steps": result["steps"], "seed": result["seed"],
            "threshold": result["threshold"]}
    rows = []
    for what in ("latent", "noise"):
        vals = result[what]
        rows.append({**head, "row": what, **{k: vals.get(k) for k in STAT_KEYS},
                     "plain_fraction": result["plain_fraction"]})
    return rows


def _rgb(x: np.ndarray, lim: float) -> np.ndarray:
    """(C, H, W) -> (H, W, 3) in [0, 1]: values in [-lim, lim] mapped linearly; the first 3 channels (1 channel:
    grey)."""
    x = np.asarray(x, np.float64)
    x = np.repeat(x[:1], 3, axis=0) if x.shape[0] < 3 else x[:3]
    return np.clip((np.moveaxis(x, 0, -1) / lim + 1) / 2, 0, 1)


def plot(result: dict, run, path: str) -> str:
    """plain.png (Fig. 11): per example row the sample, its plain mask (white = plain), the noise, the latent (both
    on the same scale, ±3) and |noise − latent| (0 to 3)."""
    from jtaba.metrics import find_plain_areas

    idx = result["examples"]
    samples = np.asarray(run["samples"][idx])
    shown = np.asarray(run["decoded_samples"][idx]) if "decoded_samples" in run else samples
    noise, latents = np.asarray(run["noise"][idx]), np.asarray(run["latents"][idx])
    masks = find_plain_areas(samples, result["threshold"])
    cols = ("sample", "plain mask", "noise (±3)", "latent (±3)", "|noise − latent| (0 to 3)")
    fig, axes = plotting.new_figure(len(idx), len(cols), size=(2.1, 2.1))
    for r, i in enumerate(idx):
        panels = (_rgb(shown[r], 1.0), masks[r], _rgb(noise[r], 3.0), _rgb(latents[r], 3.0),
                  np.abs(noise[r] - latents[r]).mean(axis=0))
        for c, img in enumerate(panels):
            ax = axes[r, c]
            if c == 1:
                ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            elif c == 4:
                ax.imshow(img, cmap="magma", vmin=0, vmax=3, interpolation="nearest")
            else:
                ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
        axes[r, 0].set_ylabel(f"#{i}: {result['example_plain_fraction'][r]:.0%} plain", fontsize=8)
    lat, noi = result["latent"], result["noise"]
    fig.suptitle(plotting.run_title(
        f"plain areas (threshold {result['threshold']:g}; white = plain)", result["model"], result["n"],
        result["steps"]) + f"\nlatent std plain {lat['std_plain']:.3f} vs non-plain {lat['std_non_plain']:.3f} "
        f"(noise {noi['std_plain']:.3f} / {noi['std_non_plain']:.3f})", fontsize=9)
    return plotting.save(fig, path)


def _f(v, fmt=".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


def report(result: dict) -> str:
    """Human-readable summary printed at the end."""
    lines = [(f"plain vs non-plain areas of {result['n']} samples, T={result['steps']} ({result['model']}), "
              f"threshold {result['threshold']:g}: {result['plain_fraction']:.1%} of the positions are plain "
              f"({result['samples_with_plain']} samples have some)"),
             f"  {'':16s} {'MAE plain':>10s} {'MAE non-plain':>14s} {'std plain':>10s} {'std non-plain':>14s}"]
    for what, name in (("latent", "latent"), ("noise", "noise (control)")):
        v = result[what]
        lines.append(f"  {name:16s} {_f(v.get('mae_plain')):>10s} {_f(v.get('mae_non_plain')):>14s} "
                     f"{_f(v['std_plain']):>10s} {_f(v['std_non_plain']):>14s}")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The paper's Tab. 5 row (and the noise control row) as a markdown table."""
    head = ("| | MAE plain | MAE non-plain | Std plain | Std non-plain |\n|---|---|---|---|---|")
    rows = []
    for what, name in (("latent", f"{result['model']} latent"), ("noise", "noise (control)")):
        v = result[what]
        rows.append(f"| {name} | {_f(v.get('mae_plain'))} | {_f(v.get('mae_non_plain'))} | {_f(v['std_plain'])} | "
                    f"{_f(v['std_non_plain'])} |")
    note = (f"Plain positions: {result['plain_fraction']:.1%} (threshold {result['threshold']:g}, N = {result['n']}, "
            f"T = {result['steps']}).")
    columns = ("Columns: MAE = mean |noise − latent| over the plain (non-plain) positions of all samples and "
               "channels; Std = standard deviation of the latent values there (noise row: of the noise values, the "
               "control: the masks come from the samples the noise made). Plain: the sample's mean difference to the "
               "next row and column is below the threshold in every channel (App. C).")
    return "\n".join([head, *rows, "", note, "", columns])


def write_outputs(result: dict, out: str) -> dict:
    """plain.json, plain.csv and plain.png in ``out`` (the figure reads the examples from the run folder)."""
    from jtaba.runs import open_run

    io.write_json(os.path.join(out, "plain.json"), result)
    io.write_csv(os.path.join(out, "plain.csv"), csv_rows(result))
    plot(result, open_run(result["run"]), os.path.join(out, "plain.png"))
    return result


def out_parts(opts: Options) -> tuple:
    return f"thr{opts.threshold:g}", f"ex{opts.examples}"


ANALYSIS = cli.Analysis(
    name="plain", paper_ref="Sec. 3.3, Tab. 5, App. C, Fig. 11", options_class=Options, build_parser=build_parser,
    compute=compute, write_outputs=write_outputs, markdown=markdown, options_from_args=options_from_args,
    out_parts=out_parts, console=report,
)
main = cli.analysis_main(ANALYSIS)


if __name__ == "__main__":
    main()
