"""Convert DreamSim's published "ensemble" weights (the ``dreamsim`` package 0.2.1, ``dreamsim(pretrained=True,
cache_dir=DIR)``, paper Sec. 4.2) into a jtaba checkpoint of family ``dreamsim`` (``jtaba.metrics.dreamsim``), the
LoRA adapters merged into the dense weights.

Run from the repository root, e.g.
``python convert/dreamsim.py --src res/dreamsim --out ~/.cache/jtaba/models/dreamsim``.

``--src`` is dreamsim's cache folder (the paper's code uses ``./res/dreamsim``), read offline. It needs:

* ``clip_vitb16_pretrain.pth.tar``, ``open_clip_vitb16_pretrain.pth.tar`` (``{"state_dict": ...}``: each CLIP
  vision tower in dreamsim's DINO-ViT layout, ``pos_drop`` = ``ln_pre``, plus ``proj``) and ``ensemble_lora/``
  (``adapter_config.json`` + ``adapter_model.safetensors`` or ``.bin``): unzipped from
  https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/dreamsim_ensemble_checkpoint.zip
  (which also holds ``dino_vitb16_pretrain.pth``: upstream reads only the DINO projection head from it, which the
  ensemble's "cls" feature never uses, so it is not read);
* ``checkpoints/dino_vitbase16_pretrain.pth``: the DINO ViT-B/16 backbone that ``torch.hub.load(
  "facebookresearch/dino:main", "dino_vitb16")`` puts there (torch hub's folder is the cache folder), from
  https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth.

A cache that ``dreamsim(pretrained=True, cache_dir=DIR)`` has used once holds all of them.

Conversion: every backbone tensor and every adapter tensor is used exactly once (missing, unexpected and
wrong-shape keys are listed). Each adapter pair ``base_model.model.extractor_list.{j}.model.{module}.lora_{A,B}``
is merged as ``W + (lora_alpha / r) · B @ A`` (``lora_alpha / sqrt(r)`` with ``use_rslora``) into member j's
``{module}.weight``; adapters with DoRA, per-module rank / alpha patterns, trained biases or non-linear targets are
refused. Each fused ``attn.qkv`` is split into q, k, v; the CLIP members' patch-conv bias (a parameter of dreamsim's
DINO-ViT, zero for CLIP) is folded into their patch position embeddings. The DINO member's final ``norm`` is
converted though DreamSim's feature is taken before it. Member widths, depths and patch sizes are read from the
tensors (heads: width / 64, as in every DINO and CLIP ViT).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from convert.common import (
    ConversionError,
    Rule,
    add_common_args,
    apply_rules,
    conv2d,
    eval_shapes,
    load_state_dict,
    save_converted,
    source_shape,
    staged_output,
    to_numpy,
    usage_name,
)
from convert.dino import encoder_rules, first, flat, layernorm
from jtaba.cli import HelpFormatter, entry_point
from jtaba.metrics import dreamsim as S

DEFAULT_SRC = "res/dreamsim"
ZIP_URL = "https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/" \
          "dreamsim_ensemble_checkpoint.zip"
DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
# member name -> its backbone file in the cache folder (the ensemble's extractor order)
BACKBONE_FILES = {"dino_vitb16": os.path.join("checkpoints", "dino_vitbase16_pretrain.pth"),
                  "clip_vitb16": "clip_vitb16_pretrain.pth.tar",
                  "open_clip_vitb16": "open_clip_vitb16_pretrain.pth.tar"}
LORA_DIR = "ensemble_lora"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
HEAD_DIM = 64
_ADAPTER_KEY = re.compile(r"base_model\.model\.extractor_list\.(\d+)\.model\.(.+)\.lora_([AB])\.weight")
_QKV = re.compile(r"(blocks\.\d+\.attn)\.qkv\.(weight|bias)")


# ---- files --------------------------------------------------------------------------------------------------
def source_files(src: str) -> dict[str, str]:
    """{member name or "adapter_config" / "adapter": path} in dreamsim's cache folder ``src``; FileNotFoundError
    naming every absent file and where to fetch it."""
    files = {name: os.path.join(src, rel) for name, rel in BACKBONE_FILES.items()}
    files["adapter_config"] = os.path.join(src, LORA_DIR, "adapter_config.json")
    adapters = [os.path.join(src, LORA_DIR, n) for n in ADAPTER_FILES]
    files["adapter"] = next((p for p in adapters if os.path.isfile(p)), adapters[0])
    absent = [os.path.relpath(p, src) for p in files.values() if not os.path.isfile(p)]
    if absent:
        raise FileNotFoundError(
            f"{src}: not a complete DreamSim ensemble cache, missing {', '.join(absent)} (or .bin for the "
            f"adapter).\nOn a connected machine fetch\n  {ZIP_URL}\n  (unzip it into that folder: the CLIP / "
            f"OpenCLIP backbones and {LORA_DIR}/)\n  {DINO_URL}\n  (into {os.path.join(src, 'checkpoints')}/)\nor "
            f"run dreamsim(pretrained=True, cache_dir=...) once and pass that folder as --src.")
    return files


# ---- LoRA ---------------------------------------------------------------------------------------------------
def lora_scale(adapter_config: Mapping[str, Any]) -> float:
    """peft's LoRA scaling ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``); unsupported options refused."""
    if adapter_config.get("peft_type", "LORA") != "LORA":
        raise ConversionError(f"adapter peft_type {adapter_config.get('peft_type')!r}, expected 'LORA'")
    refused = {k: adapter_config[k] for k in ("use_dora", "fan_in_fan_out", "rank_pattern", "alpha_pattern",
                                              "lora_bias") if adapter_config.get(k)}
    if adapter_config.get("bias", "none") != "none":
        refused["bias"] = adapter_config["bias"]
    if refused:
        raise ConversionError(f"adapter options not supported: {refused}")
    r = adapter_config["r"]
    return adapter_config["lora_alpha"] / (math.sqrt(r) if adapter_config.get("use_rslora") else r)


