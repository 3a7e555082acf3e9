"""L2 nearest assignment between noises, latents and samples (paper Sec. 4.3, Tab. 8, Tab. 11, Fig. 12-13,
App. E).

    python -m experiments.assignment                                   # built-in model, T = 50, N = 512
    python -m experiments.assignment --steps-list 10,50,100 --n 2048   # Tab. 11: one run per T
    python -m experiments.assignment --model=adm32 --n=10240 --steps=100 --batch=256   # the paper's Tab. 8 sizes
    python -m experiments.assignment --steps-list 10,100 --invert-from 100   # T=100 samples inverted with each T

Samples N images from seed-indexed noise and inverts them (``jtaba.runs``; a finished run with the same model and
settings is reused), one run per T. Upstream ``mse_classify_distances.img_noise_cls_divs``: the N pairs are split
into --divs consecutive chunks of N // divs (10,240 -> 8 x 1,280 in the paper; N = 512 -> 8 x 64 here, and
accuracies fall as chunks grow: more candidates per item); within a chunk every item is assigned to the nearest item
of the other set (mean squared distance over C*H*W); the accuracy is the fraction assigned to its own partner; the
table gives mean ± sd (unbiased, over chunks) x 100 in four directions: image -> noise (for each sample its nearest
noise), noise -> image, image -> latent, latent -> image (Tab. 8 and Tab. 11 (a), (b)).

Attractors (Fig. 12B-C, Fig. 13; upstream ``plot_most_attractive`` and ``mse_classify_distances __main__``), over
all N items at once: the samples nearest to the most noises and to the most latents, with those counts, and the
least variant samples (unbiased pixel variance); each attractor's rank in that variance order and in its distance
to the zero image (the noise mean: for unrelated x and y, mean((x - y)^2) ~ 1 + mean(y^2), so samples near the
origin attract many noises, App. E.3).

--invert-from T0 (Tab. 11 as upstream's slurm ``*_corrT.sh``): the T0 samples (from the standard run at T0) are
inverted with each T of --steps-list; the image <-> noise columns then belong to the T0 sampling run (the same in
every row) and the image <-> latent columns to the T-step inversion.

Wrong assignments (Fig. 12A): in the first chunk, the noises whose nearest sample is not their own (noise → image),
with both mean squared distances; assignment_wrong.png shows up to --top of them for the first T (noise | its own
image | the image it was assigned to).

Writes assignment.json, assignment.csv (one row per T: the four accuracies, mean and sd in percent),
assignment.png (attractors and least variant samples of the first T; assignment_T<T>.png for every further T) and
assignment_wrong.png into --out.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os

import numpy as np

from jtaba import cli, io, plotting
from jtaba.analyses import assignment as analysis
from jtaba.runs import StandardOptions

DIRECTIONS = analysis.DIRECTIONS
ARROW_DEFINITIONS = ("Columns: image → noise = % of samples whose nearest noise (mean squared distance, within a "
                     "chunk) is their own; noise → image = % of noises whose nearest sample is their own; image → "
                     "latent and latent → image likewise with the latents.")
ARROWS = {"image_to_noise": "image → noise", "noise_to_image": "noise → image",
          "image_to_latent": "image → latent", "latent_to_image": "latent → image"}


@dataclasses.dataclass(frozen=True)
class Options(StandardOptions):
    """The standard run's settings (``jtaba.runs.StandardOptions``) and the assignment's own."""
    steps_list: tuple[int, ...] = ()  # () -> (steps,)
    divs: int = 8
    invert_from: int | None = None
    top: int = 8

    def __post_init__(self):  # checked once, for the command and for Options made in Python (reproduce)
        if self.divs < 1 or self.n // self.divs < 2:
            raise ValueError(f"n={self.n} (--n) with divs={self.divs} (--divs) leaves chunks of fewer than 2 pairs")

    @property
    def all_steps(self) -> tuple[int, ...]:
        return tuple(self.steps_list) or (self.steps,)


def parse_int_list(text: str) -> tuple[int, ...]:
    """'10,50,100' -> (10, 50, 100) (positive, no repeats)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct positive integers, got {text!r}")
    return values


