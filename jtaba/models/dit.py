"""DiT (Peebles & Xie 2023): class-conditional adaLN-zero transformer over 2-D latent patches (family ``"dit"``).

One module serves both checkpoint layouts, facebookresearch/DiT ``models.DiT`` (``Config.from_facebook``) and
diffusers ``DiTTransformer2DModel`` (``Config.from_diffusers``). They differ numerically in exactly two places,
both recorded in ``Config``:

* timestep frequencies ``exp(-ln(1e4) k / (half - freq_shift))``: facebook ``freq_shift`` 0, diffusers 1
  (``Timesteps(downscale_freq_shift=1)`` in ``CombinedTimestepLabelEmbeddings``); both put cos before sin
  (``diffusers_blocks.timestep_embedding``: its frequencies match torch's float32 exp, which matters at t ~ 1000);
* eps of the LayerNorm before the MLP: facebook 1e-6, diffusers ``norm_eps`` (1e-5). The LayerNorm before
  attention and the final one use 1e-6 in both.

diffusers stores one timestep/label embedder per block (the hub checkpoint holds 28 equal copies, converted from
facebook's single one); the converter keeps one shared embedder when the copies are equal and sets
``block_embedders`` (one per block, the final layer using block 0's, as diffusers) only when they differ.

Layout: x (B, H, W, C) NHWC with H = W = ``input_size``; patches are taken row-major, the fixed 2-D sin-cos
positional table (a constant, not a param) is recomputed in numpy exactly as facebook's ``get_2d_sincos_pos_embed``.
Output (B, H, W, 2C) with learned sigma (first C channels are eps), else (B, H, W, C). Labels: int32 (B,), the null
(CFG) class is ``num_classes`` (row that exists when ``class_dropout_prob > 0``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jtaba.config import ConfigBase
from jtaba.models.diffusers_blocks import timestep_embedding
from jtaba.models.ops import attention, conv

_FACEBOOK_DEFAULTS = dict(input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                          mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True)


@dataclasses.dataclass(frozen=True)
class Config(ConfigBase):
    input_size: int = 32  # latent height = width
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    class_dropout_prob: float = 0.1  # > 0: the label table has the extra null row; labels dropped only in training
    learn_sigma: bool = True  # output 2C channels (eps, variance interpolation)
    freq_shift: int = 0  # timestep frequency divisor is half - freq_shift (facebook 0, diffusers 1)
    mlp_norm_eps: float = 1e-6  # LayerNorm eps before the MLP (facebook 1e-6, diffusers norm_eps)
    block_embedders: bool = False  # one timestep/label embedder per block (diffusers layout with distinct copies)

    def __post_init__(self):
        for name in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "num_classes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"dit.Config.{name} must be an int >= 1, got {v!r}")
        for name in ("learn_sigma", "block_embedders"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"dit.Config.{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) or self.mlp_ratio <= 0:
            raise ValueError(f"dit.Config.mlp_ratio must be a positive number, got {self.mlp_ratio!r}")
        p = self.class_dropout_prob
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(f"dit.Config.class_dropout_prob must be a number in [0, 1), got {p!r}")
        if self.input_size % self.patch_size:
            raise ValueError(f"dit.Config: input_size {self.input_size} is not a multiple of patch_size "
                             f"{self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"dit.Config: hidden_size {self.hidden_size} is not a multiple of num_heads "
                             f"{self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError(f"dit.Config: hidden_size {self.hidden_size} must be a multiple of 4 (the 2-D sin-cos "
                             "positional table)")

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def num_patches(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    @classmethod
    def from_facebook(cls, kwargs: dict) -> "Config":
        """From the ``models.DiT(...)`` constructor arguments (missing ones take the constructor defaults)."""
        unknown = set(kwargs) - set(_FACEBOOK_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown facebook DiT arguments: {sorted(unknown)}")
        kw = {**_FACEBOOK_DEFAULTS, **kwargs}
        for name, default in _FACEBOOK_DEFAULTS.items():  # JSON types as the constructor expects them
            v = kw[name]
            ok = (isinstance(v, bool) if isinstance(default, bool) else
                  isinstance(v, int) and not isinstance(v, bool) if isinstance(default, int) else
                  isinstance(v, (int, float)) and not isinstance(v, bool))
            if not ok:
                raise ValueError(f"facebook DiT argument {name} must be {type(default).__name__}, got {v!r}")
        return cls(input_size=kw["input_size"], patch_size=kw["patch_size"], in_channels=kw["in_channels"],
                   hidden_size=kw["hidden_size"], depth=kw["depth"], num_heads=kw["num_heads"],
                   mlp_ratio=float(kw["mlp_ratio"]), num_classes=kw["num_classes"],
                   class_dropout_prob=float(kw["class_dropout_prob"]), learn_sigma=kw["learn_sigma"])

    @classmethod
    def from_diffusers(cls, cfg: dict, block_embedders: bool = False) -> "Config":
        """From a ``DiTTransformer2DModel`` config.json (its fixed choices are checked, not assumed)."""
        fixed = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate", "attention_bias": True,
                 "norm_elementwise_affine": False}
        bad = {k: cfg[k] for k, v in fixed.items() if k in cfg and cfg[k] != v}
        if bad or cfg.get("num_embeds_ada_norm") is None:
            raise ValueError(f"unsupported DiTTransformer2DModel options {bad or {'num_embeds_ada_norm': None}}; "
                             f"supported: {fixed} with num_embeds_ada_norm set")
        in_ch = int(cfg.get("in_channels", 4))
        out_ch = cfg.get("out_channels") or in_ch
        if out_ch not in (in_ch, 2 * in_ch):
            raise ValueError(f"out_channels {out_ch} must be in_channels ({in_ch}) or twice it (learned sigma)")
        heads = int(cfg.get("num_attention_heads", 16))
        return cls(input_size=int(cfg.get("sample_size", 32)), patch_size=int(cfg.get("patch_size", 2)),
                   in_channels=in_ch, hidden_size=heads * int(cfg.get("attention_head_dim", 72)),
                   depth=int(cfg.get("num_layers", 28)), num_heads=heads, mlp_ratio=4.0,
                   num_classes=int(cfg["num_embeds_ada_norm"]), class_dropout_prob=0.1,
                   learn_sigma=out_ch == 2 * in_ch, freq_shift=1, mlp_norm_eps=float(cfg.get("norm_eps", 1e-5)),
                   block_embedders=block_embedders)


def null_cond(config: Config, batch: int) -> jax.Array:
    """The null (unconditional) labels for classifier-free guidance: ``num_classes``, int32 (batch,)."""
    if config.class_dropout_prob <= 0:
        raise ValueError("this DiT has no null class (class_dropout_prob == 0): no classifier-free guidance")
    return jnp.full((batch,), config.num_classes, jnp.int32)


@functools.lru_cache(maxsize=8)
def pos_embed_table(embed_dim: int, grid_size: int) -> np.ndarray:
    """facebook ``get_2d_sincos_pos_embed(embed_dim, grid_size)`` (float64 math) as float32 (grid², embed_dim):
    first half encodes the column (w) index, second half the row; sin before cos in each half."""
    grid_1d = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_1d, grid_1d), axis=0).reshape(2, 1, grid_size, grid_size)  # w first

    def one_d(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = np.arange(dim // 2, dtype=np.float64)
        omega /= dim / 2.0
        omega = 1.0 / 10000 ** omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    return emb.astype(np.float32)


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over the last axis without affine, in float32 (two-pass variance, as torch)."""
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    xc = x - mean
    return xc * jax.lax.rsqrt((xc * xc).mean(-1, keepdims=True) + eps)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1 + scale[:, None]) + shift[:, None]


