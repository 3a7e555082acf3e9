"""Triangles and L2 assignment as the number of DDIM steps T varies (paper Tab. 10 (App. B.2) and Tab. 11 (App. E.2);
upstream OLD ``sample_per_T.py``).

    python -m experiments.steps                                        # built-in model: T = 10, 20, 50; N = 512
    python -m experiments.steps --model=adm32 --n=8192 --steps-list 10,50,100,500,1000   # the paper's T values

For every T: the standard sample -> invert -> reconstruct run with T steps (``jtaba.runs``; reused when finished,
and the one at --steps is the run every other analysis shares), then the noise-sample-latent triangle statistics
of ``experiments.triangles`` (most probable triangle, acos of the mean cosine per vertex, mean L2 sides) and the
L2 nearest-assignment accuracies of ``experiments.assignment`` (four directions, mean ± sd over --divs chunks, %).
Writes steps.json, steps.csv (one row per T) and steps.png (angles, L2 sides and accuracies against T) into --out.
"""
from __future__ import annotations

import dataclasses
import math
import os

from experiments.assignment import ARROW_DEFINITIONS, ARROWS, DIRECTIONS, parse_int_list
from experiments.triangles import CALC_ANGLE_KEYS, SIDES, VERTICES
from jtaba import cli, io, plotting
from jtaba.analyses import triangles
from jtaba.analyses.assignment import accuracies
from jtaba.runs import StandardOptions


@dataclasses.dataclass(frozen=True)
class Options(StandardOptions):
    """The standard run's settings (``jtaba.runs.StandardOptions``; T varies) and the sweep's own."""
    steps_list: tuple[int, ...] = ()  # () -> 10, 20 and steps
    divs: int = 8

    def __post_init__(self):  # checked once, for the command and for Options made in Python (reproduce)
        if self.divs < 1 or self.n // self.divs < 2:
            raise ValueError(f"n={self.n} (--n) with divs={self.divs} (--divs) leaves chunks of fewer than 2 pairs")

    @property
    def all_steps(self) -> tuple[int, ...]:
        return tuple(self.steps_list) or tuple(sorted({10, 20, self.steps}))


def build_parser():
    p = cli.parser("python -m experiments.steps", __doc__)
    cli.add_analysis_flags(p, Options,
                           n_help="number of samples N per T (512: T = 10 and 20 take about 4 minutes together on a "
                                  "busy 2-core CPU with the built-in model, plus the shared T = 50 run; the paper "
                                  "used 8,192 per T)")
    p.add_argument("--steps-list", type=parse_int_list, default=None, metavar="T1,T2,...",
                   help="the DDIM step counts T, one standard run each (default: 10, 20 and --steps; the paper used "
                        "10,50,100,500,1000); when given, --steps is not used")
    p.add_argument("--divs", type=int, default=Options.divs,
                   help="chunks the N pairs are split into for the assignment accuracies (mean ± sd over chunks)")
    return p


def options_from_args(args) -> Options:
    return Options(n=args.n, steps=args.steps, seed=args.seed, batch=args.batch, precision=args.precision,
                   steps_list=tuple(args.steps_list or ()), divs=args.divs)


