"""Noise-sample-latent relations over training time (paper App. G.1, G.2; Fig. 14, Fig. 15).

    python -m experiments.training_dynamics --run=runs/train/cifar10_adm32 --n=2048 --steps=100 --batch=128

For every saved checkpoint of a jtaba training run (``python -m jtaba.train``), with its **EMA** parameters, on one
fixed noise set (sample i's noise depends only on (--seed, i); seed 420 as upstream):

- G.2 (Fig. 15, upstream ``steps_statistics.py``): noise -> samples_c -> latents_c -> samples2_c with checkpoint c;
- G.1 (Fig. 14, upstream ``steps_statistics_last_sample.py``): the final checkpoint's samples inverted with c.

Each gives one table row per checkpoint: the angles at the image / noise / latent vertices (``calc_angles``: acos of
the mean cosine), the L2 distances (``calc_distances``; G.2 adds the sample / reconstruction MSE), the mean absolute
noise-latent error, and the L2 nearest-assignment accuracies both ways (paper Sec. 4.3) between noise and samples
and between latents and samples. The EMA parameters go to ``jtaba.runs`` in memory (batched, sharded over the
devices, resumable, reused when a finished run has the same model and settings); the run files land in
<runs-dir>/<training run>/step<step>/sample_invert/.

Written into --out: training_dynamics.json (settings and all rows), training_dynamics_g2.csv,
training_dynamics_g1.csv, g2.png (assignment accuracy, angles, distances vs step), g1.png (angle at the noise
vertex, noise-latent distance and error vs step) and generations.png (Fig. 16 right, Figs. 17-19: the first
--grid-noises noises as each checkpoint samples them, rows = up to 10 checkpoints evenly spread over the analysed
ones; the images are kept in generations/ when --discard-runs deletes the runs). Re-running resumes: checkpoints
whose rows exist are skipped, and an interrupted checkpoint continues its sampling where it stopped. Several
invocations with different --select / --parts may share one --out; other --n / --steps / --seed / --final are
refused.
"""
from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np

from jtaba import cli, io, plotting
from jtaba.analyses.training_dynamics import checkpoint_stats
from jtaba.precision import PRECISIONS
from jtaba.runs import StandardOptions
from jtaba.train.export import run_name

PARTS = ("g2", "g1")
ROWS_DIR = "rows"
GENERATIONS_DIR = "generations"
GRID_ROWS = 10  # checkpoints shown in generations.png
SETTINGS = "settings.json"


@dataclasses.dataclass(frozen=True)
class Options(StandardOptions):
    """The standard-run fields take the upstream App. G values; ``run`` the training run folder, ``select`` a
    save-schedule spec (None: every saved step), ``final`` the step whose samples G.1 inverts (None: the last saved),
    ``parts`` the parts to compute in order, ``discard_runs`` delete a checkpoint's run files once its rows exist."""
    n: int = 2048
    steps: int = 100
    seed: int = 420
    batch: int = 128
    run: str = ""
    select: str | None = None
    final: int | None = None
    parts: tuple = PARTS
    runs_dir: str = "runs"
    discard_runs: bool = False
    grid_noises: int = 8


def build_parser():
    p = cli.parser("python -m experiments.training_dynamics", __doc__)
    d = Options()
    p.add_argument("--run", required=True, metavar="DIR",
                   help="training run directory of `python -m jtaba.train` (run.json and one checkpoint per saved "
                        "step); the EMA parameters of each checkpoint are analysed")
    p.add_argument("--n", type=int, default=d.n,
                   help="number of noises / samples N (upstream 2048; on a 2-core CPU with the built-in model, "
                        "--n=256 --steps=20 takes one to two minutes per checkpoint)")
    p.add_argument("--steps", type=int, default=d.steps, help="DDIM steps T of sampling and inversion (upstream 100)")
    p.add_argument("--batch", type=int, default=d.batch,
                   help="samples per batch over all devices (memory / speed only; results do not depend on it)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the fixed noise set shared by all checkpoints (upstream generate_noises(2048, 420))")
    p.add_argument("--out", default=None,
                   help="output directory (default <runs-dir>/<run name>/training_dynamics/T<T>_n<N>_seed<S>); "
                        "re-run to resume")
    p.add_argument("--select", default=None, metavar="SPEC",
                   help="analyse only the saved steps matching this schedule, items joined by '+': every:N, "
                        "at:S1,S2,..., paper_cifar10, paper_imagenet64 (default: every saved step)")
    p.add_argument("--final", type=int, default=None, metavar="STEP",
                   help="the final model whose samples G.1 inverts (default: the last saved step)")
    p.add_argument("--parts", default=",".join(d.parts),
                   help="comma-separated parts to compute: g2 (sample + invert with each checkpoint, Fig. 15) and "
                        "g1 (invert the final model's samples with each checkpoint, Fig. 14; also computes the "
                        "final checkpoint's g2 row, whose samples it inverts)")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="float32: true fp32 (matmul precision highest); tf32: fast fp32 on GPUs; bfloat16: network "
                        "compute in bfloat16")
    p.add_argument("--runs-dir", default=d.runs_dir,
                   help="where the sample / invert runs are stored (<runs-dir>/<training run>/step<step>/...) and "
                        "looked up for reuse")
    p.add_argument("--discard-runs", action="store_true",
                   help="delete each checkpoint's run files once its rows are written (the final model's G.2 run "
                        "is kept: G.1 needs its samples)")
    p.add_argument("--grid-noises", type=int, default=d.grid_noises,
                   help="noises whose samples each checkpoint keeps for generations.png (Figs. 17-19), at most N")
    return p


