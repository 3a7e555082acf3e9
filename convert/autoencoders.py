"""Convert diffusers ``AutoencoderKL`` (family ``vae``) and ``VQModel`` (family ``vq``) state dicts into jtaba
params. Used by the model converters that write DIR/decoder (``convert/dit.py``, ``convert/ldm.py``).

The Flax param names mirror the diffusers keys (``_N`` <-> ``.N``), so rules are derived from the param tree.
Checkpoints saved by old diffusers versions (the sd-vae-ft-* and ldm-celebahq hub files) name the mid-block
attention ``query/key/value/proj_attn``; they are accepted for ``to_q/to_k/to_v/to_out.0`` as diffusers does.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from convert.common import Rule, apply_rules, conv2d, dense, eval_shapes, identity
from jtaba.models import vae, vq

_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
_DEPRECATED_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def torch_key(path: tuple[str, ...]) -> str:
    """Flax path -> diffusers key: ``("decoder", "up_blocks_0", "resnets_1", "conv1", "kernel")`` ->
    ``decoder.up_blocks.0.resnets.1.conv1.weight``."""
    return ".".join([re.sub(r"_(\d+)", r".\1", p) for p in path[:-1]] + [_LEAF[path[-1]]])


def rules_for(shapes: Mapping[tuple, tuple], state_keys) -> dict[tuple, Rule]:
    """One rule per Flax param; attention projections fall back to their deprecated names when only those exist."""
    keys = set(state_keys)
    rules = {}
    for path, shape in shapes.items():
        key = torch_key(path)
        if key not in keys:
            for new, old in _DEPRECATED_ATTENTION.items():
                module, leaf = key.rsplit(".", 1)
                if module.endswith("." + new) and f"{module[: -len(new)]}{old}.{leaf}" in keys:
                    key = f"{module[: -len(new)]}{old}.{leaf}"
        transform = identity if path[-1] != "kernel" else (conv2d if len(shape) == 4 else dense)
        rules[path] = Rule(key, transform)
    return rules


def _convert(module, family: str, state: Mapping[str, Any], config_json: Mapping[str, Any], source_name: str):
    config = module.Config.from_diffusers(dict(config_json))
    net = module.Network(config)
    x = jnp.zeros((1, 2 ** len(config.block_out_channels), 2 ** len(config.block_out_channels),
                   config.in_channels), jnp.float32)
    shapes = eval_shapes(lambda: net.init(jax.random.key(0), x)["params"])
    params = apply_rules(state, shapes, rules_for(shapes, state.keys()), source_name=source_name)
    return {"family": family, "model": config.to_dict(), "diffusion": None,
            "extras": {"diffusers_class": config_json.get("_class_name")}}, params


def convert_autoencoder_kl(state: Mapping[str, Any], config_json: Mapping[str, Any], source_name: str = "source"):
    """AutoencoderKL state dict + config.json -> (jtaba config dict of family ``vae``, nested numpy params)."""
    return _convert(vae, "vae", state, config_json, source_name)


def convert_vq_model(state: Mapping[str, Any], config_json: Mapping[str, Any], source_name: str = "source"):
    """VQModel state dict + config.json -> (jtaba config dict of family ``vq``, nested numpy params)."""
    return _convert(vq, "vq", state, config_json, source_name)
