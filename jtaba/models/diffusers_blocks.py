"""flax.linen equivalents of diffusers' shared building blocks (diffusers 0.42.1 is the oracle), NHWC.

Blocks (diffusers class -> here):
* ``models/resnet.py::ResnetBlock2D`` -> ``ResnetBlock2D``: ``time_embedding_norm`` "default" (temb added before
  norm2) or "scale_shift" (norm2 then ``*(1+scale)+shift``), ``skip_time_act``, ``output_scale_factor``, ``up`` /
  ``down`` (nearest x2 / 2x2 average pool of h and the shortcut after norm1+act), 1x1 ``conv_shortcut`` (with or
  without bias; ``use_in_shortcut`` None = when channels change), ``groups`` / ``groups_out``, ``eps``,
  ``non_linearity`` swish/silu/mish/gelu/relu, ``conv_2d_out_channels``, dropout. ``temb=None`` (VAE
  encoders/decoders) creates no ``time_emb_proj``.
* ``models/downsampling.py::Downsample2D`` -> ``Downsample2D``: stride-2 conv with ``padding`` 1 (torch symmetric),
  or ``padding=0`` with the asymmetric (0,1,0,1) zero pad of the VAE encoder; ``use_conv=False`` = 2x2 avg pool.
* ``models/upsampling.py::Upsample2D`` -> ``Upsample2D``: nearest x2 (or to ``output_size``, torch's
  ``floor(dst * in/out)`` rule) then an optional 3x3 conv.
* ``models/embeddings.py::get_timestep_embedding / Timesteps`` -> ``timestep_embedding`` (``flip_sin_to_cos``,
  ``downscale_freq_shift``, ``scale``); ``TimestepEmbedding`` -> ``TimestepEmbedding`` (linear_1, act, linear_2,
  optional post act; ``out_dim``).
* ``models/attention_processor.py::Attention`` as a spatial self-attention -> ``Attention``: optional group norm,
  ``heads`` x ``dim_head``, ``residual_connection``, ``rescale_output_factor``, softmax in float32 (the
  ``_from_deprecated_attn_block`` blocks of UNet2DModel's Attn*Block2D and the VAE mid block).
* ``models/unets/unet_2d_blocks.py``: ``UNetMidBlock2D`` (also with temb=None), ``DownBlock2D``, ``AttnDownBlock2D``,
  ``UpBlock2D``, ``AttnUpBlock2D`` (down/up sampling "conv" or "resnet"); their shared ResnetBlock2D settings are
  one ``ResnetArgs`` value.

Naming: submodules carry the diffusers state-dict names with a ModuleList index ``.N`` written ``_N``
(``resnets.1.conv1`` -> ``resnets_1/conv1``, ``to_out.0`` -> ``to_out_0``, ``downsamplers.0.conv`` ->
``downsamplers_0/conv``); leaves are flax's ``kernel`` (Conv: (kh,kw,I,O), Dense: (I,O); 1x1 shortcuts are convs),
``bias``, ``scale`` (GroupNorm weight). Numerics: params float32; convs/denses compute in ``dtype``; GroupNorm
(two-pass variance, torch's eps) and softmax run in float32 and are cast back.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jtaba.models.ops import attention, avg_pool2, conv, group_norm, upsample_nearest


# ---- activations -----------------------------------------------------------------------------------------------
def mish(x: jax.Array) -> jax.Array:
    return x * jnp.tanh(jax.nn.softplus(x))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "swish": nn.silu, "silu": nn.silu, "mish": mish, "gelu": partial(nn.gelu, approximate=False), "relu": nn.relu,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """diffusers ``get_activation``: swish/silu, mish, gelu (exact erf form), relu."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# ---- time embedding ----------------------------------------------------------------------------------------------
