"""Convert a transformers ``ViTModel`` checkpoint (DINO ``facebook/dino-vits16``, paper Sec. 4.2 / App. G.3) into
a jtaba checkpoint of family ``dino`` (``jtaba.metrics.dino``, networks in ``jtaba.metrics.vit_features``).

Run from the repository root, e.g.
``python convert/dino.py --src facebook/dino-vits16 --out ~/.cache/jtaba/models/dino_vits16``.

``--src``: a local folder with ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin`` (what
``hf download`` or ``save_pretrained`` writes), or a hub id (fetched through huggingface_hub; offline,
a message names the files to download). The architecture is read from ``config.json`` (``ViTConfig``).

Key accounting is strict: every tensor of the ``ViTModel`` is used once; the only keys deliberately dropped are
named in ``extras.dropped``: ``pooler.*`` (upstream loads the model with ``add_pooling_layer=False``),
``classifier.*`` of a ``ViTForImageClassification`` checkpoint (its ``vit.`` prefix is removed: the G.3 ViT
annotators convert the same way), and ``embeddings.mask_token``. Both the hub / transformers-4 layout
(``encoder.layer.{i}.attention.attention.query``, ...) and transformers 5's in-memory layout
(``layers.{i}.attention.q_proj``, ...) are accepted.
"""
from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from typing import Any

from convert.common import (
    ConversionError,
    Rule,
    add_common_args,
    apply_rules,
    check_source,
    conv2d,
    dense,
    eval_shapes,
    fail,
    hub_message,
    load_state_dict,
    require,
    save_converted,
    staged_output,
    usage_name,
)
from jtaba import io
from jtaba.cli import HelpFormatter, entry_point
from jtaba.metrics import dino as D
from jtaba.metrics import vit_features as V

