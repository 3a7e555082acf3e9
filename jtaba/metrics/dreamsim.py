"""DreamSim (Fu et al. 2023) perceptual distance (paper Sec. 4.2 diversity ``dreamsim``) in Flax, as the ``dreamsim``
package 0.2.1 computes it with ``dreamsim(pretrained=True)``: the default ``dreamsim_type="ensemble"``, LoRA
fine-tuned, ``normalize_embeds=True``.

Per image (NCHW, by default in [-1, 1], ``input_range``):

1. upstream's input path: diffusers ``pt_to_pil`` (uint8) -> the model's ``preprocess``: torchvision
   ``Resize((224, 224), BICUBIC)`` (both sides to 224, no crop) -> ``ToTensor`` ([0, 1]); Pillow-exact here
   (``vit_features.resize_bicubic_pil_uint8``);
2. each ensemble member normalises that input with its own mean / std and runs its ViT (every member is built the
   way dreamsim builds it: its ``vision_transformer.VisionTransformer`` with pre-LN blocks, fused ``qkv``):

   * ``dino_vitb16`` (DINO ViT-B/16, ImageNet mean / std, exact GELU, LayerNorm eps 1e-6), feature ``"cls"``:
     the CLS token of the last block's output BEFORE the final LayerNorm (upstream hooks block 11 of 12);
   * ``clip_vitb16`` (OpenAI CLIP ViT-B/16 as a DINO ViT: ``pos_drop`` replaced by ``ln_pre``, QuickGELU, eps 1e-5)
     and ``open_clip_vitb16`` (OpenCLIP ViT-B/16, exact GELU, eps 1e-5), CLIP mean / std, feature
     ``"embedding"``: ``norm`` (``ln_post``) of the CLS token @ ``proj`` (512);

3. the member features concatenated (768 + 512 + 512 = 1792), then ``normalize_embedding``: minus the row's mean
   over the feature axis, divided by the row's L2 norm (``embed``);
4. distance = 1 − cosine similarity of the two embeddings (``distance``, (B,)).

The LoRA adapters (dreamsim trains them on every block's ``attn.qkv``) are merged into the dense weights by
``convert/dreamsim.py``; the CLIP members' patch-conv bias (a parameter of dreamsim's ViT that CLIP itself lacks) is
folded into their position embeddings.

Params (family ``dreamsim``): one ``vit_features.VisionTransformer`` tree per member, keyed by the member's name.
Use: ``config, params = load("dreamsim")``; ``embed(config, params, images)`` -> (B, 1792);
``distance(config, params, img0, img1)`` -> (B,) (the diversity score is its mean; ``embed`` is jit-compiled per
config, input shape and flags).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jtaba.config import ConfigBase
from jtaba.metrics import vit_features as V

FAMILY = "dreamsim"
FEATURES = ("cls", "embedding")
IMAGE_SIZE = 224  # dreamsim_args["img_size"]


@dataclasses.dataclass(frozen=True)
class Member(ConfigBase):
    """One backbone of the ensemble: ``name`` (upstream ``model_type``; its params key), ``feature`` ("cls": the
    last block's CLS token before the final LayerNorm; "embedding": the projected CLS token, kind "clip" only),
    the input normalisation ``mean`` / ``std`` and the ViT."""
    name: str
    feature: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    vision: V.VisionConfig

    def __post_init__(self):
        if self.feature not in FEATURES:
            raise ValueError(f"member {self.name}: feature must be one of {FEATURES}, got {self.feature!r}")
        if self.feature == "embedding" and self.vision.kind != "clip":
            raise ValueError(f"member {self.name}: feature 'embedding' needs a ViT of kind 'clip' (a projection)")
        if not len(self.mean) == len(self.std) == self.vision.num_channels:
            raise ValueError(f"member {self.name}: mean / std need {self.vision.num_channels} values each")

    @property
    def dim(self) -> int:
        return self.vision.projection_dim if self.feature == "embedding" else self.vision.hidden_size

    @classmethod
    def from_dict(cls, d) -> Member:
        d = dict(d)
        if "vision" in d:
            d["vision"] = V.VisionConfig.from_dict(d["vision"])
        return super().from_dict(d)


def _vit_b16(**kw) -> V.VisionConfig:
    """dreamsim ``vit_base(patch_size=16)``: width 768, 12 blocks of 12 heads, MLP 3072, qkv bias."""
    return V.VisionConfig(image_size=IMAGE_SIZE, patch_size=16, hidden_size=768, num_layers=12, num_heads=12,
                          intermediate_size=3072, **kw)


ENSEMBLE = (
    Member("dino_vitb16", "cls", V.IMAGENET_MEAN, V.IMAGENET_STD,
           _vit_b16(kind="vit", layer_norm_eps=1e-6, hidden_act="gelu")),
    Member("clip_vitb16", "embedding", V.CLIP_MEAN, V.CLIP_STD,
           _vit_b16(kind="clip", layer_norm_eps=1e-5, hidden_act="quick_gelu", projection_dim=512)),
    Member("open_clip_vitb16", "embedding", V.CLIP_MEAN, V.CLIP_STD,
           _vit_b16(kind="clip", layer_norm_eps=1e-5, hidden_act="gelu", projection_dim=512)),
)


@dataclasses.dataclass(frozen=True)
class Config(ConfigBase):
    """The ensemble; default: dreamsim's "ensemble" (DINO ViT-B/16 + CLIP ViT-B/16 + OpenCLIP ViT-B/16)."""
    members: tuple[Member, ...] = ENSEMBLE

    def __post_init__(self):
        if not self.members:
            raise ValueError("dreamsim.Config needs at least one member")
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"dreamsim.Config member names must be unique, got {names}")
        sizes = {m.vision.image_size for m in self.members}
        if len(sizes) != 1:
            raise ValueError(f"dreamsim.Config members take different input sizes {sorted(sizes)}")

    @property
    def image_size(self) -> int:
        """The side every image is resized to (224 upstream)."""
        return self.members[0].vision.image_size

    @property
    def dim(self) -> int:
        return sum(m.dim for m in self.members)

    def to_dict(self) -> dict:
        return {"members": [m.to_dict() for m in self.members]}

    @classmethod
    def from_dict(cls, d) -> Config:
        unknown = set(d) - {"members"}
        if unknown:
            raise ValueError(f"unknown dreamsim.Config keys: {sorted(unknown)}")
        return cls(tuple(Member.from_dict(m) for m in d["members"])) if "members" in d else cls()


