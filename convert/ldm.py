"""Convert the LDM CelebA-HQ 256 pipeline (``CompVis/ldm-celebahq-256``: ``unet/`` UNet2DModel, ``vqvae/``
VQModel, ``scheduler/`` DDIMScheduler) into jtaba checkpoints: DIR (family ``unet2d``, with the scheduler's
schedule) and DIR/decoder (family ``vq``).

Run from the repository root: ``python convert/ldm.py --src CompVis/ldm-celebahq-256 --out DIR`` (hub id, through
``huggingface_hub.snapshot_download``) or ``--src FOLDER`` (a downloaded pipeline folder with unet/ vqvae/
scheduler/). Old hub weights name attention params ``query/key/value/proj_attn``; they are renamed as diffusers
does on load. Every source tensor must be used exactly once (``convert.common.apply_rules``).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from convert.common import (
    add_common_args,
    apply_rules,
    check_source,
    eval_shapes,
    fail,
    hub_download,
    load_state_dict,
    source_errors,
    staged_output,
    usage_name,
)
from convert.diffusers_keys import diffusers_rules, rename_deprecated_attention
from jtaba.checkpoint import save_checkpoint
from jtaba.cli import HelpFormatter, entry_point
from jtaba.diffusion import DiffusionConfig
from jtaba.models import unet2d, vq

HUB_ID = "CompVis/ldm-celebahq-256"
PATTERNS = ["model_index.json", "unet/*", "vqvae/*", "scheduler/*"]
CONFIGS = ("unet/config.json", "vqvae/config.json", "scheduler/scheduler_config.json")


def convert_unet(state: Mapping[str, Any], config_json: Mapping[str, Any],
                 source_name: str = "unet") -> tuple[unet2d.Config, dict]:
    """A diffusers UNet2DModel state dict + its config.json -> (Config, flax params)."""
    config = unet2d.Config.from_diffusers(config_json)
    net = unet2d.Network(config)
    size = 2 ** (len(config.block_out_channels) - 1)  # smallest input; param shapes do not depend on it
    x = jnp.zeros((1, size, size, config.in_channels), jnp.float32)
    shapes = eval_shapes(lambda: net.init(jax.random.key(0), x, jnp.zeros((1,), jnp.float32))["params"])
    params = apply_rules(rename_deprecated_attention(state), shapes, diffusers_rules(shapes), source_name=source_name)
    return config, params


def convert_vq(state: Mapping[str, Any], config_json: Mapping[str, Any],
               source_name: str = "vqvae") -> tuple[vq.Config, dict]:
    """A diffusers VQModel state dict + its config.json -> (Config, flax params) (encoder, quant_conv, codebook,
    post_quant_conv, decoder: every tensor of the file)."""
    config = vq.Config.from_diffusers(config_json)
    net = vq.Network(config)
    size = 2 ** (len(config.block_out_channels) - 1)
    x = jnp.zeros((1, size, size, config.in_channels), jnp.float32)
    shapes = eval_shapes(lambda: net.init(jax.random.key(0), x)["params"])
    params = apply_rules(rename_deprecated_attention(state), shapes, diffusers_rules(shapes), source_name=source_name)
    return config, params


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} missing (expected a diffusers LDM pipeline folder: unet/ vqvae/ scheduler/)")
    with open(path) as f:
        return json.load(f)


def fetch(repo_id: str) -> str:
    """``snapshot_download`` of the pipeline's unet/, vqvae/ and scheduler/; offline or unreachable hub: exit
    saying what to download and where to put it."""
    return hub_download(repo_id, PATTERNS, " (a folder with unet/ vqvae/ scheduler/)")


def convert_unet_folder(folder: str) -> tuple[dict, dict]:
    """Pipeline folder -> (jtaba config dict of family ``unet2d`` with the scheduler's schedule, params)."""
    unet_dir = os.path.join(folder, "unet")
    sched = _read_json(os.path.join(folder, "scheduler", "scheduler_config.json"))
    diffusion = DiffusionConfig.from_diffusers_scheduler(sched, learned_sigma=False)  # checked before the weights
    config, params = convert_unet(load_state_dict(unet_dir), _read_json(os.path.join(unet_dir, "config.json")),
                                  source_name=unet_dir)
    return {"family": "unet2d", "model": config.to_dict(), "diffusion": diffusion.to_dict(),
            "extras": {"decoder": "decoder"}}, params


def convert_vq_folder(folder: str) -> tuple[dict, dict]:
    """Pipeline folder -> (jtaba config dict of family ``vq``, params)."""
    vq_dir = os.path.join(folder, "vqvae")
    config, params = convert_vq(load_state_dict(vq_dir), _read_json(os.path.join(vq_dir, "config.json")),
                                source_name=vq_dir)
    return {"family": "vq", "model": config.to_dict(), "extras": {}}, params


def check_configs(folder: str) -> None:
    """Every config of the pipeline folder present and accepted (UNet and VQ options, the schedule), so a bad
    value is named before any weights are read."""
    unet_cfg, vq_cfg, sched = (_read_json(os.path.join(folder, name)) for name in CONFIGS)
    for what, check in (("unet/config.json", lambda: unet2d.Config.from_diffusers(unet_cfg)),
                        ("vqvae/config.json", lambda: vq.Config.from_diffusers(vq_cfg)),
                        ("scheduler/scheduler_config.json",
                         lambda: DiffusionConfig.from_diffusers_scheduler(sched, learned_sigma=False))):
        try:
            check()
        except (TypeError, ValueError) as e:
            raise ValueError(f"{os.path.join(folder, what)}: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=usage_name("ldm"), formatter_class=HelpFormatter,
        description="Convert the LDM CelebA-HQ pipeline (UNet2DModel + VQModel + DDIM schedule) into jtaba "
                    "checkpoints: DIR (family unet2d) and DIR/decoder (family vq).",
        epilog=f"Examples:\n  python convert/ldm.py --src {HUB_ID} --out ckpt/ldm\n"
               "  python convert/ldm.py --src path/to/ldm-celebahq-256 --out ckpt/ldm   (downloaded folder)")
    p.add_argument("--src", required=True,
                   help=f"hub id ({HUB_ID}) or a local diffusers pipeline folder with unet/ vqvae/ scheduler/")
    add_common_args(p)
    return p


@entry_point
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    check_source(args.src)
    with staged_output(args):
        if os.path.exists(args.src) and not os.path.isdir(args.src):
            fail(f"--src {args.src}: expected a hub id or a pipeline folder (unet/ vqvae/ scheduler/)")
        folder = args.src if os.path.isdir(args.src) else fetch(args.src)
        decoder_dir = os.path.join(args.out, "decoder")
        with source_errors():  # one model in memory at a time
            check_configs(folder)  # all present and valid before any weights are read
            unet_ckpt, params = convert_unet_folder(folder)
            unet_ckpt["extras"]["source"] = args.src
            save_checkpoint(args.out, unet_ckpt, params)
            del params
            vq_ckpt, params = convert_vq_folder(folder)
            vq_ckpt["extras"]["source"] = args.src
            save_checkpoint(decoder_dir, vq_ckpt, params)
        print(f"converted (unet2d, {unet_ckpt['model']['block_out_channels']} channels) and {decoder_dir} (vq)")


if __name__ == "__main__":
    main()
