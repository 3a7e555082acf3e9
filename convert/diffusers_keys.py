"""Regular key mapping between diffusers state dicts and the flax modules built from
``jtaba.models.diffusers_blocks`` (submodules named after the torch keys, ModuleList index ``.N`` written ``_N``).

Flax path -> torch key: a segment ``<list>_<N>`` whose ``<list>`` is a known ModuleList name becomes ``<list>.<N>``
(other segments such as ``linear_1`` stay); leaves ``kernel``/``scale``/``embedding`` -> ``weight``, ``bias`` ->
``bias``. Kernels are transposed by rank: 4 = conv (O,I,kh,kw) -> (kh,kw,I,O), 2 = linear (O,I) -> (I,O).
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

from convert.common import Rule, conv2d, dense, identity

# diffusers ModuleList attribute names (UNet2DModel, VQModel / AutoencoderKL, UNet2DConditionModel).
MODULE_LISTS = ("down_blocks", "up_blocks", "resnets", "attentions", "downsamplers", "upsamplers", "to_out",
                "transformer_blocks", "net")

_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
_INDEXED = re.compile(r"(.+)_(\d+)")

# Deprecated attention parameter names (pre-0.14 ``AttentionBlock``) -> ``Attention``, as diffusers renames on load.
_DEPRECATED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def torch_key(path: tuple[str, ...], lists: Iterable[str] = MODULE_LISTS) -> str:
    """Flax param path -> diffusers state-dict key."""
    lists = set(lists)
    parts = []
    for seg in path[:-1]:
        m = _INDEXED.fullmatch(seg)
        parts.append(f"{m.group(1)}.{m.group(2)}" if m and m.group(1) in lists else seg)
    if path[-1] not in _LEAF:
        raise ValueError(f"unexpected flax leaf {path[-1]!r} in {'/'.join(path)}")
    return ".".join(parts + [_LEAF[path[-1]]])


def diffusers_rules(target_shapes: Mapping[tuple, tuple], prefix: str = "",
                    lists: Iterable[str] = MODULE_LISTS) -> dict[tuple, Rule]:
    """One ``Rule`` per flax param of ``target_shapes`` (from ``convert.common.eval_shapes``); ``prefix`` is
    prepended to every torch key."""
    rules = {}
    for path, shape in target_shapes.items():
        tf = identity
        if path[-1] == "kernel":
            tf = {4: conv2d, 2: dense}[len(shape)]
        rules[path] = Rule(prefix + torch_key(path, lists), tf)
    return rules


def rename_deprecated_attention(state: Mapping[str, object]) -> dict[str, object]:
    """Rename ``*.query/key/value/proj_attn.{weight,bias}`` of old diffusers checkpoints (e.g. the hub LDM and VQ
    weights) to ``to_q/to_k/to_v/to_out.0`` (what ``ModelMixin._fix_state_dict_keys_on_load`` does); values are
    passed through untouched (lazy)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) >= 2 and parts[-2] in _DEPRECATED_ATTENTION and parts[-1] in ("weight", "bias"):
            key = ".".join(parts[:-2] + [_DEPRECATED_ATTENTION[parts[-2]], parts[-1]])
        out[key] = value
    return out
