"""Noise-sample-latent relations over training time (reference §3.12; paper App. G.1, G.2; Fig. 14, Fig. 15).

    python -m experiments.training_dynamics --run=runs/train/cifar10_adm32 --n=2048 --steps=100 --batch=128

For every saved checkpoint of a jtaba training run (``python -m jtaba.train``), with its **EMA** parameters, on one
fixed noise set (sample i's noise depends only on (--seed, i); seed 420 as upstream):

- G.2 (Fig. 15, upstream ``steps_statistics.py``): noise -> samples_c -> latents_c -> samples2_c with checkpoint c;
- G.1 (Fig. 14, upstream ``steps_statistics_last_sample.py``): the final checkpoint's samples inverted with c.

Each gives one table row per checkpoint: the angles at the image / noise / latent vertices (``calc_angles``: acos of
the mean cosine), the L2 distances (``calc_distances``; G.2 adds the sample / reconstruction MSE), the mean absolute
noise-latent error, and the L2 nearest-assignment accuracies both ways (reference §3.11) between noise and samples
and between latents and samples. The EMA parameters go to ``jtaba.runs`` in memory (batched, sharded over the
devices, resumable, reused when a finished run has the same model and settings); the run files land in
<runs-dir>/<training run>/step<step>/sample_invert/.

Written into --out: training_dynamics.json (settings and all rows), training_dynamics_g2.csv,
training_dynamics_g1.csv, g2.png (assignment accuracy, angles, distances vs step) and g1.png (angle at the noise
vertex, noise-latent distance and error vs step). Re-running resumes: checkpoints whose rows exist are skipped, and
an interrupted checkpoint continues its sampling where it stopped. Several invocations with different --select /
--parts may share one --out; other --n / --steps / --seed / --final are refused.
"""
from __future__ import annotations

import os
import shutil
import sys

from jtaba import cli, io, plotting
from jtaba.precision import PRECISIONS

PARTS = ("g2", "g1")
ROWS_DIR = "rows"
SETTINGS = "settings.json"
ANGLE_KEYS = {"angle_image": "mean_cossim_img", "angle_noise": "mean_cossim_noise",
              "angle_latent": "mean_cossim_latent"}


def build_parser():
    p = cli.parser("python -m experiments.training_dynamics", __doc__)
    p.add_argument("--run", required=True, metavar="DIR",
                   help="training run directory of `python -m jtaba.train` (run.json and one checkpoint per saved "
                        "step); the EMA parameters of each checkpoint are analysed")
    p.add_argument("--n", type=int, default=2048,
                   help="number of noises / samples N (upstream 2048; on a 2-core CPU with the built-in model, "
                        "--n=256 --steps=20 takes one to two minutes per checkpoint)")
    p.add_argument("--steps", type=int, default=100, help="DDIM steps T of sampling and inversion (upstream 100)")
    p.add_argument("--batch", type=int, default=128,
                   help="samples per batch over all devices (memory / speed only; results do not depend on it)")
    p.add_argument("--seed", type=int, default=420,
                   help="seed of the fixed noise set shared by all checkpoints (upstream generate_noises(2048, 420))")
    p.add_argument("--out", default=None,
                   help="output directory (default runs/<run name>/training_dynamics/seed<S>_T<T>_n<N>); re-run "
                        "to resume")
    p.add_argument("--select", default=None, metavar="SPEC",
                   help="analyse only the saved steps matching this schedule, items joined by '+': every:N, "
                        "at:S1,S2,..., paper_cifar10, paper_imagenet64 (default: every saved step)")
    p.add_argument("--final", type=int, default=None, metavar="STEP",
                   help="the final model whose samples G.1 inverts (default: the last saved step)")
    p.add_argument("--parts", default="g2,g1",
                   help="comma-separated parts to compute: g2 (sample + invert with each checkpoint, Fig. 15) and "
                        "g1 (invert the final model's samples with each checkpoint, Fig. 14; also computes the "
                        "final checkpoint's g2 row, whose samples it inverts)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="float32: true fp32 (matmul precision highest); tf32: fast fp32 on GPUs; bfloat16: network "
                        "compute in bfloat16")
    p.add_argument("--runs-dir", default="runs",
                   help="where the sample / invert runs are stored (<runs-dir>/<training run>/step<step>/...) and "
                        "looked up for reuse")
    p.add_argument("--discard-runs", action="store_true",
                   help="delete each checkpoint's run files once its rows are written (the final model's G.2 run "
                        "is kept: G.1 needs its samples)")
    return p


# ---- the training run ----------------------------------------------------------------------------------------
# ---- statistics ----------------------------------------------------------------------------------------------
def checkpoint_stats(noise, samples, latents, samples2=None) -> dict:
    """One table row's statistics from (N, C, H, W) arrays: vertex angles (degrees, acos of the mean cosine),
    L2 distances mean / std (+ ``mean_mse_img_img2`` with ``samples2``), ``mae_noise_latent`` and assignment
    accuracies (fractions): ``acc_img_to_noise`` / ``acc_noise_to_img`` (noise vs samples) and
    ``acc_img_to_latent`` / ``acc_latent_to_img`` (latents vs samples)."""
    from jtaba.metrics import assignment_accuracy, calc_angles, calc_distances, mae

    angles = calc_angles(noise, samples, latents)
    row = {k: angles[v] for k, v in ANGLE_KEYS.items()}
    row.update(calc_distances(noise, samples, latents, samples2))
    row["mae_noise_latent"] = mae(noise, latents)
    noise_acc, latent_acc = assignment_accuracy(noise, samples), assignment_accuracy(latents, samples)
    row.update(acc_img_to_noise=noise_acc["img_to_noise"], acc_noise_to_img=noise_acc["noise_to_img"],
               acc_img_to_latent=latent_acc["img_to_noise"], acc_latent_to_img=latent_acc["noise_to_img"])
    return row


