"""Convert a transformers ``CLIPModel`` checkpoint (``openai/clip-vit-base-patch32``, paper Sec. 4.2 CLIP-I /
CLIP-T) into a jtaba checkpoint of family ``clip`` (``jtaba.metrics.clip``): vision tower + ``visual_projection``,
text tower + ``text_projection``.

Run from the repository root, e.g.
``python convert/clip.py --src openai/clip-vit-base-patch32 --out ~/.cache/jtaba/models/clip_vitb32
[--prompts prompts.txt]``.

``--src``: a local folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``, and for ``--prompts``
the tokenizer files) or a hub id (fetched through huggingface_hub; offline, a message names the files).

Key accounting is strict: every tensor is used once except the ones deliberately left out, named in ``extras``:
``logit_scale`` (its value is kept in ``extras.logit_scale``; CLIP-I/T do not use it) and the
``*.embeddings.position_ids`` buffers of older checkpoints (checked to be 0..N-1).

Also written: DIR/tokenizer/ (the CLIP tokenizer files found in the source, so prompts can be tokenized later with
``transformers.CLIPTokenizer.from_pretrained(DIR/tokenizer)``) and, with ``--prompts FILE`` (one prompt per line),
DIR/prompts/<stem>.npy (N, P) float32 text embeddings computed by the converted Flax text tower and <stem>.json
(the prompts and their token ids): CLIP tokenizer, padding/truncation to the model's 77 positions
(``clip.tokenize(truncate=True)`` upstream; same pooled EOS output).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

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
    require,
    save_converted,
    staged_output,
    to_numpy,
    usage_name,
)
from convert.dino import encoder_rules, fetch, layernorm, weights_file
from jtaba import io
from jtaba.cli import HelpFormatter, entry_point
from jtaba.metrics import clip as C
from jtaba.metrics import vit_features as V

HUB_ID = "openai/clip-vit-base-patch32"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")
MAX_LENGTH = 77


def config_from_hf(hf: Mapping[str, Any]) -> C.Config:
    """transformers ``CLIPConfig`` (config.json) -> clip.Config (the transformers defaults fill missing keys)."""
    if hf.get("model_type", "clip") != "clip":
        raise ValueError(f"config.json has model_type {hf.get('model_type')!r}, expected 'clip' (a CLIPModel)")
    from transformers import CLIPConfig

    c = CLIPConfig.from_dict(dict(hf))
    v, t = c.vision_config, c.text_config
    proj = c.projection_dim
    vision = V.VisionConfig(kind="clip", image_size=v.image_size, patch_size=v.patch_size,
                            num_channels=v.num_channels, hidden_size=v.hidden_size, num_layers=v.num_hidden_layers,
                            num_heads=v.num_attention_heads, intermediate_size=v.intermediate_size,
                            layer_norm_eps=v.layer_norm_eps, hidden_act=v.hidden_act, projection_dim=proj)
    text = V.TextConfig(vocab_size=t.vocab_size, max_position_embeddings=t.max_position_embeddings,
                        hidden_size=t.hidden_size, num_layers=t.num_hidden_layers, num_heads=t.num_attention_heads,
                        intermediate_size=t.intermediate_size, layer_norm_eps=t.layer_norm_eps,
                        hidden_act=t.hidden_act, projection_dim=proj, eos_token_id=t.eos_token_id)
    return C.Config(vision, text)


def _clip_layer_names(prefix: str) -> dict[str, str]:
    layer = prefix + "encoder.layers.{i}."
    return {"ln1": layer + "layer_norm1", "ln2": layer + "layer_norm2", "q": layer + "self_attn.q_proj",
            "k": layer + "self_attn.k_proj", "v": layer + "self_attn.v_proj", "o": layer + "self_attn.out_proj",
            "fc1": layer + "mlp.fc1", "fc2": layer + "mlp.fc2"}


def rules(config: C.Config) -> dict[tuple, Rule]:
    out: dict[tuple, Rule] = {
        ("vision", "cls"): Rule("vision_model.embeddings.class_embedding"),
        ("vision", "pos"): Rule("vision_model.embeddings.position_embedding.weight"),
        ("vision", "patch", "kernel"): Rule("vision_model.embeddings.patch_embedding.weight", conv2d),
        ("vision", "proj", "kernel"): Rule("visual_projection.weight", dense),
        ("text", "token", "embedding"): Rule("text_model.embeddings.token_embedding.weight"),
        ("text", "pos"): Rule("text_model.embeddings.position_embedding.weight"),
        ("text", "proj", "kernel"): Rule("text_projection.weight", dense)}
    layernorm(out, ("vision", "pre_norm"), "vision_model.pre_layrnorm")
    layernorm(out, ("vision", "post_norm"), "vision_model.post_layernorm")
    layernorm(out, ("text", "final_norm"), "text_model.final_layer_norm")
    encoder_rules(out, ("vision",), config.vision.num_layers, _clip_layer_names("vision_model."))
    encoder_rules(out, ("text",), config.text.num_layers, _clip_layer_names("text_model."))
    return out


def target_shapes(config: C.Config) -> dict[tuple, tuple]:
    return eval_shapes(lambda: C.init_params(config))


def _extras(state: Mapping[str, Any]) -> tuple[list[str], list[str], dict]:
    ignore, bad, extras = [], [], {}
    if "logit_scale" in state:
        ignore.append("logit_scale")
        extras["logit_scale"] = float(to_numpy(state["logit_scale"]).reshape(-1)[0])
    for tower in ("vision_model", "text_model"):
        key = f"{tower}.embeddings.position_ids"
        if key in state:
            ids = to_numpy(state[key]).reshape(-1)
            if not np.array_equal(ids, np.arange(ids.size)):
                bad.append(f"{key} is not 0..{ids.size - 1}")
            ignore.append(key)
    return ignore, bad, extras


def convert_state(state: Mapping[str, Any], config: C.Config, source_name: str = "source") -> tuple[dict, dict]:
    """A ``CLIPModel.state_dict()`` -> (jtaba config dict, params)."""
    ignore, bad, extras = _extras(state)
    params = apply_rules(state, target_shapes(config), rules(config), ignore=ignore, source_name=source_name)
    if bad:
        raise ConversionError(f"{source_name}: " + "; ".join(bad))
    cfg = {"family": C.FAMILY, "model": config.to_dict(), "diffusion": None,
           "extras": {"source": source_name, "dropped": sorted(ignore), **extras, "input": "NCHW in [-1, 1]",
                      "preprocess": "uint8 PIL -> Resize(224, bicubic) -> CenterCrop(224) -> CLIP Normalize"}}
    return cfg, params


def convert_folder(folder: str) -> tuple[dict, dict]:
    config = config_from_hf(io.read_json(os.path.join(folder, "config.json")))
    path = weights_file(folder)
    return convert_state(load_state_dict(path), config, source_name=path)


# ---- tokenizer and prompt embeddings ----------------------------------------------------------------------------
def copy_tokenizer(folder: str, out: str) -> list[str]:
    names = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(folder, n))]
    if names:
        os.makedirs(os.path.join(out, "tokenizer"), exist_ok=True)
        for n in names:
            shutil.copyfile(os.path.join(folder, n), os.path.join(out, "tokenizer", n))
    return names


def tokenize(tokenizer_dir: str, prompts: Sequence[str], max_length: int = MAX_LENGTH) -> np.ndarray:
    """CLIP token ids (N, max_length) int32, padded / truncated to ``max_length`` (77 for CLIP:
    ``clip.tokenize(truncate=True)``'s layout)."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    return np.asarray(tok(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                          return_tensors="np").input_ids, np.int32)


def read_prompts(path: str) -> list[str]:
    with open(path) as f:
        return f.read().splitlines()


def write_prompt_embeds(out: str, name: str, prompts: Sequence[str], ids: np.ndarray, config: C.Config,
                        params: Any, batch_size: int = 64) -> np.ndarray:
    """DIR/prompts/<name>.npy (N, P) float32 text embeddings and <name>.json {prompts, input_ids}."""
    import jax

    if not len(prompts):
        raise ValueError("no prompts to encode")
    params = jax.tree.map(np.asarray, params)
    emb = np.concatenate([np.asarray(C.text_embeds(config, params, ids[i:i + batch_size]))
                          for i in range(0, len(ids), batch_size)])
    folder = os.path.join(out, "prompts")
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, f"{name}.npy"), emb.astype(np.float32))
    with open(os.path.join(folder, f"{name}.json"), "w") as f:
        json.dump({"prompts": list(prompts), "input_ids": ids.tolist(), "max_length": int(ids.shape[1])}, f)
    return emb


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=usage_name("clip"), formatter_class=HelpFormatter,
        description="Convert a transformers CLIPModel (openai/clip-vit-base-patch32) into a jtaba checkpoint of "
                    "family clip (jtaba.metrics.clip); optionally compute text embeddings of prompts.",
        epilog="Examples:\n"
               f"  python convert/clip.py --src {HUB_ID} --out ~/.cache/jtaba/models/clip_vitb32\n"
               "  python convert/clip.py --src path/to/clip-vit-base-patch32 --out ckpt/clip --prompts prompts.txt")
    p.add_argument("--src", default=HUB_ID, help="local folder (config.json + model.safetensors or "
                                                 f"pytorch_model.bin + tokenizer files) or hub id (default {HUB_ID})")
    p.add_argument("--prompts", metavar="FILE.txt", help="prompts, one per line -> DIR/prompts/<stem>.npy text "
                                                         "embeddings (needs the tokenizer files in --src)")
    add_common_args(p)
    return p


@entry_point
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    require("transformers")  # the config and the tokenizer are read through it
    prompts = None
    if args.prompts:
        if not os.path.isfile(args.prompts):
            fail(f"--prompts {args.prompts}: no such file")
        prompts = read_prompts(args.prompts)
        if not prompts:
            fail(f"--prompts {args.prompts}: no prompts in it")
    with staged_output(args):
        folder = fetch(args.src, TOKENIZER_FILES)
        config, params = save_converted(args.out, lambda: convert_folder(folder), extras={"src": args.src})
        cfg = C.Config.from_dict(config["model"])
        copied = copy_tokenizer(folder, args.out)
        if prompts is not None:
            if not {"vocab.json", "merges.txt"} <= set(copied):
                fail(f"--prompts needs the CLIP tokenizer (vocab.json, merges.txt) in {folder}")
            name = os.path.splitext(os.path.basename(args.prompts))[0]
            write_prompt_embeds(args.out, name, prompts, tokenize(os.path.join(args.out, "tokenizer"), prompts,
                                                                cfg.text.max_position_embeddings), cfg, params)
            print(f"wrote {len(prompts)} prompt embeddings: prompts/{name}.npy")
        print(f"converted CLIP {args.src}")


if __name__ == "__main__":
    main()
