"""Convert the FID Inception-v3 weights (``pt_inception-2015-12-05-6726825d.pth``: pytorch-fid's
``FID_WEIGHTS_URL``; torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` holds the same tensors under the
same names) into a jtaba checkpoint of family ``inception_fid`` (``jtaba.metrics.inception``).

Run from the repository root:
``python convert/inception.py --src pt_inception-2015-12-05-6726825d.pth --out ~/.cache/jtaba/models/inception_fid``.
Without ``--src`` the file is looked up in torch's hub cache (``$TORCH_HOME/hub/checkpoints``, where pytorch-fid
and torch-fidelity put it); nothing is downloaded.

Every tensor is accounted for: ``{block}.conv.weight`` -> conv kernel, ``{block}.bn.{weight,bias,running_mean,
running_var}`` -> ``bn/{scale,bias,mean,var}``, ``fc.{weight,bias}`` -> ``fc``; the BatchNorm
``num_batches_tracked`` counters are the only keys deliberately unused.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from convert.common import (
    Rule,
    add_common_args,
    apply_rules,
    conv2d,
    dense,
    eval_shapes,
    fail,
    load_state_dict,
    save_converted,
    source_shape,
    staged_output,
    usage_name,
)
from jtaba.cli import HelpFormatter, entry_point
from jtaba.metrics import inception as I

WEIGHTS_FILES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
WEIGHTS_URLS = (("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                 "pt_inception-2015-12-05-6726825d.pth"),
                ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth"))
_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def target_shapes(config: I.Config) -> dict[tuple, tuple]:
    net = I.Network(config)
    return eval_shapes(lambda: net.init(jax.random.key(0), jnp.zeros((1, 75, 75, 3), jnp.float32))["params"])


def rules(shapes: Mapping[tuple, tuple]) -> dict[tuple, Rule]:
    """Flax path -> rule: the Flax module names are the torch ones, so the mapping is by name."""
    out: dict[tuple, Rule] = {}
    for path in shapes:
        prefix, leaf = ".".join(path[:-1]), path[-1]
        if path[-2] == "conv":
            out[path] = Rule(f"{prefix}.weight", conv2d)
        elif path[-2] == "bn":
            out[path] = Rule(f"{prefix}.{_BN[leaf]}")
        elif path == ("fc", "kernel"):
            out[path] = Rule("fc.weight", dense)
        elif path == ("fc", "bias"):
            out[path] = Rule("fc.bias")
        else:
            raise AssertionError(f"no rule for {path}")
    return out


def convert_state(state: Mapping[str, Any], source_name: str = "source") -> tuple[dict, dict]:
    """The FID Inception state dict -> (jtaba config dict, params of numpy float32)."""
    if "fc.weight" in state:
        config = I.Config(num_classes=int(source_shape(state["fc.weight"])[0]))
    else:
        config = I.Config()
    ignore = [k for k in state if k.endswith(".num_batches_tracked")]
    shapes = target_shapes(config)
    params = apply_rules(state, shapes, rules(shapes), ignore=ignore, source_name=source_name)
    return {"family": I.FAMILY, "model": config.to_dict(), "diffusion": None,
            "extras": {"source": source_name, "weights": "pt_inception-2015-12-05 (TF FID graph)",
                       "input": "NCHW; see jtaba.metrics.inception.features (input_range, protocol)"}}, params


def default_source() -> str | None:
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch")
    for name in WEIGHTS_FILES:
        path = os.path.join(home, "hub", "checkpoints", name)
        if os.path.exists(path):
            return path
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=usage_name("inception"), formatter_class=HelpFormatter,
        description="Convert the FID Inception-v3 (pt_inception-2015-12-05) into a jtaba checkpoint of family "
                    "inception_fid (jtaba.metrics.inception).",
        epilog="Examples:\n"
               "  python convert/inception.py --out ~/.cache/jtaba/models/inception_fid   (from torch's hub cache)\n"
               "  python convert/inception.py --src pt_inception-2015-12-05-6726825d.pth --out ckpt/inception_fid\n"
               "The weights: " + " or ".join(WEIGHTS_URLS))
    p.add_argument("--src", help="the FID Inception state dict (.pth); default: "
                                 f"{' or '.join(WEIGHTS_FILES)} in torch's hub cache")
    add_common_args(p)
    return p


@entry_point
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    src = args.src or default_source()
    if src is None:
        fail("no FID Inception weights given and none in torch's hub cache; nothing is downloaded by this converter."
             f"\nDownload {WEIGHTS_URLS[0]}\n(or {WEIGHTS_URLS[1]}, the same tensors) and pass --src FILE")
    if not os.path.isfile(src):
        fail(f"--src {src}: no such file")
    with staged_output(args):
        config, _ = save_converted(args.out, lambda: convert_state(load_state_dict(src), source_name=src))
        print(f"converted the FID Inception-v3 ({config['model']['num_classes']} logits)")


if __name__ == "__main__":
    main()
