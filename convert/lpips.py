"""Convert LPIPS (the ``lpips`` package 0.1.4, version 0.1) into a jtaba checkpoint of family ``lpips``
(``jtaba.metrics.lpips``): the torchvision ImageNet trunk (AlexNet or VGG16 ``features``) plus the learned 1x1 lin
heads.

Run from the repository root, e.g. ``python convert/lpips.py --net alex --out ~/.cache/jtaba/models/lpips_alex``.

Sources (every tensor accounted for: the trunk's ``classifier.*`` is the only thing deliberately dropped):

* ``--trunk``: torchvision's ImageNet weights, a state dict with ``features.{i}.weight/bias`` (and ``classifier.*``):
  ``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth`` from https://download.pytorch.org/models/; default: the
  file in torch's hub cache (``$TORCH_HOME/hub/checkpoints``, where ``lpips.LPIPS(pretrained=True)`` puts it).
* ``--lin``: the lin heads ``lin{k}.model.1.weight`` (``weights/v0.1/{alex,vgg}.pth``); default: the copy shipped
  inside the installed ``lpips`` package (read without importing it), else
  https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/{alex,vgg}.pth.
* or ``--state``: one file holding a whole ``lpips.LPIPS(...).state_dict()`` (``net.slice{k}.{i}.*``, ``lin{k}.*``,
  the duplicate ``lins.{k}.*`` and the ScalingLayer buffers, all checked).
"""
from __future__ import annotations

import argparse
import os
from importlib import metadata
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from convert.common import (
    ConversionError,
    Rule,
    add_common_args,
    apply_rules,
    conv1x1_as_dense,
    conv2d,
    eval_shapes,
    fail,
    load_state_dict,
    save_converted,
    staged_output,
    to_numpy,
    usage_name,
)
from jtaba.cli import HelpFormatter, entry_point
from jtaba.metrics import lpips as L

TRUNK_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
TRUNK_URL = "https://download.pytorch.org/models/{}"
LIN_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/{}.pth"


def _slice_of(net: str, i: int) -> int:
    for k, (a, b) in enumerate(L.SLICES[net]):
        if a <= i < b:
            return k + 1
    raise AssertionError(i)


def lin_key(state: Mapping[str, Any], k: int) -> str:
    """``lin{k}.model.1.weight`` (lpips default, a Dropout before the conv), or ``.model.0.`` for a model built
    with ``use_dropout=False`` when only that is present."""
    key = f"lin{k}.model.1.weight"
    alt = f"lin{k}.model.0.weight"
    return alt if key not in state and alt in state else key


def rules(net: str, state: Mapping[str, Any]) -> dict[tuple, Rule]:
    """Flax path -> rule for the lpips ``LPIPS.state_dict()`` layout (``net.slice{k}.{i}``, ``lin{k}``)."""
    out: dict[tuple, Rule] = {}
    for i in L.conv_indices(net):
        src = f"net.slice{_slice_of(net, i)}.{i}"
        out[("trunk", f"conv_{i}", "kernel")] = Rule(f"{src}.weight", conv2d)
        out[("trunk", f"conv_{i}", "bias")] = Rule(f"{src}.bias")
    for k in range(len(L.CHANNELS[net])):
        out[(f"lin_{k}", "kernel")] = Rule(lin_key(state, k), conv1x1_as_dense)
    return out


def target_shapes(config: L.Config) -> dict[tuple, tuple]:
    net = L.Network(config)
    x = jnp.zeros((1, 64, 64, 3), jnp.float32)
    return eval_shapes(lambda: net.init(jax.random.key(0), x, x)["params"])


def _check_extras(state: Mapping[str, Any], net: str) -> tuple[list[str], list[str]]:
    """Known keys that carry no param: the ScalingLayer buffers (must hold lpips' constants) and the ``lins.{k}``
    aliases of ``lin{k}`` (must be equal). Returns (keys to ignore, problems)."""
    ignore, bad = [], []
    for name, want in (("scaling_layer.shift", L.SHIFT), ("scaling_layer.scale", L.SCALE)):
        if name in state:
            got = to_numpy(state[name]).reshape(-1)
            if got.shape != want.shape or not np.allclose(got, want, rtol=0, atol=1e-7):
                bad.append(f"{name} = {got.tolist()}, lpips has {want.tolist()}")
            ignore.append(name)
    for k in range(len(L.CHANNELS[net])):
        for layer in (0, 1):
            alias, key = f"lins.{k}.model.{layer}.weight", f"lin{k}.model.{layer}.weight"
            if alias in state:
                a = to_numpy(state[alias])
                if key in state and (a.shape != tuple(state[key].shape) or not np.array_equal(a, to_numpy(state[key]))):
                    bad.append(f"{alias} differs from {key}")
                ignore.append(alias)
    return ignore, bad


def convert_state(state: Mapping[str, Any], net: str, source_name: str = "source") -> tuple[dict, dict]:
    """An ``lpips.LPIPS(net=net).state_dict()`` (version 0.1, lpips=True) -> (jtaba config dict, params)."""
    config = L.Config(net=net)
    ignore, bad = _check_extras(state, net)
    extra = "".join(f"\n  {b}" for b in bad)
    try:
        params = apply_rules(state, target_shapes(config), rules(net, state), ignore=ignore, source_name=source_name)
    except ConversionError as e:
        raise ConversionError(str(e) + extra) from None
    if bad:
        raise ConversionError(f"{source_name} does not match lpips v0.1:{extra}")
    return checkpoint_config(config, source_name), params