def tiny_config(num_layers: int = 2) -> Config:
    """The ensemble's structure at toy width (32, 4 heads, 56-pixel patches on the 224 input) for tests."""
    tiny = {"image_size": IMAGE_SIZE, "patch_size": 56, "hidden_size": 32, "num_layers": num_layers, "num_heads": 4,
            "intermediate_size": 48}
    return Config(tuple(dataclasses.replace(m, vision=dataclasses.replace(
        m.vision, **tiny, projection_dim=24 if m.vision.kind == "clip" else 0)) for m in ENSEMBLE))


def init_params(config: Config, seed: int = 0) -> dict:
    return {m.name: V.init_vision(m.vision, seed + i) for i, m in enumerate(config.members)}


def resized_pixels(images: jax.Array, input_range: str, size: int) -> jax.Array:
    """NCHW images -> NHWC float32 in [0, 1] (B, size, size, C): ``pt_to_pil`` -> ``Resize((size, size),
    BICUBIC)`` -> ``ToTensor``, Pillow-exact."""
    x = V.resize_bicubic_pil_uint8(V.to_uint8(images, input_range), (size, size))
    return x.astype(jnp.float32) / 255


def member_features(member: Member, params: Any, pixels: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """One member's feature (B, ``member.dim``) of NHWC [0, 1] pixels (B, S, S, C)."""
    x = (pixels - jnp.asarray(member.mean, jnp.float32)) / jnp.asarray(member.std, jnp.float32)
    out = V.VisionTransformer(member.vision, dtype).apply({"params": params}, x)
    return out["encoder_output"][:, 0] if member.feature == "cls" else out["embeds"]


@functools.partial(jax.jit, static_argnames=("config", "input_range", "dtype"))
def embed(config: Config, params: Any, images: jax.Array, input_range: str = "signed",
          dtype: Any = jnp.float32) -> jax.Array:
    """DreamSim embeddings (B, ``config.dim``) float32 of NCHW ``images``: concatenated member features,
    mean-centred and L2-normalised per row."""
    x = resized_pixels(images, input_range, config.image_size)
    e = jnp.concatenate([member_features(m, params[m.name], x, dtype).astype(jnp.float32)
                         for m in config.members], axis=-1)
    e = e - jnp.mean(e, axis=-1, keepdims=True)
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True)


def distance(config: Config, params: Any, img0: jax.Array, img1: jax.Array, input_range: str = "signed",
             dtype: Any = jnp.float32) -> jax.Array:
    """DreamSim distance (B,) of each pair: 1 − cosine similarity of the embeddings."""
    return 1 - V.cosine(embed(config, params, img0, input_range, dtype),
                        embed(config, params, img1, input_range, dtype))


def load(name_or_path: str, dtype: Any = None) -> tuple[Config, Any]:
    """(Config, params) of a converted checkpoint (``convert/dreamsim.py``): a folder or a model-home name."""
    from jtaba.metrics.networks import read_checkpoint

    return read_checkpoint(name_or_path, FAMILY, Config, dtype)