def build_parser():
    p = cli.parser("python -m experiments.assignment", __doc__)
    cli.add_analysis_flags(p, Options,
                           n_help="number of samples N, split into --divs chunks (the standard run, shared with the "
                                  "other analyses; the paper used 10,240 and T = 100)")
    p.add_argument("--steps-list", type=parse_int_list, default=None, metavar="T1,T2,...",
                   help="DDIM steps T to compare (Tab. 11; the paper used 10,50,100,500,1000), one run per T "
                        "(default: just --steps)")
    p.add_argument("--divs", type=int, default=Options.divs,
                   help="number of consecutive chunks the N pairs are split into (accuracy: mean ± sd over chunks)")
    p.add_argument("--invert-from", type=int, default=None, metavar="T0",
                   help="invert the samples of the T0-step run with each T of --steps-list instead of sampling "
                        "with T (upstream's Tab. 11 inversions of T=100 samples)")
    p.add_argument("--top", type=int, default=Options.top,
                   help="attractors and least variant samples shown per row of the figure (the paper shows 8)")
    return p


def options_from_args(args) -> Options:
    if args.top < 1:
        raise ValueError(f"--top must be positive, got {args.top}")
    if args.invert_from is not None and args.invert_from < 1:
        raise ValueError(f"--invert-from must be a positive step count, got {args.invert_from}")
    return Options(n=args.n, steps=args.steps, seed=args.seed, batch=args.batch, precision=args.precision,
                   steps_list=tuple(args.steps_list or ()), divs=args.divs, invert_from=args.invert_from,
                   top=args.top)


def compute(ws, opts: Options) -> dict:
    """One run per T (or inversions of the T0 samples), then accuracies and attractors per T."""
    rows = []
    base = ws.run(opts.run_settings(steps=opts.invert_from)) if opts.invert_from else None
    for steps in opts.all_steps:
        if base is None or steps == opts.invert_from:
            run = noise_run = base if base is not None else ws.run(opts.run_settings(steps=steps))
        else:  # the T0 samples (and their noise, for the record) inverted with T steps
            noise_run = base
            run = ws.run(opts.run_settings(steps=steps, samples=base["samples"], noise=base["noise"],
                                           reconstruction=False))
        noise, samples, latents = noise_run["noise"], noise_run["samples"], run["latents"]
        rows.append({"steps": steps, "sample_steps": noise_run.steps, "run": run.path, "noise_run": noise_run.path,
                     **analysis.assignment_stats(noise, samples, latents, opts.divs, opts.top).to_json()})
    return {"model": ws.tag, "n": opts.n, "steps": opts.steps, "steps_list": list(opts.all_steps), "seed": opts.seed,
            "precision": opts.precision, "divs": opts.divs, "chunk": opts.n // opts.divs,
            "invert_from": opts.invert_from, "top": opts.top, "rows": rows}


def csv_rows(result: dict) -> list[dict]:
    """Tab. 8 / Tab. 11: one row per T, each direction's mean and sd over chunks in percent."""
    out = []
    for r in result["rows"]:
        row = {"model": result["model"], "n": result["n"], "steps": r["steps"], "sample_steps": r["sample_steps"],
               "seed": result["seed"], "divs": result["divs"], "chunk": result["chunk"]}
        for key in DIRECTIONS:
            row[f"{key}_mean"] = r["accuracy"][key]["mean"]
            row[f"{key}_std"] = r["accuracy"][key]["std"]
        out.append(row)
    return out


def _pm(a: dict) -> str:
    return f"{a['mean']:.1f} ± {a['std']:.1f}"


def markdown(result: dict) -> str:
    """Tab. 8 / Tab. 11 as a markdown table (accuracy in %, mean ± sd over chunks)."""
    inv = result["invert_from"] is not None
    head = "| T | " + " | ".join(ARROWS.values()) + " |\n|---|---|---|---|---|"
    lines = [head]
    for r in result["rows"]:
        t = f"{r['steps']} (samples T={r['sample_steps']})" if inv else str(r["steps"])
        lines.append(f"| {t} | " + " | ".join(_pm(r["accuracy"][k]) for k in DIRECTIONS) + " |")
    lines.append("")
    lines.append(f"Accuracy (%) of the L2 nearest assignment, mean ± sd over {result['divs']} chunks of "
                 f"{result['chunk']} pairs (N = {result['n']}). {ARROW_DEFINITIONS}")
    for r in result["rows"]:
        a = r["attractors"]
        best = {k: (a[k]["count"] or [0])[0] for k in ("noise", "latent")}
        lines.append(f"T={r['steps']}: the top noise attractor is nearest to {best['noise']} of {a['noise']['items']} "
                     f"noises, the top latent attractor to {best['latent']} latents; "
                     f"{a['noise']['distinct_nearest']} / {a['latent']['distinct_nearest']} distinct samples are "
                     f"nearest to some noise / latent.")
    return "\n".join(lines)