HUB_ID = "facebook/dino-vits16"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# transformers 5 in-memory ViT names -> the hub (transformers 4) names
_V5_TO_HUB = [(r"^layers\.(\d+)\.attention\.q_proj\.", r"encoder.layer.\1.attention.attention.query."),
              (r"^layers\.(\d+)\.attention\.k_proj\.", r"encoder.layer.\1.attention.attention.key."),
              (r"^layers\.(\d+)\.attention\.v_proj\.", r"encoder.layer.\1.attention.attention.value."),
              (r"^layers\.(\d+)\.attention\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
              (r"^layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
              (r"^layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
              (r"^layers\.(\d+)\.", r"encoder.layer.\1.")]


# ---- shared with convert/clip.py ---------------------------------------------------------------------------------
def flat(w):
    return w.reshape(-1)


def first(w):
    return w[0]


def linear(out: dict, path: tuple, key: str, bias: bool = True) -> None:
    out[path + ("kernel",)] = Rule(f"{key}.weight", dense)
    if bias:
        out[path + ("bias",)] = Rule(f"{key}.bias")


def layernorm(out: dict, path: tuple, key: str) -> None:
    out[path + ("scale",)] = Rule(f"{key}.weight")
    out[path + ("bias",)] = Rule(f"{key}.bias")


def encoder_rules(out: dict, path: tuple, n_layers: int, names: Mapping[str, str], qkv_bias: bool = True) -> None:
    """``encoder/layer_{i}`` rules; ``names``: our sub-module -> source key pattern with ``{i}``."""
    for i in range(n_layers):
        p = path + ("encoder", f"layer_{i}")
        layernorm(out, p + ("ln1",), names["ln1"].format(i=i))
        layernorm(out, p + ("ln2",), names["ln2"].format(i=i))
        for sub in ("q", "k", "v"):
            linear(out, p + ("attn", sub), names[sub].format(i=i), bias=qkv_bias)
        linear(out, p + ("attn", "o"), names["o"].format(i=i))
        linear(out, p + ("fc1",), names["fc1"].format(i=i))
        linear(out, p + ("fc2",), names["fc2"].format(i=i))


def weights_file(folder: str) -> str:
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FileNotFoundError(f"{folder}: no {' or '.join(WEIGHT_FILES)} inside")


def fetch(src: str, extra: tuple[str, ...] = ()) -> str:
    """A local folder as it is, or a hub id: config.json, the weights (safetensors preferred) and ``extra`` files
    fetched through huggingface_hub; the local folder. Offline or unreachable: exit naming what to download."""
    check_source(src)
    if os.path.isdir(src):
        return src
    if os.path.exists(src) or src.count("/") != 1:
        fail(f"--src {src}: expected a folder with config.json + weights, or a hub id such as {HUB_ID}")
    require("huggingface_hub")
    from huggingface_hub import hf_hub_download

    try:
        folder = os.path.dirname(hf_hub_download(src, "config.json"))
        for i, name in enumerate(WEIGHT_FILES):
            try:
                hf_hub_download(src, name)
                break
            except Exception:
                if i == len(WEIGHT_FILES) - 1:
                    raise
        for name in extra:
            try:
                hf_hub_download(src, name)
            except Exception:
                pass  # optional files (tokenizer variants)
        return folder
    except Exception as e:  # offline mode, no network, unknown repo
        fail(hub_message(src, ("config.json", WEIGHT_FILES[0]) + extra, e,
                         f" ({WEIGHT_FILES[1]} instead of {WEIGHT_FILES[0]} where the repository has no safetensors)"))


# ---- ViT ------------------------------------------------------------------------------------------------------
def config_from_hf(hf: Mapping[str, Any]) -> V.VisionConfig:
    """transformers ``ViTConfig`` (config.json) -> VisionConfig(kind="vit")."""
    if hf.get("model_type", "vit") != "vit":
        raise ValueError(f"config.json has model_type {hf.get('model_type')!r}, expected 'vit' (a ViTModel)")
    image_size, patch_size = hf.get("image_size", 224), hf.get("patch_size", 16)
    if not isinstance(image_size, int) or not isinstance(patch_size, int):
        raise ValueError(f"non-square image_size / patch_size ({image_size}, {patch_size}) are not supported")
    return V.VisionConfig(kind="vit", image_size=image_size, patch_size=patch_size,
                          num_channels=hf.get("num_channels", 3), hidden_size=hf.get("hidden_size", 768),
                          num_layers=hf.get("num_hidden_layers", 12), num_heads=hf.get("num_attention_heads", 12),
                          intermediate_size=hf.get("intermediate_size", 3072),
                          layer_norm_eps=hf.get("layer_norm_eps", 1e-12), hidden_act=hf.get("hidden_act", "gelu"),
                          qkv_bias=hf.get("qkv_bias", True))


def normalize_keys(state: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """Drop the ``vit.`` prefix, rename transformers-5 names to the hub ones, and set aside the dropped keys."""
    out, dropped = {}, []
    for key, v in state.items():
        k = key.removeprefix("vit.")
        if k.startswith(("pooler.", "classifier.")) or k == "embeddings.mask_token":
            dropped.append(key)
            continue
        for pat, rep in _V5_TO_HUB:
            k2 = re.sub(pat, rep, k)
            if k2 != k:
                k = k2
                break
        if k in out:
            raise ConversionError(f"two source keys map to {k} (one of them {key})")
        out[k] = v
    return out, sorted(dropped)


def rules(config: V.VisionConfig) -> dict[tuple, Rule]:
    out: dict[tuple, Rule] = {("cls",): Rule("embeddings.cls_token", flat),
                              ("pos",): Rule("embeddings.position_embeddings", first),
                              ("patch", "kernel"): Rule("embeddings.patch_embeddings.projection.weight", conv2d),
                              ("patch", "bias"): Rule("embeddings.patch_embeddings.projection.bias")}
    layernorm(out, ("norm",), "layernorm")
    layer = "encoder.layer.{i}."
    encoder_rules(out, (), config.num_layers, {
        "ln1": layer + "layernorm_before", "ln2": layer + "layernorm_after",
        "q": layer + "attention.attention.query", "k": layer + "attention.attention.key",
        "v": layer + "attention.attention.value", "o": layer + "attention.output.dense",
        "fc1": layer + "intermediate.dense", "fc2": layer + "output.dense"}, config.qkv_bias)
    return out


def target_shapes(config: V.VisionConfig) -> dict[tuple, tuple]:
    return eval_shapes(lambda: V.init_vision(config))


def convert_state(state: Mapping[str, Any], config: V.VisionConfig, source_name: str = "source") -> tuple[dict, dict]:
    """A ViTModel (or ViTForImageClassification) state dict -> (jtaba config dict, params)."""
    norm, dropped = normalize_keys(state)
    params = apply_rules(norm, target_shapes(config), rules(config), source_name=source_name)
    cfg = {"family": D.FAMILY, "model": config.to_dict(), "diffusion": None,
           "extras": {"source": source_name, "dropped": dropped, "input": "NCHW in [-1, 1]",
                      "preprocess": "uint8 PIL -> Resize(256, bicubic) -> CenterCrop(224) -> ImageNet Normalize"}}
    return cfg, params


def convert_folder(folder: str) -> tuple[dict, dict]:
    config = config_from_hf(io.read_json(os.path.join(folder, "config.json")))
    path = weights_file(folder)
    return convert_state(load_state_dict(path), config, source_name=path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=usage_name("dino"), formatter_class=HelpFormatter,
        description="Convert a transformers ViTModel (DINO facebook/dino-vits16) into a jtaba checkpoint of family "
                    "dino (jtaba.metrics.dino).",
        epilog="Examples:\n"
               f"  python convert/dino.py --src {HUB_ID} --out ~/.cache/jtaba/models/dino_vits16\n"
               "  python convert/dino.py --src path/to/dino-vits16 --out ckpt/dino   (config.json + weights)\n"
               "  python convert/dino.py --src google/vit-base-patch16-224 --out ckpt/vit_annotator   (G.3)")
    p.add_argument("--src", default=HUB_ID, help="local folder (config.json + model.safetensors or "
                                                 f"pytorch_model.bin) or hub id (default {HUB_ID})")
    add_common_args(p)
    return p


@entry_point
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with staged_output(args):
        folder = fetch(args.src)
        config, _ = save_converted(args.out, lambda: convert_folder(folder), extras={"src": args.src})
        print(f"converted ViT {args.src} ({config['model']['num_layers']} layers, width "
              f"{config['model']['hidden_size']})")


if __name__ == "__main__":
    main()
