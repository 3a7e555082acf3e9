"""Convert DeepFloyd IF stage I (``DeepFloyd/IF-I-XL-v1.0``) into a jtaba checkpoint (family ``if_unet``), with
the T5-v1.1-XXL prompt embeddings the network is conditioned on.

Run from the repository root: ``python convert/if.py --src DeepFloyd/IF-I-XL-v1.0 --out DIR [--prompts FILE.txt]``.

Writes
* DIR/config.json + DIR/params: the UNet (``jtaba.models.if_unet``) and its schedule (the hub DDPM scheduler config:
  squaredcos_cap_v2, thresholding ratio 0.95 / max 1.5 while sampling, clip to [-1, 1] while inverting,
  learned sigma);
* DIR/null_prompt.npy (77, 4096) float32: the empty prompt's embedding (classifier-free guidance; ``extras``),
  computed with T5, or copied from ``--null-prompt-embeds FILE.npy`` (then no T5 is needed), or absent with
  ``--no-text-encoder`` (the model is still marked text-conditioned: runs need prompt embeddings, and guidance
  needs a null prompt);
* with ``--prompts FILE``: DIR/prompts/<FILE stem>.npy (N, 77, 4096) float32 and <stem>.json (the prompts).

Every option of the UNet's config.json, the schedule and the flags' values are checked before any weights are read
(on the hub, before the weights are downloaded): ``if_unet.Config.from_diffusers`` names each
``UNet2DConditionModel`` option it does not implement, with its value.

Params are stored as float16 by default (``--param-dtype``): the hub weights are float16 values and upstream runs
the network with ``torch_dtype=float16``, so nothing is lost. The UNet is read one tensor at a time from the
memory-mapped safetensors (the fp16 file is fetched when the repository has it), so RAM holds one copy of the
params plus orbax's write buffers: measured 1.84x the params' bytes at peak, i.e. about 16 GB for IF-I-XL's 4.3B
float16 params (float32 would need about 32 GB). Restore them as float32, or sharded over a mesh axis (see
``jtaba.models.if_unet.param_shardings``), by passing ``ShapeDtypeStruct`` targets to
``jtaba.checkpoint.load_params``: orbax casts while reading.

Prompt embeddings follow ``IFPipeline.encode_prompt`` with ``clean_caption=False`` (what upstream passes):
``prompt.lower().strip()``, T5Tokenizer padding/truncation to 77 tokens, ``T5EncoderModel(ids, attention_mask)``
last hidden state. The encoder runs in ``--encoder-dtype`` (default float16 = upstream) on ``--device``; the
embeddings are saved as float32. Needs torch, ``transformers`` and ``sentencepiece`` (the ``convert`` extra:
``pip install -e ".[convert]"``); torch is used only here.

IF is gated on the hub: accept the license at https://huggingface.co/DeepFloyd/IF-I-XL-v1.0 and log in
(``hf auth login`` or ``HF_TOKEN``) before converting from the hub id.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from convert.common import (
    Rule,
    add_common_args,
    apply_rules,
    check_source,
    eval_shapes,
    fail,
    hub_message,
    load_state_dict,
    require,
    source_errors,
    staged_output,
    usage_name,
)
from convert.diffusers_keys import diffusers_rules
from jtaba.checkpoint import save_checkpoint
from jtaba.cli import HelpFormatter, entry_point
from jtaba.diffusion import DiffusionConfig
from jtaba.models import if_unet

IF_HUB_ID = "DeepFloyd/IF-I-XL-v1.0"
MAX_LENGTH = 77  # IFPipeline.encode_prompt
NULL_PROMPT = "null_prompt.npy"  # jtaba.model.NULL_PROMPT_FILE
PARAM_DTYPES = ("float16", "float32")
UNET_WEIGHTS = ("diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors",
                "diffusion_pytorch_model.fp16.bin", "diffusion_pytorch_model.bin")
HUB_FILES = ("unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors", "scheduler/*", "text_encoder/*",
             "tokenizer/*")  # what a local folder for --src needs (the offline message's download)
GATED = (f"DeepFloyd IF is gated: accept its license at https://huggingface.co/{IF_HUB_ID} with your Hugging Face "
         "account and log in here (`hf auth login`, or set HF_TOKEN)")

EncodeFn = Callable[[Sequence[str]], np.ndarray]  # prompts -> (N, 77, D) float32


# ---- UNet --------------------------------------------------------------------------------------------------------
def target_shapes(config: if_unet.Config) -> dict[tuple, tuple]:
    """Flat Flax param path -> shape, via ``jax.eval_shape`` (nothing allocated)."""
    s = 2 ** (len(config.block_out_channels) - 1)
    x = jnp.zeros((1, s, s, config.in_channels), jnp.float32)
    cond = jnp.zeros((1, 1, config.cond_dim), jnp.float32)
    net = if_unet.Network(config)
    return eval_shapes(lambda: net.init(jax.random.key(0), x, jnp.zeros((1,)), cond)["params"])


def unet_rules(shapes: Mapping[tuple, tuple]) -> dict[tuple, Rule]:
    """Flax path -> rule: the regular diffusers naming plus AttentionPooling's ``positional_embedding``."""
    pos = {p: s for p, s in shapes.items() if p[-1] == "positional_embedding"}
    rules = diffusers_rules({p: s for p, s in shapes.items() if p not in pos})
    rules.update({p: Rule(".".join(p)) for p in pos})
    return rules


