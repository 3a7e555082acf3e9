"""Noise-sample-latent relations over training time (reference §3.12; paper App. G.1, G.2; Fig. 14, Fig. 15).

    python -m experiments.training_dynamics --run=runs/train/cifar10_adm32 --n=2048 --steps=100 --batch=128

For every saved checkpoint of a jtaba training run (``python -m jtaba.train``), with its **EMA** parameters, on one
fixed noise set (sample i's noise depends only on (--seed, i); seed 420 as upstream):

- G.2 (Fig. 15, upstream ``steps_statistics.py``): noise -> samples_c -> latents_c -> samples2_c with checkpoint c;
- G.1 (Fig. 14, upstream ``steps_statistics_last_sample.py``): the final checkpoint's samples inverted with c.

Each gives one table row per checkpoint: the angles at the image / noise / latent vertices (``calc_angles``: acos of
the mean cosine), the L2 distances (``calc_distances``; G.2 adds the sample / reconstruction MSE), the mean absolute
noise-latent error, and the L2 nearest-assignment accuracies both ways (reference §3.11) between noise and samples
and between latents and samples. Sampling and inversion go through ``experiments.sample_invert`` (batched, sharded
over the devices, resumable), whose standard files land in --out/g2/<step>/ and --out/g1/<step>/.

Written into --out: training_dynamics.json (settings and all rows), training_dynamics_g2.csv,
training_dynamics_g1.csv, g2.png (assignment accuracy, angles, distances vs step) and g1.png (angle at the noise
vertex, noise-latent distance and error vs step). Re-running resumes: checkpoints whose rows exist are skipped, and
an interrupted checkpoint continues its sampling where it stopped. Several invocations with different --select /
--parts may share one --out; other --n / --steps / --seed / --final are refused.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np

from experiments.triangles import write_csv, write_json

PARTS = ("g2", "g1")
ROWS_DIR = "rows"
MODELS_DIR = "models"
SETTINGS = "settings.json"
ANGLE_KEYS = {"angle_image": "mean_cossim_img", "angle_noise": "mean_cossim_noise",
              "angle_latent": "mean_cossim_latent"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.training_dynamics", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="network compute dtype (params stay float32)")
    p.add_argument("--discard-runs", action="store_true",
                   help="delete each checkpoint's sample / latent files once its rows are written (the final "
                        "model's G.2 files are kept: G.1 needs its samples)")
    return p


# ---- the training run ----------------------------------------------------------------------------------------
def saved_steps(run_dir: str) -> list[int]:
    """Steps with a complete checkpoint in a jtaba training run directory, ascending."""
    from jtaba.train.run_checkpoints import RunCheckpoints, read_run_config

    if read_run_config(run_dir) is None:
        raise SystemExit(f"--run={run_dir}: not a jtaba training run (no run.json; see python -m jtaba.train)")
    ckpts = RunCheckpoints(run_dir)
    try:
        return sorted(ckpts.all_steps())
    finally:
        ckpts.close()


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


def _load(run_dir: str, name: str) -> np.ndarray:
    return np.load(os.path.join(run_dir, name + ".npy"), mmap_mode="r")


# ---- the experiment ------------------------------------------------------------------------------------------
class Experiment:
    """Output directory layout and the per-checkpoint work (see the module docstring)."""

    def __init__(self, args: argparse.Namespace, out: str, final: int):
        self.args, self.out, self.final = args, out, final

    def path(self, *parts) -> str:
        return os.path.join(self.out, *parts)

    def run_dir(self, part: str, step: int) -> str:
        return self.path(part, f"{step:09d}")

    def row_path(self, part: str, step: int) -> str:
        return self.path(ROWS_DIR, part, f"{step:09d}.json")

    def has_row(self, part: str, step: int) -> bool:
        return os.path.exists(self.row_path(part, step))

    def model(self, step: int) -> str:
        """The EMA weights of checkpoint ``step`` as a jtaba model directory (exported on first use)."""
        from jtaba.train.export import export_ema

        d = self.path(MODELS_DIR, f"{step:09d}")
        if not os.path.exists(os.path.join(d, "config.json")):
            export_ema(self.args.run, d, step)
        return d

    def sample_invert(self, step: int, part: str) -> str:
        """Run (or resume) experiments.sample_invert for ``part`` with checkpoint ``step``; returns its directory."""
        from experiments import sample_invert

        a = self.args
        argv = ["--ckpt", self.model(step), "--n", str(a.n), "--steps", str(a.steps), "--batch", str(a.batch),
                "--seed", str(a.seed), "--dtype", a.dtype, "--out", self.run_dir(part, step)]
        if part == "g1":
            argv += ["--samples", os.path.join(self.run_dir("g2", self.final), "samples.npy"), "--no-reconstruction"]
        return sample_invert.main(argv)

    def compute_row(self, part: str, step: int) -> dict:
        d = self.sample_invert(step, part)
        samples2 = _load(d, "samples2") if part == "g2" else None
        row = {"step": step, **checkpoint_stats(_load(d, "noise"), _load(d, "samples"), _load(d, "latents"),
                                                samples2)}
        os.makedirs(os.path.dirname(self.row_path(part, step)), exist_ok=True)
        write_json(self.row_path(part, step), row)
        return row

    def finish_checkpoint(self, step: int) -> None:
        """Drop the exported model (but the final one's, until the end) and with --discard-runs the run files of a
        checkpoint whose rows are done."""
        if step != self.final:
            shutil.rmtree(self.path(MODELS_DIR, f"{step:09d}"), ignore_errors=True)
        if self.args.discard_runs:
            for part in PARTS:
                if not (part == "g2" and step == self.final):
                    shutil.rmtree(self.run_dir(part, step), ignore_errors=True)

    def rows(self, part: str) -> list[dict]:
        d = self.path(ROWS_DIR, part)
        if not os.path.isdir(d):
            return []
        out = []
        for name in sorted(os.listdir(d)):
            if name.endswith(".json"):
                with open(os.path.join(d, name)) as f:
                    out.append(json.load(f))
        return sorted(out, key=lambda r: r["step"])


def check_settings(out: str, settings: dict) -> None:
    """Record the settings every row depends on; refuse an --out holding rows made with other ones."""
    path = os.path.join(out, SETTINGS)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            raise SystemExit(f"{out} holds results made with other settings ({', '.join(diff)}: "
                             f"{[old.get(k) for k in diff]}); use another --out")
    else:
        os.makedirs(out, exist_ok=True)
        write_json(path, settings)


def plot_g2(rows: list[dict], path: str) -> str:
    """Fig. 15 (assignment accuracy noise <-> image vs step) with the vertex angles and distances."""
    from experiments import plotting

    steps = [r["step"] for r in rows]
    col = lambda k, scale=1.0: [scale * r[k] for r in rows]  # noqa: E731
    fig, axes = plotting.new_figure(1, 3, size=(4.6, 3.6))
    plotting.series_panel(axes[0, 0], steps, {
        "image → noise": col("acc_img_to_noise", 100), "noise → image": col("acc_noise_to_img", 100),
        "image → latent": col("acc_img_to_latent", 100), "latent → image": col("acc_latent_to_img", 100)},
        "L2 assignment accuracy (%)", "assignment (Fig. 15)")
    plotting.series_panel(axes[0, 1], steps, {"image": col("angle_image"), "noise": col("angle_noise"),
                                              "latent": col("angle_latent")}, "angle (degrees)", "vertex angles")
    plotting.series_panel(axes[0, 2], steps, {"noise-latent": col("mean_l2_noise_lat"),
                                              "image-latent": col("mean_l2_img_lat"),
                                              "image-noise": col("mean_l2_img_noise")}, "mean L2 distance",
                          "distances")
    return plotting.save(fig, path)


def plot_g1(rows: list[dict], path: str) -> str:
    """Fig. 14: the final model's samples inverted with each checkpoint: angle at the noise vertex, noise-latent
    L2 distance and mean absolute noise-latent error vs step."""
    from experiments import plotting

    steps = [r["step"] for r in rows]
    fig, axes = plotting.new_figure(1, 3, size=(4.6, 3.6))
    plotting.series_panel(axes[0, 0], steps, {"noise": [r["angle_noise"] for r in rows]},
                          "angle at the noise vertex (degrees)", "angle at the noise vertex")
    plotting.series_panel(axes[0, 1], steps, {"noise-latent": [r["mean_l2_noise_lat"] for r in rows]},
                          "mean L2 distance", "latent - noise distance")
    plotting.series_panel(axes[0, 2], steps, {"noise-latent": [r["mae_noise_latent"] for r in rows]},
                          "mean |noise - latent|", "noise reconstruction error")
    return plotting.save(fig, path)


def write_outputs(exp: Experiment, settings: dict, figures: bool = True) -> dict:
    """training_dynamics.json, the CSV tables and (``figures``) the PNG figures from all rows on disk."""
    tables = {part: exp.rows(part) for part in PARTS}
    write_json(exp.path("training_dynamics.json"), {"settings": settings, "final_step": exp.final, **tables})
    for part, plot in (("g2", plot_g2), ("g1", plot_g1)):
        if tables[part]:
            write_csv(exp.path(f"training_dynamics_{part}.csv"), tables[part])
            if figures:
                plot(tables[part], exp.path(f"{part}.png"))
    return tables


def main(argv: list[str] | None = None) -> str:
    """Run the experiment; returns the output directory."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from jtaba.train.save_schedule import parse_save_schedule

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or any(p not in PARTS for p in parts):
        raise SystemExit(f"--parts must list some of {', '.join(PARTS)}, got {args.parts!r}")
    steps = saved_steps(args.run)
    if not steps:
        raise SystemExit(f"--run={args.run}: no saved checkpoints")
    final = steps[-1] if args.final is None else args.final
    if final not in steps:
        raise SystemExit(f"--final={final} is not a saved step of {args.run} (saved: {steps})")
    try:
        chosen = steps if args.select is None else [s for s in steps if parse_save_schedule(args.select)(s)]
    except ValueError as e:
        raise SystemExit(f"--select: {e}")
    run_name = os.path.basename(os.path.normpath(args.run))
    out = os.path.abspath(args.out or os.path.join("runs", run_name, "training_dynamics",
                                                   f"seed{args.seed}_T{args.steps}_n{args.n}"))
    settings = {"run": os.path.abspath(args.run), "n": args.n, "steps": args.steps, "seed": args.seed,
                "final": final, "dtype": args.dtype}
    check_settings(out, settings)
    exp = Experiment(args, out, final)

    if "g1" in parts and not exp.has_row("g2", final):  # G.1 inverts the final model's samples
        exp.compute_row("g2", final)
    for i, step in enumerate(chosen):
        todo = [p for p in parts if not exp.has_row(p, step)]
        if not todo:
            continue
        print(f"[{i + 1}/{len(chosen)}] checkpoint {step}: {', '.join(todo)}", flush=True)
        for part in todo:
            exp.compute_row(part, step)
        exp.finish_checkpoint(step)
        write_outputs(exp, settings, figures=False)
    shutil.rmtree(exp.path(MODELS_DIR), ignore_errors=True)
    write_outputs(exp, settings)
    print(f"wrote {exp.path('training_dynamics.json')} (+ CSV tables and PNG figures)")
    return out


if __name__ == "__main__":
    main()
