"""CLIP-I and CLIP-T (paper Sec. 4.2, App. G.3) with ``openai/clip-vit-base-patch32`` as transformers
``CLIPModel`` computes it: ``image_embeds`` (vision tower + ``visual_projection``) and ``text_embeds`` (text tower
+ ``text_projection``), see ``vit_features``.

* CLIP-I (``taba/metrics/clip_dino.py::get_clip_features``): per-pair cosine similarity of image embeddings
  (``image_similarity``).
* CLIP-T (``taba/metrics/clip_score.py``, the CLIPScore port): features L2-normalised, ``score = w · max(cos, 0)``
  with w = 2.5 (``clip_score``); the paper reports the raw cosine (``text_similarity``; ``clip_score`` returns
  both).

Images: NCHW in [-1, 1], preprocessed Pillow-exact as upstream: uint8 PIL -> Resize(224, bicubic) ->
CenterCrop(224) -> CLIP Normalize (``vit_features.CLIP``). Text: token ids (B, L <= 77) from the CLIP tokenizer
(``clip.tokenize(truncate=True)`` upstream: <|startoftext|> ... <|endoftext|>, zero padding; HF ``CLIPTokenizer``
pads with <|endoftext|>, which gives the same pooled output), or the text embeddings ``convert/clip.py --prompts``
stored (``prompt_embeds``). Upstream runs the OpenAI model in float16 on CUDA; ``dtype`` selects the compute dtype
here (float32 default).

Use: ``config, params = load("clip_vitb32")``; ``image_embeds(config, params, images)``,
``text_embeds(config, params, input_ids)``, ``image_similarity(...)``, ``clip_score(...)``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jtaba.config import ConfigBase
from jtaba.metrics import vit_features as V

FAMILY = "clip"
PREPROCESS = V.CLIP
CLIPSCORE_W = 2.5


@dataclasses.dataclass(frozen=True)
class Config(ConfigBase):
    vision: V.VisionConfig = V.VisionConfig(kind="clip", image_size=224, patch_size=32, hidden_size=768,
                                            num_layers=12, num_heads=12, intermediate_size=3072,
                                            layer_norm_eps=1e-5, hidden_act="quick_gelu", projection_dim=512)
    text: V.TextConfig = V.TextConfig()

    def __post_init__(self):
        if self.vision.kind != "clip":
            raise ValueError("clip.Config.vision must be a VisionConfig of kind 'clip'")
        if self.vision.projection_dim != self.text.projection_dim:
            raise ValueError(f"projection dims differ: vision {self.vision.projection_dim}, "
                             f"text {self.text.projection_dim}")

    def to_dict(self) -> dict:
        return {"vision": self.vision.to_dict(), "text": self.text.to_dict()}

    @classmethod
    def from_dict(cls, d) -> Config:
        unknown = set(d) - {"vision", "text"}
        if unknown:
            raise ValueError(f"unknown clip.Config keys: {sorted(unknown)}")
        return cls(V.VisionConfig.from_dict(d["vision"]), V.TextConfig.from_dict(d["text"]))


def init_params(config: Config, seed: int = 0) -> dict:
    return {"vision": V.init_vision(config.vision, seed), "text": V.init_text(config.text, seed + 1)}


@functools.partial(jax.jit, static_argnames=("config", "input_range", "preprocess", "dtype"))
def image_embeds(config: Config, params: Any, images: jax.Array, input_range: str = "signed",
                 preprocess: bool = True, dtype: Any = jnp.float32) -> jax.Array:
    """CLIP image embeddings (B, P) float32 (unnormalised, as transformers' ``image_embeds``) of NCHW ``images``
    (``preprocess=False``: already the normalised NCHW network input)."""
    x = PREPROCESS(images, input_range) if preprocess else jnp.asarray(images, jnp.float32).transpose(0, 2, 3, 1)
    return V.VisionTransformer(config.vision, dtype).apply({"params": params["vision"]}, x)["embeds"]


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def text_embeds(config: Config, params: Any, input_ids: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """CLIP text embeddings (B, P) float32 (unnormalised) of token ids (B, L)."""
    return V.TextTransformer(config.text, dtype).apply({"params": params["text"]},
                                                      jnp.asarray(input_ids, jnp.int32))["embeds"]


def image_similarity(config: Config, params: Any, img0: jax.Array, img1: jax.Array, input_range: str = "signed",
                     dtype: Any = jnp.float32) -> jax.Array:
    """CLIP-I: cosine similarity (B,) of the image embeddings of each pair."""
    return V.cosine(image_embeds(config, params, img0, input_range, dtype=dtype),
                    image_embeds(config, params, img1, input_range, dtype=dtype))


def _unit(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))


def clip_score(image_features: jax.Array, text_features: jax.Array, w: float = CLIPSCORE_W):
    """CLIPScore (``get_clip_score``) of aligned image and text embeddings (B, P) each: (w · max(cos, 0), cos),
    both (B,)."""
    cos = jnp.sum(_unit(image_features) * _unit(text_features), axis=-1)
    return w * jnp.maximum(cos, 0.0), cos


def text_similarity(config: Config, params: Any, images: jax.Array, input_ids: jax.Array | None = None,
                    prompt_embeds: jax.Array | None = None, input_range: str = "signed",
                    dtype: Any = jnp.float32) -> jax.Array:
    """CLIP-T as the paper reports it: the cosine (B,) between each image and its prompt (token ids, or text
    embeddings from ``read_prompt_embeds``)."""
    if (input_ids is None) == (prompt_embeds is None):
        raise ValueError("give exactly one of input_ids and prompt_embeds")
    t = text_embeds(config, params, input_ids, dtype) if prompt_embeds is None else prompt_embeds
    return clip_score(image_embeds(config, params, images, input_range, dtype=dtype), t)[1]


def read_prompt_embeds(directory: str, name: str) -> tuple[np.ndarray, list[str]]:
    """``DIR/prompts/<name>.npy`` (N, P) text embeddings written by ``convert/clip.py --prompts`` and the prompts."""
    from jtaba.home import resolve

    folder = os.path.join(resolve(directory).path, "prompts")
    with open(os.path.join(folder, f"{name}.json")) as f:
        meta = json.load(f)
    return np.load(os.path.join(folder, f"{name}.npy")), meta["prompts"]


def load(name_or_path: str, dtype: Any = None) -> tuple[Config, Any]:
    """(Config, params) of a converted checkpoint (``convert/clip.py``): a folder or a model-home name."""
    from jtaba.metrics.networks import read_checkpoint

    return read_checkpoint(name_or_path, FAMILY, Config, dtype)
