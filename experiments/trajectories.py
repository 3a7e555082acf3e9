"""Where the sampling trajectory runs relative to the noise-latent segment (paper Fig. 3, Sec. 3.3;
upstream ``interpolate_with_steps.py`` and ``plotting/interpolate_denoising.py``).

    python -m experiments.trajectories                          # built-in model, T = 50, N = 64
    python -m experiments.trajectories --model=adm64 --n=2048 --steps=100 --batch=256   # the paper's Fig. 3 sizes

Samples N images with every step recorded, then inverts them, recorded too (``jtaba.runs``: two runs, the first
shared with ``experiments.approximation_error``; finished runs with the same settings are reused).
``get_interpolations_distances``: for the state after each denoising step k = 1..T (``all_t_samples[k-1]``; k = T
is the image x_0) and the 25 points alpha * latent + (1 - alpha) * noise, alpha = 0, 1/24, ..., 1, the L2 distance
averaged over samples; each step is min-max scaled over the 25 points and the heatmap shows the transpose (25 x T)
as the paper does, with the nearest point per step marked. ``build_norm_df_closer``: per step, the fraction of
samples whose sampling state is closer to the noise than to the latent, and the same for the inversion state at the
same noise level (the state after T - k inversion steps; at k = T both are the image).

N defaults to 64 (the paper: 2,048), because a recorded run stores the state, noise prediction and x0 prediction
of every step of sampling and of inversion: 6 x T x N images (60 MB here, about 45 seconds on 2 CPU cores; 60 GB
for ADM-64 at the paper's T = 100, N = 2,048). The plotted values are means over samples of per-sample distances,
which in C*H*W dimensions vary little between samples, so a small N already fixes the picture: on the built-in model
(T = 50) N = 64 and N = 256 give nearest alphas within one grid point (1/24) at every step, scaled heatmaps within
0.03, and closer-to-noise fractions within 0.06.

Writes trajectories.json (the distance matrix too), trajectories.csv (one row per step: nearest alpha, raw
distances, fractions closer to the noise) and trajectories.png into --out.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from jtaba import cli, io, plotting
from jtaba.analyses import trajectories as analysis
from jtaba.runs import StandardOptions


@dataclasses.dataclass(frozen=True)
class Options(StandardOptions):
    """Run settings (N = 64: a recorded run, see the module docstring) and the number of interpolation points."""
    n: int = 64
    alphas: int = 25


def build_parser():
    p = cli.parser("python -m experiments.trajectories", __doc__)
    cli.add_analysis_flags(p, Options,
                           n_help="number of samples N (recorded: every step of sampling and inversion is stored; "
                                  "the paper used 2,048 and T = 100)")
    p.add_argument("--alphas", type=int, default=Options.alphas,
                   help="interpolation points between the noise (alpha = 0) and the latent (alpha = 1)")
    return p


def options_from_args(args) -> Options:
    if args.alphas < 2:
        raise ValueError(f"--alphas must be at least 2, got {args.alphas}")
    return Options(n=args.n, steps=args.steps, seed=args.seed, batch=args.batch, precision=args.precision,
                   alphas=args.alphas)


def sampling_settings(opts: Options):
    """The recorded sampling run (no inversion): the same run as ``experiments.approximation_error``'s ground
    truth, so that the two share it."""
    return opts.run_settings(record=True, inversion=False, reconstruction=False)


def inversion_settings(opts: Options, sampling_run):
    """The recorded inversion of that run's samples (its noise given too, for the record)."""
    return opts.run_settings(samples=sampling_run["samples"], noise=sampling_run["noise"], record=True,
                             reconstruction=False)


def compute(ws, opts: Options) -> dict:
    """The recorded sampling and inversion runs (reused when finished), then the distance table."""
    sampling = ws.run(sampling_settings(opts), "recorded sampling")
    inversion = ws.run(inversion_settings(opts, sampling), "recorded inversion")
    table = analysis.of_runs(sampling, inversion, opts.alphas)
    return {"model": ws.tag, "n": opts.n, "steps": opts.steps, "seed": opts.seed, "precision": opts.precision,
            "sampling_run": sampling.path, "inversion_run": inversion.path, **table.to_json()}


def csv_rows(result: dict) -> list[dict]:
    """One row per denoising step k = 1..T (t = T - k steps left; k = T is x_0)."""
    steps = result["steps"]
    rows = []
    for i, d in enumerate(result["distances"]):
        rows.append({"step": i + 1, "t": steps - i - 1, "nearest_alpha": result["nearest_alpha"][i],
                     "nearest_alpha_index": result["nearest_alpha_index"][i], "distance_nearest": min(d),
                     "distance_to_noise": d[0], "distance_to_latent": d[-1],
                     "closer_to_noise_sampling": result["closer_to_noise_sampling"][i],
                     "closer_to_noise_inversion": result["closer_to_noise_inversion_same_level"][i]})
    return rows


def shown_steps(steps: int, count: int = 11) -> list[int]:
    """About ``count`` evenly spaced steps 1..T (first and last included) for the markdown table."""
    return sorted({int(k) for k in np.rint(np.linspace(1, steps, min(count, steps)))})


