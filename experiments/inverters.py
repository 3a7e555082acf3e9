"""Inversion methods beyond DDIM, measured with the paper's metrics (beyond the paper).

    python -m experiments.inverters                          # the built-in default model, N = 64, T = 20
    python -m experiments.inverters --model=adm32 --n=1024 --steps=50 --methods=ddim,edict,fixed-point:anderson=3

Samples N images from seed-indexed noise with DDIM (the standard run), then inverts the same images with every
method of --methods and reconstructs them with that method's sampler (``jtaba.inverters``: ddim, edict, bdia,
belm, fixed-point with its options, ddpm, npi; one ``jtaba.runs`` run per method, reused when finished). Per method:
image reconstruction error (mean / max |x̂_0 − x_0|), noise recovery (mean |noise − latent|, correlation of latent
and noise), latent Gaussianity (KL to N(0, 1), the paper's KL(noise || latent), Shapiro-Wilk rejections at p 0.05),
the Tab. 2 pixel correlation of the latents, the Tab. 5 plain / non-plain |noise − latent|, network evaluations and
wall time per image. Writes inverters.json, inverters.csv (one row per method), inverters.png (the numbers as bars)
and inverters_latents.png (the first images, their noise and every method's latents side by side) into --out.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from jtaba import cli, io, plotting
from jtaba.analyses import inverters as analysis
from jtaba.runs import StandardOptions

PREVIEW = 4  # images in the latents figure


@dataclasses.dataclass(frozen=True)
class Options(StandardOptions):
    """The standard run's settings (small defaults: every method runs the whole set) and the compared methods
    (``name`` or ``name:option=value[:option=value...]``); ``timing_images``: images timed per method (0: no timing)."""
    n: int = 64
    steps: int = 20
    batch: int = 64
    methods: tuple = analysis.DEFAULT_METHODS
    timing_images: int = 8


def build_parser():
    p = cli.parser("python -m experiments.inverters", __doc__)
    cli.add_analysis_flags(p, Options)
    p.add_argument("--methods", default=",".join(analysis.DEFAULT_METHODS),
                   help="methods to compare, comma-separated: name or name:option=value[:option=value...], e.g. "
                        "'ddim,fixed-point:anderson=3:iterations=8'")
    p.add_argument("--timing-images", type=int, default=Options.timing_images,
                   help="images inverted and reconstructed once more per method to time it (0: no timing)")
    return p


def parse_methods(text: str) -> tuple:
    """'ddim,fixed-point:anderson=3:iterations=8' -> the method texts, each checked."""
    out = tuple(m.strip() for m in str(text).split(",") if m.strip())
    if not out:
        raise ValueError("--methods names no method")
    for m in out:
        analysis.parse_method(m)
    return out


def options_from_args(args) -> Options:
    if args.method != "ddim" or args.method_options:
        raise ValueError("experiments.inverters compares the methods of --methods; --method does not apply")
    if args.timing_images < 0:
        raise ValueError(f"--timing-images must be >= 0, got {args.timing_images}")
    base = cli.options_from_args(Options, args)
    return dataclasses.replace(base, methods=parse_methods(args.methods))


def out_parts(opts: Options) -> list[str]:
    return [] if opts.methods == analysis.DEFAULT_METHODS else [f"{len(opts.methods)}methods"]


def network_passes(ws, opts: Options) -> int:
    """N x T network passes of the whole comparison (sampling once, every method's inversion and reconstruction)."""
    total = 1
    for m in opts.methods:
        name, options = analysis.parse_method(m)
        method = analysis.Method.of(name, **dict(options))
        total += method.network_calls(1, True) + method.network_calls(1, False)
    return total


def compute(ws, opts: Options) -> dict:
    """One run per method on the same DDIM samples; the table rows, the runs (for the latents figure) and the
    methods the model cannot run."""
    from jtaba.inverters import check_model

    rows, runs, skipped = [], {}, {}
    for text in opts.methods:
        name, options = analysis.parse_method(text)
        label = analysis.method_label(name, options)
        reason = check_model(analysis.Method.of(name, **dict(options)), ws.model.conditional)
        if reason:
            skipped[label] = reason
            continue
        run = ws.run(opts.run_settings(method=name, method_options=options))
        wall = None
        if opts.timing_images and opts.prompt_embeds is None:  # prompt-conditioned timing needs the run's prompts
            k = min(opts.timing_images, run.n)
            cond = np.asarray(run["conds"][:k]).astype(np.int32) if "conds" in run else None
            wall = analysis.wall_time_per_image(ws.model, np.asarray(run["samples"][:k]), steps=opts.steps,
                                                name=name, options=options, cond=cond, guidance=opts.guidance,
                                                precision=opts.precision)
        rows.append(analysis.method_row(run, name, options, wall))
        runs[label] = run.path
    table = analysis.InverterTable(tuple(rows), skipped)
    return {"model": ws.tag, "n": opts.n, "steps": opts.steps, "seed": opts.seed, "precision": opts.precision,
            "runs": runs, **table.to_json()}


def csv_rows(result: dict) -> list[dict]:
    out = []
    for r in result["rows"]:
        row = {k: v for k, v in r.items() if k not in ("options", "pixel_correlation")}
        pc = r["pixel_correlation"] or {}
        row.update(pixel_correlation_mean=pc.get("mean"), pixel_correlation_std=pc.get("std"))
        out.append(row)
    return out


PANELS = (("reconstruction_max_abs", "image reconstruction max |x̂0 − x0|", True),
          ("reconstruction_mae", "image reconstruction mean |x̂0 − x0|", True),
          ("noise_mae", "mean |noise − latent|", False),
          ("noise_correlation", "correlation(latent, noise)", False),
          ("kl_to_standard_normal", "KL(latent fit || N(0, 1))", True),
          ("shapiro_rejected", "Shapiro-Wilk rejected (share)", False),
          ("pixel_correlation", "Tab. 2 latent pixel correlation", False),
          ("nfe_invert", "network evaluations / image (invert)", False))


def plot(result: dict, path: str) -> str:
    """inverters.png: one bar panel per measure, a bar per method."""
    rows = result["rows"]
    labels = [r["label"] for r in rows]
    fig, axes = plotting.new_figure(2, 4, size=(4.2, 3.4))
    for ax, (key, title, log) in zip(axes.ravel(), PANELS, strict=True):
        values = [(r[key] or {}).get("mean", np.nan) if key == "pixel_correlation" else r[key] for r in rows]
        values = np.asarray([np.nan if v is None else v for v in values], np.float64)
        ax.bar(range(len(rows)), np.maximum(values, 1e-12) if log else values,
               color=[f"C{i}" for i in range(len(rows))])
        if log:
            ax.set_yscale("log")
        ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
    skipped = "; ".join(result["skipped"]) if result["skipped"] else ""
    fig.suptitle(plotting.run_title("inversion methods", result["model"], result["n"], result["steps"])
                 + (f" (not run: {skipped})" if skipped else ""), fontsize=10)
    return plotting.save(fig, path)


def _show(x: np.ndarray, scale: float) -> np.ndarray:
    """(C, H, W) -> (H, W, 3) in [0, 1]: the first three channels (or channel 0 as gray) from [-scale, scale]."""
    c = x[:3] if x.shape[0] >= 3 else np.repeat(x[:1], 3, axis=0)
    return np.clip((np.moveaxis(c, 0, -1) / scale + 1) / 2, 0, 1)


def plot_latents(result: dict, path: str) -> str:
    """inverters_latents.png: columns the image, its noise and each method's latent; rows the first images."""
    runs = result["runs"]
    if not runs:
        fig, axes = plotting.new_figure(1, 1)
        axes[0, 0].axis("off")
        axes[0, 0].set_title("no method ran", fontsize=9)
        return plotting.save(fig, path)
    first = next(iter(runs.values()))
    samples = np.load(os.path.join(first, "samples.npy"), mmap_mode="r")
    noise = np.load(os.path.join(first, "noise.npy"), mmap_mode="r")
    k = min(PREVIEW, len(samples))
    panels = [("image", samples, 1.0), ("noise", noise, 2.5)]
    panels += [(label, np.load(os.path.join(p, "latents.npy"), mmap_mode="r"), 2.5) for label, p in runs.items()]
    fig, axes = plotting.new_figure(k, len(panels), size=(1.5, 1.5))
    for col, (label, arrays, scale) in enumerate(panels):
        for row in range(k):
            ax = axes[row, col]
            ax.imshow(_show(np.asarray(arrays[row], np.float64), scale), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, col].set_title(label.replace(" (", "\n("), fontsize=7)
    axes[0, 0].set_ylabel("values in [-1, 1];\nnoise, latents\nin [-2.5, 2.5]", fontsize=6)
    return plotting.save(fig, path)


def markdown(result: dict) -> str:
    """The comparison as a markdown table."""
    head = ("| method | NFE inv + rec | s / image | recon. max-abs | recon. MAE | mean abs(noise − latent) | "
            "corr(latent, noise) | KL to N(0,1) | SW rejected | Tab. 2 corr. | Tab. 5 plain / non-plain |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in result["rows"]:
        pc = r["pixel_correlation"]
        wall = "-" if r["wall_s_per_image"] is None else f"{r['wall_s_per_image']:.3f}"
        lines.append(f"| {r['label']} | {r['nfe_invert']} + {r['nfe_reconstruct']} | {wall} | "
                     f"{r['reconstruction_max_abs']:.2e} | {r['reconstruction_mae']:.2e} | {r['noise_mae']:.3f} | "
                     f"{r['noise_correlation']:.3f} | {r['kl_to_standard_normal']:.4f} | "
                     f"{r['shapiro_rejected']:.2f} | {'-' if pc is None else format(pc['mean'], '.3f')} | "
                     f"{r['mae_plain']:.3f} / {r['mae_non_plain']:.3f} |")
    for label, why in result["skipped"].items():
        lines.append(f"\n{label}: not run ({why}).")
    return "\n".join(lines)


def write_outputs(result: dict, out: str) -> dict:
    """inverters.json, inverters.csv, inverters.png and inverters_latents.png in ``out``."""
    io.write_json(os.path.join(out, "inverters.json"), result)
    io.write_csv(os.path.join(out, "inverters.csv"), csv_rows(result))
    plot(result, os.path.join(out, "inverters.png"))
    plot_latents(result, os.path.join(out, "inverters_latents.png"))
    return result


ANALYSIS = cli.Analysis(
    name="inverters", paper_ref="beyond the paper: inversion methods with Tab. 2 / Tab. 5 / Sec. 3.1 metrics",
    options_class=Options, build_parser=build_parser, compute=compute, write_outputs=write_outputs,
    markdown=markdown, options_from_args=options_from_args, out_parts=out_parts, network_passes=network_passes,
    own_sizes=("n", "steps", "batch"), sizes_note="every method inverts and reconstructs the whole set",
)
main = cli.analysis_main(ANALYSIS)


if __name__ == "__main__":
    main()