def _to_device(rule: Rule, dtype: np.dtype) -> Rule:
    """The rule, its result cast to ``dtype`` and moved into a jax array (orbax saves jax arrays with less
    transient memory than numpy ones: measured +0.75x vs +1.8x of the params)."""
    return Rule(rule.source, lambda w, tf=rule.transform: jax.device_put(tf(w).astype(dtype)))


def convert_unet(state: Mapping[str, Any], unet_config: Mapping[str, Any], param_dtype: str = "float32",
                 source_name: str = "source") -> tuple[if_unet.Config, dict]:
    """diffusers UNet2DConditionModel state dict (lazy values) + its config.json -> (Config, Flax params: jax arrays
    of ``param_dtype`` on the default device), converted and cast one tensor at a time."""
    if param_dtype not in PARAM_DTYPES:
        raise ValueError(f"param dtype must be one of {PARAM_DTYPES}, got {param_dtype!r}")
    config = if_unet.Config.from_diffusers(dict(unet_config))
    shapes = target_shapes(config)
    dtype = np.dtype(jnp.dtype(param_dtype))
    rules = {p: _to_device(r, dtype) for p, r in unet_rules(shapes).items()}
    return config, apply_rules(state, shapes, rules, source_name=source_name)


def diffusion_config(scheduler_config: Mapping[str, Any], config: if_unet.Config) -> DiffusionConfig:
    """The schedule from IF's DDPM scheduler config (learned sigma when the UNet outputs 2x its input channels)."""
    return DiffusionConfig.from_diffusers_scheduler(dict(scheduler_config),
                                                    learned_sigma=config.out_channels == 2 * config.in_channels)


# ---- prompt embeddings -------------------------------------------------------------------------------------------
def preprocess(prompt: str) -> str:
    """``IFPipeline._text_preprocessing(clean_caption=False)``."""
    return prompt.lower().strip()


def read_prompts(path: str) -> list[str]:
    """One prompt per line (an empty line is the empty prompt); a trailing newline adds nothing."""
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def write_embeddings(path: str, prompts: Sequence[str], encode: EncodeFn, batch_size: int = 8) -> np.ndarray:
    """Encode ``prompts`` in batches into a float32 .npy at ``path`` (N, 77, D), written as a memmap so N can be
    large; returns the memmap."""
    out = None
    for start in range(0, len(prompts), batch_size):
        emb = np.asarray(encode([preprocess(p) for p in prompts[start:start + batch_size]]), np.float32)
        if emb.ndim != 3 or emb.shape[1] != MAX_LENGTH:
            raise ValueError(f"text encoder returned {emb.shape}, expected (batch, {MAX_LENGTH}, D)")
        if out is None:
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                            shape=(len(prompts),) + emb.shape[1:])
        out[start:start + len(emb)] = emb
    if out is None:
        raise ValueError("no prompts to encode")
    out.flush()
    return out


def write_prompt_set(out_dir: str, name: str, prompts: Sequence[str], encode: EncodeFn, meta: Mapping[str, Any],
                     batch_size: int = 8) -> str:
    """DIR/prompts/<name>.npy (N, 77, D) float32 and <name>.json {"prompts": [...raw lines...], **meta}."""
    folder = os.path.join(out_dir, "prompts")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name + ".npy")
    write_embeddings(path, prompts, encode, batch_size)
    with open(os.path.join(folder, name + ".json"), "w") as f:
        json.dump({"prompts": list(prompts), **meta}, f, indent=1)
    return path


