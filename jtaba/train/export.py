"""Export a training run's EMA weights as a jtaba model checkpoint, and draw a grid of its DDIM samples.

    python -m jtaba.train.export --run=RUN_DIR --out=MODEL_DIR [--step=N] [--grid=samples.png --grid-scale=4]

The checkpoint has family "adm", ``model`` = ``adm.Config.from_flags(flags)``, ``diffusion`` =
``DiffusionConfig.from_adm_flags(flags)``; ``extras`` records the flags, the training config and the step.
In memory, without writing anything: ``model, step = ema_model(RUN_DIR)``; ``saved_steps(RUN_DIR)`` lists the
checkpoints; ``analysed_steps`` picks the checkpoints an analysis covers and ``checkpoint_workspace`` holds the
sample / invert runs of one checkpoint (shared by ``experiments.training_dynamics`` and ``experiments.alignment``,
so each reuses the other's runs).
"""
from __future__ import annotations

import argparse
import os

import jax
import numpy as np

from jtaba.checkpoint import quiet_orbax, save_checkpoint
from jtaba.cli import HelpFormatter, entry_point, program_name
from jtaba.diffusion import DiffusionConfig
from jtaba.model import Model, build
from jtaba.models import adm
from jtaba.sharding import data_mesh
from jtaba.train.__main__ import rename_deprecated_flags
from jtaba.train.loop import abstract_state
from jtaba.train.run_checkpoints import RunCheckpoints, require_run_config, saved_steps

__all__ = ["analysed_steps", "checkpoint_workspace", "ema_model", "export_ema", "model_config_dict", "run_name",
           "sample_grid", "saved_steps"]


def model_config_dict(flags: dict, extras: dict) -> dict:
    return {"family": "adm", "model": adm.Config.from_flags(flags).to_dict(),
            "diffusion": DiffusionConfig.from_adm_flags(flags).to_dict(), "extras": extras}


def ema_model(run_dir: str, step: int | None = None) -> tuple[Model, int]:
    """The EMA params of checkpoint ``step`` (default: the newest) of the training run ``run_dir`` as an in-memory
    float32 ``jtaba.Model`` (what ``jtaba.load`` returns for ``export_ema``'s output), and the step. Only the EMA
    params are read (not the params or optimizer state), onto one local device. ValueError when ``run_dir`` is not a
    training run or has no checkpoint ``step``."""
    cfg = require_run_config(run_dir)
    ckpts = RunCheckpoints(run_dir)
    try:
        steps = sorted(ckpts.all_steps())
        if step is None and steps:
            step = steps[-1]
        if step not in steps:
            raise ValueError(f"no checkpoint {'' if step is None else step} in {run_dir} (saved steps: {steps})")
        step = int(step)
        params = ckpts.restore_ema(step, abstract_state(cfg, data_mesh(jax.local_devices()[:1])))
    finally:
        ckpts.close()
    extras = {"flags": cfg.flags_dict, "train": cfg.to_dict(), "step": step, "weights": f"ema_{cfg.ema_rate}"}
    d = model_config_dict(cfg.flags_dict, extras)
    config, network = build(d["family"], d["model"])
    return Model(d["family"], config, network, params, DiffusionConfig.from_dict(d["diffusion"]), extras=extras), step


def analysed_steps(run_dir: str, select: str | None = None, final: int | None = None) -> tuple[int, list[int]]:
    """(final step, the saved steps matching the ``select`` schedule (``jtaba.train.save_schedule`` syntax; None:
    all)) of a training run; ``final`` defaults to the last saved step. ValueError for a run without checkpoints or a
    ``final`` that was not saved."""
    from jtaba.train.save_schedule import parse_save_schedule

    steps = saved_steps(run_dir)
    if not steps:
        raise ValueError(f"--run={run_dir}: no saved checkpoints")
    final = steps[-1] if final is None else final
    if final not in steps:
        raise ValueError(f"--final={final} is not a saved step of {run_dir} (saved: {steps})")
    chosen = None if select is None else parse_save_schedule(select)
    return final, [s for s in steps if chosen is None or chosen(s)]


