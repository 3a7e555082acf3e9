"""How far tf32 and bfloat16 move the paper's quantities from true float32 on a model: evidence for choosing a
precision (``jtaba.precision``).

    python -m experiments.precision                                  # built-in model, N = 256, T = 50
    python -m experiments.precision --model=adm32 --n=2048 --steps=100 --batch=256     # on a GPU

Runs the standard sample -> invert -> reconstruct once per precision (same noise), then per precision against
float32: the per-sample max |difference| of samples, latents and reconstructions (mean and max over samples), and
the change of the paper's numbers: latent patch correlation (Tab. 2), KL(noise || latents) (Tab. 9), the angles of
the noise-sample-latent triangle (acos of the mean cosine, Tab. 3) and the L2 assignment accuracies noise -> image
and latent -> image (Tab. 8). On a CPU tf32 computes exactly as float32 (its rows are zeros); on GPUs it is
PyTorch's default for convolutions. Writes precision.json, precision.csv (one row per precision) and precision.png
(per-sample latent and reconstruction errors; metric changes).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from jtaba import cli, io, plotting
from jtaba.analyses import precision as analysis
from jtaba.precision import PRECISIONS
from jtaba.runs import StandardOptions

CHOICES = PRECISIONS  # float32 first: the reference


@dataclasses.dataclass(frozen=True)
class Options(StandardOptions):
    n: int = 256
    precisions: tuple = CHOICES


def build_parser():
    p = cli.parser("python -m experiments.precision", __doc__)
    cli.add_analysis_flags(p, Options,
                           n_help="number of samples N per precision")
    p.add_argument("--precisions", default=",".join(CHOICES),
                   help="comma-separated precisions to compare with float32 (float32 is always run)")
    return p


def options_from_args(args) -> Options:
    if args.precision != "float32":
        raise ValueError("this analysis runs every precision: choose them with --precisions, not --precision")
    chosen = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(CHOICES))
    if unknown:
        raise ValueError(f"--precisions: unknown {unknown}; choose from {', '.join(CHOICES)}")
    return Options(n=args.n, steps=args.steps, seed=args.seed, batch=args.batch,
                   precisions=tuple(["float32"] + [p for p in chosen if p != "float32"]))


def out_parts(opts: Options) -> tuple:
    return ("-".join(opts.precisions),)


def network_passes(ws, opts: Options) -> int:
    return 3 * len(opts.precisions)


def compute(ws, opts: Options) -> dict:
    """One standard run per precision (reused when finished), then their differences from float32's."""
    runs = {p: ws.run(opts.run_settings(precision=p), f"{p} run") for p in opts.precisions}
    table = analysis.of_runs(runs)
    return {"model": ws.tag, "n": opts.n, "steps": opts.steps, "seed": opts.seed,
            "runs": {p: r.path for p, r in runs.items()}, **table.to_json()}


def markdown(result: dict) -> str:
    head = ("| precision | latents max-abs (mean / max) | reconstruction max-abs (mean / max) | Δ correlation | Δ KL | "
            "Δ angles image / noise / latent (°) | Δ acc noise→img / latent→img |\n|---|---|---|---|---|---|---|")
    lines = [head]
    for r in result["rows"]:
        lines.append(f"| {r['precision']} | {r['latents_max_abs_mean']:.2e} / {r['latents_max_abs_max']:.2e} | "
                     f"{r['samples2_max_abs_mean']:.2e} / {r['samples2_max_abs_max']:.2e} | "
                     f"{r['delta_latent_correlation']:+.2e} | {r['delta_kl_noise_latent']:+.2e} | "
                     + " / ".join(f"{r[f'delta_angle_{k}']:+.3f}" for k in ("image", "noise", "latent"))
                     + f" | {r['delta_acc_noise_to_img']:+.3f} / {r['delta_acc_latent_to_img']:+.3f} |")
    return "\n".join(lines)


def plot(result: dict, path: str) -> str:
    fig, axes = plotting.new_figure(1, 2, size=(5.2, 3.8))
    others = [r["precision"] for r in result["rows"] if r["precision"] != "float32"]
    for k, (name, label) in enumerate([("latents", "latents"), ("samples2", "reconstructions")]):
        ax = axes[0, k]
        for j, p in enumerate(others):
            v = np.asarray(result["per_sample"][p][name])
            ax.plot(np.sort(v), np.linspace(0, 1, len(v)), ls=plotting.LINESTYLES[j], lw=1.5,
                    label=f"{p} (max {v.max():.1e})")
        ax.set_xscale("symlog", linthresh=1e-6)
        ax.set_xlabel(f"per-sample max |{label} - float32 {label}|")
        ax.set_ylabel("fraction of samples (CDF)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ax.set_title(plotting.run_title(f"{label} vs float32", result["model"], result["n"], result["steps"]),
                     fontsize=10)
    return plotting.save(fig, path)


def write_outputs(result: dict, out: str) -> dict:
    io.write_json(os.path.join(out, "precision.json"), result)
    io.write_csv(os.path.join(out, "precision.csv"), result["rows"])
    plot(result, os.path.join(out, "precision.png"))
    return result


ANALYSIS = cli.Analysis(
    name="precision", paper_ref="float32 vs tf32 vs bfloat16 on the paper's quantities", options_class=Options,
    build_parser=build_parser, compute=compute, write_outputs=write_outputs, markdown=markdown,
    options_from_args=options_from_args, out_parts=out_parts, network_passes=network_passes,
)
main = cli.analysis_main(ANALYSIS)


if __name__ == "__main__":
    main()