def write_null_prompt(out_dir: str, encode: EncodeFn) -> str:
    """DIR/null_prompt.npy: the empty prompt's embedding (77, D) float32."""
    path = os.path.join(out_dir, NULL_PROMPT)
    np.save(path, np.asarray(encode([""])[0], np.float32))
    return path


def require_text_encoder_deps() -> None:
    """The T5 prompt embeddings' modules (of the ``convert`` extra), checked before the long UNet conversion."""
    require("torch", "transformers", "sentencepiece")


def t5_encoder(src: str, device: str = "cpu", dtype: str = "float16", subfolder: bool = True) -> EncodeFn:
    """The IF pipeline's T5 (``text_encoder/`` + ``tokenizer/`` of ``src``: a local folder or a hub id) as an
    ``EncodeFn`` (already preprocessed prompts -> (N, 77, D) float32)."""
    import torch
    from transformers import T5EncoderModel, T5Tokenizer

    enc_kw = {"subfolder": "text_encoder"} if subfolder else {}
    tokenizer = _hub_call(T5Tokenizer.from_pretrained, src, **({"subfolder": "tokenizer"} if subfolder else {}))

    def load(**kw):
        return _hub_call(T5EncoderModel.from_pretrained, src, torch_dtype=getattr(torch, dtype), **enc_kw, **kw)

    try:  # the hub repository has float16 files: fetch those (half the download) when computing in float16
        model = load(variant="fp16") if dtype == "float16" else load()
    except (OSError, ValueError):  # no fp16 variant files
        model = load()
    model = model.to(device).eval()

    def encode(prompts: Sequence[str]) -> np.ndarray:
        tok = tokenizer(list(prompts), padding="max_length", max_length=MAX_LENGTH, truncation=True,
                        add_special_tokens=True, return_tensors="pt")
        with torch.no_grad():
            out = model(tok.input_ids.to(device), attention_mask=tok.attention_mask.to(device))[0]
        return out.float().cpu().numpy()

    return encode


# ---- sources -----------------------------------------------------------------------------------------------------
def _offline_message() -> str:
    return f"{GATED}; then:\n" + hub_message(IF_HUB_ID, HUB_FILES, src_note=" (a local folder)")