def lora_deltas(adapter: Mapping[str, Any], scale: float, r: int,
                source_name: str = "adapter") -> dict[int, dict[str, np.ndarray]]:
    """{extractor index: {module: scale · B @ A (float64, (out, in))}} of a dreamsim adapter state dict."""
    pairs: dict[tuple[int, str], dict[str, Any]] = {}
    bad = []
    for key, v in adapter.items():
        m = _ADAPTER_KEY.fullmatch(key)
        if m is None:
            bad.append(key)
            continue
        pairs.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = v
    if bad:
        raise ConversionError(f"{source_name}: keys that are not LoRA A/B weights of an extractor: "
                              + ", ".join(sorted(bad)))
    out: dict[int, dict[str, np.ndarray]] = {}
    for (j, module), ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ConversionError(f"{source_name}: extractor {j} {module} has lora_{'B' if 'A' in ab else 'A'} "
                                  f"missing")
        a, b = to_numpy(ab["A"]), to_numpy(ab["B"])
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != r or b.shape[1] != r:
            raise ConversionError(f"{source_name}: extractor {j} {module}: lora_A {a.shape} / lora_B {b.shape} "
                                  f"are not rank-{r} Linear adapters")
        out.setdefault(j, {})[module] = scale * (b.astype(np.float64) @ a.astype(np.float64))
    return out


