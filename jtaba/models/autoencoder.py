"""The convolutional ``Encoder`` / ``Decoder`` shared by diffusers' AutoencoderKL and VQModel
(``models/autoencoders/vae.py``), NHWC, built from ``diffusers_blocks``.

Encoder: conv_in -> down_blocks_i (DownEncoderBlock2D: ``layers_per_block`` resnets, then a stride-2 conv with the
asymmetric (0,1,0,1) pad except in the last block) -> mid_block (resnet, single-head attention, resnet) ->
GroupNorm, SiLU -> conv_out (2x channels with ``double_z``). Decoder: conv_in -> mid_block -> up_blocks_i
(UpDecoderBlock2D over the reversed channels: ``layers_per_block + 1`` resnets, then nearest x2 + conv except in
the last block) -> GroupNorm, SiLU -> conv_out. All resnets and norms use eps 1e-6, no time embedding.
Submodule names mirror the diffusers state-dict keys (``down_blocks.0.resnets.1`` -> ``down_blocks_0/resnets_1``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtaba.config import ConfigBase
from jtaba.models.diffusers_blocks import (
    ACTIVATIONS,
    DownBlock2D,
    ResnetArgs,
    UNetMidBlock2D,
    Upsample2D,
    get_activation,
)
from jtaba.models.ops import conv, group_norm

EPS = 1e-6


def check_block_types(down_block_types: Sequence[str], up_block_types: Sequence[str], n: int) -> None:
    """Only DownEncoderBlock2D / UpDecoderBlock2D exist in these autoencoders; one of each per channel level."""
    if tuple(down_block_types) != ("DownEncoderBlock2D",) * n or tuple(up_block_types) != ("UpDecoderBlock2D",) * n:
        raise ValueError(f"unsupported autoencoder blocks {list(down_block_types)} / {list(up_block_types)}: "
                         f"expected {n} DownEncoderBlock2D and {n} UpDecoderBlock2D (one per block_out_channels)")


def encoder_decoder_fields(cfg: dict, latent_channels: int) -> dict:
    """The Encoder/Decoder fields shared by ``AutoencoderKL`` and ``VQModel`` configs, from a diffusers
    config.json (missing keys take the diffusers defaults; the block types are checked)."""
    chans = tuple(int(c) for c in cfg.get("block_out_channels", (64,)))
    check_block_types(cfg.get("down_block_types", ("DownEncoderBlock2D",)),
                      cfg.get("up_block_types", ("UpDecoderBlock2D",)), len(chans))
    size = cfg.get("sample_size", 32)
    return dict(in_channels=int(cfg.get("in_channels", 3)), out_channels=int(cfg.get("out_channels", 3)),
                block_out_channels=chans, layers_per_block=int(cfg.get("layers_per_block", 1)),
                act_fn=cfg.get("act_fn", "silu"), latent_channels=int(cfg.get("latent_channels", latent_channels)),
                norm_num_groups=int(cfg.get("norm_num_groups", 32)),
                sample_size=int(size[0] if isinstance(size, (list, tuple)) else size),
                mid_block_add_attention=bool(cfg.get("mid_block_add_attention", True)))


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig(ConfigBase):
    """The config fields shared by ``AutoencoderKL`` (vae) and ``VQModel`` (vq): what builds their Encoder and
    Decoder, diffusers names and defaults (``latent_channels``: KL 4, VQ 3)."""
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 32
    mid_block_add_attention: bool = True

    def __post_init__(self):
        name = type(self).__module__.rsplit(".", 1)[-1]
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"{name}.Config: act_fn {self.act_fn!r} is not one of {sorted(ACTIVATIONS)}")
        if not self.block_out_channels or any(c < 1 or c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"{name}.Config: block_out_channels {list(self.block_out_channels)} must be positive "
                             f"multiples of norm_num_groups {self.norm_num_groups}")
        for field in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups"):
            if getattr(self, field) < 1:
                raise ValueError(f"{name}.Config: {field} must be >= 1, got {getattr(self, field)!r}")

    def encoder_decoder_kwargs(self, dtype: Any) -> dict:
        """The ``Encoder`` / ``Decoder`` arguments both take alike."""
        return dict(block_out_channels=self.block_out_channels, layers_per_block=self.layers_per_block,
                    norm_num_groups=self.norm_num_groups, act_fn=self.act_fn,
                    mid_block_add_attention=self.mid_block_add_attention, dtype=dtype)


class UpDecoderBlock2D(nn.Module):
    """``resnets_i`` (i < num_layers, temb None) then, if ``add_upsample``, ``upsamplers_0`` (nearest x2 + conv)."""
    out_channels: int
    num_layers: int
    resnet: ResnetArgs
    add_upsample: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_layers):
            x = self.resnet.block(self.out_channels, self.dtype, f"resnets_{i}")(x)
        if self.add_upsample:
            x = Upsample2D(self.out_channels, dtype=self.dtype, name="upsamplers_0")(x)
        return x


class Encoder(nn.Module):
    """(B, H, W, in) -> (B, H/2^(n-1), W/2^(n-1), out_channels · (2 if double_z else 1)),
    n = len(block_out_channels)."""
    out_channels: int
    block_out_channels: Sequence[int]
    layers_per_block: int
    norm_num_groups: int = 32
    act_fn: str = "silu"
    double_z: bool = True
    mid_block_add_attention: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        chans = tuple(self.block_out_channels)
        res = ResnetArgs(eps=EPS, groups=self.norm_num_groups, act_fn=self.act_fn)
        x = conv(chans[0], 3, self.dtype, "conv_in")(x.astype(self.dtype))
        for i, ch in enumerate(chans):
            last = i == len(chans) - 1
            x, _ = DownBlock2D(ch, num_layers=self.layers_per_block, resnet=res,
                               downsample_type=None if last else "conv", downsample_padding=0, dtype=self.dtype,
                               name=f"down_blocks_{i}")(x)
        x = UNetMidBlock2D(resnet=res, add_attention=self.mid_block_add_attention, attention_head_dim=chans[-1],
                           dtype=self.dtype, name="mid_block")(x)
        x = get_activation(self.act_fn)(group_norm(x, self.norm_num_groups, EPS, "conv_norm_out"))
        out = self.out_channels * (2 if self.double_z else 1)
        return conv(out, 3, self.dtype, "conv_out")(x)


class Decoder(nn.Module):
    """(B, h, w, latent) -> (B, h·2^(n-1), w·2^(n-1), out_channels)."""
    out_channels: int
    block_out_channels: Sequence[int]
    layers_per_block: int
    norm_num_groups: int = 32
    act_fn: str = "silu"
    mid_block_add_attention: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        chans = tuple(self.block_out_channels)
        res = ResnetArgs(eps=EPS, groups=self.norm_num_groups, act_fn=self.act_fn)
        x = conv(chans[-1], 3, self.dtype, "conv_in")(z.astype(self.dtype))
        x = UNetMidBlock2D(resnet=res, add_attention=self.mid_block_add_attention, attention_head_dim=chans[-1],
                           dtype=self.dtype, name="mid_block")(x)
        for i, ch in enumerate(reversed(chans)):
            x = UpDecoderBlock2D(ch, self.layers_per_block + 1, res, add_upsample=i < len(chans) - 1,
                                 dtype=self.dtype, name=f"up_blocks_{i}")(x)
        x = get_activation(self.act_fn)(group_norm(x, self.norm_num_groups, EPS, "conv_norm_out"))
        return conv(self.out_channels, 3, self.dtype, "conv_out")(x)
