"""Convert DiT (facebookresearch/DiT checkpoint or diffusers ``DiTTransformer2DModel``) plus its sd-vae-ft
AutoencoderKL into a jtaba checkpoint: DIR (family ``dit``) and DIR/decoder (family ``vae``).

Run from the repository root: ``python convert/dit.py --src facebook/DiT-XL-2-256 --out DIR`` (see ``--help``).

Without a VAE (``--no-vae``, or a facebook .pt / transformer folder given no ``--vae``) only DIR is written: sampling
and inversion work on latents, ``jtaba.decode`` says no decoder is stored. ``--guidance`` records which classifier-
free guidance convention the model uses (``DiffusionConfig.guidance_channels``): ``diffusers`` (default, every eps
channel, diffusers' DiTPipeline) or ``facebook`` (facebookresearch/DiT ``forward_with_cfg``: the first 3 channels
guided, the 4th taken unguided from the conditional prediction). Every flag and config value is checked before any
weights are read.

Both layouts map onto the same Flax params (``jtaba.models.dit``). diffusers repeats the timestep/label embedder
in every block: the copies are checked tensor by tensor; equal copies (the hub checkpoint) become the single
shared embedder, distinct ones are kept per block (``Config.block_embedders``).
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from convert.autoencoders import convert_autoencoder_kl
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
    hub_download,
    identity,
    load_state_dict,
    source_errors,
    staged_output,
    to_numpy,
    usage_name,
)
from jtaba import io
from jtaba.checkpoint import save_checkpoint
from jtaba.cli import HelpFormatter, entry_point
from jtaba.diffusion import DiffusionConfig
from jtaba.models import dit

# facebook/DiT-XL-2-256 scheduler/scheduler_config.json (used for the facebook .pt, which carries no schedule).
DIT_HUB_SCHEDULER = {"_class_name": "DDIMScheduler", "beta_schedule": "linear", "beta_start": 0.0001,
                     "beta_end": 0.02, "num_train_timesteps": 1000, "clip_sample": False, "set_alpha_to_one": True,
                     "steps_offset": 0, "prediction_type": "epsilon", "timestep_spacing": "leading"}
VAE_HUB_IDS = ("stabilityai/sd-vae-ft-ema", "stabilityai/sd-vae-ft-mse")
# --guidance: DiffusionConfig.guidance_channels of each convention.
GUIDANCE = {"diffusers": None, "facebook": 3}
_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


# ---- DiT rules -----------------------------------------------------------------------------------------------
def _slice(i: int, n: int, then):
    """Rows [i·n, (i+1)·n) of a fused tensor (facebook qkv), then ``then``."""
    return lambda w: then(w[i * n:(i + 1) * n])


def _linear(rules: dict, path: tuple, key: str, transform=dense, bias_transform=identity) -> None:
    rules[path + ("kernel",)] = Rule(key + ".weight", transform)
    rules[path + ("bias",)] = Rule(key + ".bias", bias_transform)


def _embedder_rules(rules: dict, name: str, t_lin1: str, t_lin2: str, table: str) -> None:
    _linear(rules, (name, "t_linear_1"), t_lin1)
    _linear(rules, (name, "t_linear_2"), t_lin2)
    rules[(name, "y_embedding", "embedding")] = Rule(table)


def facebook_rules(config: dit.Config) -> dict[tuple, Rule]:
    """Flax path -> rule for a ``models.DiT`` state dict (``pos_embed`` is a buffer, checked separately)."""
    rules: dict[tuple, Rule] = {}
    _linear(rules, ("x_embedder",), "x_embedder.proj", conv2d)
    _embedder_rules(rules, "embedder", "t_embedder.mlp.0", "t_embedder.mlp.2", "y_embedder.embedding_table.weight")
    d = config.hidden_size
    for i in range(config.depth):
        src, dst = f"blocks.{i}", f"blocks_{i}"
        for j, name in enumerate("qkv"):
            _linear(rules, (dst, "attn", name), f"{src}.attn.qkv", _slice(j, d, dense), _slice(j, d, identity))
        _linear(rules, (dst, "attn", "proj"), f"{src}.attn.proj")
        _linear(rules, (dst, "fc1"), f"{src}.mlp.fc1")
        _linear(rules, (dst, "fc2"), f"{src}.mlp.fc2")
        _linear(rules, (dst, "adaLN_modulation"), f"{src}.adaLN_modulation.1")
    _linear(rules, ("final_linear",), "final_layer.linear")
    _linear(rules, ("final_adaLN_modulation",), "final_layer.adaLN_modulation.1")
    return rules


def _diffusers_embedder_keys(i: int) -> list[str]:
    e = f"transformer_blocks.{i}.norm1.emb"
    return [f"{e}.timestep_embedder.linear_{j}.{w}" for j in (1, 2) for w in ("weight", "bias")] + \
        [f"{e}.class_embedder.embedding_table.weight"]


def diffusers_rules(config: dit.Config) -> tuple[dict[tuple, Rule], list[str]]:
    """(Flax path -> rule, ignored keys) for a ``DiTTransformer2DModel`` state dict. With a shared embedder the
    copies in blocks 1.. are ignored (after ``embedders_are_shared`` checked them)."""
    rules: dict[tuple, Rule] = {}
    _linear(rules, ("x_embedder",), "pos_embed.proj", conv2d)
    ignore: list[str] = []
    for i in range(config.depth):
        src, dst = f"transformer_blocks.{i}", f"blocks_{i}"
        e = f"{src}.norm1.emb"
        if config.block_embedders or i == 0:
            name = f"embedder_{i}" if config.block_embedders else "embedder"
            _embedder_rules(rules, name, f"{e}.timestep_embedder.linear_1", f"{e}.timestep_embedder.linear_2",
                            f"{e}.class_embedder.embedding_table.weight")
        else:
            ignore += _diffusers_embedder_keys(i)
        _linear(rules, (dst, "adaLN_modulation"), f"{src}.norm1.linear")
        for name, key in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj", "to_out.0")):
            _linear(rules, (dst, "attn", name), f"{src}.attn1.{key}")
        _linear(rules, (dst, "fc1"), f"{src}.ff.net.0.proj")
        _linear(rules, (dst, "fc2"), f"{src}.ff.net.2")
    _linear(rules, ("final_adaLN_modulation",), "proj_out_1")
    _linear(rules, ("final_linear",), "proj_out_2")
    return rules, ignore


def embedders_are_shared(state: Mapping[str, Any], depth: int) -> bool:
    """Whether every block's ``norm1.emb`` tensors equal block 0's (read one pair at a time)."""
    first = _diffusers_embedder_keys(0)
    for i in range(1, depth):
        for k0, ki in zip(first, _diffusers_embedder_keys(i)):
            if k0 not in state or ki not in state:
                return True  # missing keys are reported by the strict accounting
            a, b = to_numpy(state[k0]), to_numpy(state[ki])
            if a.shape != b.shape or not np.array_equal(a, b):
                return False
    return True


def target_shapes(config: dit.Config) -> dict[tuple, tuple]:
    """Flat Flax param path -> shape, via ``jax.eval_shape`` (nothing allocated)."""
    net = dit.Network(config)
    x = jnp.zeros((1, config.input_size, config.input_size, config.in_channels), jnp.float32)
    return eval_shapes(lambda: net.init(jax.random.key(0), x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))["params"])


def convert_facebook(state: Mapping[str, Any], kwargs: Mapping[str, Any], source_name: str = "source"):
    """facebook ``models.DiT`` state dict + constructor kwargs -> (Config, Flax params of numpy float32).
    The stored ``pos_embed`` must equal the recomputed sin-cos table (it pins input_size and hidden_size)."""
    config = dit.Config.from_facebook(dict(kwargs))
    if "pos_embed" in state:
        stored = to_numpy(state["pos_embed"])
        table = dit.pos_embed_table(config.hidden_size, config.input_size // config.patch_size)[None]
        if stored.shape != table.shape or np.max(np.abs(stored - table)) > 1e-6:
            raise ConversionError(f"{source_name}: pos_embed {tuple(stored.shape)} is not the sin-cos table of "
                                  f"input_size {config.input_size}, patch {config.patch_size}, hidden "
                                  f"{config.hidden_size} ({tuple(table.shape)}): wrong --flags?")
    params = apply_rules(state, target_shapes(config), facebook_rules(config), ignore=["pos_embed"],
                         source_name=source_name)
    return config, params


def convert_diffusers(state: Mapping[str, Any], transformer_config: Mapping[str, Any], source_name: str = "source"):
    """``DiTTransformer2DModel`` state dict + its config.json -> (Config, Flax params of numpy float32)."""
    config = dit.Config.from_diffusers(dict(transformer_config))
    if not embedders_are_shared(state, config.depth):
        config = dit.Config.from_diffusers(dict(transformer_config), block_embedders=True)
    rules, ignore = diffusers_rules(config)
    params = apply_rules(state, target_shapes(config), rules, ignore=ignore, source_name=source_name)
    return config, params


def facebook_input_size(state: Mapping[str, Any], kwargs: Mapping[str, Any]) -> dict:
    """kwargs with ``input_size`` inferred from the stored ``pos_embed`` when not given (256 -> 32, 512 -> 64)."""
    kwargs = dict(kwargs)
    if "input_size" not in kwargs and "pos_embed" in state:
        n = int(state["pos_embed"].shape[1])
        kwargs["input_size"] = int(round(n ** 0.5)) * int(kwargs.get("patch_size", 2))
    return kwargs


# ---- sources ---------------------------------------------------------------------------------------------------
def fetch_pipeline(repo_id: str, with_vae: bool = True) -> str:
    """Download the DiT pipeline files (configs, transformer and, ``with_vae``, vae weights) of a hub
    repository."""
    parts = ("transformer", "vae") if with_vae else ("transformer",)
    folder = hub_download(repo_id, ["*.json"] + [f"{c}/diffusion_pytorch_model.safetensors" for c in parts])
    missing = [c for c in parts if not _has_weights(os.path.join(folder, c))]
    if missing:  # repositories with .bin weights only
        folder = hub_download(repo_id, ["*.json"] + [f"{c}/diffusion_pytorch_model.bin" for c in missing])
    return folder


def _has_weights(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, w)) for w in _WEIGHTS)


def resolve_vae(src: str) -> str:
    """A local diffusers AutoencoderKL folder, or a hub id downloaded (config.json + weights)."""
    if os.path.isdir(src):
        return src
    if os.path.exists(src):
        fail(f"--vae {src}: expected a diffusers AutoencoderKL folder (config.json + weights) or a hub id "
             f"({' / '.join(VAE_HUB_IDS)})")
    check_source(src, "--vae")
    folder = hub_download(src, ["config.json", "diffusion_pytorch_model.safetensors"], " (or --vae FOLDER)")
    return folder if _has_weights(folder) else hub_download(src, ["config.json", "diffusion_pytorch_model.bin"],
                                                            " (or --vae FOLDER)")


def check_vae_config(folder: str) -> None:
    """The AutoencoderKL folder's config.json present and accepted (before its weights are read)."""
    from jtaba.models import vae

    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} missing (expected a diffusers AutoencoderKL folder)")
    try:
        vae.Config.from_diffusers(io.read_json(path))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def convert_vae(folder: str) -> tuple[dict, dict]:
    """A diffusers AutoencoderKL folder -> (jtaba config dict of family ``vae``, params)."""
    return convert_autoencoder_kl(load_state_dict(folder), io.read_json(os.path.join(folder, "config.json")),
                                  source_name=folder)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=usage_name("dit"),
        formatter_class=HelpFormatter,
        description="Convert a DiT (class-conditional latent transformer) and its AutoencoderKL into a jtaba "
                    "checkpoint: DIR (family dit) + DIR/decoder (family vae).",
        epilog="Examples:\n"
               "  python convert/dit.py --src facebook/DiT-XL-2-256 --out ckpt/dit256   (hub; the model of the "
               "paper)\n"
               "  python convert/dit.py --src path/to/DiT-XL-2-256 --out ckpt/dit256    (the same, downloaded)\n"
               "  python convert/dit.py --src DiT-XL-2-256x256.pt --vae stabilityai/sd-vae-ft-ema --out ckpt/dit\n"
               "  python convert/dit.py --src DiT-XL-2-256x256.pt --guidance facebook --out ckpt/dit-latents   "
               "(no VAE: latents only; facebook's guidance)\n"
               "The facebook release: https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt")
    p.add_argument("--src", required=True,
                   help="a facebookresearch/DiT checkpoint (.pt state dict, e.g. DiT-XL-2-256x256.pt), a diffusers "
                        "DiT pipeline folder (transformer/ vae/ scheduler/), a DiTTransformer2DModel folder, or a "
                        "hub id such as facebook/DiT-XL-2-256 (downloaded through huggingface_hub)")
    p.add_argument("--flags", metavar="FILE.json",
                   help="facebook .pt only: JSON object of models.DiT constructor arguments (input_size, "
                        "patch_size, hidden_size, depth, num_heads, ...; or an object with a 'config' key such as "
                        "a golden config.json); default DiT-XL/2 with input_size read from pos_embed")
    vae = p.add_mutually_exclusive_group()
    vae.add_argument("--vae", help="AutoencoderKL for DIR/decoder: local diffusers folder or hub id "
                                   f"({' / '.join(VAE_HUB_IDS)}); default the pipeline's vae/, none for a .pt or "
                                   "a transformer-only folder (then no decoder/ is written)")
    vae.add_argument("--no-vae", action="store_true",
                     help="write no DIR/decoder even when the source has a VAE (sampling and inversion work on "
                          "latents; jtaba.decode then says no decoder is stored); default: convert the VAE")
    p.add_argument("--guidance", choices=sorted(GUIDANCE), default="diffusers",
                   help="classifier-free guidance convention stored with the model: diffusers = guide every eps "
                        "channel (diffusers DiTPipeline), facebook = guide the first 3 channels and keep the 4th "
                        "conditional (facebookresearch/DiT forward_with_cfg, 'for exact reproducibility')")
    add_common_args(p)
    return p