def timestep_embedding(t: jax.Array, dim: int, flip_sin_to_cos: bool = False, downscale_freq_shift: float = 1.0,
                       scale: float = 1.0, max_period: int = 10000) -> jax.Array:
    """diffusers ``get_timestep_embedding``: (B,) labels (any float/int) -> (B, dim) float32
    [sin(t f), cos(t f)] (``flip_sin_to_cos``: cos first), f_k = exp(-ln(max_period) k / (half - shift));
    odd ``dim`` is zero padded. The float32 frequencies are exp rounded once from float64, which matches torch's
    float32 exp bit for bit far more often than float32 exp kernels do (numpy's, XLA's)."""
    half = dim // 2
    exponent = (np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32)
                / np.float32(half - downscale_freq_shift))
    freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    if scale != 1:
        args = np.float32(scale) * args
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nn.Module):
    """diffusers ``TimestepEmbedding``: linear_1 -> act -> linear_2 (-> post act). (B, in) -> (B, out_dim or
    time_embed_dim)."""
    time_embed_dim: int
    act_fn: str = "silu"
    out_dim: int | None = None
    post_act_fn: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.time_embed_dim, dtype=self.dtype, name="linear_1")(x)
        x = get_activation(self.act_fn)(x)
        x = nn.Dense(self.out_dim or self.time_embed_dim, dtype=self.dtype, name="linear_2")(x)
        if self.post_act_fn is not None:
            x = get_activation(self.post_act_fn)(x)
        return x


# ---- resampling --------------------------------------------------------------------------------------------------
class Downsample2D(nn.Module):
    """diffusers ``Downsample2D`` (param ``conv``): ``use_conv`` -> 3x3 stride-2 conv with symmetric ``padding``,
    where ``padding=0`` first zero-pads bottom/right by one (torch ``F.pad(x, (0,1,0,1))``); else 2x2 avg pool."""
    out_channels: int | None = None
    use_conv: bool = True
    padding: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        if not self.use_conv:
            return avg_pool2(x)
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return conv(self.out_channels or x.shape[-1], 3, self.dtype, "conv", stride=2, padding=self.padding)(x)


class Upsample2D(nn.Module):
    """diffusers ``Upsample2D`` (param ``conv``): nearest x2 (or to ``output_size``), then a 3x3 conv if
    ``use_conv``."""
    out_channels: int | None = None
    use_conv: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, output_size: Sequence[int] | None = None):
        x = upsample_nearest(x, output_size)
        if self.use_conv:
            x = conv(self.out_channels or x.shape[-1], 3, self.dtype, "conv")(x)
        return x


# ---- residual block ----------------------------------------------------------------------------------------------
class ResnetBlock2D(nn.Module):
    """diffusers ``ResnetBlock2D`` on NHWC. ``__call__(x (B,H,W,Cin), temb (B,E) or None, train)`` ->
    (B,H',W',conv_2d_out_channels or out_channels). ``out_channels`` None = Cin."""
    out_channels: int | None = None
    groups: int = 32
    groups_out: int | None = None
    eps: float = 1e-6
    non_linearity: str = "swish"
    time_embedding_norm: str = "default"
    skip_time_act: bool = False
    output_scale_factor: float = 1.0
    use_in_shortcut: bool | None = None
    conv_shortcut_bias: bool = True
    conv_2d_out_channels: int | None = None
    up: bool = False
    down: bool = False
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb=None, train: bool = False):
        if self.time_embedding_norm not in ("default", "scale_shift"):
            raise ValueError(f"ResnetBlock2D: unknown time_embedding_norm {self.time_embedding_norm!r}")
        act = get_activation(self.non_linearity)
        x = x.astype(self.dtype)
        c_in = x.shape[-1]
        c_mid = self.out_channels or c_in
        c_out = self.conv_2d_out_channels or c_mid
        h = act(group_norm(x, self.groups, self.eps, "norm1"))
        if self.up:
            h, x = upsample_nearest(h), upsample_nearest(x)
        elif self.down:
            h, x = avg_pool2(h), avg_pool2(x)
        h = conv(c_mid, 3, self.dtype, "conv1")(h)
        scale_shift = None
        if temb is not None:
            temb = temb if self.skip_time_act else act(temb)
            width = 2 * c_mid if self.time_embedding_norm == "scale_shift" else c_mid
            temb = nn.Dense(width, dtype=self.dtype, name="time_emb_proj")(temb)[:, None, None, :].astype(h.dtype)
            if self.time_embedding_norm == "default":
                h = h + temb
            else:
                scale_shift = jnp.split(temb, 2, axis=-1)
        elif self.time_embedding_norm == "scale_shift":
            raise ValueError("ResnetBlock2D: temb is required with time_embedding_norm='scale_shift'")
        h = group_norm(h, self.groups_out or self.groups, self.eps, "norm2")
        if scale_shift is not None:
            h = h * (1 + scale_shift[0]) + scale_shift[1]
        h = nn.Dropout(self.dropout, deterministic=not train)(act(h))
        h = conv(c_out, 3, self.dtype, "conv2")(h)
        shortcut = c_in != c_out if self.use_in_shortcut is None else self.use_in_shortcut
        if shortcut:
            x = conv(c_out, 1, self.dtype, "conv_shortcut", padding=0, use_bias=self.conv_shortcut_bias)(x)
        out = x + h
        if self.output_scale_factor != 1:
            out = out / self.output_scale_factor
        return out