def options_from_args(args) -> Options:
    """``Options`` from the flags; ValueError for a --parts that lists none or others of ``PARTS``."""
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    if not parts or any(p not in PARTS for p in parts):
        raise ValueError(f"--parts must list some of {', '.join(PARTS)}, got {args.parts!r}")
    if not 1 <= args.grid_noises <= args.n:
        raise ValueError(f"--grid-noises must be in [1, --n], got {args.grid_noises}")
    return dataclasses.replace(cli.options_from_args(Options, args), parts=parts)


def default_out(opts: Options) -> str:
    return os.path.join(opts.runs_dir, run_name(opts.run), "training_dynamics", cli.settings_name(opts))


# ---- the experiment ------------------------------------------------------------------------------------------
def row_path(out: str, part: str, step: int) -> str:
    return os.path.join(out, ROWS_DIR, part, f"{step:09d}.json")


def has_row(out: str, part: str, step: int) -> bool:
    return os.path.exists(row_path(out, part, step))


def stored_rows(out: str, part: str) -> list[dict]:
    """Every row of ``part`` kept in ``out`` (by this and earlier invocations), by step."""
    d = os.path.join(out, ROWS_DIR, part)
    if not os.path.isdir(d):
        return []
    rows = [io.read_json(os.path.join(d, name)) for name in sorted(os.listdir(d)) if name.endswith(".json")]
    return sorted(rows, key=lambda r: r["step"])


def checkpoint_run(opts: Options, out: str, final: int, part: str, step: int):
    """The ``part`` run of checkpoint ``step``'s EMA parameters (computed, resumed or reused); G.1 inverts the
    samples of the final checkpoint's G.2 run."""
    from jtaba.runs import open_run
    from jtaba.train.export import checkpoint_workspace

    ws = checkpoint_workspace(opts.run, step, opts.runs_dir)
    settings = opts.run_settings()
    if part == "g1":
        final_run = open_run(io.read_json(row_path(out, "g2", final))["run"])
        settings = settings.replace(samples=final_run["samples"], reconstruction=False)
    return ws.run(settings)


def generations_path(out: str, step: int) -> str:
    return os.path.join(out, GENERATIONS_DIR, f"{step:09d}.npy")


def compute_row(opts: Options, out: str, final: int, part: str, step: int) -> None:
    """Compute the ``part`` row of checkpoint ``step`` and store it in ``out`` (G.2: with the samples of the first
    ``grid_noises`` noises, for the generation grid)."""
    r = checkpoint_run(opts, out, final, part, step)
    if part == "g2":
        os.makedirs(os.path.join(out, GENERATIONS_DIR), exist_ok=True)
        with io.atomic_path(generations_path(out, step)) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(r["samples"][:opts.grid_noises], np.float32))
    samples2 = r["samples2"] if part == "g2" else None
    row = {"step": step, **checkpoint_stats(r["noise"], r["samples"], r["latents"], samples2).to_json(), "run": r.path}
    io.write_json(row_path(out, part, step), row)


def discard_runs(out: str, final: int, step: int) -> None:
    """Delete the run folders of a checkpoint whose rows are done (not the final checkpoint's G.2 run)."""
    for part in PARTS:
        if has_row(out, part, step) and not (part == "g2" and step == final):
            shutil.rmtree(io.read_json(row_path(out, part, step))["run"], ignore_errors=True)


