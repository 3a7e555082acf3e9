"""DeepFloyd IF stage I: the diffusers ``UNet2DConditionModel`` subset it uses (family ``"if_unet"``), NHWC.

``Network(x (B,H,W,in_channels), t (B,) float32 timestep labels, cond (B,L,encoder_hid_dim) T5 prompt embeddings)``
-> (B,H,W,out_channels) float32; IF-I has learned sigma, 6 channels = (eps, variance interpolation).

What runs (diffusers 0.42.1 ``UNet2DConditionModel.forward`` with IF's config):
* ``emb = TimestepEmbedding(Timesteps(t, C0, flip_sin_to_cos, freq_shift))`` (act ``act_fn``) ``+
  add_embedding(cond)``, where ``add_embedding`` = ``TextTimeEmbedding``: LayerNorm -> ``AttentionPooling`` (a
  class token = mean over tokens + positional embedding attends over [class token, tokens] with
  ``addition_embed_type_num_heads`` heads; q and k both scaled by d^-1/4; no output projection) -> Dense ->
  LayerNorm, applied to the *raw* prompt embeddings (dim ``encoder_hid_dim``).
* ``text = encoder_hid_proj(cond)`` ("text_proj": Dense ``encoder_hid_dim -> cross_attention_dim``) feeds every
  attention as added key/values.
* Blocks: ``ResnetDownsampleBlock2D`` / ``ResnetUpsampleBlock2D`` (= diffusers_blocks ``DownBlock2D`` /
  ``UpBlock2D`` with resnet down/up sampling), ``SimpleCrossAttnDownBlock2D`` / ``SimpleCrossAttnUpBlock2D`` /
  ``UNetMidBlock2DSimpleCrossAttn`` (resnet then ``AddedKVAttention`` per layer; resnet down/up samplers). All
  resnets: ``resnet_time_scale_shift``, ``resnet_skip_time_act``, ``resnet_out_scale_factor`` (the mid block uses
  ``mid_block_scale_factor``), eps ``norm_eps``, groups ``norm_num_groups``, act ``act_fn`` (gelu = exact erf).
* ``AddedKVAttention`` = ``Attention(added_kv_proj_dim=cross_attention_dim, cross_attention_norm="group_norm")``
  with ``AttnAddedKVProcessor``: GroupNorm(norm_num_groups, eps 1e-5) of the pixels -> q; keys/values =
  concat([add_k/v_proj(GroupNorm32(text)), to_k/v(pixels)]) over the sequence (``only_cross_attention`` drops the
  pixel keys); heads = channels // attention_head_dim; softmax(q k^T / sqrt(head_dim)) in float32; ``to_out_0``;
  plus the residual. The text GroupNorm always has 32 groups (diffusers' ``cross_attention_norm_num_groups``).
* Up blocks use ``attention_head_dim[i]`` with the *down* index i (diffusers does not reverse it; equal for IF);
  a None entry means one head of the block's channels. ``only_cross_attention`` may be per block (reversed for the
  up blocks, as diffusers).
* Other options of the same forward: ``center_input_sample`` (x -> 2x - 1), ``timestep_post_act`` (an activation
  after ``time_embedding.linear_2``), ``time_embedding_act_fn`` (one activation on time + text embedding before the
  blocks), ``cross_attention_norm`` "layer_norm" (a LayerNorm of the prompt; diffusers can only run it where each
  attention block is as wide as the prompt), ``UNetRes``-prefixed block names, ``sample_size`` (H, W).
* ``Config.from_diffusers`` sorts every ``UNet2DConditionModel.__init__`` argument into ``IMPLEMENTED``, ``INERT``
  (read by diffusers only for other block types) and ``REFUSED`` (plus the enums above), and names each refused
  option with its value.
No attention masks: IF's pipeline passes none (padding tokens are attended to, as upstream).

IF-I-XL-v1.0's unet config, verified against stored copies of public files: the hub ``unet/config.json`` as
mirrored in a fine-tune of it (huggingface.co/lucostiguy11/dreambooth_if, ``_name_or_path``
DeepFloyd/IF-I-XL-v1.0, diffusers 0.19.0.dev0): act_fn gelu, addition_embed_type "text",
addition_embed_type_num_heads 64, attention_head_dim 64,
block_out_channels [704, 1408, 2112, 2816], cross_attention_dim 2816, cross_attention_norm "group_norm",
down_block_types [ResnetDownsampleBlock2D, 3 x SimpleCrossAttnDownBlock2D], encoder_hid_dim 4096,
encoder_hid_dim_type "text_proj", flip_sin_to_cos true, freq_shift 0, in_channels 3, layers_per_block 3,
mid_block_type UNetMidBlock2DSimpleCrossAttn, mid_block_scale_factor 1, norm_eps 1e-5, norm_num_groups 32,
only_cross_attention false, out_channels 6, resnet_out_scale_factor 1.0, resnet_skip_time_act false,
resnet_time_scale_shift "scale_shift", sample_size 64, class_embed_type null, time_embedding_type positional.
The tail of that file (up_block_types, upcast_attention) was not visible; diffusers' ``scripts/convert_if.py``
derives them from the original IF-I-XL ``config.yml`` (model_channels 704, channel_mult 1,2,3,4,
attention_resolutions 32,16,8, num_head_channels 64, resblock_updown true, use_scale_shift_norm true,
encoder_dim 4096, encoder_channels 2816, att_pool_heads 64, activation gelu; mirrored at
huggingface.co/ckpt/IF-I-XL-v1.0-16bit): up_block_types [3 x SimpleCrossAttnUpBlock2D, ResnetUpsampleBlock2D],
upcast_attention false (irrelevant here: the added-KV processor never upcasts q/k; its softmax runs in float32).
With this config diffusers 0.42.1 builds 775 tensors, 4,304,695,110 params (the model card's 4.3B); all map here.

Numerics: params float32; denses/convs compute in ``dtype``; GroupNorm/LayerNorm and both softmaxes in float32.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jtaba.config import ConfigBase
from jtaba.models.diffusers_blocks import (
    ACTIVATIONS,
    DownBlock2D,
    ResnetArgs,
    TimestepEmbedding,
    UpBlock2D,
    get_activation,
    timestep_embedding,
)
from jtaba.models.ops import attention, conv, group_norm

DOWN_BLOCKS = ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D")
UP_BLOCKS = ("ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D")
MID_BLOCKS = ("UNetMidBlock2DSimpleCrossAttn",)
CROSS_NORM_GROUPS = 32  # diffusers Attention(cross_attention_norm_num_groups=32), not configurable from the UNet

CROSS_NORMS = (None, "group_norm", "layer_norm")
TIME_NORMS = ("default", "scale_shift")

# Every ``UNet2DConditionModel.__init__`` argument (diffusers 0.42.1) falls in exactly one of these groups
# (tests/test_if_unet.py checks the partition against the installed diffusers):
# implemented here (fields of ``Config``, some under another name);
IMPLEMENTED = ("sample_size", "in_channels", "out_channels", "center_input_sample", "flip_sin_to_cos", "freq_shift",
               "down_block_types", "mid_block_type", "up_block_types", "only_cross_attention", "block_out_channels",
               "layers_per_block", "mid_block_scale_factor", "dropout", "act_fn", "norm_num_groups", "norm_eps",
               "cross_attention_dim", "encoder_hid_dim", "encoder_hid_dim_type", "attention_head_dim",
               "addition_embed_type", "addition_embed_type_num_heads", "resnet_time_scale_shift",
               "resnet_skip_time_act", "resnet_out_scale_factor", "time_embedding_type", "time_embedding_dim",
               "time_embedding_act_fn", "timestep_post_act", "conv_in_kernel", "conv_out_kernel",
               "mid_block_only_cross_attention", "cross_attention_norm")
# read by diffusers only for block types outside this subset (CrossAttn*/Transformer2DModel blocks, conv
# downsamplers, text_time / projection embeddings), so any value gives the same network here as in diffusers;
INERT = ("downsample_padding", "dual_cross_attention", "use_linear_projection", "upcast_attention",
         "transformer_layers_per_block", "reverse_transformer_layers_per_block", "addition_time_embed_dim",
         "projection_class_embeddings_input_dim")
# and not implemented: only the listed value(s) are accepted.
REFUSED = {"class_embed_type": (None,), "num_class_embeds": (None,), "class_embeddings_concat": (False,),
           "time_cond_proj_dim": (None,), "num_attention_heads": (None,), "attention_type": ("default",)}
ENCODER_HID_TYPES = (None, "text_proj")
ADDITION_EMBED_TYPES = (None, "text")
TIME_EMBEDDING_TYPES = ("positional",)


def _strip_unet_res(name: str) -> str:
    """diffusers ``get_down_block`` / ``get_up_block`` accept block names with a ``UNetRes`` prefix."""
    return name[7:] if isinstance(name, str) and name.startswith("UNetRes") else name


@dataclasses.dataclass(frozen=True)
class Config(ConfigBase):
    in_channels: int = 3
    out_channels: int = 6
    block_out_channels: tuple[int, ...] = (704, 1408, 2112, 2816)
    down_block_types: tuple[str, ...] = ("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3
    up_block_types: tuple[str, ...] = ("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",)
    mid_block_type: str | None = "UNetMidBlock2DSimpleCrossAttn"
    layers_per_block: tuple[int, ...] = (3, 3, 3, 3)
    # per down block, channels per head (None: one head of all the block's channels); up block i reads entry i
    # too (diffusers does not reverse it), with its own channels where None
    attention_head_dim: tuple[int | None, ...] = (64, 64, 64, 64)
    cross_attention_dim: int = 2816
    encoder_hid_dim: int | None = 4096  # prompt embedding width; None = cond is already cross_attention_dim wide
    addition_embed_type: str | None = "text"  # "text": TextTimeEmbedding of the prompt added to the time embedding
    addition_embed_type_num_heads: int = 64
    cross_attention_norm: str | None = "group_norm"  # of the prompt, in every attention: None | group_norm | layer_norm
    only_cross_attention: bool | tuple[bool, ...] = False  # per down block when a tuple (up blocks: reversed)
    mid_block_only_cross_attention: bool = False
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    act_fn: str = "gelu"
    resnet_time_scale_shift: str = "scale_shift"
    resnet_skip_time_act: bool = False
    resnet_out_scale_factor: float = 1.0
    mid_block_scale_factor: float = 1.0
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    time_embedding_dim: int | None = None  # None = 4 * block_out_channels[0]
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    dropout: float = 0.0
    sample_size: int | tuple[int, int] = 64  # informational (the network runs at any size divisible by 2**(n-1))
    time_embedding_act_fn: str | None = None  # applied once to (time + text) embedding before the blocks
    timestep_post_act: str | None = None  # TimestepEmbedding's activation after linear_2
    center_input_sample: bool = False  # x -> 2x - 1 first

    # Fields added after checkpoints were written: left out of the JSON form while at their default (config.json
    # files and run fingerprints of older IF checkpoints stay what they were).
    _LATE_FIELDS = {"time_embedding_act_fn": None, "timestep_post_act": None, "center_input_sample": False}

    def __post_init__(self):
        n = len(self.block_out_channels)
        for name in ("down_block_types", "up_block_types", "layers_per_block", "attention_head_dim"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"if_unet.Config: {name} needs {n} entries (one per block)")
        if isinstance(self.only_cross_attention, tuple) and len(self.only_cross_attention) != n:
            raise ValueError(f"if_unet.Config: only_cross_attention needs {n} entries (one per block) or one bool")
        bad = [b for b in self.down_block_types if b not in DOWN_BLOCKS] + \
              [b for b in self.up_block_types if b not in UP_BLOCKS]
        if self.mid_block_type not in MID_BLOCKS + (None,):
            bad.append(self.mid_block_type)
        if bad:
            raise ValueError(f"if_unet.Config: unsupported block types {bad}; supported {DOWN_BLOCKS + UP_BLOCKS} "
                             f"and mid block {MID_BLOCKS[0]} or None")
        if self.cross_attention_norm not in CROSS_NORMS:
            raise ValueError(f"if_unet.Config: cross_attention_norm {self.cross_attention_norm!r} not one of "
                             f"{CROSS_NORMS}")
        if self.addition_embed_type not in ADDITION_EMBED_TYPES:
            raise ValueError(f"if_unet.Config: addition_embed_type {self.addition_embed_type!r} not supported")
        if self.resnet_time_scale_shift not in TIME_NORMS:
            raise ValueError(f"if_unet.Config: resnet_time_scale_shift {self.resnet_time_scale_shift!r} not one of "
                             f"{TIME_NORMS}")
        for name in ("act_fn", "time_embedding_act_fn", "timestep_post_act"):
            v = getattr(self, name)
            if v is not None and v not in ACTIVATIONS:
                raise ValueError(f"if_unet.Config: {name} {v!r} is not one of {sorted(ACTIVATIONS)}")
        if self.act_fn is None:
            raise ValueError("if_unet.Config: act_fn is required")
        if any(c < 1 or c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"if_unet.Config: block_out_channels {list(self.block_out_channels)} must be multiples "
                             f"of norm_num_groups {self.norm_num_groups}")
        attn = [i for i, b in enumerate(self.down_block_types) if b == "SimpleCrossAttnDownBlock2D"]
        up_attn = [i for i, b in enumerate(self.up_block_types) if b == "SimpleCrossAttnUpBlock2D"]
        if self.mid_block_type is not None and self.attention_head_dim[-1] is None:
            raise ValueError("if_unet.Config: the mid block needs attention_head_dim[-1] (diffusers cannot build "
                             "UNetMidBlock2DSimpleCrossAttn with None)")
        if self.cross_attention_norm == "layer_norm":
            # diffusers' Attention builds LayerNorm(block channels) and applies it to the prompt (cross_attention_dim
            # wide): it only runs where the two are equal
            widths = {self.block_out_channels[i] for i in attn} | \
                {self.block_out_channels[n - 1 - i] for i in up_attn} | \
                ({self.block_out_channels[-1]} if self.mid_block_type is not None else set())
            if widths - {self.cross_attention_dim}:
                raise ValueError(f"if_unet.Config: cross_attention_norm 'layer_norm' normalizes the prompt with a "
                                 f"LayerNorm as wide as each attention block ({sorted(widths)}), which diffusers can "
                                 f"only run when that equals cross_attention_dim {self.cross_attention_dim}")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        for name, default in self._LATE_FIELDS.items():
            if d[name] == default:
                del d[name]
        return d

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    @property
    def cond_dim(self) -> int:
        """Width D of the prompt embeddings ``cond`` (B, L, D)."""
        return self.encoder_hid_dim or self.cross_attention_dim

    def resnet_args(self, output_scale_factor: float) -> ResnetArgs:
        return ResnetArgs(eps=self.norm_eps, groups=self.norm_num_groups, act_fn=self.act_fn,
                          time_embedding_norm=self.resnet_time_scale_shift, output_scale_factor=output_scale_factor,
                          dropout=self.dropout, skip_time_act=self.resnet_skip_time_act)

    def _only_cross(self, block: int) -> bool:
        oc = self.only_cross_attention
        return oc[block] if isinstance(oc, tuple) else oc

    def cross_attn_args(self, block: int, up: bool = False) -> "CrossAttnArgs":
        """The attention settings of down block ``block`` or, ``up``, of up block ``block``: diffusers gives up
        block i ``attention_head_dim[i]`` (not reversed; None = the block's channels) and the reversed
        ``only_cross_attention``."""
        n = len(self.block_out_channels)
        channels = self.block_out_channels[n - 1 - block if up else block]
        head_dim = self.attention_head_dim[block] or channels
        return CrossAttnArgs(head_dim, self.cross_attention_norm, self._only_cross(n - 1 - block if up else block))

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any]) -> "Config":
        """From a diffusers ``UNet2DConditionModel`` config.json (defaults as ``UNet2DConditionModel.__init__``).
        Raises ValueError naming every option (and value) outside this subset; ``INERT`` options are accepted as
        diffusers ignores them for these block types; keys diffusers does not know are ignored, as diffusers
        does."""
        if cfg.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
            raise ValueError(f"if_unet: expected a UNet2DConditionModel config, got {cfg.get('_class_name')!r}")
        problems = [f"{k}={cfg[k]!r}" for k, ok in REFUSED.items() if k in cfg and cfg[k] not in ok]
        for key, ok in (("encoder_hid_dim_type", ENCODER_HID_TYPES), ("addition_embed_type", ADDITION_EMBED_TYPES),
                        ("time_embedding_type", TIME_EMBEDDING_TYPES)):
            if key in cfg and cfg[key] not in ok:
                problems.append(f"{key}={cfg[key]!r}")
        if "norm_num_groups" in cfg and cfg["norm_num_groups"] is None:
            problems.append("norm_num_groups=None (diffusers' resnets need groups)")
        if "resnet_time_scale_shift" in cfg and cfg["resnet_time_scale_shift"] not in TIME_NORMS:
            problems.append(f"resnet_time_scale_shift={cfg['resnet_time_scale_shift']!r}")
        if "cross_attention_norm" in cfg and cfg["cross_attention_norm"] not in CROSS_NORMS:
            problems.append(f"cross_attention_norm={cfg['cross_attention_norm']!r}")
        for key in ("act_fn", "time_embedding_act_fn", "timestep_post_act"):
            v = cfg.get(key)
            if v is not None and v not in ACTIVATIONS:
                problems.append(f"{key}={v!r} (activations: {', '.join(sorted(ACTIVATIONS))})")
        down = tuple(_strip_unet_res(b) for b in cfg.get("down_block_types", ()))
        up = tuple(_strip_unet_res(b) for b in cfg.get("up_block_types", ()))
        mid = cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn")
        for key, names, ok in (("down_block_types", down, DOWN_BLOCKS), ("up_block_types", up, UP_BLOCKS)):
            if any(b not in ok for b in names):
                problems.append(f"{key}={list(cfg[key])!r} (supported: {', '.join(ok)})")
        if mid not in MID_BLOCKS + (None,):
            problems.append(f"mid_block_type={mid!r} (supported: {MID_BLOCKS[0]} or null)")
        n = len(down)
        if len(up) != n:
            problems.append(f"{len(up)} up_block_types for {n} down_block_types")
        cross_dim = cfg.get("cross_attention_dim", 1280)
        if isinstance(cross_dim, (list, tuple)):
            if len(set(cross_dim)) != 1:
                problems.append(f"cross_attention_dim={list(cross_dim)} (per-block widths: one prompt cannot feed "
                                "them)")
            cross_dim = cross_dim[0]
        if problems:
            raise ValueError("if_unet does not implement these UNet2DConditionModel options: " + ", ".join(problems))

        def per_block(key, default):
            v = cfg.get(key, default)
            return tuple(int(x) for x in v) if isinstance(v, (list, tuple)) else (int(v),) * n

        hid_type, hid_dim = cfg.get("encoder_hid_dim_type"), cfg.get("encoder_hid_dim")
        if hid_type is not None and hid_dim is None:
            raise ValueError(f"if_unet: encoder_hid_dim_type={hid_type!r} needs encoder_hid_dim")
        only_cross = cfg.get("only_cross_attention", False)
        mid_only = cfg.get("mid_block_only_cross_attention")
        if isinstance(only_cross, (list, tuple)):
            only_cross = tuple(bool(v) for v in only_cross)
            mid_only = False if mid_only is None else bool(mid_only)  # diffusers: no per-block fallback
        else:
            only_cross = bool(only_cross)
            mid_only = only_cross if mid_only is None else bool(mid_only)
        block_out = tuple(int(c) for c in cfg.get("block_out_channels", (320, 640, 1280, 1280)))
        head_dims = cfg.get("attention_head_dim", 8)
        head_dims = tuple(head_dims) if isinstance(head_dims, (list, tuple)) else (head_dims,) * n
        size = cfg.get("sample_size") or 64
        return cls(
            in_channels=int(cfg.get("in_channels", 4)), out_channels=int(cfg.get("out_channels", 4)),
            block_out_channels=block_out, down_block_types=down, up_block_types=up, mid_block_type=mid,
            layers_per_block=per_block("layers_per_block", 2),
            attention_head_dim=tuple(None if h is None else int(h) for h in head_dims),
            cross_attention_dim=int(cross_dim), encoder_hid_dim=None if hid_dim is None else int(hid_dim),
            addition_embed_type=cfg.get("addition_embed_type"),
            addition_embed_type_num_heads=int(cfg.get("addition_embed_type_num_heads", 64)),
            cross_attention_norm=cfg.get("cross_attention_norm"), only_cross_attention=only_cross,
            mid_block_only_cross_attention=mid_only,
            norm_num_groups=int(cfg.get("norm_num_groups", 32)), norm_eps=float(cfg.get("norm_eps", 1e-5)),
            act_fn=cfg.get("act_fn", "silu"), resnet_time_scale_shift=cfg.get("resnet_time_scale_shift", "default"),
            resnet_skip_time_act=bool(cfg.get("resnet_skip_time_act", False)),
            resnet_out_scale_factor=float(cfg.get("resnet_out_scale_factor", 1.0)),
            mid_block_scale_factor=float(cfg.get("mid_block_scale_factor", 1.0)),
            flip_sin_to_cos=bool(cfg.get("flip_sin_to_cos", True)), freq_shift=float(cfg.get("freq_shift", 0)),
            time_embedding_dim=cfg.get("time_embedding_dim"), conv_in_kernel=int(cfg.get("conv_in_kernel", 3)),
            conv_out_kernel=int(cfg.get("conv_out_kernel", 3)), dropout=float(cfg.get("dropout", 0.0)),
            sample_size=tuple(int(v) for v in size) if isinstance(size, (list, tuple)) else int(size),
            time_embedding_act_fn=cfg.get("time_embedding_act_fn"), timestep_post_act=cfg.get("timestep_post_act"),
            center_input_sample=bool(cfg.get("center_input_sample", False)))


def null_cond(config: Config, batch: int):
    """Reached only when a checkpoint has no null_prompt.npy (converted with --no-text-encoder)."""
    raise ValueError("this if_unet checkpoint stores no null prompt (null_prompt.npy: it was converted with "
                     "--no-text-encoder), and classifier-free guidance needs the empty prompt's embedding: save it "
                     "(77, D) float32 as null_prompt.npy beside config.json, or convert again with "
                     "--null-prompt-embeds FILE.npy")


def sample_shape(config: Config) -> tuple[int, int, int]:
    """(C, H, W) of the diffusion space (``sample_size`` may be (H, W))."""
    size = config.sample_size
    h, w = (size, size) if isinstance(size, int) else size
    return (config.in_channels, h, w)


def layer_norm(x: jax.Array, name: str, eps: float = 1e-5) -> jax.Array:
    """torch ``nn.LayerNorm`` over the last axis, in float32, cast back to ``x.dtype`` (compact context)."""
    norm = nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=jnp.float32, name=name)
    return norm(x.astype(jnp.float32)).astype(x.dtype)


class AttentionPooling(nn.Module):
    """diffusers ``AttentionPooling`` (from deepfloyd IF): (B, L, D) -> (B, D). A class token
    ``mean_L(x) + positional_embedding`` queries [class token, x] with ``num_heads`` heads (head h = channels
    [h*d, (h+1)*d)); q and k are each scaled by d^-1/4; softmax in float32; no output projection."""
    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, _, width = x.shape
        d = width // self.num_heads
        pos = self.param("positional_embedding", nn.initializers.normal(width ** -0.5), (1, width), jnp.float32)
        cls = jnp.mean(x.astype(jnp.float32), axis=1, keepdims=True).astype(self.dtype) + pos.astype(self.dtype)
        x = jnp.concatenate([cls, x.astype(self.dtype)], axis=1)
        dense = lambda name: nn.Dense(width, dtype=self.dtype, name=name)  # noqa: E731
        scale = d ** -0.25
        q = dense("q_proj")(cls).reshape(b, 1, self.num_heads, d) * scale
        k = dense("k_proj")(x).reshape(b, -1, self.num_heads, d) * scale
        v = dense("v_proj")(x).reshape(b, -1, self.num_heads, d)
        w = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
        w = jax.nn.softmax(w, axis=-1).astype(v.dtype)
        return jnp.einsum("bhts,bshd->bthd", w, v).reshape(b, width)


class TextTimeEmbedding(nn.Module):
    """diffusers ``TextTimeEmbedding``: norm1 (LayerNorm) -> pool (AttentionPooling) -> proj (Dense) -> norm2.
    (B, L, D) -> (B, time_embed_dim)."""
    time_embed_dim: int
    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = layer_norm(x.astype(self.dtype), "norm1")
        x = AttentionPooling(self.num_heads, dtype=self.dtype, name="pool")(x)
        x = nn.Dense(self.time_embed_dim, dtype=self.dtype, name="proj")(x)
        return layer_norm(x, "norm2")


class AddedKVAttention(nn.Module):
    """diffusers ``Attention(added_kv_proj_dim=..., bias=True, upcast_softmax=True)`` with
    ``AttnAddedKVProcessor``: ``x (B,H,W,C)``, ``text (B,L,Dt)`` -> (B,H,W,C) including the residual.
    Params: group_norm, [norm_cross], to_q, [to_k, to_v], add_k_proj, add_v_proj, to_out_0."""
    dim_head: int
    norm_num_groups: int
    cross_attention_norm: str | None = "group_norm"
    only_cross_attention: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, text):
        b, hgt, wid, c = x.shape
        heads = c // self.dim_head
        inner = heads * self.dim_head
        x = x.astype(self.dtype)
        text = text.astype(self.dtype)
        if self.cross_attention_norm == "group_norm":
            text = group_norm(text, CROSS_NORM_GROUPS, 1e-5, "norm_cross")
        elif self.cross_attention_norm == "layer_norm":  # nn.LayerNorm(channels), channels == text width
            text = layer_norm(text, "norm_cross")
        h = group_norm(x.reshape(b, hgt * wid, c), self.norm_num_groups, 1e-5, "group_norm")

        def proj(name, inp):
            return nn.Dense(inner, dtype=self.dtype, name=name)(inp).reshape(b, -1, heads, self.dim_head)

        q = proj("to_q", h)
        k, v = proj("add_k_proj", text), proj("add_v_proj", text)
        if not self.only_cross_attention:
            k = jnp.concatenate([k, proj("to_k", h)], axis=1)
            v = jnp.concatenate([v, proj("to_v", h)], axis=1)
        a = attention(q, k, v, self.dim_head ** -0.5).reshape(b, hgt * wid, inner)
        out = nn.Dense(c, dtype=self.dtype, name="to_out_0")(a)
        return out.reshape(b, hgt, wid, c) + x


@dataclasses.dataclass(frozen=True)
class CrossAttnArgs:
    """The ``AddedKVAttention`` settings a block passes to all of its attentions (its ``attention_head_dim``,
    ``cross_attention_norm``, ``only_cross_attention``); the pixel GroupNorm takes the resnets' groups."""
    head_dim: int
    cross_attention_norm: str | None
    only_cross_attention: bool

    def attention(self, groups: int, dtype: Any, name: str) -> AddedKVAttention:
        return AddedKVAttention(self.head_dim, groups, self.cross_attention_norm, self.only_cross_attention,
                                dtype=dtype, name=name)


class SimpleCrossAttnDownBlock2D(nn.Module):
    """(resnets_i -> attentions_i) x num_layers, then an optional ``down=True`` resnet ``downsamplers_0``.
    ``__call__(x, temb, text)`` -> (h, skip states in diffusers order)."""
    out_channels: int
    num_layers: int
    resnet: ResnetArgs
    cross_attn: CrossAttnArgs
    add_downsample: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb, text, train: bool = False):
        states = ()
        for i in range(self.num_layers):
            x = self.resnet.block(self.out_channels, self.dtype, f"resnets_{i}")(x, temb, train)
            x = self.cross_attn.attention(self.resnet.groups, self.dtype, f"attentions_{i}")(x, text)
            states += (x,)
        if self.add_downsample:
            x = self.resnet.block(self.out_channels, self.dtype, "downsamplers_0", down=True)(x, temb, train)
            states += (x,)
        return x, states