# ---- attention ---------------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """diffusers ``Attention`` used as spatial self-attention: (B,H,W,C) or (B,L,C) -> same shape.
    Optional ``group_norm`` (``norm_num_groups``), to_q/to_k/to_v (C -> heads*dim_head), softmax(q k^T /
    sqrt(dim_head)) in float32 (``ops.attention``), ``to_out_0`` (-> C), ``+ x`` if ``residual_connection``,
    ``/ rescale_output_factor``. ``heads`` None = C // dim_head."""
    dim_head: int
    heads: int | None = None
    norm_num_groups: int | None = None
    eps: float = 1e-5
    residual_connection: bool = False
    rescale_output_factor: float = 1.0
    bias: bool = True
    out_bias: bool = True
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        shape, c = x.shape, x.shape[-1]
        x = x.astype(self.dtype)
        residual = x
        b = shape[0]
        h = x.reshape(b, -1, c)
        if self.norm_num_groups is not None:
            h = group_norm(h, self.norm_num_groups, self.eps, "group_norm")
        heads = self.heads or c // self.dim_head
        inner = heads * self.dim_head
        q, k, v = (nn.Dense(inner, use_bias=self.bias, dtype=self.dtype, name=name)(h).reshape(
            b, -1, heads, self.dim_head) for name in ("to_q", "to_k", "to_v"))
        a = attention(q, k, v, self.dim_head ** -0.5).reshape(b, -1, inner)
        out = nn.Dense(c, use_bias=self.out_bias, dtype=self.dtype, name="to_out_0")(a)
        out = nn.Dropout(self.dropout, deterministic=not train)(out).reshape(shape)
        if self.residual_connection:
            out = out + residual
        if self.rescale_output_factor != 1:
            out = out / self.rescale_output_factor
        return out


# ---- unet_2d_blocks ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ResnetArgs:
    """The ResnetBlock2D settings a diffusers block passes to all of its resnets (``resnet_eps``,
    ``resnet_groups``, ``resnet_act_fn``, ``resnet_time_scale_shift``, ``output_scale_factor``, ``dropout``,
    ``skip_time_act``)."""
    eps: float = 1e-6
    groups: int = 32
    act_fn: str = "swish"
    time_embedding_norm: str = "default"
    output_scale_factor: float = 1.0
    dropout: float = 0.0
    skip_time_act: bool = False

    def block(self, out_channels: int | None, dtype: Any, name: str, **kw) -> ResnetBlock2D:
        return ResnetBlock2D(out_channels=out_channels, groups=self.groups, eps=self.eps, non_linearity=self.act_fn,
                             time_embedding_norm=self.time_embedding_norm, skip_time_act=self.skip_time_act,
                             output_scale_factor=self.output_scale_factor, dropout=self.dropout, dtype=dtype,
                             name=name, **kw)

    def attention(self, channels: int, head_dim: int | None, groups: int | None, dtype: Any,
                  name: str) -> Attention:
        """The ``_from_deprecated_attn_block`` self-attention of UNet2DModel / VAE blocks (head_dim None = one
        head of all channels)."""
        head_dim = head_dim or channels
        return Attention(dim_head=head_dim, heads=channels // head_dim, norm_num_groups=groups, eps=self.eps,
                         residual_connection=True, rescale_output_factor=self.output_scale_factor, dtype=dtype,
                         name=name)


