"""Transformer feature extractors of the perception metrics (paper Sec. 4.2, App. G.3) in Flax, as transformers
computes them, and their image preprocessing as upstream runs it (PIL + torchvision), Pillow-exact.

Networks (one pre-LayerNorm transformer ``Encoder`` shared by all three):

* ``VisionTransformer`` with ``VisionConfig(kind="vit")``: transformers ``ViTModel`` (DINO ``facebook/dino-vits16``
  loaded with ``add_pooling_layer=False``; also the G.3 ViT annotators' backbone): patch conv (with bias) -> [CLS] +
  patches + position embeddings -> encoder (exact-erf GELU) -> final LayerNorm = ``last_hidden_state``;
  ``features`` = its CLS token.
* ``VisionTransformer`` with ``kind="clip"``: transformers ``CLIPVisionModelWithProjection`` (``image_embeds`` of
  ``openai/clip-vit-base-patch32``): patch conv (no bias) -> class embedding + patches + position embeddings ->
  ``pre_layrnorm`` -> encoder (quick-GELU) -> ``post_layernorm`` of the CLS token -> ``visual_projection`` (no bias).
* ``TextTransformer``: transformers ``CLIPTextModelWithProjection`` (``text_embeds``): token + position embeddings
  -> causal encoder -> ``final_layer_norm`` -> the hidden state at the EOS token -> ``text_projection``. The EOS
  position follows transformers (4.31+, unchanged up to 5.x): ``eos_token_id == 2`` (the legacy value in the
  original OpenAI hub configs, e.g. ``openai/clip-vit-base-patch32``) takes ``argmax(input_ids)`` (the first
  occurrence of the highest id, 49407 = ``<|endoftext|>``, as the OpenAI ``clip`` package does), any other value
  the first position where ``input_ids == eos_token_id``. Only the causal mask is applied: a padding mask changes
  nothing at or before the EOS token, so the pooled output is the same with or without transformers'
  ``attention_mask``.

Params: ``patch`` (Conv), ``cls`` (D,), ``pos`` (N + 1, D), ``pre_norm`` / ``norm`` / ``post_norm`` (LayerNorm),
``proj`` (Dense, no bias); text: ``token`` (Embed), ``pos``, ``final_norm``, ``proj``; encoder layers
``encoder/layer_{i}/{ln1, attn/{q, k, v, o}, ln2, fc1, fc2}``. ``convert/dino.py`` and ``convert/clip.py`` write
them from transformers checkpoints.

Preprocessing (``preprocess``, from NCHW images, by default in [-1, 1]): exactly what upstream feeds the networks:
diffusers ``pt_to_pil`` (``(x / 2 + 0.5).clamp(0, 1)``, ``(· 255).round()`` to uint8) -> torchvision
``Resize(size, BICUBIC)`` on the PIL image (shorter side to ``size``, longer ``int(size · long / short)``; an image
already that size is left alone) -> ``CenterCrop(crop)`` (offset ``int(round((h − crop) / 2))``) -> ``ToTensor``
(/255) -> ``Normalize(mean, std)``. The resize reproduces Pillow's 8-bit ``ImagingResample`` bit for bit: Pillow's
bicubic (a = −0.5) taps over ``support = 2 · max(in/out, 1)`` (antialiased when shrinking), normalised to sum 1, as
22-bit fixed-point integers; horizontal pass first, each pass rounded (+2^21, >> 22) and clipped to uint8 — all in
int32 in JAX (gathers and integer multiply-adds, no float rounding anywhere), so the network input equals
torchvision's to the last bit (tests assert equality). ``DINO`` = Resize(256) -> CenterCrop(224), ImageNet
mean/std (upstream diversity script); ``CLIP`` = Resize(224) -> CenterCrop(224), CLIP mean/std (``clip`` package
``preprocess``; HF ``CLIPImageProcessor`` does the same on square images).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jtaba.config import ConfigBase

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ACTIVATIONS = ("gelu", "quick_gelu", "gelu_new", "gelu_pytorch_tanh")
KINDS = ("vit", "clip")


def activation(name: str):
    if name == "gelu":  # transformers GELUActivation: torch's exact erf GELU
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name == "quick_gelu":  # CLIP: x · sigmoid(1.702 x)
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    raise ValueError(f"hidden_act must be one of {ACTIVATIONS}, got {name!r}")


# ---- configs ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class VisionConfig(ConfigBase):
    """A ViT image encoder: ``kind`` "vit" (transformers ``ViTModel``) or "clip" (``CLIPVisionModel`` +
    ``visual_projection`` of ``projection_dim``). Defaults: ``facebook/dino-vits16``."""
    kind: str = "vit"
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 384
    num_layers: int = 12
    num_heads: int = 6
    intermediate_size: int = 1536
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    projection_dim: int = 0  # kind "clip" only

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"VisionConfig.kind must be one of {KINDS}, got {self.kind!r}")
        activation(self.hidden_act)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if (self.kind == "clip") != (self.projection_dim > 0):
            raise ValueError("projection_dim must be > 0 exactly for kind 'clip' (CLIP's visual_projection)")

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclasses.dataclass(frozen=True)
class TextConfig(ConfigBase):
    """CLIP's text encoder + ``text_projection``. Defaults: ``openai/clip-vit-base-patch32``."""
    vocab_size: int = 49408
    max_position_embeddings: int = 77
    hidden_size: int = 512
    num_layers: int = 12
    num_heads: int = 8
    intermediate_size: int = 2048
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    projection_dim: int = 512
    eos_token_id: int = 2  # 2: legacy argmax(input_ids) pooling (the OpenAI hub configs); else first == eos

    def __post_init__(self):
        activation(self.hidden_act)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")