class SimpleCrossAttnUpBlock2D(nn.Module):
    """(concat skip -> resnets_i -> attentions_i) x num_layers, then an optional ``up=True`` resnet
    ``upsamplers_0``."""
    out_channels: int
    num_layers: int
    resnet: ResnetArgs
    cross_attn: CrossAttnArgs
    add_upsample: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, skips: Sequence[jax.Array], temb, text, train: bool = False):
        skips = list(skips)
        for i in range(self.num_layers):
            x = jnp.concatenate([x.astype(self.dtype), skips.pop().astype(self.dtype)], axis=-1)
            x = self.resnet.block(self.out_channels, self.dtype, f"resnets_{i}")(x, temb, train)
            x = self.cross_attn.attention(self.resnet.groups, self.dtype, f"attentions_{i}")(x, text)
        if self.add_upsample:
            x = self.resnet.block(self.out_channels, self.dtype, "upsamplers_0", up=True)(x, temb, train)
        return x


class UNetMidBlock2DSimpleCrossAttn(nn.Module):
    """resnets_0, then attentions_0 -> resnets_1 (one layer, as UNet2DConditionModel builds it)."""
    resnet: ResnetArgs
    cross_attn: CrossAttnArgs
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb, text, train: bool = False):
        c = x.shape[-1]
        x = self.resnet.block(c, self.dtype, "resnets_0")(x, temb, train)
        x = self.cross_attn.attention(self.resnet.groups, self.dtype, "attentions_0")(x, text)
        return self.resnet.block(c, self.dtype, "resnets_1")(x, temb, train)