def collected(out: str, settings: dict, final: int) -> dict:
    """The result (what training_dynamics.json holds): settings, final step and every stored row per part."""
    return {"settings": settings, "final_step": final, **{part: stored_rows(out, part) for part in PARTS}}


def compute(opts: Options, out: str) -> dict:
    """The rows of every selected checkpoint and part, computed or read back from ``out`` (the resume folder: one
    JSON per row, a settings manifest that refuses other settings); after each checkpoint the tables so far are
    written into ``out``. Returns ``{"settings", "final_step", "g2": rows, "g1": rows}`` with every row in ``out``
    (earlier invocations with other --select / --parts included), by step."""
    from jtaba.train.export import analysed_steps

    final, chosen = analysed_steps(opts.run, opts.select, opts.final)
    settings = {"run": os.path.abspath(opts.run), "n": opts.n, "steps": opts.steps, "seed": opts.seed,
                "final": final, "precision": opts.precision}
    io.claim_settings(os.path.join(out, SETTINGS), settings)
    cli.warn_if_slow(opts.n * len(chosen), opts.steps, 3 + ("g1" in opts.parts), "training_dynamics")

    if "g1" in opts.parts and not has_row(out, "g2", final):  # G.1 inverts the final model's samples
        compute_row(opts, out, final, "g2", final)
    for i, step in enumerate(chosen):
        todo = [p for p in opts.parts if not has_row(out, p, step)]
        if not todo:
            continue
        print(f"[{i + 1}/{len(chosen)}] checkpoint {step}: {', '.join(todo)}", flush=True)
        for part in todo:
            compute_row(opts, out, final, part, step)
        if opts.discard_runs:
            discard_runs(out, final, step)
        write_outputs(collected(out, settings, final), out, figures=False)
    return collected(out, settings, final)


def plot_g2(rows: list[dict], path: str, head: str) -> str:
    """Fig. 15 (assignment accuracy noise <-> image vs step) with the vertex angles and distances."""
    steps = [r["step"] for r in rows]
    col = lambda k, scale=1.0: [scale * r[k] for r in rows]  # noqa: E731
    fig, axes = plotting.new_figure(1, 3, size=(4.6, 3.6))
    plotting.series_panel(axes[0, 0], steps, {
        "image → noise": col("acc_img_to_noise", 100), "noise → image": col("acc_noise_to_img", 100),
        "image → latent": col("acc_img_to_latent", 100), "latent → image": col("acc_latent_to_img", 100)},
        "L2 assignment accuracy (%)", f"G.2 assignment (Fig. 15)\n{head}")
    plotting.series_panel(axes[0, 1], steps, {"image": col("angle_image"), "noise": col("angle_noise"),
                                              "latent": col("angle_latent")}, "angle (degrees)", "vertex angles")
    plotting.series_panel(axes[0, 2], steps, {"noise-latent": col("mean_l2_noise_lat"),
                                              "image-latent": col("mean_l2_img_lat"),
                                              "image-noise": col("mean_l2_img_noise")}, "mean L2 distance",
                          "distances")
    return plotting.save(fig, path)


def plot_g1(rows: list[dict], path: str, head: str) -> str:
    """Fig. 14: the final model's samples inverted with each checkpoint: angle at the noise vertex, noise-latent
    L2 distance and mean absolute noise-latent error vs step."""
    steps = [r["step"] for r in rows]
    fig, axes = plotting.new_figure(1, 3, size=(4.6, 3.6))
    plotting.series_panel(axes[0, 0], steps, {"noise": [r["angle_noise"] for r in rows]},
                          "angle at the noise vertex (degrees)", f"G.1 angle at the noise vertex\n{head}")
    plotting.series_panel(axes[0, 1], steps, {"noise-latent": [r["mean_l2_noise_lat"] for r in rows]},
                          "mean L2 distance", "latent - noise distance")
    plotting.series_panel(axes[0, 2], steps, {"noise-latent": [r["mae_noise_latent"] for r in rows]},
                          "mean |noise - latent|", "noise reconstruction error")
    return plotting.save(fig, path)