# ---- one member ---------------------------------------------------------------------------------------------
def prepare_member(state: Mapping[str, Any], deltas: Mapping[str, np.ndarray], kind: str,
                   source_name: str = "source") -> dict[str, Any]:
    """A member's backbone state dict (dreamsim's DINO-ViT names) -> the names ``rules`` read: LoRA deltas added
    to ``{module}.weight``, each ``blocks.{i}.attn.qkv`` split into ``attn.q`` / ``attn.k`` / ``attn.v``, and for
    kind "clip" the patch-conv bias folded into ``pos_embed[:, 1:]``."""
    out = dict(state)
    for module, delta in deltas.items():
        key = f"{module}.weight"
        if key not in out:
            raise ConversionError(f"{source_name}: the LoRA adapter targets {module}, which the backbone lacks")
        w = to_numpy(out[key])
        if w.shape != delta.shape:
            raise ConversionError(f"{source_name}: LoRA delta {delta.shape} does not fit {key} {w.shape}")
        out[key] = (w.astype(np.float64) + delta).astype(np.float32)
    for key in [k for k in out if _QKV.fullmatch(k)]:
        prefix, leaf = _QKV.fullmatch(key).groups()
        w = to_numpy(out.pop(key))
        if w.shape[0] % 3:
            raise ConversionError(f"{source_name}: {key} {w.shape} is not a fused q, k, v")
        for name, part in zip("qkv", np.split(w, 3, axis=0)):
            out[f"{prefix}.{name}.{leaf}"] = part
    if kind == "clip" and "patch_embed.proj.bias" in out and "pos_embed" in out:
        pos = to_numpy(out["pos_embed"]).copy()
        pos[:, 1:] += to_numpy(out.pop("patch_embed.proj.bias"))
        out["pos_embed"] = pos
    return out


def member_config(template: S.Member, state: Mapping[str, Any], source_name: str = "source") -> S.Member:
    """``template`` (kind, activation, eps, normalisation of the member) with the ViT sizes of ``state``."""
    try:
        width = source_shape(state["cls_token"])[-1]
        _, channels, patch, _ = source_shape(state["patch_embed.proj.weight"])
        grid = math.isqrt(source_shape(state["pos_embed"])[1] - 1)
        mlp = source_shape(state["blocks.0.mlp.fc1.weight"])[0]
        proj = source_shape(state["proj"])[1] if template.vision.kind == "clip" else 0
    except KeyError as e:
        raise ConversionError(f"{source_name}: no {e.args[0]} (not a dreamsim {template.name} backbone)") from None
    layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    if width % HEAD_DIM:
        raise ConversionError(f"{source_name}: width {width} is not a multiple of the head width {HEAD_DIM}")
    vision = dataclasses.replace(template.vision, image_size=grid * patch, patch_size=patch, num_channels=channels,
                                 hidden_size=width, num_layers=layers, num_heads=width // HEAD_DIM,
                                 intermediate_size=mlp, projection_dim=proj)
    if vision.image_size != S.IMAGE_SIZE:
        raise ConversionError(f"{source_name}: position embeddings for {vision.image_size} px; DreamSim feeds "
                              f"{S.IMAGE_SIZE} px (position interpolation is not supported)")
    return dataclasses.replace(template, vision=vision)


def rules(config: S.Config) -> dict[tuple, Rule]:
    """Flax path -> rule over the prepared members, source keys prefixed ``{member name}.``."""
    out: dict[tuple, Rule] = {}
    for m in config.members:
        p, s = (m.name,), f"{m.name}."
        out[p + ("cls",)] = Rule(s + "cls_token", flat)
        out[p + ("pos",)] = Rule(s + "pos_embed", first)
        out[p + ("patch", "kernel")] = Rule(s + "patch_embed.proj.weight", conv2d)
        if m.vision.kind == "clip":
            layernorm(out, p + ("pre_norm",), s + "pos_drop")
            layernorm(out, p + ("post_norm",), s + "norm")
            out[p + ("proj", "kernel")] = Rule(s + "proj")  # used as x @ proj: already (in, out)
        else:
            out[p + ("patch", "bias")] = Rule(s + "patch_embed.proj.bias")
            layernorm(out, p + ("norm",), s + "norm")
        b = s + "blocks.{i}."
        encoder_rules(out, p, m.vision.num_layers, {
            "ln1": b + "norm1", "ln2": b + "norm2", "q": b + "attn.q", "k": b + "attn.k", "v": b + "attn.v",
            "o": b + "attn.proj", "fc1": b + "mlp.fc1", "fc2": b + "mlp.fc2"}, m.vision.qkv_bias)
    return out


def target_shapes(config: S.Config) -> dict[tuple, tuple]:
    return eval_shapes(lambda: S.init_params(config))