# ---- networks -----------------------------------------------------------------------------------------------------
class Attention(nn.Module):
    width: int
    heads: int
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None = None) -> jax.Array:
        b, n, _ = x.shape
        hd = self.width // self.heads
        def proj(name, bias_=self.use_bias):
            return nn.Dense(self.width, use_bias=bias_, dtype=self.dtype, name=name)
        q, k, v = (proj(name)(x).reshape(b, n, self.heads, hd) for name in ("q", "k", "v"))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * (hd ** -0.5)
        if bias is not None:
            logits = logits + bias
        w = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, n, self.width)
        return nn.Dense(self.width, dtype=self.dtype, name="o")(out)


class EncoderLayer(nn.Module):
    """Pre-LN block: x + attn(LN1(x)), then h + fc2(act(fc1(LN2(h))))."""
    width: int
    heads: int
    mlp: int
    eps: float
    act: str
    qkv_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None = None) -> jax.Array:
        def ln(name):
            return nn.LayerNorm(epsilon=self.eps, dtype=jnp.float32, use_fast_variance=False, name=name)
        h = ln("ln1")(x).astype(self.dtype)
        x = x + Attention(self.width, self.heads, self.qkv_bias, self.dtype, name="attn")(h, bias).astype(x.dtype)
        h = ln("ln2")(x).astype(self.dtype)
        h = activation(self.act)(nn.Dense(self.mlp, dtype=self.dtype, name="fc1")(h))
        return x + nn.Dense(self.width, dtype=self.dtype, name="fc2")(h).astype(x.dtype)


class Encoder(nn.Module):
    width: int
    layers: int
    heads: int
    mlp: int
    eps: float
    act: str
    qkv_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None = None) -> jax.Array:
        for i in range(self.layers):
            x = EncoderLayer(self.width, self.heads, self.mlp, self.eps, self.act, self.qkv_bias, self.dtype,
                             name=f"layer_{i}")(x, bias)
        return x


def _encoder(c, dtype) -> Encoder:
    return Encoder(c.hidden_size, c.num_layers, c.num_heads, c.intermediate_size, c.layer_norm_eps, c.hidden_act,
                   getattr(c, "qkv_bias", True), dtype, name="encoder")