class UNetMidBlock2D(nn.Module):
    """diffusers ``UNetMidBlock2D``: resnets_0, then (attentions_i, resnets_{i+1}) for i < num_layers.
    ``attn_groups`` None = ``resnet.groups`` with "default" time norm, else no attention group norm.
    ``temb`` may be None (VAE)."""
    resnet: ResnetArgs = ResnetArgs()
    num_layers: int = 1
    add_attention: bool = True
    attention_head_dim: int | None = None
    attn_groups: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb=None, train: bool = False):
        c = x.shape[-1]
        attn_groups = self.attn_groups
        if attn_groups is None and self.resnet.time_embedding_norm == "default":
            attn_groups = self.resnet.groups
        x = self.resnet.block(c, self.dtype, "resnets_0")(x, temb, train)
        for i in range(self.num_layers):
            if self.add_attention:
                x = self.resnet.attention(c, self.attention_head_dim, attn_groups, self.dtype, f"attentions_{i}")(
                    x, train)
            x = self.resnet.block(c, self.dtype, f"resnets_{i + 1}")(x, temb, train)
        return x


class DownBlock2D(nn.Module):
    """diffusers ``DownBlock2D`` / ``AttnDownBlock2D`` (``attention``: self-attention after every resnet,
    ``attentions_i``). ``downsample_type`` "conv" (``downsamplers_0/conv``, stride 2 with
    ``downsample_padding``), "resnet" (a ``down=True`` ResnetBlock2D) or None.
    ``__call__(x, temb)`` -> (h, tuple of the skip states in diffusers order)."""
    out_channels: int
    num_layers: int = 1
    resnet: ResnetArgs = ResnetArgs()
    attention: bool = False
    attention_head_dim: int | None = None
    downsample_type: str | None = "conv"
    downsample_padding: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb=None, train: bool = False):
        states = ()
        for i in range(self.num_layers):
            x = self.resnet.block(self.out_channels, self.dtype, f"resnets_{i}")(x, temb, train)
            if self.attention:
                x = self.resnet.attention(self.out_channels, self.attention_head_dim, self.resnet.groups, self.dtype,
                                          f"attentions_{i}")(x, train)
            states += (x,)
        if self.downsample_type == "conv":
            x = Downsample2D(self.out_channels, padding=self.downsample_padding, dtype=self.dtype,
                             name="downsamplers_0")(x)
        elif self.downsample_type == "resnet":
            x = self.resnet.block(self.out_channels, self.dtype, "downsamplers_0", down=True)(x, temb, train)
        elif self.downsample_type is not None:
            raise ValueError(f"DownBlock2D: unknown downsample_type {self.downsample_type!r}")
        if self.downsample_type is not None:
            states += (x,)
        return x, states


class UpBlock2D(nn.Module):
    """diffusers ``UpBlock2D`` / ``AttnUpBlock2D``: each resnet takes ``concat([h, skips.pop()], channels)``;
    ``attention`` adds ``attentions_i`` after every resnet; ``upsample_type`` "conv" (``upsamplers_0/conv``),
    "resnet" (an ``up=True`` ResnetBlock2D) or None. ``__call__(x, skips, temb, output_size=None)``."""
    out_channels: int
    num_layers: int = 1
    resnet: ResnetArgs = ResnetArgs()
    attention: bool = False
    attention_head_dim: int | None = None
    upsample_type: str | None = "conv"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, skips: Sequence[jax.Array], temb=None, output_size=None, train: bool = False):
        skips = list(skips)
        for i in range(self.num_layers):
            x = jnp.concatenate([x.astype(self.dtype), skips.pop().astype(self.dtype)], axis=-1)
            x = self.resnet.block(self.out_channels, self.dtype, f"resnets_{i}")(x, temb, train)
            if self.attention:
                x = self.resnet.attention(self.out_channels, self.attention_head_dim, self.resnet.groups, self.dtype,
                                          f"attentions_{i}")(x, train)
        if self.upsample_type == "conv":
            x = Upsample2D(self.out_channels, dtype=self.dtype, name="upsamplers_0")(x, output_size)
        elif self.upsample_type == "resnet":
            x = self.resnet.block(self.out_channels, self.dtype, "upsamplers_0", up=True)(x, temb, train)
        elif self.upsample_type is not None:
            raise ValueError(f"UpBlock2D: unknown upsample_type {self.upsample_type!r}")
        return x
