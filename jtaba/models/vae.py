"""diffusers ``AutoencoderKL`` (family ``"vae"``): the latent decoder of DiT (sd-vae-ft-ema/mse) and SDXL.

``encode(x)`` (B, H, W, in) -> posterior ``(mean, logvar)``, each (B, h, w, latent), logvar clipped to [-30, 20]
(``DiagonalGaussianDistribution``; a sample is ``mean + exp(logvar / 2) · noise``). ``decode(z)`` (B, h, w, latent)
-> (B, H, W, out), not clamped. Both float32, NHWC. ``scaling_factor`` is the latent scale of the diffusion model
(DiT 0.18215): pipelines decode ``z · (1 / scaling_factor)``; the module itself never scales. No tiling/slicing.
Param names mirror the diffusers state dict (``encoder/...``, ``quant_conv``, ``post_quant_conv``, ``decoder/...``).
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
    scaling_factor: float = 0.18215
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True

    @classmethod
    def from_diffusers(cls, cfg: dict) -> "Config":
        """From an ``AutoencoderKL`` config.json (missing keys take the diffusers defaults)."""
        if cfg.get("shift_factor") is not None or cfg.get("latents_mean") is not None:
            raise ValueError("AutoencoderKL with shift_factor / latents_mean (SD3, Flux) is not supported")
        return cls(**encoder_decoder_fields(cfg, latent_channels=4),
                   scaling_factor=float(cfg.get("scaling_factor", 0.18215)),
                   use_quant_conv=bool(cfg.get("use_quant_conv", True)),
                   use_post_quant_conv=bool(cfg.get("use_post_quant_conv", True)))


class Network(nn.Module):
    """AutoencoderKL with ``encode`` / ``decode`` methods; ``__call__(x)`` = decode(posterior mean) (for init)."""
    config: Config
    dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        common = c.encoder_decoder_kwargs(self.dtype)
        self.encoder = Encoder(c.latent_channels, double_z=True, **common)
        self.decoder = Decoder(c.out_channels, **common)
        if c.use_quant_conv:
            self.quant_conv = conv(2 * c.latent_channels, 1, self.dtype, "quant_conv", padding=0)
        if c.use_post_quant_conv:
            self.post_quant_conv = conv(c.latent_channels, 1, self.dtype, "post_quant_conv", padding=0)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = self.encoder(x)
        if self.config.use_quant_conv:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z: jax.Array) -> jax.Array:
        z = z.astype(self.dtype)
        if self.config.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.decode(self.encode(x)[0])
