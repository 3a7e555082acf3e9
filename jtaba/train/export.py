"""Export a training run's EMA weights as a jtaba model checkpoint, and draw a grid of its DDIM samples.

    python -m jtaba.train.export --run=RUN_DIR --out=MODEL_DIR [--step N] [--grid samples.png]

The checkpoint has family "adm", ``model`` = ``adm.Config.from_flags(flags)``, ``diffusion`` =
``DiffusionConfig.from_adm_flags(flags)``; ``extras`` records the flags, the training config and the step.
"""
from __future__ import annotations

import argparse
import os

import jax
import numpy as np

from jtaba.checkpoint import save_checkpoint
from jtaba.diffusion import DiffusionConfig
from jtaba.models import adm
from jtaba.sharding import data_mesh
from jtaba.train.loop import abstract_state
from jtaba.train.run_checkpoints import RunCheckpoints, read_run_config


def model_config_dict(flags: dict, extras: dict) -> dict:
    return {"family": "adm", "model": adm.Config.from_flags(flags).to_dict(),
            "diffusion": DiffusionConfig.from_adm_flags(flags).to_dict(), "extras": extras}


def export_ema(run_dir: str, out_dir: str, step: int | None = None) -> int:
    """Write the EMA params of checkpoint ``step`` (default: newest) of ``run_dir`` to ``out_dir``; returns the step."""
    cfg = read_run_config(run_dir)
    if cfg is None:
        raise FileNotFoundError(f"{run_dir} is not a training run (no run.json)")
    ckpts = RunCheckpoints(run_dir)
    step = ckpts.latest_step() if step is None else step
    if step is None or step not in ckpts.all_steps():
        raise FileNotFoundError(f"no checkpoint {'' if step is None else step} in {run_dir} "
                                f"(have {ckpts.all_steps()})")
    state, _ = ckpts.restore(step, abstract_state(cfg, data_mesh()))
    ckpts.close()
    extras = {"flags": cfg.flags_dict, "train": cfg.to_dict(), "step": step, "weights": f"ema_{cfg.ema_rate}"}
    save_checkpoint(out_dir, model_config_dict(cfg.flags_dict, extras), jax.device_get(state.ema_params))
    return step


def sample_grid(model_dir: str, path: str, *, rows: int = 8, steps: int = 100, seed: int = 0,
                scale: int = 1) -> np.ndarray:
    """DDIM (η = 0, ``steps`` steps) samples of the model from N(0, I) noise of ``seed``, saved as a rows x rows PNG
    grid enlarged ``scale`` times (nearest neighbour); returns the uint8 (rows·H, rows·W, 3) grid."""
    import jtaba
    from PIL import Image

    model = jtaba.load(model_dir)
    c, h, w = model.sample_shape
    noise = jax.random.normal(jax.random.PRNGKey(seed), (rows * rows, c, h, w), np.float32)
    x = np.asarray(jtaba.sample(model, noise, steps=steps).x)  # (N, C, H, W) in [-1, 1]
    img = np.clip(np.rint((x + 1) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    grid = img.reshape(rows, rows, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, rows * w, c)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid.repeat(scale, axis=0).repeat(scale, axis=1)).save(path)
    return grid


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m jtaba.train.export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", required=True, help="training run directory (python -m jtaba.train --out)")
    p.add_argument("--out", required=True, help="model directory to write (config.json + params)")
    p.add_argument("--step", type=int, help="checkpoint step to export (default: the newest)")
    p.add_argument("--grid", help="also save a PNG grid of DDIM samples of the exported model here")
    p.add_argument("--grid_rows", type=int, default=8, help="the grid is rows x rows samples")
    p.add_argument("--grid_steps", type=int, default=100, help="DDIM steps for the grid")
    p.add_argument("--grid_seed", type=int, default=0, help="seed of the grid's noise")
    p.add_argument("--grid_scale", type=int, default=1, help="enlarge the grid image this many times")
    args = p.parse_args(argv)
    step = export_ema(args.run, args.out, args.step)
    print(f"exported EMA weights of step {step} to {os.path.abspath(args.out)}")
    if args.grid:
        sample_grid(args.out, args.grid, rows=args.grid_rows, steps=args.grid_steps, seed=args.grid_seed,
                    scale=args.grid_scale)
        print(f"wrote {args.grid}")


if __name__ == "__main__":
    main()
