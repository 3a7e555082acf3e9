"""Guided-diffusion (ADM) UNet (``guided_diffusion/unet.py::UNetModel`` of the taba fork) in flax.linen, NHWC.

Submodule names mirror the torch state-dict keys with ``.N`` written ``_N`` (``input_blocks.3.1.qkv`` ->
``input_blocks_3_1/qkv``; ``out.2`` -> ``out_2``), so the converter maps keys by a regular rule.

Numerics follow upstream: GroupNorm (32 groups, eps 1e-5) and the attention softmax run in float32 and are cast
back; with a reduced compute ``dtype`` only the torso convolutions / attention projections run in it (upstream
``convert_to_fp16`` touches conv layers only), while the time embedding, the ResBlock embedding projections and
the output head stay float32. Params are always float32.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from jtaba.config import ConfigBase
from jtaba.models.diffusers_blocks import Upsample2D, timestep_embedding
from jtaba.models.ops import attention, avg_pool2, conv, group_norm, upsample_nearest

NUM_CLASSES = 1000
NORM_GROUPS, NORM_EPS = 32, 1e-5  # upstream GroupNorm32

# guided_diffusion.script_util.model_and_diffusion_defaults() (model and diffusion flags).
FLAG_DEFAULTS: dict[str, Any] = dict(
    image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1, num_head_channels=-1,
    attention_resolutions="16,8", channel_mult="", dropout=0.0, class_cond=False, use_checkpoint=False,
    use_scale_shift_norm=True, resblock_updown=False, use_fp16=False, use_new_attention_order=False,
    learn_sigma=False, diffusion_steps=1000, noise_schedule="linear", timestep_respacing="", use_kl=False,
    predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False,
)

# Flags that only choose sampling (steps are chosen at run time): accepted and dropped.
SAMPLING_FLAGS = ("timestep_respacing", "use_ddim")


def upstream_flags(**overrides) -> dict[str, Any]:
    """model_and_diffusion_defaults() with ``overrides``, without the sampling-only flags."""
    return {k: v for k, v in {**FLAG_DEFAULTS, **overrides}.items() if k not in SAMPLING_FLAGS}


# The configurations of taba/models/adm/models.py (get_openai_cifar, get_openai_imagenet, get_ddpm_imagenet256).
PRESETS: dict[str, dict[str, Any]] = {
    "adm32": upstream_flags(image_size=32, num_channels=128, num_res_blocks=3, learn_sigma=True,
                             diffusion_steps=4000, noise_schedule="cosine", rescale_learned_sigmas=True,
                             rescale_timesteps=True),
    "adm64": upstream_flags(image_size=64, class_cond=False, num_res_blocks=3, num_channels=128, learn_sigma=True,
                             noise_schedule="cosine", diffusion_steps=4000, rescale_learned_sigmas=True,
                             rescale_timesteps=True),
    "adm256": upstream_flags(image_size=256, num_channels=256, num_head_channels=64, num_res_blocks=2,
                              use_fp16=True, use_scale_shift_norm=True, resblock_updown=True,
                              attention_resolutions="32,16,8", class_cond=False, noise_schedule="linear",
                              diffusion_steps=1000, learn_sigma=True),
}


# Flag checks (``validate_flags``): booleans, and integers with their lower bound (-1 = "unset" where allowed).
_BOOL_FLAGS = tuple(k for k, v in FLAG_DEFAULTS.items() if isinstance(v, bool))
_INT_FLAGS = {"image_size": 1, "num_channels": 1, "num_res_blocks": 1, "num_heads": 1, "diffusion_steps": 1}
_INT_OR_UNSET_FLAGS = ("num_heads_upsample", "num_head_channels")
NOISE_SCHEDULES = ("linear", "cosine")


def _int_list(name: str, value: Any) -> tuple[int, ...]:
    """A comma-separated string of positive ints (or a list of them / one int) -> tuple."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        out = tuple(int(str(v).strip()) for v in items)
    except ValueError:
        out = ()
    if not out or any(v < 1 for v in out) or isinstance(value, bool):
        raise ValueError(f"guided-diffusion flag {name} must be comma-separated positive ints (e.g. \"16,8\"), "
                         f"got {value!r}")
    return out