class Embedder(nn.Module):
    """c = MLP(timestep_embedding(t)) + label_table[y], (B, hidden)."""

    config: Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, t: jax.Array, labels: jax.Array) -> jax.Array:
        cfg = self.config
        h = timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=cfg.freq_shift)
        h = nn.Dense(cfg.hidden_size, dtype=self.dtype, name="t_linear_1")(h)
        h = nn.Dense(cfg.hidden_size, dtype=self.dtype, name="t_linear_2")(nn.silu(h))
        rows = cfg.num_classes + int(cfg.class_dropout_prob > 0)
        y = nn.Embed(rows, cfg.hidden_size, name="y_embedding")(labels)
        return h.astype(jnp.float32) + y


class Attention(nn.Module):
    """Multi-head self-attention with biased q/k/v/out projections; softmax in float32 (``ops.attention``:
    cuDNN flash attention for bfloat16 on GPUs)."""

    hidden: int
    heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, _ = x.shape
        hd = self.hidden // self.heads
        q, k, v = (nn.Dense(self.hidden, dtype=self.dtype, name=name)(x).reshape(b, n, self.heads, hd)
                   for name in ("q", "k", "v"))
        out = attention(q, k, v, hd ** -0.5).reshape(b, n, self.hidden)
        return nn.Dense(self.hidden, dtype=self.dtype, name="proj")(out)


