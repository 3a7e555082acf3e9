"""DINO image similarity (paper Sec. 4.2 diversity ``dino``, App. G.3): ``facebook/dino-vits16`` as transformers
``ViTModel(add_pooling_layer=False)``, the CLS token of ``last_hidden_state``, per-pair cosine similarity.

Images: NCHW in [-1, 1] (``input_range``), preprocessed as upstream: uint8 PIL -> Resize(256, bicubic) ->
CenterCrop(224) -> ImageNet Normalize, Pillow-exact (``vit_features.DINO``). Any ``ViTModel`` checkpoint converts
to this family (``convert/dino.py``), e.g. the G.3 ViT annotators' backbones (``google/vit-base-patch16-224``).

Use: ``config, params = load("dino_vits16")``; ``features(config, params, images)`` -> (B, D) CLS features;
``similarity(config, params, img0, img1)`` -> (B,) cosine per pair (the diversity score is its mean).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jtaba.metrics import vit_features as V

FAMILY = "dino"
Config = V.VisionConfig  # kind "vit"
PREPROCESS = V.DINO


def init_params(config: Config, seed: int = 0) -> dict:
    return V.init_vision(config, seed)


@functools.partial(jax.jit, static_argnames=("config", "input_range", "preprocess", "dtype"))
def features(config: Config, params: Any, images: jax.Array, input_range: str = "signed", preprocess: bool = True,
             dtype: Any = jnp.float32) -> jax.Array:
    """CLS features (B, D) float32 of NCHW ``images`` (``preprocess=False``: already the network's normalised
    NCHW input, ``image_size`` square)."""
    if preprocess:
        x = PREPROCESS(images, input_range)
    else:
        x = jnp.asarray(images, jnp.float32).transpose(0, 2, 3, 1)
    return V.VisionTransformer(config, dtype).apply({"params": params}, x)["pooled"]


def similarity(config: Config, params: Any, img0: jax.Array, img1: jax.Array, input_range: str = "signed",
               dtype: Any = jnp.float32) -> jax.Array:
    """Cosine similarity (B,) of the DINO CLS features of each pair."""
    return V.cosine(features(config, params, img0, input_range, dtype=dtype),
                    features(config, params, img1, input_range, dtype=dtype))


def load(name_or_path: str, dtype: Any = None) -> tuple[Config, Any]:
    """(Config, params) of a converted checkpoint (``convert/dino.py``): a folder or a model-home name."""
    from jtaba.metrics.networks import read_checkpoint

    return read_checkpoint(name_or_path, FAMILY, Config, dtype)