def validate_flags(flags: Mapping[str, Any]) -> None:
    """Check every guided-diffusion flag's value (types, enums, ranges), naming the first bad one; flags outside
    ``FLAG_DEFAULTS`` are not looked at (the caller decides about unknown names)."""
    for name in _BOOL_FLAGS:
        if name in flags and not isinstance(flags[name], bool):
            raise ValueError(f"guided-diffusion flag {name} must be true or false, got {flags[name]!r}")
    for name, low in [*_INT_FLAGS.items(), *((n, None) for n in _INT_OR_UNSET_FLAGS)]:
        if name not in flags:
            continue
        v = flags[name]
        ok = isinstance(v, int) and not isinstance(v, bool) and (v >= low if low else (v == -1 or v >= 1))
        if not ok:
            want = f"an int >= {low}" if low else "-1 (unset) or an int >= 1"
            raise ValueError(f"guided-diffusion flag {name} must be {want}, got {v!r}")
    if "dropout" in flags:
        v = flags["dropout"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise ValueError(f"guided-diffusion flag dropout must be a number in [0, 1), got {v!r}")
    if flags.get("noise_schedule", "linear") not in NOISE_SCHEDULES:
        raise ValueError(f"guided-diffusion flag noise_schedule must be one of {', '.join(NOISE_SCHEDULES)}, got "
                         f"{flags['noise_schedule']!r}")
    if "attention_resolutions" in flags:
        _int_list("attention_resolutions", flags["attention_resolutions"])
    if flags.get("channel_mult", "") not in ("", None):
        _int_list("channel_mult", flags["channel_mult"])


# script_util.create_model: channel_mult "" -> chosen by image size (the taba fork adds 32).
DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2),
}


