"""diffusers ``VQModel`` (family ``"vq"``): the latent decoder of LDM CelebA-HQ (``CompVis/ldm-celebahq-256``).

``encode(x)`` (B, H, W, in) -> the unquantized latents ``quant_conv(encoder(x))`` (B, h, w, vq_embed_dim).
``decode(h, force_not_quantize=False)`` -> (B, H, W, out), not clamped: re-quantizes first (each latent vector
replaced by its nearest codebook entry in Euclidean distance, first index on ties, computed as upstream's
straight-through value ``h + (e - h)``), then post_quant_conv + decoder. Both float32, NHWC.
Deliberately no ``scaling_factor``: the LDM pipeline decodes its diffusion latents unscaled (diffusers' VQModel
config carries an unused 0.18215). Param names mirror the diffusers state dict (``quantize/embedding`` is the
codebook, (num_vq_embeddings, vq_embed_dim)).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtaba.models.autoencoder import AutoencoderConfig, Decoder, Encoder, encoder_decoder_fields
from jtaba.models.ops import conv


@dataclasses.dataclass(frozen=True)
class Config(AutoencoderConfig):
    latent_channels: int = 3
    num_vq_embeddings: int = 256
    vq_embed_dim: int = 3

    @classmethod
    def from_diffusers(cls, cfg: dict) -> "Config":
        """From a ``VQModel`` config.json (missing keys take the diffusers defaults)."""
        if cfg.get("norm_type", "group") != "group" or cfg.get("lookup_from_codebook", False):
            raise ValueError("VQModel with norm_type 'spatial' or lookup_from_codebook (MoVQ) is not supported")
        fields = encoder_decoder_fields(cfg, latent_channels=3)
        return cls(**fields, num_vq_embeddings=int(cfg.get("num_vq_embeddings", 256)),
                   vq_embed_dim=int(cfg.get("vq_embed_dim") or fields["latent_channels"]))


def quantize(h: jax.Array, codebook: jax.Array) -> jax.Array:
    """Nearest codebook entry per vector of h (..., D), distances as torch.cdist's matmul form
    ||h||² - 2 h·e + ||e||², float32; returns ``h + (e - h)`` (upstream's straight-through value)."""
    flat = h.reshape(-1, h.shape[-1]).astype(jnp.float32)
    codebook = codebook.astype(jnp.float32)
    d2 = (jnp.sum(flat * flat, -1, keepdims=True) - 2.0 * flat @ codebook.T + jnp.sum(codebook * codebook, -1)[None])
    e = codebook[jnp.argmin(d2, axis=-1)].reshape(h.shape)
    return h + (e - h)


class Network(nn.Module):
    """VQModel with ``encode`` / ``decode`` methods; ``__call__(x)`` = decode(encode(x)) (for init)."""
    config: Config
    dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        common = c.encoder_decoder_kwargs(self.dtype)
        self.encoder = Encoder(c.latent_channels, double_z=False, **common)
        self.quant_conv = conv(c.vq_embed_dim, 1, self.dtype, "quant_conv", padding=0)
        self.quantize = Codebook(c.num_vq_embeddings, c.vq_embed_dim)
        self.post_quant_conv = conv(c.latent_channels, 1, self.dtype, "post_quant_conv", padding=0)
        self.decoder = Decoder(c.out_channels, **common)

    def encode(self, x: jax.Array) -> jax.Array:
        return self.quant_conv(self.encoder(x)).astype(jnp.float32)

    def decode(self, h: jax.Array, force_not_quantize: bool = False) -> jax.Array:
        h = h.astype(jnp.float32)
        quant = h if force_not_quantize else quantize(h, self.quantize())
        return self.decoder(self.post_quant_conv(quant.astype(self.dtype))).astype(jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.decode(self.encode(x))


class Codebook(nn.Module):
    """The VQ codebook, param ``embedding`` (num, dim) (diffusers ``quantize.embedding.weight``)."""
    num: int
    dim: int

    @nn.compact
    def __call__(self) -> jax.Array:
        return nn.Embed(self.num, self.dim, name="embedding").embedding