def _facebook_flags(path: str | None) -> dict:
    if path is None:
        return {}
    try:
        flags = io.read_json(path)
    except OSError as e:
        fail(f"--flags {path}: cannot read it ({e.strerror})")
    except ValueError as e:
        fail(f"--flags {path}: not valid JSON ({e})")
    if not isinstance(flags, dict):
        fail(f"--flags {path}: expected a JSON object")
    flags = flags.get("config", flags.get("flags", flags))
    if not isinstance(flags, dict):
        fail(f"--flags {path}: expected a JSON object of models.DiT arguments")
    return flags


def resolve_source(args) -> dict:
    """Where each part comes from: {"pt" | "transformer": path, "vae": folder, hub id or None, "scheduler": config,
    "extras": {...}}; hub ids are downloaded (the VAE only when it will be converted)."""
    src = args.src
    check_source(src)
    out = {"scheduler": DIT_HUB_SCHEDULER, "vae": args.vae, "extras": {"source": src}}
    if os.path.isfile(src):
        out["pt"] = src
        out["extras"]["layout"] = "facebook"
    else:
        if args.flags:
            fail("--flags applies to a facebook .pt only (diffusers folders carry their config.json)")
        if not os.path.exists(src):
            src = fetch_pipeline(src, with_vae=not (args.no_vae or args.vae))
        out["transformer"] = src
        out["extras"]["layout"] = "diffusers"
        if os.path.isdir(os.path.join(src, "transformer")):  # pipeline folder
            out["transformer"] = os.path.join(src, "transformer")
            if args.vae is None and os.path.isdir(os.path.join(src, "vae")):
                out["vae"] = os.path.join(src, "vae")
            sched = os.path.join(src, "scheduler", "scheduler_config.json")
            if os.path.exists(sched):
                out["scheduler"] = io.read_json(sched)
            index = os.path.join(src, "model_index.json")
            if os.path.exists(index) and "id2label" in io.read_json(index):
                out["extras"]["id2label"] = io.read_json(index)["id2label"]
    if args.no_vae:
        out["vae"] = None
    return out