def compose_state(trunk: Mapping[str, Any], lin: Mapping[str, Any], net: str) -> tuple[dict, list[str]]:
    """torchvision trunk state (``features.{i}.*``, ``classifier.*``) + lin state (``lin{k}.*``) -> the LPIPS
    layout, and the keys dropped (``classifier.*``). Any other key is passed on unchanged (reported unexpected)."""
    out: dict[str, Any] = {}
    dropped = []
    for key, v in trunk.items():
        if key.startswith("features."):
            i = int(key.split(".")[1])
            try:
                out[f"net.slice{_slice_of(net, i)}.{key[len('features.'):]}"] = v
            except AssertionError:  # a features index lpips does not use (none in AlexNet / VGG16 hold params)
                out[f"trunk:{key}"] = v
        elif key.startswith("classifier."):
            dropped.append(key)
        else:
            out[f"trunk:{key}"] = v
    for key, v in lin.items():
        out[key if key.startswith("lin") else f"lin-file:{key}"] = v
    return out, dropped


def convert_files(trunk_path: str, lin_path: str, net: str) -> tuple[dict, dict]:
    trunk, lin = load_state_dict(trunk_path), load_state_dict(lin_path)
    state, dropped = compose_state(trunk, lin, net)
    config, params = convert_state(state, net, source_name=f"{trunk_path} + {lin_path}")
    config["extras"].update(trunk=trunk_path, lin=lin_path, dropped=f"{len(dropped)} classifier.* tensors")
    return config, params


def checkpoint_config(config: L.Config, source: str) -> dict:
    return {"family": L.FAMILY, "model": config.to_dict(), "diffusion": None,
            "extras": {"source": source, "lpips_version": "0.1", "input": "NCHW in [-1, 1]"}}


# ---- sources ---------------------------------------------------------------------------------------------------
def default_trunk(net: str) -> str | None:
    """The torchvision weights in torch's hub cache, if there."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch")
    path = os.path.join(home, "hub", "checkpoints", TRUNK_FILES[net])
    return path if os.path.exists(path) else None


def default_lin(net: str) -> str | None:
    """``weights/v0.1/{net}.pth`` of the installed lpips package, found through its distribution's metadata: neither
    imported (importing lpips imports torchvision) nor looked up as a module, which ``python convert/lpips.py`` would
    resolve to this very file."""
    try:
        path = str(metadata.distribution("lpips").locate_file(f"lpips/weights/v0.1/{net}.pth"))
    except metadata.PackageNotFoundError:
        return None
    return path if os.path.exists(path) else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=usage_name("lpips"), formatter_class=HelpFormatter,
        description="Convert LPIPS v0.1 (torchvision AlexNet / VGG16 trunk + lpips lin heads) into a jtaba "
                    "checkpoint of family lpips (jtaba.metrics.lpips).",
        epilog="Examples:\n"
               "  python convert/lpips.py --net alex --out ~/.cache/jtaba/models/lpips_alex\n"
               "  python convert/lpips.py --net vgg --trunk vgg16-397923af.pth --out ckpt/lpips_vgg\n"
               "  python convert/lpips.py --net alex --state lpips_alex_state.pth --out ckpt/lpips_alex\n"
               "Trunk weights: " + ", ".join(TRUNK_URL.format(f) for f in TRUNK_FILES.values()))
    p.add_argument("--net", choices=sorted(L.CHANNELS), default="alex",
                   help="trunk: alex (upstream's diversity metric) or vgg")
    p.add_argument("--trunk", help="torchvision ImageNet weights of the trunk (alexnet-owt-7be5be79.pth / "
                                   "vgg16-397923af.pth); default: torch's hub cache")
    p.add_argument("--lin", help="lpips lin weights (weights/v0.1/{alex,vgg}.pth); default: the copy in the "
                                 "installed lpips package")
    p.add_argument("--state", help="instead of --trunk/--lin: a saved lpips.LPIPS(...).state_dict()")
    add_common_args(p)
    return p


def resolve_sources(args) -> dict:
    if args.state:
        if args.trunk or args.lin:
            fail("--state holds the whole model: give it alone, or --trunk and --lin")
        if not os.path.isfile(args.state):
            fail(f"--state {args.state}: no such file")
        return {"state": args.state}
    trunk = args.trunk or default_trunk(args.net)
    lin = args.lin or default_lin(args.net)
    missing = []
    if trunk is None:
        missing.append(f"the {args.net} trunk: download {TRUNK_URL.format(TRUNK_FILES[args.net])} and pass "
                       f"--trunk FILE (or put it in torch's hub cache, hub/checkpoints/)")
    if lin is None:
        missing.append(f"the lin heads: `pip install lpips` (ships weights/v0.1/{args.net}.pth) or download "
                       f"{LIN_URL.format(args.net)} and pass --lin FILE")
    for name, path in (("--trunk", trunk), ("--lin", lin)):
        if path is not None and not os.path.isfile(path):
            missing.append(f"{name} {path}: no such file")
    if missing:
        fail("nothing is downloaded by this converter; missing:\n  " + "\n  ".join(missing))
    return {"trunk": trunk, "lin": lin}


@entry_point
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    source = resolve_sources(args)
    with staged_output(args):
        if "state" in source:
            save_converted(args.out, lambda: convert_state(load_state_dict(source["state"]), args.net, source["state"]))
        else:
            save_converted(args.out, lambda: convert_files(source["trunk"], source["lin"], args.net))
        print(f"converted LPIPS v0.1 ({args.net})")


if __name__ == "__main__":
    main()
