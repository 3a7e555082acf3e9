"""Convert a guided-diffusion / improved-diffusion UNet state dict (ADM-32, ADM-64, ADM-256 or any other
``create_model_and_diffusion`` configuration) into a jtaba checkpoint of family ``adm``.

Run from the repository root: ``python convert/adm.py --model=adm32 --src cifar10_uncond_50M_500K.pt --out DIR``
(see ``--help``).
"""
from __future__ import annotations

import argparse
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from convert.common import (
    ConversionError,
    Rule,
    add_common_args,
    apply_rules,
    conv1d_as_dense,
    conv2d,
    dense,
    eval_shapes,
    fail,
    identity,
    load_state_dict,
    read_flags_file,
    source_errors,
    staged_output,
    usage_name,
)
from jtaba.checkpoint import save_checkpoint
from jtaba.cli import HelpFormatter, entry_point
from jtaba.diffusion import DiffusionConfig
from jtaba.models.adm import FLAG_DEFAULTS, PRESETS, SAMPLING_FLAGS, Config, Network, upstream_flags

RELEASES = {
    "adm32": "https://openaipublic.blob.core.windows.net/diffusion/march-2021/cifar10_uncond_50M_500K.pt",
    "adm64": "https://openaipublic.blob.core.windows.net/diffusion/march-2021/imagenet64_uncond_100M_1500K.pt",
    "adm256": "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt",
}

_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def normalize_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    """Upstream defaults filled in, sampling-only flags dropped; unknown flag names raise ``ConversionError``."""
    unknown = sorted(set(flags) - set(FLAG_DEFAULTS) - set(SAMPLING_FLAGS))
    if unknown:
        raise ConversionError(f"unknown guided-diffusion flags {unknown}; known: {sorted(FLAG_DEFAULTS)}")
    return upstream_flags(**flags)


def torch_key(path: tuple[str, ...]) -> str:
    """Flax param path -> torch key: ``("input_blocks_3_1", "qkv", "kernel")`` -> ``input_blocks.3.1.qkv.weight``."""
    return ".".join([re.sub(r"_(\d+)", r".\1", p) for p in path[:-1]] + [_LEAF[path[-1]]])


def rule_for(path: tuple[str, ...], shape: tuple) -> Rule:
    if path[-1] != "kernel":
        return Rule(torch_key(path), identity)
    if len(shape) == 4:
        return Rule(torch_key(path), conv2d)
    return Rule(torch_key(path), conv1d_as_dense if path[-2] in ("qkv", "proj_out") else dense)


def target_shapes(config: Config) -> dict[tuple, tuple]:
    """Flat Flax param path -> shape, via ``jax.eval_shape`` (nothing allocated)."""
    net = Network(config)
    x = jnp.zeros((1, config.image_size, config.image_size, config.in_channels), jnp.float32)
    t = jnp.zeros((1,), jnp.float32)
    cond = None if config.num_classes is None else jnp.zeros((1,), jnp.int32)
    return eval_shapes(lambda: net.init(jax.random.key(0), x, t, cond)["params"])


def plan(flags: Mapping[str, Any]) -> tuple[dict[str, Any], Config, DiffusionConfig, dict[tuple, tuple]]:
    """Everything the flags decide, checked before any weights are read: (normalized flags, network Config,
    DiffusionConfig, target shapes). Raises ``ConversionError`` for unknown names and ``ValueError`` naming a bad
    value (type, enum, range) or an architecture the flags cannot build."""
    flags = normalize_flags(flags)
    config = Config.from_flags(flags)
    diffusion = DiffusionConfig.from_adm_flags(flags)
    try:
        shapes = target_shapes(config)
    except Exception as e:  # e.g. channels not divisible by GroupNorm's 32 groups or by num_head_channels
        raise ValueError(f"these flags do not build a guided-diffusion UNet: {type(e).__name__}: {e}") from None
    return flags, config, diffusion, shapes


def convert(state: Mapping[str, Any], flags: Mapping[str, Any], source_name: str = "source") -> tuple[dict, dict]:
    """torch ``UNetModel.state_dict()`` (values torch tensors or arrays, read one at a time) + guided-diffusion
    flags -> (jtaba config dict, nested Flax params of numpy float32). Raises ``ConversionError`` naming every
    missing, unexpected and wrong-shape key (after ``plan`` checked the flags)."""
    flags, config, diffusion, shapes = plan(flags)
    rules = {path: rule_for(path, shape) for path, shape in shapes.items()}
    params = apply_rules(state, shapes, rules, source_name=source_name)
    config_dict = {"family": "adm", "model": config.to_dict(), "diffusion": diffusion.to_dict(),
                   "extras": {"flags": flags}}
    return config_dict, params


def build_parser() -> argparse.ArgumentParser:
    releases = "\n".join(f"  {name:7s} {url}" for name, url in RELEASES.items())
    p = argparse.ArgumentParser(
        prog=usage_name("adm"),
        formatter_class=HelpFormatter,
        description="Convert a guided-diffusion (ADM) UNet checkpoint (torch state dict) to a jtaba checkpoint "
                    "(DIR/config.json + DIR/params).",
        epilog="Released checkpoints used by the paper (OpenAI, improved-/guided-diffusion):\n" + releases +
               "\n\nExamples:\n"
               "  python convert/adm.py --model=adm32 --src cifar10_uncond_50M_500K.pt --out ckpt/adm32\n"
               "  python convert/adm.py --flags my_flags.json --src model500000.pt --out ckpt/mine")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", choices=sorted(PRESETS),
                       help="preset with the exact flags of taba/models/adm/models.py: adm32 = CIFAR-10 32x32 "
                            "(get_openai_cifar; cosine 4000 steps, rescaled timesteps), adm64 = ImageNet 64x64 "
                            "(get_openai_imagenet; same schedule), adm256 = ImageNet 256x256 unconditional "
                            "(get_ddpm_imagenet256; linear 1000 steps, upstream ran its torso in fp16)")
    which.add_argument("--flags", metavar="FILE.json",
                       help="any other ADM: a JSON object of guided-diffusion create_model_and_diffusion flags "
                            "(image_size, num_channels, ..., learn_sigma, diffusion_steps, noise_schedule, "
                            "rescale_timesteps), or an object with a 'flags' key such as a golden config.json; "
                            "missing flags take the model_and_diffusion_defaults() values; timestep_respacing "
                            "and use_ddim are ignored (the number of DDIM steps is chosen at run time)")
    p.add_argument("--src", required=True, metavar="FILE.pt",
                   help="torch state dict of the UNet (torch.save(model.state_dict()), e.g. a released .pt above, "
                        "or a .safetensors file); read memory-mapped, converted tensor by tensor")
    add_common_args(p)
    return p


@entry_point
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with staged_output(args):
        flags = PRESETS[args.model] if args.model else read_flags_file(args.flags)
        try:  # every flag value checked before the (possibly large) weights are read
            plan(flags)
        except (ConversionError, ValueError) as e:
            fail(f"{'--flags ' + args.flags if args.flags else '--model ' + args.model}: {e}")
        try:
            state = load_state_dict(args.src)
        except ValueError as e:  # a truncated or damaged file, named by load_state_dict
            fail(str(e))
        except Exception as e:  # torch.load raises RuntimeError / UnpicklingError / OSError on bad files
            fail(f"cannot read {args.src}: {type(e).__name__}: {e}")
        with source_errors():
            config_dict, params = convert(state, flags, source_name=args.src)
        del state
        save_checkpoint(args.out, config_dict, params)
        print(f"converted (adm, {config_dict['model']['image_size']}px)")


if __name__ == "__main__":
    main()
