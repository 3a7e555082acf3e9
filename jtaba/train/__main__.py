"""``python -m jtaba.train --preset=NAME --out=DIR [overrides]``: train an ADM from scratch, resuming from DIR."""
from __future__ import annotations

import argparse
import json
import os

from jtaba.train.presets import PRESETS, get_preset


def _flag_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m jtaba.train",
        description="Train a guided-diffusion (ADM) model from scratch with the hybrid loss (eps MSE + VB for the "
                    "learned variance). Running the same command again resumes from the newest checkpoint in --out; "
                    "SIGTERM / Ctrl-C stop after the current step with a checkpoint. Export the EMA weights as a "
                    "jtaba model with `python -m jtaba.train.export --run=DIR --out=MODEL_DIR`. Unset options take the "
                    "preset's value.")
    p.add_argument("--preset", required=True, choices=sorted(PRESETS),
                   help="configuration to start from: cifar10_adm32 / imagenet64_adm64 = the paper's App. G runs "
                        "(ADM-32 / ADM-64, batch 128); builtin = the small 16x16 default model on procedural images")
    p.add_argument("--out", required=True, help="run directory: run.json, log.jsonl and checkpoints <step>/")
    p.add_argument("--steps", type=int, help="total optimizer updates (default: the preset's)")
    p.add_argument("--batch", type=int, help="global batch size, split over all devices (default: the preset's)")
    p.add_argument("--seed", type=int, help="seed of the initialisation, data order and all training noise "
                                            "(the paper used 0, 10 and 42)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (constant)")
    p.add_argument("--weight_decay", type=float, help="AdamW weight decay")
    p.add_argument("--ema", type=float, help="EMA rate of the exported weights (guided-diffusion: 0.9999)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"),
                   help="compute dtype of the U-Net torso; parameters and optimizer state stay float32")
    p.add_argument("--dataset", help="procedural (built in), cifar10, imagenet64, or another tfds image dataset "
                                     "prepared as array_record under --data_dir")
    p.add_argument("--data_dir", help="tfds data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets); "
                                      "nothing is ever downloaded")
    p.add_argument("--save", help="checkpoint schedule, items joined by '+': every:N, at:S1,S2,..., paper_cifar10, "
                                  "paper_imagenet64 (the paper's dense-early steps); the last step is always saved")
    p.add_argument("--keep", type=int, help="keep only this many newest checkpoints (default: the preset's; "
                                            "presets of the paper keep all)")
    p.add_argument("--log_every", type=int, help="steps between loss lines in DIR/log.jsonl and the progress bar")
    p.add_argument("--no_flip", action="store_true", help="disable random horizontal flips")
    p.add_argument("--flag", action="append", default=[], metavar="NAME=VALUE",
                   help="override a guided-diffusion model/diffusion flag, e.g. --flag dropout=0.1 "
                        "--flag num_channels=64 (repeatable; VALUE parsed as JSON, else a string)")
    p.add_argument("--cpu_devices", type=int, default=os.cpu_count(),
                   help="on CPU, split the host into this many XLA devices for data parallelism "
                        "(one XLA CPU device keeps only about one core busy; default: the core count, %(default)s)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace):
    cfg = get_preset(args.preset)
    overrides = {name: getattr(args, arg) for name, arg in (
        ("steps", "steps"), ("batch_size", "batch"), ("seed", "seed"), ("lr", "lr"),
        ("weight_decay", "weight_decay"), ("ema_rate", "ema"), ("compute_dtype", "dtype"), ("dataset", "dataset"),
        ("save", "save"), ("keep", "keep"), ("log_every", "log_every")) if getattr(args, arg) is not None}
    if args.no_flip:
        overrides["random_flip"] = False
    if args.flag:
        flags = cfg.flags_dict
        for item in args.flag:
            name, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"--flag expects NAME=VALUE, got {item!r}")
            flags[name] = _flag_value(value)
        overrides["flags"] = flags
    return cfg.replace(**overrides)


def main(argv=None) -> None:
    args = parse_args(argv)
    import jax

    jax.config.update("jax_num_cpu_devices", max(1, args.cpu_devices))
    from jtaba.train.loop import train

    cfg = config_from_args(args)
    state = train(cfg, args.out, data_dir=args.data_dir, progress=not args.no_progress)
    print(f"stopped at step {int(state.step)} of {cfg.steps}; run directory {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main()