def check_before_weights(source: dict, args, vae_folder: str | None) -> DiffusionConfig:
    """Every value the conversion depends on, checked before any weights are read: the DiT arguments (facebook
    --flags) or config.json, the schedule, the VAE's config.json; returns the DiffusionConfig with the
    ``--guidance`` convention (its ``learned_sigma`` is set from the converted network later)."""
    if "pt" in source:
        flags = _facebook_flags(args.flags)
        probe = dict(flags)
        if "input_size" not in probe:  # read from pos_embed later; any multiple of the patch checks the rest
            patch = probe.get("patch_size", 2)
            probe["input_size"] = patch if isinstance(patch, int) and not isinstance(patch, bool) and patch > 0 else 2
        dit.Config.from_facebook(probe)
    else:
        path = os.path.join(source["transformer"], "config.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} missing (expected a DiTTransformer2DModel folder or a DiT pipeline)")
        try:
            dit.Config.from_diffusers(io.read_json(path))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None
    try:
        diffusion = DiffusionConfig.from_diffusers_scheduler(source["scheduler"], learned_sigma=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"scheduler config: {e}") from None
    if vae_folder is not None:
        check_vae_config(vae_folder)
    return diffusion.replace(guidance_channels=GUIDANCE[args.guidance])


@entry_point
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with staged_output(args):
        source = resolve_source(args)
        extras = source["extras"]
        with source_errors():
            vae_folder = None if source["vae"] is None else resolve_vae(source["vae"])
            diffusion = check_before_weights(source, args, vae_folder)
            if vae_folder is not None:
                vae_config, vae_params = convert_vae(vae_folder)  # small; its errors come first
            if "pt" in source:
                state = load_state_dict(source["pt"])
                kwargs = facebook_input_size(state, _facebook_flags(args.flags))
                config, params = convert_facebook(state, kwargs, source_name=source["pt"])
                extras["facebook_kwargs"] = kwargs
            else:
                tdir = source["transformer"]
                state = load_state_dict(tdir)
                config, params = convert_diffusers(state, io.read_json(os.path.join(tdir, "config.json")),
                                                   source_name=tdir)
            del state
            diffusion = diffusion.replace(learned_sigma=config.learn_sigma)
        extras.update(latent=True, guidance=args.guidance, decoder="decoder" if vae_folder is not None else None)
        save_checkpoint(args.out, {"family": "dit", "model": config.to_dict(), "diffusion": diffusion.to_dict(),
                                   "extras": extras}, params)
        del params
        if vae_folder is not None:
            save_checkpoint(os.path.join(args.out, "decoder"), vae_config, vae_params)
            print(f"converted (dit, {config.input_size}x{config.input_size} latents, depth {config.depth}, "
                  f"{args.guidance} guidance) and {os.path.join(args.out, 'decoder')} (vae)")
        else:
            why = "--no-vae" if args.no_vae else f"{args.src} carries no VAE and no --vae was given"
            print(f"converted (dit, {config.input_size}x{config.input_size} latents, depth {config.depth}, "
                  f"{args.guidance} guidance) without a decoder ({why}): sampling and inversion work on latents; "
                  f"to decode, convert again with --vae ({' / '.join(VAE_HUB_IDS)} or a diffusers AutoencoderKL "
                  "folder)")


if __name__ == "__main__":
    main()