def compute(ws, opts: Options) -> dict:
    """The standard run per T, then triangles and assignment accuracies per T."""
    rows = []
    for steps in opts.all_steps:
        run = ws.run(opts.run_settings(steps=steps))
        noise, samples, latents = run["noise"], run["samples"], run["latents"]
        tri = triangles.triangle_stats(noise, samples, latents).to_json()
        tri.pop("histograms")  # 3 x 178 numbers per T: in triangles.json for one T
        rows.append({"steps": steps, "run": run.path, **tri,
                     "accuracy": accuracies(noise, samples, latents, opts.divs).to_json()})
    return {"model": ws.tag, "n": opts.n, "steps": list(opts.all_steps), "seed": opts.seed,
            "precision": opts.precision, "divs": opts.divs, "chunk": opts.n // opts.divs, "rows": rows}


def csv_rows(result: dict) -> list[dict]:
    """One row per T: Tab. 10 (most probable triangle, acos of the mean cosine, L2 sides mean and sd) and Tab. 11
    (assignment accuracy mean and sd over chunks, %)."""
    out = []
    for r in result["rows"]:
        tri = r["most_probable_triangle"] or {}
        row = {"model": result["model"], "n": result["n"], "steps": r["steps"], "seed": result["seed"]}
        row.update({f"triangle_angle_{k}": tri.get(k) for k in VERTICES})
        row["triangle_probability"] = tri.get("probability")
        row.update({f"mean_angle_{k}": r["calc_angles"][CALC_ANGLE_KEYS[k]] for k in VERTICES})
        for (u, v), key in SIDES.items():
            row[f"l2_{u}_{v}_mean"] = r["calc_distances"][f"mean_l2_{key}"]
            row[f"l2_{u}_{v}_std"] = r["calc_distances"][f"std_l2_{key}"]
        row.update({"divs": result["divs"], "chunk": result["chunk"]})
        for key in DIRECTIONS:
            row[f"{key}_mean"] = r["accuracy"][key]["mean"]
            row[f"{key}_std"] = r["accuracy"][key]["std"]
        out.append(row)
    return out


def markdown(result: dict) -> str:
    """Tab. 10 (angles per T) and Tab. 11 (assignment per T) as markdown tables."""
    t10 = [("| T | triangle image / noise / latent (°) | acos mean cos image / noise / latent (°) | "
            "L2 noise-latent | L2 image-latent | L2 image-noise |"), "|---|---|---|---|---|---|"]
    t11 = ["| T | " + " | ".join(ARROWS.values()) + " |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        tri = r["most_probable_triangle"]
        angles = " / ".join(str(tri[k]) for k in VERTICES) if tri else "-"
        mean = " / ".join(f"{r['calc_angles'][CALC_ANGLE_KEYS[k]]:.1f}" for k in VERTICES)
        d = r["calc_distances"]
        sides = " | ".join(f"{d[f'mean_l2_{key}']:.2f} ± {d[f'std_l2_{key}']:.2f}"
                           for key in ("noise_lat", "img_lat", "img_noise"))
        t10.append(f"| {r['steps']} | {angles} | {mean} | {sides} |")
        t11.append(f"| {r['steps']} | " + " | ".join(f"{r['accuracy'][k]['mean']:.1f} ± {r['accuracy'][k]['std']:.1f}"
                                                      for k in DIRECTIONS) + " |")
    note = (f"N = {result['n']} per T. First table (Tab. 10): triangle = the most probable angles at the image / "
            f"noise / latent vertices (°, App. B); acos mean cos = the angle whose cosine is the mean cosine at each "
            f"vertex (°); L2 = mean ± std over samples of each side. Second table (Tab. 11): assignment accuracy (%) "
            f"mean ± sd over {result['divs']} chunks of {result['chunk']}. {ARROW_DEFINITIONS}")
    return "\n".join(t10 + [""] + t11 + ["", note])


def plot(result: dict, path: str) -> str:
    """steps.png: angles (most probable: markers; acos of the mean cosine: lines), L2 sides, and the four
    assignment accuracies (± sd over chunks) against T (log axis)."""
    rows = result["rows"]
    ts = [r["steps"] for r in rows]
    fig, axes = plotting.new_figure(1, 3, size=(4.6, 4.4))
    ax = axes[0, 0]
    for k in VERTICES:
        color = plotting.VERTEX_COLORS[k]
        ax.plot(ts, [r["calc_angles"][CALC_ANGLE_KEYS[k]] for r in rows], "-", color=color, lw=1.2,
                label=f"{k}: acos mean cos")
        tri = [(t, r["most_probable_triangle"][k]) for t, r in zip(ts, rows) if r["most_probable_triangle"]]
        if tri:
            ax.plot(*zip(*tri), "o", color=color, mfc="none", ms=7, label=f"{k}: most probable")
    ax.set_ylabel("angle at vertex (degrees)")
    ax = axes[0, 1]
    for k, ((u, v), key) in enumerate(SIDES.items()):
        ax.errorbar(ts, [r["calc_distances"][f"mean_l2_{key}"] for r in rows],
                    yerr=[r["calc_distances"][f"std_l2_{key}"] for r in rows], marker=plotting.MARKERS[k],
                    ls=plotting.LINESTYLES[k], capsize=3, lw=1.2, label=f"{u}-{v}")
    ax.set_ylabel("L2 distance (mean ± sd over samples)")
    ax = axes[0, 2]
    for k, key in enumerate(DIRECTIONS):
        ax.errorbar(ts, [r["accuracy"][key]["mean"] for r in rows], yerr=[r["accuracy"][key]["std"] for r in rows],
                    marker=plotting.MARKERS[k], ls=plotting.LINESTYLES[k], capsize=3, lw=1.2, ms=7 - 1.2 * k,
                    mfc="none" if k % 2 else None, alpha=0.85, label=ARROWS[key])
    ax.set_ylabel(f"assignment accuracy % ({result['divs']} chunks of {result['chunk']})")
    ax.set_ylim(-3, 103)
    head = plotting.run_title("", result["model"], result["n"], ", ".join(map(str, ts))).strip()
    for ax, what in zip(axes[0], ("triangle angles", "triangle sides", "L2 nearest assignment")):
        ax.set_xscale("log")
        ax.set_xticks(ts)
        ax.set_xticklabels([str(t) for t in ts])
        ax.minorticks_off()
        ax.set_xlabel("DDIM steps T")
        ax.grid(alpha=0.3)
        ax.set_title(f"{what} vs T\n{head}", fontsize=9)
        ax.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    return plotting.save(fig, path)


def write_outputs(result: dict, out: str) -> dict:
    """steps.json, steps.csv and steps.png in ``out``."""
    io.write_json(os.path.join(out, "steps.json"), result)
    io.write_csv(os.path.join(out, "steps.csv"), csv_rows(result))
    plot(result, os.path.join(out, "steps.png"))
    return result


def report(result: dict) -> str:
    """Human-readable summary printed at the end."""
    lines = [f"triangles and assignment vs T, N = {result['n']} ({result['model']}):",
             f"  {'T':>5s} {'triangle img/noise/lat':>23s} {'acos mean cos':>18s} " +
             " ".join(f"{ARROWS[k]:>15s}" for k in DIRECTIONS)]
    for r in result["rows"]:
        tri = r["most_probable_triangle"]
        angles = "/".join(str(tri[k]) for k in VERTICES) if tri else "-"
        mean = "/".join(f"{r['calc_angles'][CALC_ANGLE_KEYS[k]]:.1f}" for k in VERTICES)
        acc = " ".join(f"{r['accuracy'][k]['mean']:7.1f} ± {r['accuracy'][k]['std']:5.1f}" for k in DIRECTIONS)
        lines.append(f"  {r['steps']:5d} {angles:>23s} {mean:>18s} {acc}")
    return "\n".join(lines)


def out_parts(opts: Options) -> list[str]:
    """The analysis settings in the default output folder name (beyond --steps, N, seed, precision)."""
    parts = [] if not opts.steps_list else ["Tlist" + "-".join(map(str, opts.all_steps))]
    return parts + ([] if opts.divs == 8 else [f"divs{opts.divs}"])


def step_counts(opts: Options) -> tuple[int, ...]:
    """The step counts T it runs (one standard run each)."""
    return opts.all_steps


def network_passes(ws, opts: Options) -> int:
    """N x T network passes (T = --steps): sample, invert and reconstruct for every T of the list."""
    return math.ceil(3 * sum(opts.all_steps) / opts.steps)


ANALYSIS = cli.Analysis(
    name="steps", paper_ref="App. B.2 Tab. 10, App. E.2 Tab. 11", options_class=Options, build_parser=build_parser,
    compute=compute, write_outputs=write_outputs, markdown=markdown, options_from_args=options_from_args,
    out_parts=out_parts, network_passes=network_passes, console=report, step_counts=step_counts,
)
main = cli.analysis_main(ANALYSIS)


if __name__ == "__main__":
    main()