def _hub_call(fn, *args, **kwargs):
    """Call a hub-reading function; gated-repo and offline/network failures become one clear message."""
    require("huggingface_hub")
    from huggingface_hub import errors as hub_errors

    try:
        return fn(*args, **kwargs)
    except hub_errors.GatedRepoError as e:
        fail(f"{GATED}.\n({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    except (hub_errors.OfflineModeIsEnabled, hub_errors.LocalEntryNotFoundError):
        fail(_offline_message())
    except OSError as e:  # transformers re-raises hub failures as OSError with the reason in the text
        text = str(e).lower()
        if "gated" in text:
            fail(f"{GATED}.\n({e})")
        if "offline" in text or "connect" in text:
            fail(_offline_message())
        raise


def fetch_configs(repo_id: str) -> str:
    """Download unet/config.json and the scheduler config (small); the local snapshot folder."""
    from huggingface_hub import hf_hub_download

    folder = None
    for name in ("unet/config.json", "scheduler/scheduler_config.json"):
        folder = os.path.dirname(os.path.dirname(_hub_call(hf_hub_download, repo_id, name)))
    return folder


def fetch_weights(repo_id: str) -> str:
    """Download the fp16 unet weights (fp32 if absent) into the same snapshot; the folder."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for weights in UNET_WEIGHTS[:2]:
        try:
            path = _hub_call(hf_hub_download, repo_id, f"unet/{weights}")
            return os.path.dirname(os.path.dirname(path))
        except EntryNotFoundError:  # no fp16 variant: try the float32 file
            continue
    fail(f"{repo_id}: no unet/{' or unet/'.join(UNET_WEIGHTS[:2])}")


def unet_weights(folder: str) -> str:
    for name in UNET_WEIGHTS:
        if os.path.exists(os.path.join(folder, "unet", name)):
            return os.path.join(folder, "unet", name)
    raise FileNotFoundError(f"{folder}/unet: none of {', '.join(UNET_WEIGHTS)}")


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} missing (expected a diffusers IF pipeline folder: unet/ scheduler/)")
    with open(path) as f:
        return json.load(f)


def plan_folder(folder: str) -> tuple[if_unet.Config, DiffusionConfig, dict]:
    """A pipeline folder's unet/config.json and scheduler config, checked (nothing else read): (Config,
    DiffusionConfig, the unet config.json)."""
    unet_json = _read_json(os.path.join(folder, "unet", "config.json"))
    sched = _read_json(os.path.join(folder, "scheduler", "scheduler_config.json"))
    try:
        config = if_unet.Config.from_diffusers(unet_json)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{os.path.join(folder, 'unet', 'config.json')}: {e}") from None
    try:
        diffusion = diffusion_config(sched, config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{os.path.join(folder, 'scheduler', 'scheduler_config.json')}: {e}") from None
    return config, diffusion, unet_json


def convert_folder(folder: str, param_dtype: str) -> tuple[dict, dict]:
    """A pipeline folder (unet/ + scheduler/) -> (jtaba config dict without extras, params); the configs are
    checked before the weights are opened."""
    _, diffusion, unet_json = plan_folder(folder)
    state = load_state_dict(unet_weights(folder))
    config, params = convert_unet(state, unet_json, param_dtype, source_name=os.path.join(folder, "unet"))
    return {"family": "if_unet", "model": config.to_dict(), "diffusion": diffusion.to_dict()}, params


def read_null_prompt(path: str, config: if_unet.Config) -> np.ndarray:
    """``--null-prompt-embeds``: a .npy of the empty prompt's embedding, (L, D) or (1, L, D) with D the UNet's
    prompt width, finite; returned as float32 (L, D)."""
    try:
        emb = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"--null-prompt-embeds {path}: cannot read it as a .npy array ({e})") from None
    if emb.ndim == 3 and emb.shape[0] == 1:
        emb = emb[0]
    if emb.ndim != 2 or emb.shape[1] != config.cond_dim or emb.shape[0] < 1:
        raise ValueError(f"--null-prompt-embeds {path}: expected (L, {config.cond_dim}) or (1, L, {config.cond_dim}) "
                         f"(the empty prompt's embedding, L = {MAX_LENGTH} tokens for IF), got {emb.shape}")
    if not np.issubdtype(emb.dtype, np.floating) or not np.all(np.isfinite(emb)):
        raise ValueError(f"--null-prompt-embeds {path}: expected finite floats, got {emb.dtype}"
                         + ("" if not np.issubdtype(emb.dtype, np.floating) else " with inf/nan"))
    return np.asarray(emb, np.float32)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=usage_name("if"), formatter_class=HelpFormatter,
        description="Convert DeepFloyd IF stage I (UNet + schedule) into a jtaba checkpoint and compute T5 prompt "
                    "embeddings (the empty prompt, unless --null-prompt-embeds gives it or --no-text-encoder goes "
                    "without; --prompts optionally).",
        epilog=f"Examples:\n  python convert/if.py --src {IF_HUB_ID} --out ckpt/if --prompts prompts.txt\n"
               "  python convert/if.py --src path/to/IF-I-XL-v1.0 --out ckpt/if   (a downloaded pipeline folder)\n"
               "  python convert/if.py --src path/to/IF-I-XL-v1.0 --out ckpt/if --null-prompt-embeds null.npy   "
               "(no T5)\n"
               f"{GATED}.")
    p.add_argument("--src", required=True, help=f"hub id ({IF_HUB_ID}) or a local diffusers IF pipeline folder "
                                                "with unet/ and scheduler/ (and text_encoder/ tokenizer/)")
    add_common_args(p)
    p.add_argument("--prompts", metavar="FILE.txt", help="prompts, one per line -> DIR/prompts/<stem>.npy "
                                                         "(needs the T5; default: none)")
    null = p.add_mutually_exclusive_group()
    null.add_argument("--null-prompt-embeds", metavar="FILE.npy",
                      help="the empty prompt's embedding, (77, D) or (1, 77, D), copied to DIR/null_prompt.npy: no "
                           "T5 needed (unless --prompts); default: computed with T5")
    null.add_argument("--no-text-encoder", action="store_true",
                      help="no T5 and no DIR/null_prompt.npy: the model is marked text-conditioned, so runs need "
                           "prompt embeddings and guidance is unavailable until a null prompt is added; default: "
                           "use T5")
    p.add_argument("--text-encoder", metavar="SRC", help="hub id or folder with text_encoder/ and tokenizer/ "
                                                         "(default: --src)")
    p.add_argument("--param-dtype", choices=PARAM_DTYPES, default="float16",
                   help="dtype of the stored params (default float16: the hub weights' precision)")
    p.add_argument("--encoder-dtype", choices=("float16", "bfloat16", "float32"), default="float16",
                   help="T5 compute dtype (default float16 as upstream; float32 needs ~19 GB of RAM)")
    p.add_argument("--device", default=None, help="torch device for T5 (default cuda if available, else cpu)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per T5 call")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Flag values and combinations, before anything is read."""
    check_source(args.src)
    if args.batch_size < 1:
        fail(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.no_text_encoder and args.prompts:
        fail("--prompts needs the T5 text encoder: drop --no-text-encoder (or encode the prompts elsewhere)")
    if args.no_text_encoder and args.text_encoder:
        fail("--text-encoder is not used with --no-text-encoder")
    if args.prompts and not os.path.isfile(args.prompts):
        fail(f"--prompts {args.prompts}: no such file")
    if args.null_prompt_embeds and not os.path.isfile(args.null_prompt_embeds):
        fail(f"--null-prompt-embeds {args.null_prompt_embeds}: no such file")
    if args.device is not None:
        import torch

        try:
            torch.device(args.device)
        except (RuntimeError, ValueError) as e:
            fail(f"--device {args.device!r} is not a torch device ({str(e).splitlines()[0]})")


@entry_point
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    check_args(args)
    uses_t5 = bool(args.prompts) or not (args.no_text_encoder or args.null_prompt_embeds)
    with staged_output(args):
        if uses_t5:
            require_text_encoder_deps()  # checked first: the T5 step comes after the long UNet conversion
        local = os.path.isdir(args.src)
        if not local and os.path.exists(args.src):
            fail(f"--src {args.src}: expected a hub id or a pipeline folder (unet/ scheduler/)")
        with source_errors():
            folder = args.src if local else fetch_configs(args.src)
            config, _, _ = plan_folder(folder)  # every option checked before the weights are fetched / read
            null = read_null_prompt(args.null_prompt_embeds, config) if args.null_prompt_embeds else None
            if not local:
                folder = fetch_weights(args.src)
            config_dict, params = convert_folder(folder, args.param_dtype)
        enc_src = None if not uses_t5 else (args.text_encoder or args.src)
        null_source = "t5" if null is None else os.path.abspath(args.null_prompt_embeds)
        config_dict["extras"] = {
            "source": args.src, "param_dtype": args.param_dtype, "text_conditioned": True,
            "null_prompt": None if args.no_text_encoder else NULL_PROMPT,
            "null_prompt_source": None if args.no_text_encoder else null_source,
            "text_encoder": enc_src, "encoder_dtype": args.encoder_dtype if enc_src else None,
            "max_length": MAX_LENGTH if null is None else int(null.shape[0])}
        save_checkpoint(args.out, config_dict, params)
        del params
        gc.collect()
        print(f"converted (if_unet, {config_dict['model']['block_out_channels']} channels, "
              f"params {args.param_dtype})")
        if null is not None:
            path = os.path.join(args.out, NULL_PROMPT)
            np.save(path, null)
            print(f"wrote {path} (from {args.null_prompt_embeds})")
        elif args.no_text_encoder:
            print("no null prompt written (--no-text-encoder): runs need prompt embeddings (cond); guidance needs "
                  f"the empty prompt's embedding as {NULL_PROMPT} beside config.json")
        if not uses_t5:
            return

        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        flat_folder = os.path.isdir(enc_src) and not os.path.isdir(os.path.join(enc_src, "text_encoder"))
        encode = t5_encoder(enc_src, device, args.encoder_dtype, subfolder=not flat_folder)
        if null is None:
            print(f"wrote {write_null_prompt(args.out, encode)}")
        if args.prompts:
            name = os.path.splitext(os.path.basename(args.prompts))[0]
            meta = {"text_encoder": enc_src, "encoder_dtype": args.encoder_dtype, "max_length": MAX_LENGTH,
                    "preprocess": "lower().strip() (clean_caption=False)"}
            path = write_prompt_set(args.out, name, read_prompts(args.prompts), encode, meta, args.batch_size)
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