def _display(images: np.ndarray) -> np.ndarray:
    """(k, C, H, W) in [-1, 1] -> (k, H, W, 3) in [0, 1] (no per-image stretch: flat images stay flat)."""
    x = np.asarray(images, np.float64)
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    x = x[:, :3]
    return np.clip((np.moveaxis(x, 1, -1) + 1.0) / 2.0, 0.0, 1.0)


def _plural(k: int, what: str) -> str:
    return f"{k} {what}" + ("" if k == 1 else "s")


def plot_attractors(result: dict, row: dict, path: str) -> str:
    """Fig. 12B-C / 13: the samples nearest to the most noises and latents (with counts) and the least variant
    samples (with variances); images read from the run folder (decoded samples for latent-space models)."""
    from jtaba.runs import open_run

    run = open_run(row["noise_run"])
    images = run["decoded_samples"] if "decoded_samples" in run else run["samples"]
    top = max(result["top"], 1)
    fig, axes = plotting.new_figure(3, top, size=(1.5, 2.2))
    lines = [("noise", row["attractors"]["noise"]), ("latent", row["attractors"]["latent"])]
    for r, (what, att) in enumerate(lines):
        for c in range(top):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(att["index"]):
                i = att["index"][c]
                ax.imshow(_display(images[i:i + 1])[0], interpolation="nearest")
                ax.set_title(f"#{i}: {_plural(att['count'][c], what)}\nvariance rank {att['variance_rank'][c]}\n"
                             f"norm rank {att['origin_rank'][c]}", fontsize=7)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(f"nearest to most\n{what}s", fontsize=8)
    low = row["lowest_variance"]
    for c in range(top):
        ax = axes[2, c]
        ax.set_xticks([])
        ax.set_yticks([])
        if c < len(low["index"]):
            i = low["index"][c]
            ax.imshow(_display(images[i:i + 1])[0], interpolation="nearest")
            ax.set_title(f"#{i}: variance {low['variance'][c]:.3g}", fontsize=7)
        else:
            ax.axis("off")
    axes[2, 0].set_ylabel("least variant\nsamples", fontsize=8)
    acc = row["accuracy"]
    sub = "; ".join(f"{ARROWS[k]} {acc[k]['mean']:.1f}%" for k in DIRECTIONS)
    head = plotting.run_title("L2 assignment attractors", result["model"], result["n"], row["steps"])
    if row["sample_steps"] != row["steps"]:
        head += f" (inversion of samples made with T = {row['sample_steps']}: the noise row is theirs)"
    fig.suptitle(f"{head}\n{sub} ({result['divs']} chunks of {result['chunk']})", fontsize=8)
    fig.text(0.5, 0.005, f"ranks among the {result['n']} samples, 0 = lowest; norm: distance to the zero image (the "
             f"noise mean); images shown as [-1, 1] -> [0, 1], not stretched", ha="center", fontsize=7)
    return plotting.save(fig, path)


def _display_noise(x: np.ndarray) -> np.ndarray:
    """(C, H, W) noise -> (H, W, 3) in [0, 1], its first three channels stretched by their own min / max."""
    x = np.asarray(x, np.float64)
    x = np.repeat(x, 3, axis=0) if x.shape[0] == 1 else x[:3]
    return np.moveaxis((x - x.min()) / max(x.max() - x.min(), 1e-12), 0, -1)


