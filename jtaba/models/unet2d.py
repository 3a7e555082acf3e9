"""diffusers ``UNet2DModel`` (``models/unets/unet_2d.py``, diffusers 0.42.1) in flax.linen, NHWC: the LDM CelebA-HQ
256 denoiser (``CompVis/ldm-celebahq-256``, subfolder ``unet``).

Hub config (verified from a diffusers re-save of the hub snapshot 03978f2 ``unet/config.json``): sample_size 64,
in/out channels 3, block_out_channels (224, 448, 672, 896), layers_per_block 2, attention_head_dim 32,
down_block_types (DownBlock2D, AttnDownBlock2D x3), up_block_types (AttnUpBlock2D x3, UpBlock2D), norm_num_groups
32, norm_eps 1e-5, flip_sin_to_cos true, freq_shift 0, downsample_padding 1, mid_block_scale_factor 1,
resnet_time_scale_shift "default", time_embedding_type "positional", act_fn silu. So 64x64 -> 8x8 with attention
at 32, 16, 8 and in the mid block; time embedding 896 wide.

Supported: positional time embedding, no class embedding, block types DownBlock2D / AttnDownBlock2D / UpBlock2D /
AttnUpBlock2D, mid block UNetMidBlock2D or none, down/up sampling "conv" or "resnet", "default" or "scale_shift"
time norm. Anything else is rejected by ``Config.from_diffusers``.

Param names are the diffusers state-dict keys with ``.N`` written ``_N`` (``down_blocks.1.attentions.0.to_q`` ->
``down_blocks_1/attentions_0/to_q``), see ``jtaba.models.diffusers_blocks``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from jtaba.config import ConfigBase
from jtaba.models.diffusers_blocks import (
    DownBlock2D,
    ResnetArgs,
    TimestepEmbedding,
    UNetMidBlock2D,
    UpBlock2D,
    timestep_embedding,
)
from jtaba.models.ops import conv, group_norm

DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")

# diffusers UNet2DModel.__init__ arguments that only describe what this port does not implement, with the one
# value accepted for each.
_FIXED = {"time_embedding_type": "positional", "class_embed_type": None, "num_class_embeds": None}
_IGNORED = ("num_train_timesteps",)  # only read by time_embedding_type="learned"


@dataclasses.dataclass(frozen=True)
class Config(ConfigBase):
    """``UNet2DModel`` constructor arguments (diffusers names and defaults)."""
    sample_size: int | tuple[int, int] | None = None
    in_channels: int = 3
    out_channels: int = 3
    center_input_sample: bool = False
    time_embedding_dim: int | None = None
    freq_shift: int = 0
    flip_sin_to_cos: bool = True
    down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    mid_block_type: str | None = "UNetMidBlock2D"
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    block_out_channels: tuple[int, ...] = (224, 448, 672, 896)
    layers_per_block: int = 2
    mid_block_scale_factor: float = 1.0
    downsample_padding: int = 1
    downsample_type: str = "conv"
    upsample_type: str = "conv"
    dropout: float = 0.0
    act_fn: str = "silu"
    attention_head_dim: int | None = 8
    norm_num_groups: int = 32
    attn_norm_num_groups: int | None = None
    norm_eps: float = 1e-5
    resnet_time_scale_shift: str = "default"
    add_attention: bool = True

    def __post_init__(self):
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError("unet2d: down_block_types, up_block_types and block_out_channels need equal lengths")
        bad = [b for b in self.down_block_types if b not in DOWN_BLOCKS]
        bad += [b for b in self.up_block_types if b not in UP_BLOCKS]
        if bad:
            raise ValueError(f"unet2d: unsupported block types {bad}; supported {DOWN_BLOCKS + UP_BLOCKS}")
        if self.mid_block_type not in ("UNetMidBlock2D", None):
            raise ValueError(f"unet2d: unsupported mid_block_type {self.mid_block_type!r}")
        if self.resnet_time_scale_shift not in ("default", "scale_shift"):
            raise ValueError(f"unet2d: unsupported resnet_time_scale_shift {self.resnet_time_scale_shift!r}")

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any]) -> "Config":
        """From a diffusers ``unet/config.json`` dict (``_``-prefixed metadata ignored; missing keys take the
        diffusers defaults). Options this port does not implement raise ``ValueError``."""
        d = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in _IGNORED}
        for key, accepted in _FIXED.items():
            if d.pop(key, accepted) != accepted:
                raise ValueError(f"unet2d: {key}={cfg[key]!r} is not supported (only {accepted!r})")
        return cls.from_dict(d)


class Network(nn.Module):
    """``__call__(x (B,H,W,in_channels), t (B,) float32 timesteps, cond=None)`` -> (B,H,W,out_channels) float32.
    ``t`` is the integer training timestep as diffusers passes it (as float)."""
    config: Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, t, cond=None, *, train: bool = False):
        cfg, dt = self.config, self.dtype
        if cond is not None:
            raise ValueError("unet2d: the model is unconditional (cond must be None)")
        chans = cfg.block_out_channels
        n = len(chans)
        args = ResnetArgs(eps=cfg.norm_eps, groups=cfg.norm_num_groups, act_fn=cfg.act_fn,
                          time_embedding_norm=cfg.resnet_time_scale_shift, dropout=cfg.dropout)

        x = x.astype(jnp.float32)
        if cfg.center_input_sample:
            x = 2 * x - 1.0
        temb = timestep_embedding(t, chans[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        temb = TimestepEmbedding(cfg.time_embedding_dim or 4 * chans[0], dtype=dt, name="time_embedding")(temb)

        h = conv(chans[0], 3, dt, "conv_in")(x.astype(dt))
        skips = (h,)
        for i, kind in enumerate(cfg.down_block_types):
            final = i == n - 1
            attn = kind == "AttnDownBlock2D"
            down = None if final else (cfg.downsample_type if attn else "conv")  # DownBlock2D always convs
            h, states = DownBlock2D(chans[i], cfg.layers_per_block, args, attention=attn,
                                    attention_head_dim=cfg.attention_head_dim, downsample_type=down,
                                    downsample_padding=cfg.downsample_padding, dtype=dt, name=f"down_blocks_{i}")(
                h, temb, train)
            skips += states

        if cfg.mid_block_type is not None:
            mid_args = dataclasses.replace(args, output_scale_factor=cfg.mid_block_scale_factor)
            h = UNetMidBlock2D(mid_args, add_attention=cfg.add_attention, attention_head_dim=cfg.attention_head_dim,
                               attn_groups=cfg.attn_norm_num_groups, dtype=dt, name="mid_block")(h, temb, train)

        for i, kind in enumerate(cfg.up_block_types):
            final = i == n - 1
            attn = kind == "AttnUpBlock2D"
            up = None if final else (cfg.upsample_type if attn else "conv")  # UpBlock2D always convs
            # get_up_block does not pass dropout to AttnUpBlock2D (its resnets keep dropout 0).
            block_args = dataclasses.replace(args, dropout=0.0) if attn else args
            k = cfg.layers_per_block + 1
            skips, states = skips[:-k], skips[-k:]
            h = UpBlock2D(chans[n - 1 - i], k, block_args, attention=attn, attention_head_dim=cfg.attention_head_dim,
                          upsample_type=up, dtype=dt, name=f"up_blocks_{i}")(h, states, temb, train=train)

        groups_out = cfg.norm_num_groups or min(chans[0] // 4, 32)
        h = nn.silu(group_norm(h, groups_out, cfg.norm_eps, "conv_norm_out"))
        return conv(cfg.out_channels, 3, dt, "conv_out")(h).astype(jnp.float32)