# ---- the experiment ------------------------------------------------------------------------------------------
class Experiment:
    """Output folder layout and the per-checkpoint work (see the module docstring)."""

    def __init__(self, args, out: str, final: int):
        self.args, self.out, self.final = args, out, final
        self.name = os.path.basename(os.path.normpath(args.run))

    def path(self, *parts) -> str:
        return os.path.join(self.out, *parts)

    def row_path(self, part: str, step: int) -> str:
        return self.path(ROWS_DIR, part, f"{step:09d}.json")

    def has_row(self, part: str, step: int) -> bool:
        return os.path.exists(self.row_path(part, step))

    def run(self, step: int, part: str):
        """The ``part`` run of checkpoint ``step``'s EMA parameters (computed, resumed or reused)."""
        from jtaba.runs import RunSettings, open_run
        from jtaba.train.export import checkpoint_workspace

        a = self.args
        ws = checkpoint_workspace(a.run, step, a.runs_dir)
        settings = RunSettings(n=a.n, steps=a.steps, seed=a.seed, batch=a.batch, precision=a.precision)
        if part == "g1":
            final = open_run(io.read_json(self.row_path("g2", self.final))["run"])
            settings = settings.replace(samples=final["samples"], reconstruction=False)
        return ws.run(settings)

    def compute_row(self, part: str, step: int) -> dict:
        r = self.run(step, part)
        samples2 = r["samples2"] if part == "g2" else None
        row = {"step": step, **checkpoint_stats(r["noise"], r["samples"], r["latents"], samples2), "run": r.path}
        io.write_json(self.row_path(part, step), row)
        return row

    def discard_runs(self, step: int) -> None:
        """With --discard-runs, delete the run folders of a checkpoint whose rows are done (not the final G.2)."""
        for part in PARTS:
            if self.has_row(part, step) and not (part == "g2" and step == self.final):
                shutil.rmtree(io.read_json(self.row_path(part, step))["run"], ignore_errors=True)

    def rows(self, part: str) -> list[dict]:
        d = self.path(ROWS_DIR, part)
        if not os.path.isdir(d):
            return []
        rows = [io.read_json(os.path.join(d, name)) for name in sorted(os.listdir(d)) if name.endswith(".json")]
        return sorted(rows, key=lambda r: r["step"])


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


def write_outputs(exp: Experiment, settings: dict, figures: bool = True) -> dict:
    """training_dynamics.json, the CSV tables (without run paths) and (``figures``) the PNG figures."""
    tables = {part: exp.rows(part) for part in PARTS}
    io.write_json(exp.path("training_dynamics.json"), {"settings": settings, "final_step": exp.final, **tables})
    head = f"{exp.name}, N = {settings['n']}, T = {settings['steps']}"
    for part, plot in (("g2", plot_g2), ("g1", plot_g1)):
        if tables[part]:
            io.write_csv(exp.path(f"training_dynamics_{part}.csv"),
                         [{k: v for k, v in r.items() if k != "run"} for r in tables[part]])
            if figures:
                plot(tables[part], exp.path(f"{part}.png"), head)
    return tables


@cli.entry_point
def main(argv: list[str] | None = None) -> str:
    """Run the analysis; returns the output folder."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from jtaba.train.export import analysed_steps

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or any(p not in PARTS for p in parts):
        raise SystemExit(f"--parts must list some of {', '.join(PARTS)}, got {args.parts!r}")
    final, chosen = analysed_steps(args.run, args.select, args.final)
    run_name = os.path.basename(os.path.normpath(args.run))
    name = f"T{args.steps}_n{args.n}_seed{args.seed}" + ("" if args.precision == "float32" else f"_{args.precision}")
    out = os.path.abspath(args.out or os.path.join(args.runs_dir, run_name, "training_dynamics", name))
    settings = {"run": os.path.abspath(args.run), "n": args.n, "steps": args.steps, "seed": args.seed,
                "final": final, "precision": args.precision}
    io.claim_settings(os.path.join(out, SETTINGS), settings)
    exp = Experiment(args, out, final)
    cli.warn_if_slow(args.n * len(chosen), args.steps, 3 + ("g1" in parts), "training_dynamics")

    if "g1" in parts and not exp.has_row("g2", final):  # G.1 inverts the final model's samples
        exp.compute_row("g2", final)
    for i, step in enumerate(chosen):
        todo = [p for p in parts if not exp.has_row(p, step)]
        if not todo:
            continue
        print(f"[{i + 1}/{len(chosen)}] checkpoint {step}: {', '.join(todo)}", flush=True)
        for part in todo:
            exp.compute_row(part, step)
        if args.discard_runs:
            exp.discard_runs(step)
        write_outputs(exp, settings, figures=False)
    write_outputs(exp, settings)
    print(f"wrote {exp.path('training_dynamics.json')} (+ CSV tables and PNG figures)")
    return out


if __name__ == "__main__":
    main()
