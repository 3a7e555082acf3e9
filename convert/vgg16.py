"""Convert torchvision's ImageNet VGG16 (``vgg16-397923af.pth``, ``VGG16_Weights.IMAGENET1K_V1``: what
torch-fidelity 0.4.0's ``FeatureExtractorVGG16`` loads for precision / recall) into a jtaba checkpoint of family
``vgg16`` (``jtaba.metrics.vgg16``).

Run from the repository root: ``python convert/vgg16.py --out ~/.cache/jtaba/models/vgg16``. Without ``--src`` the
file is looked up in torch's hub cache (``$TORCH_HOME/hub/checkpoints``, where torchvision and torch-fidelity put
it) and, if absent, downloaded there by ``torch.hub`` (``--no-download`` refuses instead).

Every tensor is accounted for: ``features.{i}.{weight,bias}`` -> ``features_{i}/{kernel,bias}``,
``classifier.{0,3}.{weight,bias}`` -> ``classifier_{0,3}``; ``classifier.6`` (the 1000-way ImageNet head) is the only
key deliberately unused: torch-fidelity deletes that layer.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Mapping

import jax

from convert.common import (
    ConversionError,
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
from jtaba.metrics import vgg16 as V

WEIGHTS_FILE = "vgg16-397923af.pth"
WEIGHTS_URL = f"https://download.pytorch.org/models/{WEIGHTS_FILE}"
UNUSED = ("classifier.6.weight", "classifier.6.bias")


def target_shapes(config: V.Config) -> dict[tuple, tuple]:
    return eval_shapes(lambda: V.init_params(config))


def rules(shapes: Mapping[tuple, tuple]) -> dict[tuple, Rule]:
    """Flax path -> rule: ``features_{i}`` / ``classifier_{i}`` are torch's ``features.{i}`` / ``classifier.{i}``."""
    out: dict[tuple, Rule] = {}
    for path in shapes:
        module, leaf = path
        source = module.replace("_", ".", 1)
        if leaf == "bias":
            out[path] = Rule(f"{source}.bias")
        else:
            out[path] = Rule(f"{source}.weight", conv2d if module.startswith("features") else dense)
    return out


def state_config(state: Mapping[str, Any]) -> V.Config:
    """The widths of a VGG16-layout state dict: each stage's first conv and ``classifier.0`` (VGG16's own widths
    for torchvision's file; smaller ones for the tests' tiny networks)."""
    stage_starts, after_pool = [], True  # features indices 0, 5, 10, 17, 24
    for i, width in V.layers(V.Config()):
        if width is not None and after_pool:
            stage_starts.append(i)
        after_pool = width is None
    try:
        widths = tuple(int(source_shape(state[f"features.{i}.weight"])[0]) for i in stage_starts)
        hidden = int(source_shape(state["classifier.0.weight"])[0])
    except KeyError as e:
        raise ConversionError(f"not a torchvision VGG16 state dict: no {e.args[0]}") from None
    return V.Config(widths=widths, hidden=hidden)


def convert_state(state: Mapping[str, Any], source_name: str = "source") -> tuple[dict, dict]:
    """torchvision VGG16 state dict -> (jtaba config dict, params of numpy float32)."""
    config = state_config(state)
    shapes = target_shapes(config)
    params = apply_rules(state, shapes, rules(shapes), ignore=UNUSED, source_name=source_name)
    return {"family": V.FAMILY, "model": config.to_dict(), "diffusion": None,
            "extras": {"source": source_name, "weights": "torchvision VGG16 IMAGENET1K_V1 (torch-fidelity 0.4.0)",
                       "input": "NCHW uint8; see jtaba.metrics.vgg16.features"}}, params


def hub_checkpoints() -> str:
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch")
    return os.path.join(home, "hub", "checkpoints")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=usage_name("vgg16"), formatter_class=HelpFormatter,
        description="Convert torchvision's ImageNet VGG16 (torch-fidelity's precision / recall network) into a "
                    "jtaba checkpoint of family vgg16 (jtaba.metrics.vgg16).",
        epilog="Examples:\n"
               "  python convert/vgg16.py --out ~/.cache/jtaba/models/vgg16   (hub cache, else downloaded)\n"
               f"  python convert/vgg16.py --src {WEIGHTS_FILE} --out ckpt/vgg16\n"
               f"The weights: {WEIGHTS_URL}")
    p.add_argument("--src", help=f"the VGG16 state dict (.pth); default: {WEIGHTS_FILE} in torch's hub cache")
    p.add_argument("--no-download", action="store_true",
                   help="fail instead of downloading the weights when --src is not given and the hub cache lacks them")
    add_common_args(p)
    return p


@entry_point
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    src = args.src or os.path.join(hub_checkpoints(), WEIGHTS_FILE)
    if not os.path.isfile(src):
        if args.src or args.no_download:
            fail(f"no VGG16 weights at {src}; download {WEIGHTS_URL} and pass --src FILE")
        import torch.hub

        print(f"downloading {WEIGHTS_URL} into {hub_checkpoints()}")
        torch.hub.load_state_dict_from_url(WEIGHTS_URL, progress=True)
    with staged_output(args):
        _, params = save_converted(args.out, lambda: convert_state(load_state_dict(src), source_name=src))
        print(f"converted VGG16 ({len(jax.tree_util.tree_leaves(params))} tensors)")


if __name__ == "__main__":
    main()