TABLE_COLUMNS = (("∠ image", "angle_image", "{:.2f}"), ("∠ noise", "angle_noise", "{:.2f}"),
                 ("∠ latent", "angle_latent", "{:.2f}"), ("L2 image-latent", "mean_l2_img_lat", "{:.4g}"),
                 ("L2 image-noise", "mean_l2_img_noise", "{:.4g}"), ("L2 noise-latent", "mean_l2_noise_lat", "{:.4g}"),
                 ("MSE image-reconstruction", "mean_mse_img_img2", "{:.4g}"),
                 ("MAE noise-latent", "mae_noise_latent", "{:.4g}"),
                 ("acc image→noise", "acc_img_to_noise", "{:.1%}"),
                 ("acc noise→image", "acc_noise_to_img", "{:.1%}"),
                 ("acc image→latent", "acc_img_to_latent", "{:.1%}"),
                 ("acc latent→image", "acc_latent_to_img", "{:.1%}"))
PART_TITLES = {"g2": "G.2 (Fig. 15): each checkpoint samples the fixed noise and inverts its samples",
               "g1": "G.1 (Fig. 14): each checkpoint inverts the final checkpoint's samples"}


def markdown(result: dict) -> str:
    """The G.2 and G.1 tables (one row per checkpoint: vertex angles in degrees, mean L2 distances, errors,
    assignment accuracies)."""
    s = result["settings"]
    lines = [f"Training run `{run_name(s['run'])}` (final step {result['final_step']}), EMA weights; N = {s['n']}, "
             f"T = {s['steps']}, noise seed {s['seed']}, precision {s['precision']}."]
    for part in PARTS:
        rows = result[part]
        if not rows:
            continue
        cols = [c for c in TABLE_COLUMNS if c[1] in rows[0]]
        lines += ["", f"{PART_TITLES[part]}:", "", "| step | " + " | ".join(label for label, _, _ in cols) + " |",
                  "|---" * (len(cols) + 1) + "|"]
        lines += [f"| {r['step']} | " + " | ".join(fmt.format(r[key]) for _, key, fmt in cols) + " |"
                  for r in rows]
    lines += ["", "Columns: step = the checkpoint's training step; ∠ = acos of the mean cosine at the image / noise / "
                  "latent vertex of each sample's triangle (degrees); L2 = mean distance over samples of each side; "
                  "MSE image-reconstruction = mean squared error of the images sampled back from the latents; MAE "
                  "noise-latent = mean |noise − latent|; acc = share of items whose nearest (mean squared distance) "
                  "item of the other set is their own partner, over all N."]
    return "\n".join(lines)


def plot_generations(result: dict, out: str, path: str, head: str) -> str | None:
    """generations.png (Fig. 16 right, Figs. 17-19): rows = up to ``GRID_ROWS`` G.2 checkpoints with stored images,
    evenly spread (first and last kept), columns = the first noises; None when no checkpoint has them."""
    steps = [r["step"] for r in result["g2"] if os.path.exists(generations_path(out, r["step"]))]
    if not steps:
        return None
    rows = [(f"step {s}", np.load(generations_path(out, s)))
            for s in plotting.evenly_spaced(steps, GRID_ROWS)]
    return plotting.generation_grid(rows, path, f"the same noises sampled by each checkpoint (EMA; Fig. 16 right, "
                                                f"Figs. 17-19)\n{head}")


def write_outputs(result: dict, out: str, figures: bool = True) -> None:
    """training_dynamics.json (the result), the CSV tables (without run paths) and (``figures``) the PNG figures."""
    io.write_json(os.path.join(out, "training_dynamics.json"), result)
    s = result["settings"]
    head = f"{run_name(s['run'])}, N = {s['n']}, T = {s['steps']}"
    for part, plot in (("g2", plot_g2), ("g1", plot_g1)):
        if result[part]:
            io.write_csv(os.path.join(out, f"training_dynamics_{part}.csv"),
                         [{k: v for k, v in r.items() if k != "run"} for r in result[part]])
            if figures:
                plot(result[part], os.path.join(out, f"{part}.png"), head)
    if figures:
        plot_generations(result, out, os.path.join(out, "generations.png"), head)


ANALYSIS = cli.Analysis(
    name="training_dynamics", paper_ref="App. G.1, G.2, Fig. 14-15", options_class=Options, build_parser=build_parser,
    compute=compute, write_outputs=write_outputs, markdown=markdown, options_from_args=options_from_args,
    default_out=default_out, training=True,
)
main = cli.analysis_main(ANALYSIS)


if __name__ == "__main__":
    main()