class VisionTransformer(nn.Module):
    """NHWC preprocessed pixels (B, S, S, C), S = ``image_size`` -> {"last_hidden_state" (B, N + 1, D),
    "pooled" (B, D): the CLS token (kind "vit": of the final LayerNorm; "clip": post_layernorm of it),
    "embeds" (B, P): kind "clip" only, the projection, "encoder_output" (B, N + 1, D): the last block's output
    before any final LayerNorm (DreamSim's DINO feature)}."""
    config: VisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        c = self.config
        if x.shape[1:] != (c.image_size, c.image_size, c.num_channels):
            raise ValueError(f"expected (B, {c.image_size}, {c.image_size}, {c.num_channels}) pixels, got {x.shape}")
        clip = c.kind == "clip"
        d, p = c.hidden_size, c.patch_size
        x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", use_bias=not clip, dtype=self.dtype,
                    name="patch")(x.astype(self.dtype))
        x = x.reshape(x.shape[0], -1, d).astype(jnp.float32)  # row-major patches, as torch's flatten(2)
        cls = self.param("cls", nn.initializers.normal(0.02), (d,))
        pos = self.param("pos", nn.initializers.normal(0.02), (c.num_positions, d))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, d)), x], axis=1) + pos
        def ln(name):
            return nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=jnp.float32, use_fast_variance=False, name=name)
        if clip:
            x = ln("pre_norm")(x)
        x = _encoder(c, self.dtype)(x).astype(jnp.float32)
        if not clip:
            h = ln("norm")(x)
            return {"last_hidden_state": h, "pooled": h[:, 0], "encoder_output": x}
        pooled = ln("post_norm")(x[:, 0])
        embeds = nn.Dense(c.projection_dim, use_bias=False, dtype=jnp.float32, name="proj")(pooled)
        return {"last_hidden_state": x, "pooled": pooled, "embeds": embeds, "encoder_output": x}


def eos_positions(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
    """transformers ``CLIPTextTransformer``'s pooling index (module docstring)."""
    ids = jnp.asarray(input_ids, jnp.int32)
    return jnp.argmax(ids, axis=-1) if eos_token_id == 2 else jnp.argmax(ids == eos_token_id, axis=-1)


class TextTransformer(nn.Module):
    """Token ids (B, L), L <= ``max_position_embeddings`` -> {"last_hidden_state", "pooled" (B, D) at the EOS
    token, "embeds" (B, P)}."""
    config: TextConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> dict[str, jax.Array]:
        c = self.config
        n = input_ids.shape[1]
        if n > c.max_position_embeddings:
            raise ValueError(f"{n} tokens, the text encoder takes at most {c.max_position_embeddings}")
        x = nn.Embed(c.vocab_size, c.hidden_size, name="token")(input_ids)
        pos = self.param("pos", nn.initializers.normal(0.01), (c.max_position_embeddings, c.hidden_size))
        x = x + pos[:n]
        causal = jnp.where(jnp.tril(jnp.ones((n, n), bool)), 0.0, jnp.finfo(jnp.float32).min)
        x = _encoder(c, self.dtype)(x, causal).astype(jnp.float32)
        x = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=jnp.float32, use_fast_variance=False,
                         name="final_norm")(x)
        pooled = x[jnp.arange(x.shape[0]), eos_positions(input_ids, c.eos_token_id)]
        embeds = nn.Dense(c.projection_dim, use_bias=False, dtype=jnp.float32, name="proj")(pooled)
        return {"last_hidden_state": x, "pooled": pooled, "embeds": embeds}


def init_vision(config: VisionConfig, seed: int = 0) -> dict:
    x = jnp.zeros((1, config.image_size, config.image_size, config.num_channels), jnp.float32)
    return VisionTransformer(config).init(jax.random.key(seed), x)["params"]


def init_text(config: TextConfig, seed: int = 0) -> dict:
    return TextTransformer(config).init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"]


# ---- preprocessing: Pillow-exact uint8 resize ------------------------------------------------------------------
PRECISION_BITS = 22  # Pillow Resample.c: 32 - 8 - 2


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                    np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def pil_bicubic_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for BICUBIC along one axis: (n_out, K) source
    indices (int32, padded with valid indices) and (n_out, K) int32 fixed-point weights (padding weight 0)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = math.ceil(support) * 2 + 1
    idx = np.zeros((n_out, ksize), np.int32)
    wts = np.zeros((n_out, ksize), np.int32)
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in)
        j = np.arange(xmin, xmax)
        w = _bicubic((j - center + 0.5) * (1.0 / filterscale))
        total = w.sum()
        if total != 0.0:
            w = w / total
        fixed = np.where(w < 0, np.trunc(-0.5 + w * (1 << PRECISION_BITS)), np.trunc(0.5 + w * (1 << PRECISION_BITS)))
        idx[xx, :len(j)] = j
        idx[xx, len(j):] = xmin
        wts[xx, :len(j)] = fixed.astype(np.int32)
    return idx, wts