def markdown(result: dict) -> str:
    """A per-step excerpt of trajectories.csv as a markdown table (Fig. 3 in numbers)."""
    rows = {r["step"]: r for r in csv_rows(result)}
    lines = [("| step k (of T) | nearest alpha (0 noise, 1 latent) | mean L2 to noise | mean L2 to latent | "
              "closer to noise: sampling | closer to noise: inversion |"), "|---|---|---|---|---|---|"]
    for k in shown_steps(result["steps"]):
        r = rows[k]
        lines.append(f"| {k} | {r['nearest_alpha']:.3f} | {r['distance_to_noise']:.2f} | "
                     f"{r['distance_to_latent']:.2f} | {r['closer_to_noise_sampling']:.2f} | "
                     f"{r['closer_to_noise_inversion']:.2f} |")
    lines.append("")
    lines.append(f"N = {result['n']}, T = {result['steps']}: the state after k denoising steps against "
                 f"{len(result['alphas'])} points of the noise-latent segment; the inversion column is the inversion "
                 f"state at the same noise level (after T - k inversion steps). Columns: nearest alpha = the point "
                 f"of the segment nearest (mean L2) to the sampling state, 0 at the noise, 1 at the latent; mean L2 "
                 f"to noise / latent = mean over samples of the L2 distance of the state to its noise / latent; closer "
                 f"to noise = share of the N states nearer to their noise than to their latent.")
    return "\n".join(lines)


def plot(result: dict, path: str) -> str:
    """trajectories.png: the min-max scaled distance heatmap (interpolation point x denoising step, noise at the
    bottom) with the nearest point per step, and the fractions of states closer to the noise than to the latent."""
    from matplotlib.ticker import MaxNLocator

    scaled = np.asarray(result["scaled"]).T  # (alphas, T)
    steps, n_alpha = result["steps"], len(result["alphas"])
    k = np.arange(1, steps + 1)
    fig, axes = plotting.new_figure(1, 2, size=(5.6, 4.2))
    ax = axes[0, 0]
    im = ax.imshow(scaled, origin="lower", aspect="auto", cmap="magma_r", vmin=0, vmax=1,
                   extent=(0.5, steps + 0.5, -0.5, n_alpha - 0.5), interpolation="nearest")
    ax.plot(k, result["nearest_alpha_index"], "o", color="tab:cyan", ms=3, label="nearest point per step")
    ticks = [0, (n_alpha - 1) // 2, n_alpha - 1]
    ax.set_yticks(ticks)
    ax.set_yticklabels([f"{result['alphas'][t]:.2g}" for t in ticks])
    ax.set_ylabel("interpolation point alpha\n(0: noise $x_T$, 1: latent $\\hat{x}_T$)")
    ax.set_xlabel("denoising step k (state after k steps; k = T: image $x_0$)")
    ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    cb = fig.colorbar(im, ax=ax, fraction=0.05)
    cb.set_label("mean L2 distance, min-max scaled per step", fontsize=8)
    ax.set_title(plotting.run_title("trajectory vs noise-latent interpolation", result["model"], result["n"],
                                    steps), fontsize=10)
    ax = axes[0, 1]
    ax.plot(k, result["closer_to_noise_sampling"], "-o", ms=3, lw=1.3, label="sampling state after k steps")
    ax.plot(k, result["closer_to_noise_inversion_same_level"], "--s", ms=3, lw=1.3, mfc="none",
            label="inversion state at the same level\n(after T - k inversion steps)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("denoising step k")
    ax.set_ylabel("fraction closer to the noise than to the latent")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(plotting.run_title("closer to noise or latent", result["model"], result["n"], steps), fontsize=10)
    return plotting.save(fig, path)


def write_outputs(result: dict, out: str) -> dict:
    """trajectories.json, trajectories.csv and trajectories.png in ``out``."""
    io.write_json(os.path.join(out, "trajectories.json"), result)
    io.write_csv(os.path.join(out, "trajectories.csv"), csv_rows(result))
    plot(result, os.path.join(out, "trajectories.png"))
    return result


def report(result: dict) -> str:
    """Human-readable summary printed at the end."""
    rows = {r["step"]: r for r in csv_rows(result)}
    lines = [(f"sampling trajectory vs noise-latent segment, N = {result['n']}, T = {result['steps']} "
              f"({result['model']}):"),
             f"  {'step':>5s} {'nearest alpha':>14s} {'closer to noise (sampling)':>27s} {'(inversion)':>12s}"]
    for k in shown_steps(result["steps"]):
        r = rows[k]
        lines.append(f"  {k:5d} {r['nearest_alpha']:14.3f} {r['closer_to_noise_sampling']:27.2f} "
                     f"{r['closer_to_noise_inversion']:12.2f}")
    return "\n".join(lines)


def out_parts(opts: Options) -> list[str]:
    return [] if opts.alphas == 25 else [f"alphas{opts.alphas}"]


def network_passes(ws, opts: Options) -> int:
    """Sampling and inversion, both recorded."""
    return 2


ANALYSIS = cli.Analysis(
    name="trajectories", paper_ref="Sec. 3.3, Fig. 3", options_class=Options, build_parser=build_parser,
    compute=compute, write_outputs=write_outputs, markdown=markdown, options_from_args=options_from_args,
    out_parts=out_parts, network_passes=network_passes, console=report, own_sizes=("n",),
    sizes_note="whole sampling and inversion trajectories are recorded (N x T states each)",
)
main = cli.analysis_main(ANALYSIS)


if __name__ == "__main__":
    main()
