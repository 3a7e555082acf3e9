"""``python -m jtaba.train --preset=NAME --out=DIR [overrides]``: train an ADM from scratch, resuming from DIR.

Flags are kebab-case (``--weight-decay``); the old snake_case spellings (``--weight_decay``) still work but are
deprecated: they print a note to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from jtaba.cli import HelpFormatter, program_name
from jtaba.precision import PRECISIONS
from jtaba.train.presets import PRESETS, get_preset

PROG = "python -m jtaba.train"


def rename_deprecated_flags(parser: argparse.ArgumentParser, argv=None, *, note: bool = True) -> list[str]:
    """``argv`` (default ``sys.argv[1:]``) with the deprecated snake_case spelling of each of ``parser``'s kebab-case
    flags (``--grid_scale`` for ``--grid-scale``) renamed, printing a one-line note to stderr for each; tokens after
    a bare ``--`` are left alone."""
    argv = list(sys.argv[1:] if argv is None else argv)
    renamed = {"--" + s[2:].replace("-", "_"): s for action in parser._actions for s in action.option_strings
               if s.startswith("--") and "-" in s[2:]}
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        name, eq, value = arg.partition("=")
        if name in renamed:
            if note:
                print(f"{parser.prog}: {name} is deprecated, use {renamed[name]}", file=sys.stderr)
            arg = renamed[name] + eq + value
        out.append(arg)
    return out


def _flag_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _preset_default(field: str, show=str) -> str:
    """'(default: the preset's: builtin 5000, cifar10_adm32 700000, ...)' for the TrainConfig ``field``."""
    values = {name: show(getattr(cfg, field)) for name, cfg in sorted(PRESETS.items())}
    if len(set(values.values())) == 1:
        text = f"the preset's, {next(iter(values.values()))} in every preset"
    else:
        text = "the preset's: " + ", ".join(f"{name} {v}" for name, v in values.items())
    return f"(default: {text})".replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program_name(PROG), formatter_class=HelpFormatter,
        description="Train a guided-diffusion (ADM) model from scratch with the hybrid loss (eps MSE + VB for the "
                    "learned variance). Running the same command again resumes from the newest checkpoint in --out; "
                    "SIGTERM / Ctrl-C stop after the current step with a checkpoint (a second Ctrl-C aborts at once, "
                    "losing the steps since the last checkpoint), and the same command resumes. Export the EMA "
                    "weights as a jtaba model with `python -m jtaba.train.export --run=DIR --out=MODEL_DIR`. Unset "
                    "options take the preset's value.")
    p.add_argument("--preset", required=True, choices=sorted(PRESETS),
                   help="configuration to start from: cifar10_adm32 / imagenet64_adm64 = the paper's App. G runs "
                        "(ADM-32 / ADM-64, batch 128); builtin = the small 16x16 default model on procedural images "
                        "(required, no default)")
    p.add_argument("--out", required=True,
                   help="run directory: run.json, log.jsonl and checkpoints <step>/ (required, no default)")
    p.add_argument("--steps", type=int, help="total optimizer updates " + _preset_default("steps"))
    p.add_argument("--batch", type=int,
                   help="global batch size, split over all devices " + _preset_default("batch_size"))
    p.add_argument("--seed", type=int, help="seed of the initialisation, data order and all training noise (the "
                                            "paper used 0, 10 and 42) " + _preset_default("seed"))
    p.add_argument("--lr", type=float, help="AdamW learning rate (constant) " + _preset_default("lr"))
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay " + _preset_default("weight_decay"))
    p.add_argument("--ema", type=float, help="EMA rate of the exported weights (guided-diffusion: 0.9999) "
                                             + _preset_default("ema_rate"))
    p.add_argument("--dtype", choices=PRECISIONS,
                   help="precision (jtaba.precision): float32 = true fp32 (matmul precision highest), tf32, or "
                        "bfloat16 compute of the U-Net torso; parameters and optimizer state stay float32 "
                        + _preset_default("compute_dtype"))
    p.add_argument("--dataset", help="procedural (built in), cifar10, imagenet64, or another tfds image dataset "
                                     "prepared as array_record under --data-dir " + _preset_default("dataset"))
    p.add_argument("--data-dir", help="tfds data directory; nothing is ever downloaded "
                                      "(default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)")
    p.add_argument("--save", help="checkpoint schedule, items joined by '+': every:N, at:S1,S2,..., paper_cifar10, "
                                  "paper_imagenet64 (the paper's dense-early steps); the last step and a stopped "
                                  "run's step are always saved " + _preset_default("save"))
    p.add_argument("--keep", type=int, help="keep only this many newest checkpoints "
                                            + _preset_default("keep", lambda k: "all" if k is None else str(k)))
    p.add_argument("--log-every", type=int, help="steps between loss lines in DIR/log.jsonl and the progress bar "
                                                 + _preset_default("log_every"))
    p.add_argument("--no-flip", action="store_true",
                   help="disable random horizontal flips " + _preset_default(
                       "random_flip", lambda f: "flips on" if f else "flips off"))
    p.add_argument("--flag", action="append", default=[], metavar="NAME=VALUE",
                   help="override a guided-diffusion model/diffusion flag, e.g. --flag dropout=0.1 "
                        "--flag num_channels=64 (repeatable; VALUE parsed as JSON, else a string; "
                        "default: none, the preset's flags)")
    p.add_argument("--cpu-devices", type=int, default=os.cpu_count(),
                   help="on CPU, split the host into this many XLA devices for data parallelism "
                        "(one XLA CPU device keeps only about one core busy; default: the core count, %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: show one)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    return p.parse_args(rename_deprecated_flags(p, argv))


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
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = " ".join([PROG, shlex.join(rename_deprecated_flags(build_parser(), argv, note=False))])
    cfg = config_from_args(args)
    try:
        cfg.check()
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    import jax

    jax.config.update("jax_num_cpu_devices", max(1, args.cpu_devices))
    from jtaba.checkpoint import quiet_orbax
    from jtaba.train.loop import train
    from jtaba.train.run_checkpoints import saved_steps

    out = os.path.abspath(args.out)
    try:
        with quiet_orbax():  # orbax logs a damaged checkpoint or a full disk at length: the error below says it
            state = train(cfg, args.out, data_dir=args.data_dir, progress=not args.no_progress)
    except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint of the current step
        try:
            last = saved_steps(args.out)[-1]
        except (ValueError, IndexError):
            last = None
        since = f"the checkpoint of step {last}" if last is not None else "the start"
        print(f"\naborted; run the same command again to resume from {since} in {out}:\n  {command}",
              file=sys.stderr)
        raise SystemExit(130) from None
    except (ValueError, OSError) as e:  # bad settings, unreadable data, a full disk: one line, checkpoints kept
        if os.environ.get("JTABA_DEBUG"):
            raise
        lines = str(e).strip().splitlines() or [type(e).__name__]
        cause = lines[0] + (" (...)" if len(lines) > 3 else "".join("\n" + line for line in lines[1:]))
        raise SystemExit(f"error: {cause}\n(the checkpoints already in {out} are intact; fix the cause and run the "
                         f"same command again to resume)") from None
    step = int(state.step)
    if step < cfg.steps:
        print(f"stopped at step {step} of {cfg.steps} with a checkpoint in {out}; run the same command again to "
              f"resume:\n  {command}")
    else:
        print(f"finished: step {step} of {cfg.steps}; run directory {out}; export the EMA weights with\n"
              f"  python -m jtaba.train.export --run={shlex.quote(args.out)} --out=MODEL_DIR")


if __name__ == "__main__":
    main()