class Network(nn.Module):
    """``__call__(x (B,H,W,in_channels), t (B,) float32 labels, cond (B,L,cond_dim) prompt embeddings)`` ->
    (B,H,W,out_channels) float32. H, W divisible by 2**(len(block_out_channels)-1)."""
    config: Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, t, cond=None, *, train: bool = False):
        cfg, dt = self.config, self.dtype
        if cond is None:
            raise ValueError("if_unet: cond (prompt embeddings (B, L, D)) is required; use the null prompt for CFG")
        if cond.ndim != 3 or cond.shape[-1] != cfg.cond_dim:
            raise ValueError(f"if_unet: cond must be (B, L, {cfg.cond_dim}), got {cond.shape}")
        c0 = cfg.block_out_channels[0]
        if cfg.center_input_sample:
            x = 2 * x - 1.0
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
        temb = timestep_embedding(t, c0, cfg.flip_sin_to_cos, cfg.freq_shift).astype(dt)
        emb = TimestepEmbedding(cfg.time_embed_dim, cfg.act_fn, post_act_fn=cfg.timestep_post_act, dtype=dt,
                                name="time_embedding")(temb)
        if cfg.addition_embed_type == "text":
            emb = emb + TextTimeEmbedding(cfg.time_embed_dim, cfg.addition_embed_type_num_heads, dtype=dt,
                                          name="add_embedding")(cond)
        if cfg.time_embedding_act_fn is not None:  # once, on time + text embedding (diffusers time_embed_act)
            emb = get_activation(cfg.time_embedding_act_fn)(emb)
        text = cond.astype(dt)
        if cfg.encoder_hid_dim is not None:
            text = nn.Dense(cfg.cross_attention_dim, dtype=dt, name="encoder_hid_proj")(text)

        h = conv(c0, cfg.conv_in_kernel, dt, "conv_in", padding=(cfg.conv_in_kernel - 1) // 2)(x.astype(dt))
        resnet = cfg.resnet_args(cfg.resnet_out_scale_factor)
        n = len(cfg.block_out_channels)
        skips: tuple = (h,)
        for i, kind in enumerate(cfg.down_block_types):
            ch, last = cfg.block_out_channels[i], i == n - 1
            if kind == "ResnetDownsampleBlock2D":
                h, states = DownBlock2D(ch, cfg.layers_per_block[i], resnet,
                                        downsample_type=None if last else "resnet", dtype=dt,
                                        name=f"down_blocks_{i}")(h, emb, train)
            else:
                h, states = SimpleCrossAttnDownBlock2D(
                    ch, cfg.layers_per_block[i], resnet, cfg.cross_attn_args(i), not last, dtype=dt,
                    name=f"down_blocks_{i}")(h, emb, text, train)
            skips += states

        if cfg.mid_block_type is not None:
            mid_attn = CrossAttnArgs(cfg.attention_head_dim[-1], cfg.cross_attention_norm,
                                     cfg.mid_block_only_cross_attention)
            h = UNetMidBlock2DSimpleCrossAttn(cfg.resnet_args(cfg.mid_block_scale_factor), mid_attn, dtype=dt,
                                              name="mid_block")(h, emb, text, train)

        rev_layers = cfg.layers_per_block[::-1]
        for i, kind in enumerate(cfg.up_block_types):
            ch, last = cfg.block_out_channels[n - 1 - i], i == n - 1
            num = rev_layers[i] + 1
            block_skips, skips = skips[-num:], skips[:-num]
            if kind == "ResnetUpsampleBlock2D":
                h = UpBlock2D(ch, num, resnet, upsample_type=None if last else "resnet", dtype=dt,
                              name=f"up_blocks_{i}")(h, block_skips, emb, train=train)
            else:
                h = SimpleCrossAttnUpBlock2D(ch, num, resnet, cfg.cross_attn_args(i, up=True), not last, dtype=dt,
                                             name=f"up_blocks_{i}")(h, block_skips, emb, text, train)

        h = get_activation(cfg.act_fn)(group_norm(h, cfg.norm_num_groups, cfg.norm_eps, "conv_norm_out"))
        h = conv(cfg.out_channels, cfg.conv_out_kernel, dt, "conv_out", padding=(cfg.conv_out_kernel - 1) // 2)(h)
        return h.astype(jnp.float32)


def param_shardings(params_shapes: Any, mesh: Mesh, axis: str = "model") -> Any:
    """Model-parallel placement for the params (IF-I-XL is 17 GB in float32): a tree of ``NamedSharding`` like
    ``params_shapes`` (arrays or ``ShapeDtypeStruct``) where each leaf's largest dimension divisible by the size of
    mesh axis ``axis`` is split over it (the later one on ties); other leaves, and every other mesh axis, are
    replicated. Use as ``ShapeDtypeStruct(shape, float32, sharding=s)`` targets of ``jtaba.checkpoint.load_params``."""
    n = mesh.shape[axis]

    def one(x):
        spec = [None] * len(x.shape)
        dims = [i for i, d in enumerate(x.shape) if d % n == 0]
        if n > 1 and dims:
            spec[max(dims, key=lambda i: (x.shape[i], i))] = axis
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree.map(one, params_shapes)