def plot_wrong(result: dict, row: dict, path: str) -> str:
    """Fig. 12A: per wrongly assigned noise (rows): the noise, its own sample and the sample it was assigned to,
    with the mean squared distances from the noise."""
    from jtaba.runs import open_run

    run = open_run(row["noise_run"])
    images = run["decoded_samples"] if "decoded_samples" in run else run["samples"]
    wrong = row["wrong_noise_to_image"]
    shown = max(len(wrong["noise_index"]), 1)
    fig, axes = plotting.new_figure(shown, 3, size=(1.9, 2.0))
    for r in range(shown):
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
        if not wrong["noise_index"]:
            for ax in axes[r]:
                ax.axis("off")
            axes[r, 1].text(0.5, 0.5, "no wrong assignment\nin the first chunk", ha="center", va="center")
            continue
        i, j = wrong["noise_index"][r], wrong["assigned"][r]
        axes[r, 0].imshow(_display_noise(run["noise"][i]), interpolation="nearest")
        axes[r, 0].set_title(f"noise #{i}", fontsize=7)
        axes[r, 1].imshow(_display(images[i:i + 1])[0], interpolation="nearest")
        axes[r, 1].set_title(f"its image #{i}\nMSE {wrong['mse_own'][r]:.4f}", fontsize=7)
        axes[r, 2].imshow(_display(images[j:j + 1])[0], interpolation="nearest")
        axes[r, 2].set_title(f"assigned image #{j}\nMSE {wrong['mse_assigned'][r]:.4f}", fontsize=7)
    head = plotting.run_title("wrong noise → image assignments (Fig. 12A)", result["model"], result["n"],
                              row["steps"])
    fig.suptitle(f"{head}\n{wrong['wrong']} of the {wrong['chunk']} noises of the first chunk: nearest image not "
                 f"their own", fontsize=8)
    return plotting.save(fig, path)


def figure_names(result: dict) -> list[str]:
    """assignment.png for the first T, assignment_T<T>.png for every further T."""
    return ["assignment.png"] + [f"assignment_T{r['steps']}.png" for r in result["rows"][1:]]


def write_outputs(result: dict, out: str) -> dict:
    """assignment.json, assignment.csv and the attractor figure(s) in ``out``."""
    io.write_json(os.path.join(out, "assignment.json"), result)
    io.write_csv(os.path.join(out, "assignment.csv"), csv_rows(result))
    for row, name in zip(result["rows"], figure_names(result)):
        plot_attractors(result, row, os.path.join(out, name))
    plot_wrong(result, result["rows"][0], os.path.join(out, "assignment_wrong.png"))
    return result


def report(result: dict) -> str:
    """Human-readable summary printed at the end."""
    lines = [(f"L2 nearest assignment, N = {result['n']} in {result['divs']} chunks of {result['chunk']} "
              f"({result['model']}); accuracy % mean ± sd over chunks:"),
             f"  {'T':>5s} " + " ".join(f"{ARROWS[k]:>16s}" for k in DIRECTIONS)]
    for r in result["rows"]:
        lines.append(f"  {r['steps']:5d} " + " ".join(f"{_pm(r['accuracy'][k]):>16s}" for k in DIRECTIONS))
    for r in result["rows"]:
        a = r["attractors"]
        lines.append(f"  T={r['steps']}: noise attractors {list(zip(a['noise']['index'], a['noise']['count']))[:4]}, "
                     f"latent attractors {list(zip(a['latent']['index'], a['latent']['count']))[:4]} "
                     f"(sample index, count)")
    return "\n".join(lines)


def out_parts(opts: Options) -> list[str]:
    """The analysis settings in the default output folder name (beyond T, N, seed, precision)."""
    parts = [] if opts.all_steps == (opts.steps,) else ["Tlist" + "-".join(map(str, opts.all_steps))]
    parts += [] if opts.invert_from is None else [f"invfrom{opts.invert_from}"]
    parts += [] if opts.divs == 8 else [f"divs{opts.divs}"]
    return parts + ([] if opts.top == 8 else [f"top{opts.top}"])


def step_counts(opts: Options) -> tuple[int, ...]:
    """The step counts T it runs (one standard run each)."""
    return opts.all_steps


def network_passes(ws, opts: Options) -> int:
    """N x T network passes (T = --steps): sample, invert, reconstruct per T; with --invert-from, the T0 run and
    one inversion per further T."""
    if opts.invert_from is None:
        total = 3 * sum(opts.all_steps)
    else:
        total = 3 * opts.invert_from + sum(t for t in opts.all_steps if t != opts.invert_from)
    return math.ceil(total / opts.steps)


ANALYSIS = cli.Analysis(
    name="assignment", paper_ref="Sec. 4.3, Tab. 8, App. E, Fig. 12-13", options_class=Options,
    build_parser=build_parser, compute=compute, write_outputs=write_outputs, markdown=markdown,
    options_from_args=options_from_args, out_parts=out_parts, network_passes=network_passes, console=report,
    step_counts=step_counts,
)
main = cli.analysis_main(ANALYSIS)


if __name__ == "__main__":
    main()