def _resample_axis(x: jax.Array, axis: int, n_out: int) -> jax.Array:
    idx, wts = pil_bicubic_taps(x.shape[axis], n_out)
    shape = [1] * x.ndim
    shape[axis] = n_out
    acc = jnp.full(x.shape[:axis] + (n_out,) + x.shape[axis + 1:], 1 << (PRECISION_BITS - 1), jnp.int32)
    for k in range(idx.shape[1]):
        if not wts[:, k].any():
            continue
        acc = acc + jnp.take(x, jnp.asarray(idx[:, k]), axis=axis) * jnp.asarray(wts[:, k]).reshape(shape)
    return jnp.clip(jnp.right_shift(acc, PRECISION_BITS), 0, 255)


def resize_bicubic_pil_uint8(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """Pillow ``Image.resize((w, h), BICUBIC)`` of an 8-bit image, NHWC int32 values in [0, 255] -> (B, h, w, C)
    int32, bit-exact: horizontal pass, then vertical, each skipped when that size is unchanged."""
    x = jnp.asarray(x, jnp.int32)
    if size[1] != x.shape[2]:
        x = _resample_axis(x, 2, size[1])
    if size[0] != x.shape[1]:
        x = _resample_axis(x, 1, size[0])
    return x


def resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)`` (an int): the shorter side becomes ``size``."""
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def center_crop(x: jax.Array, crop: int) -> jax.Array:
    """torchvision ``CenterCrop(crop)`` on NHWC (the image must be at least ``crop`` on each side)."""
    h, w = x.shape[1], x.shape[2]
    if h < crop or w < crop:
        raise ValueError(f"CenterCrop({crop}) of a {h}x{w} image (torchvision would pad; not supported)")
    top, left = round((h - crop) / 2.0), round((w - crop) / 2.0)  # Python round: half to even, as torchvision
    return x[:, top:top + crop, left:left + crop]


def to_uint8(images: jax.Array, input_range: str = "signed") -> jax.Array:
    """NCHW float images -> NHWC int32 values in [0, 255] as diffusers ``pt_to_pil`` / ``numpy_to_pil`` make
    them (``input_range`` "signed": [-1, 1]; "unit": [0, 1]; "uint8": already integers in [0, 255])."""
    x = jnp.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W) NCHW, got shape {tuple(x.shape)}")
    x = x.transpose(0, 2, 3, 1)
    if input_range == "uint8":
        return jnp.clip(jnp.round(x.astype(jnp.float32)), 0, 255).astype(jnp.int32)
    x = x.astype(jnp.float32)
    if input_range == "signed":
        x = x / 2 + 0.5
    elif input_range != "unit":
        raise ValueError(f"input_range must be 'signed', 'unit' or 'uint8', got {input_range!r}")
    return jnp.round(jnp.clip(x, 0, 1) * 255).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """PIL image -> Resize(``resize``, BICUBIC) -> CenterCrop(``crop``) -> ToTensor -> Normalize(mean, std)."""
    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: jax.Array, input_range: str = "signed") -> jax.Array:
        """NCHW images -> NHWC float32 network input (B, crop, crop, C)."""
        x = to_uint8(images, input_range)
        x = resize_bicubic_pil_uint8(x, resized_size(x.shape[1], x.shape[2], self.resize))
        x = center_crop(x, self.crop).astype(jnp.float32) / 255
        return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)


DINO = Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD)
CLIP = Preprocess(224, 224, CLIP_MEAN, CLIP_STD)


def cosine(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Row-wise cosine similarity (torch ``F.cosine_similarity``: a·b / max(|a|·|b|, eps)), float32."""
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    na, nb = jnp.linalg.norm(a, axis=-1), jnp.linalg.norm(b, axis=-1)
    return jnp.sum(a * b, axis=-1) / jnp.maximum(na * nb, eps)