@dataclasses.dataclass(frozen=True)
class Config(ConfigBase):
    """``UNetModel`` constructor arguments. ``attention_ds``: downsample factors (1, 2, 4, ...) with attention.
    ``num_classes`` None = unconditional. ``use_fp16`` records upstream's torso dtype only (the compute dtype is
    ``Network.dtype``)."""
    image_size: int
    model_channels: int
    num_res_blocks: int
    attention_ds: tuple[int, ...]
    channel_mult: tuple[float, ...] = (1, 2, 4, 8)
    in_channels: int = 3
    out_channels: int = 3
    dropout: float = 0.0
    num_classes: int | None = None
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    use_fp16: bool = False

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any]) -> "Config":
        """From guided-diffusion ``create_model_and_diffusion`` flags (missing ones take upstream defaults); every
        value is checked first (``validate_flags``)."""
        validate_flags(flags)
        f = {**FLAG_DEFAULTS, **flags}
        size = int(f["image_size"])
        if f["channel_mult"] in ("", None):
            if size not in DEFAULT_CHANNEL_MULT:
                raise ValueError(f"unsupported image size: {size} (give channel_mult explicitly)")
            mult = DEFAULT_CHANNEL_MULT[size]
        else:
            mult = _int_list("channel_mult", f["channel_mult"])
        attention_ds = tuple(size // res for res in _int_list("attention_resolutions", f["attention_resolutions"]))
        return cls(
            image_size=size,
            model_channels=int(f["num_channels"]),
            num_res_blocks=int(f["num_res_blocks"]),
            attention_ds=attention_ds,
            channel_mult=mult,
            out_channels=6 if f["learn_sigma"] else 3,
            dropout=float(f["dropout"]),
            num_classes=NUM_CLASSES if f["class_cond"] else None,
            num_heads=int(f["num_heads"]),
            num_head_channels=int(f["num_head_channels"]),
            num_heads_upsample=int(f["num_heads_upsample"]),
            use_scale_shift_norm=bool(f["use_scale_shift_norm"]),
            resblock_updown=bool(f["resblock_updown"]),
            use_new_attention_order=bool(f["use_new_attention_order"]),
            use_fp16=bool(f["use_fp16"]),
        )


def num_attention_heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    if num_head_channels == -1:
        return num_heads
    if channels % num_head_channels:
        raise ValueError(f"attention channels {channels} not divisible by num_head_channels {num_head_channels}")
    return channels // num_head_channels


class Downsample(nn.Module):
    """Stride-2 3x3 conv (torch ``Downsample(use_conv=True)``, param ``op``)."""
    channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return conv(self.channels, 3, self.dtype, "op", stride=2)(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the (B, E) embedding; ``resample`` "up"/"down" resamples h and x after the
    first norm+SiLU (nearest / 2x2 average pool)."""
    out_channels: int
    use_scale_shift_norm: bool
    dropout: float = 0.0
    resample: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, emb, train: bool):
        h = nn.silu(group_norm(x, NORM_GROUPS, NORM_EPS, "in_layers_0"))
        if self.resample is not None:
            fn = upsample_nearest if self.resample == "up" else avg_pool2
            h, x = fn(h), fn(x)
        h = conv(self.out_channels, 3, self.dtype, "in_layers_2")(h)
        width = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
        emb_out = nn.Dense(width, name="emb_layers_1")(nn.silu(emb)).astype(h.dtype)[:, None, None, :]
        if self.use_scale_shift_norm:
            scale, shift = jnp.split(emb_out, 2, axis=-1)
            h = group_norm(h, NORM_GROUPS, NORM_EPS, "out_layers_0") * (1 + scale) + shift
        else:
            h = group_norm(h + emb_out, NORM_GROUPS, NORM_EPS, "out_layers_0")
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
        h = conv(self.out_channels, 3, self.dtype, "out_layers_3", zero_init=True)(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, self.dtype, "skip_connection", padding=0)(x)
        return x + h


class AttentionBlock(nn.Module):
    """Self-attention over all positions. ``new_order`` False = ``QKVAttentionLegacy``: the 3C qkv channels are
    head-major (head, q/k/v, ch); True = ``QKVAttention``: (q/k/v, head, ch). q and k are each scaled by
    ch^-1/4 (then ``ops.attention`` with scale 1); softmax in float32."""
    num_heads: int
    new_order: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        heads, ch = self.num_heads, c // self.num_heads
        normed = group_norm(x, NORM_GROUPS, NORM_EPS, "norm").reshape(b, hh * ww, c)
        qkv = nn.Dense(3 * c, dtype=self.dtype, name="qkv")(normed)
        qkv = qkv.reshape(b, hh * ww, 3, heads, ch) if self.new_order else qkv.reshape(b, hh * ww, heads, 3, ch)
        axis = 2 if self.new_order else 3
        q, k, v = (jnp.take(qkv, i, axis=axis) for i in range(3))  # each (B, L, heads, ch)
        scale = 1 / math.sqrt(math.sqrt(ch))  # on q and k each, before the product (as upstream), so scale=1 below
        a = attention(q * scale, k * scale, v, 1.0).reshape(b, hh * ww, c)
        h = nn.Dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="proj_out")(a)
        return x + h.reshape(b, hh, ww, c)


class Network(nn.Module):
    """``__call__(x (B,H,W,in_ch), t (B,) float labels, cond (B,) int32 class labels or None)``
    -> (B,H,W,out_channels) float32 (learned sigma: first 3 channels are eps)."""
    config: Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, t, cond=None, *, train: bool = False):
        cfg, dt = self.config, self.dtype
        if (cond is not None) != (cfg.num_classes is not None):
            raise ValueError("adm: pass cond (class labels) if and only if the model is class-conditional")
        c0 = cfg.model_channels
        emb = nn.Dense(4 * c0, name="time_embed_0")(timestep_embedding(t, c0, flip_sin_to_cos=True,
                                                                         downscale_freq_shift=0))
        emb = nn.Dense(4 * c0, name="time_embed_2")(nn.silu(emb))
        if cfg.num_classes is not None:
            emb = emb + nn.Embed(cfg.num_classes, 4 * c0, name="label_emb")(cond)

        def res(out_ch, name, resample=None):
            return ResBlock(out_ch, cfg.use_scale_shift_norm, cfg.dropout, resample, dt, name=name)

        def attn(ch, heads, name):
            n = num_attention_heads(ch, heads, cfg.num_head_channels)
            return AttentionBlock(n, cfg.use_new_attention_order, dt, name=name)

        ch = int(cfg.channel_mult[0] * c0)
        h = conv(ch, 3, dt, "input_blocks_0_0")(x.astype(dt))
        hs, ds, index = [h], 1, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                ch = int(mult * c0)
                h = res(ch, f"input_blocks_{index}_0")(h, emb, train)
                if ds in cfg.attention_ds:
                    h = attn(ch, cfg.num_heads, f"input_blocks_{index}_1")(h)
                hs.append(h)
                index += 1
            if level != len(cfg.channel_mult) - 1:
                name = f"input_blocks_{index}_0"
                h = res(ch, name, "down")(h, emb, train) if cfg.resblock_updown else Downsample(ch, dt, name=name)(h)
                hs.append(h)
                ds *= 2
                index += 1

        h = res(ch, "middle_block_0")(h, emb, train)
        h = attn(ch, cfg.num_heads, "middle_block_1")(h)
        h = res(ch, "middle_block_2")(h, emb, train)

        heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample
        index = 0
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                ch = int(mult * c0)
                h = res(ch, f"output_blocks_{index}_0")(jnp.concatenate([h, hs.pop()], axis=-1), emb, train)
                sub = 1
                if ds in cfg.attention_ds:
                    h = attn(ch, heads_up, f"output_blocks_{index}_1")(h)
                    sub = 2
                if level and i == cfg.num_res_blocks:
                    name = f"output_blocks_{index}_{sub}"
                    if cfg.resblock_updown:
                        h = res(ch, name, "up")(h, emb, train)
                    else:
                        h = Upsample2D(ch, dtype=dt, name=name)(h)
                    ds //= 2
                index += 1

        h = nn.silu(group_norm(h.astype(jnp.float32), NORM_GROUPS, NORM_EPS, "out_0"))
        return conv(cfg.out_channels, 3, jnp.float32, "out_2", zero_init=True)(h)