class Block(nn.Module):
    """DiT block: x += gate_msa·attn(mod(LN(x))); x += gate_mlp·mlp(mod(LN(x))); modulation from silu(c)."""

    config: Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        cfg = self.config
        mod = nn.Dense(6 * cfg.hidden_size, dtype=self.dtype, name="adaLN_modulation")(nn.silu(c))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod.astype(jnp.float32), 6, -1)
        h = modulate(layer_norm(x, 1e-6), shift_msa, scale_msa)
        x = x + gate_msa[:, None] * Attention(cfg.hidden_size, cfg.num_heads, self.dtype, name="attn")(h)
        h = modulate(layer_norm(x, cfg.mlp_norm_eps), shift_mlp, scale_mlp)
        h = nn.Dense(int(cfg.hidden_size * cfg.mlp_ratio), dtype=self.dtype, name="fc1")(h)
        h = nn.Dense(cfg.hidden_size, dtype=self.dtype, name="fc2")(nn.gelu(h, approximate=True))
        return x + gate_mlp[:, None] * h


class Network(nn.Module):
    """DiT noise predictor: (x (B,H,W,C), t (B,) float32, labels (B,) int32) -> (B,H,W,C_out) float32."""

    config: Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, cond: jax.Array | None = None, *, train: bool = False):
        cfg = self.config
        if cond is None:
            raise ValueError("DiT is class-conditional: pass int32 labels (null class = num_classes, see null_cond)")
        b, hgt, wid, _ = x.shape
        if hgt != cfg.input_size or wid != cfg.input_size:
            raise ValueError(f"DiT built for {cfg.input_size}x{cfg.input_size} inputs, got {hgt}x{wid}")
        labels = cond.astype(jnp.int32)
        if train and cfg.class_dropout_prob > 0:
            drop = jax.random.uniform(self.make_rng("dropout"), labels.shape) < cfg.class_dropout_prob
            labels = jnp.where(drop, cfg.num_classes, labels)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))
        if cfg.block_embedders:
            conds = [Embedder(cfg, self.dtype, name=f"embedder_{i}")(t, labels) for i in range(cfg.depth)]
        else:
            conds = [Embedder(cfg, self.dtype, name="embedder")(t, labels)] * cfg.depth

        p, grid = cfg.patch_size, cfg.input_size // cfg.patch_size
        h = conv(cfg.hidden_size, p, self.dtype, "x_embedder", stride=p, padding=0)(x.astype(self.dtype))
        h = h.reshape(b, grid * grid, cfg.hidden_size).astype(jnp.float32)
        h = h + jnp.asarray(pos_embed_table(cfg.hidden_size, grid))[None]
        for i in range(cfg.depth):
            h = Block(cfg, self.dtype, name=f"blocks_{i}")(h, conds[i])

        shift, scale = jnp.split(nn.Dense(2 * cfg.hidden_size, dtype=self.dtype, name="final_adaLN_modulation")(
            nn.silu(conds[0])).astype(jnp.float32), 2, -1)
        h = modulate(layer_norm(h, 1e-6), shift, scale)
        h = nn.Dense(p * p * cfg.out_channels, dtype=self.dtype, name="final_linear")(h)
        h = h.reshape(b, grid, grid, p, p, cfg.out_channels).transpose(0, 1, 3, 2, 4, 5)
        return h.reshape(b, grid * p, grid * p, cfg.out_channels).astype(jnp.float32)
