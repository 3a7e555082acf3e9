"""Experiment entry points (``python -m experiments.<name>``) and what they share: picking the model.

A model is named by ``--ckpt=DIR`` (any jtaba checkpoint), by ``--model=NAME`` (a converted checkpoint in the model
home: ``$JTABA_HOME/models/NAME``, default ``~/.cache/jtaba/models/NAME``), or by neither: the small default model
shipped in ``jtaba/assets/default``.
"""
from __future__ import annotations

import argparse
import os

import jtaba

DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(jtaba.__file__)), "assets", "default")

# How to produce the converted checkpoints of the paper's models (the --src files are the upstream releases).
CONVERT_HINTS = {
    "adm32": "python convert/adm.py --model=adm32 --src cifar10_uncond_50M_500K.pt",
    "adm64": "python convert/adm.py --model=adm64 --src imagenet64_uncond_100M_1500K.pt",
    "adm256": "python convert/adm.py --model=adm256 --src 256x256_diffusion_uncond.pt",
    "dit": "python convert/dit.py --src facebook/DiT-XL-2-256",
}


def models_home() -> str:
    """Where ``--model=NAME`` looks: ``$JTABA_HOME/models`` or ``~/.cache/jtaba/models``."""
    root = os.environ.get("JTABA_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "jtaba")
    return os.path.join(root, "models")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--model", metavar="NAME",
                   help=f"a converted model in the model home ($JTABA_HOME/models/NAME, default "
                        f"~/.cache/jtaba/models/NAME), e.g. {', '.join(CONVERT_HINTS)}; a missing one names the "
                        f"convert command that makes it")
    g.add_argument("--ckpt", metavar="DIR", help="any jtaba checkpoint directory (config.json + params)")


def model_dir(args: argparse.Namespace) -> tuple[str, str]:
    """(checkpoint directory, short tag for default output paths) from ``--model`` / ``--ckpt`` / neither.
    Raises SystemExit with the convert command when a named model is missing."""
    if args.ckpt:
        if not os.path.exists(os.path.join(args.ckpt, "config.json")):
            raise SystemExit(f"--ckpt={args.ckpt}: not a jtaba checkpoint (no config.json)")
        return os.path.abspath(args.ckpt), os.path.basename(os.path.normpath(args.ckpt))
    if args.model:
        path = os.path.join(models_home(), args.model)
        if not os.path.exists(os.path.join(path, "config.json")):
            hint = CONVERT_HINTS.get(args.model, "python convert/<family>.py --src <upstream weights>")
            raise SystemExit(f"--model={args.model}: no converted checkpoint at {path}. Convert it first:\n"
                             f"  {hint} --out {path}\n(set JTABA_HOME to use another model home, or pass --ckpt=DIR)")
        return path, args.model
    if not os.path.exists(os.path.join(DEFAULT_MODEL, "config.json")):
        raise SystemExit(f"the built-in default model is missing ({DEFAULT_MODEL}); pass --model=NAME or --ckpt=DIR")
    return DEFAULT_MODEL, "default"