# ---- the ensemble -------------------------------------------------------------------------------------------
def convert_states(backbones: Mapping[str, Mapping[str, Any]], adapter: Mapping[str, Any],
                   adapter_config: Mapping[str, Any], source_name: str = "source") -> tuple[dict, dict]:
    """{member name: backbone state dict} (dreamsim's "ensemble" members) + the LoRA adapter state dict and its
    ``adapter_config.json`` -> (jtaba config dict, params)."""
    if set(backbones) != set(BACKBONE_FILES):
        raise ConversionError(f"{source_name}: expected backbones {sorted(BACKBONE_FILES)}, got {sorted(backbones)}")
    scale = lora_scale(adapter_config)
    deltas = lora_deltas(adapter, scale, adapter_config["r"], f"{source_name}/{LORA_DIR}")
    extra = sorted(set(deltas) - set(range(len(S.ENSEMBLE))))
    if extra:
        raise ConversionError(f"{source_name}/{LORA_DIR}: adapters for extractors {extra}; the ensemble has "
                              f"{len(S.ENSEMBLE)}")
    members, state = [], {}
    for j, template in enumerate(S.ENSEMBLE):
        name = f"{source_name}/{BACKBONE_FILES[template.name]}"
        raw = backbones[template.name]
        members.append(member_config(template, raw, name))
        prepared = prepare_member(raw, deltas.get(j, {}), template.vision.kind, name)
        state.update({f"{template.name}.{k}": v for k, v in prepared.items()})
    config = S.Config(tuple(members))
    params = apply_rules(state, target_shapes(config), rules(config), source_name=source_name)
    targets = sorted({re.sub(r"\.\d+\.", ".{i}.", m) for d in deltas.values() for m in d})
    cfg = {"family": S.FAMILY, "model": config.to_dict(), "diffusion": None,
           "extras": {"source": source_name, "dreamsim_type": "ensemble", "input": "NCHW in [-1, 1]",
                      "preprocess": f"uint8 PIL -> Resize(({S.IMAGE_SIZE}, {S.IMAGE_SIZE}), bicubic) -> ToTensor; "
                                    "per member Normalize",
                      "lora": {"r": adapter_config["r"], "lora_alpha": adapter_config["lora_alpha"],
                               "scale": scale, "merged_modules": sum(len(d) for d in deltas.values()),
                               "targets": targets},
                      "folded": "CLIP members' patch_embed.proj.bias into pos_embed[1:]",
                      "not_read": "dino_vitb16_pretrain.pth (DINO's projection head, unused by the cls feature)"}}
    return cfg, params


def convert_folder(src: str) -> tuple[dict, dict]:
    files = source_files(src)
    with open(files["adapter_config"]) as f:
        adapter_config = json.load(f)
    backbones = {name: load_state_dict(files[name]) for name in BACKBONE_FILES}
    return convert_states(backbones, load_state_dict(files["adapter"]), adapter_config, source_name=src)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=usage_name("dreamsim"), formatter_class=HelpFormatter,
        description="Convert DreamSim's ensemble (DINO + CLIP + OpenCLIP ViT-B/16, LoRA merged) from dreamsim's "
                    "cache folder into a jtaba checkpoint of family dreamsim (jtaba.metrics.dreamsim). Offline: the "
                    "files to fetch are named in the error when some are absent.",
        epilog="Examples:\n"
               "  python convert/dreamsim.py --src res/dreamsim --out ~/.cache/jtaba/models/dreamsim\n"
               "  python convert/dreamsim.py --src ./models --out ckpt/dreamsim   (dreamsim's default cache_dir)")
    p.add_argument("--src", default=DEFAULT_SRC,
                   help="dreamsim's cache folder: clip_vitb16_pretrain.pth.tar, open_clip_vitb16_pretrain.pth.tar, "
                        "ensemble_lora/, checkpoints/dino_vitbase16_pretrain.pth")
    add_common_args(p)
    return p


@entry_point
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with staged_output(args):
        config, _ = save_converted(args.out, lambda: convert_folder(args.src))
        print(f"converted DreamSim ensemble from {args.src} ({config['extras']['lora']['merged_modules']} LoRA "
              f"adapters merged)")


if __name__ == "__main__":
    main()