def run_name(run_dir: str) -> str:
    """A training run's name: its folder's name (the runs and analysis rows of a run are kept under it)."""
    return os.path.basename(os.path.normpath(run_dir))


def checkpoint_workspace(run_dir: str, step: int, runs_dir: str):
    """The ``jtaba.runs.Workspace`` of checkpoint ``step``'s EMA model: runs under
    ``<runs_dir>/<run name>/step<step:09d>/``."""
    from jtaba.runs import Workspace

    model, _ = ema_model(run_dir, step)
    return Workspace(model, os.path.join(run_name(run_dir), f"step{step:09d}"), runs_dir)


def export_ema(run_dir: str, out_dir: str, step: int | None = None) -> int:
    """Write the EMA params of checkpoint ``step`` (default: newest) of ``run_dir`` to ``out_dir`` as a jtaba model
    checkpoint (``jtaba.load(out_dir)`` gives ``ema_model(run_dir, step)``); returns the step."""
    model, step = ema_model(run_dir, step)
    save_checkpoint(out_dir, model_config_dict(model.extras["flags"], model.extras), jax.device_get(model.params))
    return step


def sample_grid(model_dir: str, path: str, *, rows: int = 8, steps: int = 100, seed: int = 0,
                scale: int = 1) -> np.ndarray:
    """DDIM (η = 0, ``steps`` steps) samples of the model from N(0, I) noise of ``seed``, saved as a rows x rows PNG
    grid enlarged ``scale`` times (nearest neighbour); returns the uint8 (rows·H, rows·W, 3) grid."""
    from PIL import Image

    import jtaba

    model = jtaba.load(model_dir)
    c, h, w = model.sample_shape
    noise = jax.random.normal(jax.random.PRNGKey(seed), (rows * rows, c, h, w), np.float32)
    x = np.asarray(jtaba.sample(model, noise, steps=steps).x)  # (N, C, H, W) in [-1, 1]
    img = np.clip(np.rint((x + 1) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    grid = img.reshape(rows, rows, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, rows * w, c)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid.repeat(scale, axis=0).repeat(scale, axis=1)).save(path)
    return grid


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=program_name("python -m jtaba.train.export"), description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--run", required=True,
                   help="training run directory (python -m jtaba.train --out) (required, no default)")
    p.add_argument("--out", required=True,
                   help="model directory to write: config.json + params (required, no default); a folder that is "
                        "not empty is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds (default: refuse)")
    p.add_argument("--step", type=int, help="checkpoint step to export (default: the newest)")
    p.add_argument("--grid", help="also save a PNG grid of DDIM samples of the exported model at this path "
                                  "(default: no grid)")
    p.add_argument("--grid-rows", type=int, default=8, help="the grid is rows x rows samples")
    p.add_argument("--grid-steps", type=int, default=100, help="DDIM steps for the grid")
    p.add_argument("--grid-seed", type=int, default=0, help="seed of the grid's noise")
    p.add_argument("--grid-scale", type=int, default=1, help="enlarge the grid image this many times")
    return p.parse_args(rename_deprecated_flags(p, argv))


@entry_point
def main(argv=None) -> None:
    args = parse_args(argv)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out={args.out} is a file, not a folder")
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        raise ValueError(f"--out={args.out} is not empty (it may hold a model); give --overwrite to replace it, or "
                         f"another folder")
    with quiet_orbax():
        step = export_ema(args.run, args.out, args.step)
    print(f"exported EMA weights of step {step} to {os.path.abspath(args.out)}")
    if args.grid:
        sample_grid(args.out, args.grid, rows=args.grid_rows, steps=args.grid_steps, seed=args.grid_seed,
                    scale=args.grid_scale)
        print(f"wrote {args.grid}")


if __name__ == "__main__":
    main()
