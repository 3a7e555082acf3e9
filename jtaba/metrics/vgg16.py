"""VGG16 features for precision / recall as torch-fidelity 0.4.0 computes them (``FeatureExtractorVGG16``, the
network upstream's ``eval_fids.py`` used through ``torch_fidelity.calculate_metrics(prc=True)``; paper App. F.1,
Tab. 12), in Flax.

Network (family ``vgg16``): torchvision ``vgg16`` (configuration "D": 13 3x3 convolutions with ReLU, five 2x2 max
pools) -> ``AdaptiveAvgPool2d((7, 7))`` -> flatten in (C, H, W) order -> ``classifier.0`` Linear(25088, 4096) ->
ReLU -> (Dropout, identity in eval) -> ``classifier.3`` Linear(4096, 4096) = "fc2"; torch-fidelity deletes the rest
of the classifier. Precision / recall use "fc2_relu" = ReLU(fc2), (B, 4096). Params mirror the torch names:
``features_{i}/{kernel,bias}`` (torchvision ``features.{i}``), ``classifier_0``, ``classifier_3``.

Input pipeline (``features``): uint8 values [0, 255] (NCHW; float arrays of such values are fine; ``input_range``
maps [0, 1] or [-1, 1] linearly first) -> float32 -> TensorFlow-1.x bilinear resize to 224x224 (torch-fidelity's
``interpolate_bilinear_2d_like_tensorflow1x``, ``jtaba.metrics.inception.resize_bilinear_tf1``) -> torchvision
``normalize`` with mean 255·(0.485, 0.456, 0.406) and std 255·(0.229, 0.224, 0.225) -> the network.

``Config`` widths default to VGG16's; smaller ones make the tiny random networks of the tests.
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
from jtaba.metrics.inception import resize_bilinear_tf1

FAMILY = "vgg16"
SIZE = 224
POOLED = 7  # AdaptiveAvgPool2d((7, 7))
MEAN = tuple(255 * m for m in (0.485, 0.456, 0.406))
STD = tuple(255 * s for s in (0.229, 0.224, 0.225))
INPUT_RANGES = ("uint8", "unit", "signed")
CONVS_PER_STAGE = (2, 2, 3, 3, 3)


@dataclasses.dataclass(frozen=True)
class Config(ConfigBase):
    widths: tuple = (64, 128, 256, 512, 512)  # output channels of the five stages
    hidden: int = 4096  # classifier.0 / classifier.3 width

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) != len(CONVS_PER_STAGE):
            raise ValueError(f"vgg16.Config.widths needs {len(CONVS_PER_STAGE)} stages, got {self.widths}")


def layers(config: Config) -> list[tuple[int, int | None]]:
    """(torchvision ``features`` index, conv width or None for a max pool); a ReLU takes the index after a conv."""
    out, i = [], 0
    for width, convs in zip(config.widths, CONVS_PER_STAGE, strict=True):
        for _ in range(convs):
            out.append((i, width))
            i += 2
        out.append((i, None))
        i += 1
    return out


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """``AdaptiveAvgPool2d((size, size))`` on NHWC: output bin i averages rows floor(i·n/size) .. ceil((i+1)·n/size)."""
    for axis in (1, 2):
        n = x.shape[axis]
        bins = [jnp.mean(jax.lax.slice_in_dim(x, (i * n) // size, -(-(i + 1) * n // size), axis=axis), axis=axis,
                         keepdims=True) for i in range(size)]
        x = jnp.concatenate(bins, axis=axis)
    return x


class Network(nn.Module):
    """fc2 (pre-ReLU) of NHWC normalised images, (B, hidden)."""
    config: Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        for i, width in layers(self.config):
            if width is None:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            else:
                x = nn.relu(nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                                    name=f"features_{i}")(x))
        x = adaptive_avg_pool(x, POOLED)
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # torch.flatten of NCHW
        x = nn.relu(nn.Dense(self.config.hidden, dtype=self.dtype, name="classifier_0")(x))
        return nn.Dense(self.config.hidden, dtype=self.dtype, name="classifier_3")(x).astype(jnp.float32)


def init_params(config: Config = Config(), seed: int = 0) -> dict:
    """Randomly initialised params (tests, shapes)."""
    return Network(config).init(jax.random.key(seed), jnp.zeros((1, SIZE, SIZE, 3), jnp.float32))["params"]


def preprocess(images: jax.Array, input_range: str = "uint8") -> jax.Array:
    """NCHW images -> NHWC float32 224x224 network input (module docstring)."""
    if input_range not in INPUT_RANGES:
        raise ValueError(f"input_range must be one of {INPUT_RANGES}, got {input_range!r}")
    x = jnp.asarray(images).astype(jnp.float32)
    if input_range == "unit":
        x = x * 255.0
    elif input_range == "signed":
        x = (x + 1.0) * 127.5
    x = resize_bilinear_tf1(x.transpose(0, 2, 3, 1), (SIZE, SIZE))
    return (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)


@functools.partial(jax.jit, static_argnames=("config", "input_range", "relu", "dtype"))
def features(config: Config, params: Any, images: jax.Array, input_range: str = "uint8", relu: bool = True,
             dtype: Any = jnp.float32) -> jax.Array:
    """(B, hidden) float32 torch-fidelity VGG16 features of NCHW RGB ``images``: "fc2_relu" (the precision / recall
    features), or "fc2" with ``relu=False``."""
    x = Network(config, dtype).apply({"params": params}, preprocess(images, input_range))
    return jax.nn.relu(x) if relu else x


def load(name_or_path: str, dtype: Any = None) -> tuple[Config, Any]:
    """(Config, params) of a converted VGG16 checkpoint (``convert/vgg16.py``): a folder or a model-home name
    (``vgg16``)."""
    from jtaba.metrics.networks import read_checkpoint

    return read_checkpoint(name_or_path, FAMILY, Config, dtype)
