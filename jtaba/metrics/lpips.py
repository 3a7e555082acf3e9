"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric") in Flax, as
the ``lpips`` package 0.1.4 computes it: ``lpips.LPIPS(net="alex" | "vgg", version="0.1")`` (upstream diversity uses
``net="alex"``), ``spatial=False``, ``lpips=True`` (the learned 1x1 "lin" heads).

Per image pair (NCHW, values in [-1, 1]; ``normalize=True`` takes [0, 1] and maps it by 2x − 1 as lpips does):

1. ScalingLayer: (x − shift) / scale, shift = (−.030, −.088, −.188), scale = (.458, .448, .450);
2. the trunk's five ReLU outputs: torchvision AlexNet ``features[0..11]`` (relu1..relu5) or VGG16 ``features[0..29]``
   (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3);
3. each feature map unit-normalised over channels: f / (sqrt(Σ_c f²) + 1e-10);
4. d_k = (f0 − f1)², the lin head (1x1 conv C -> 1, no bias), mean over H, W; distance = Σ_k.

Params (family ``lpips``, ``Config.net``): ``conv_{i}`` = torchvision ``features.{i}`` (kernel (kh, kw, in, out), bias)
and ``lin_{k}`` = lpips ``lin{k}.model.1.weight`` (Dense kernel (C, 1)). ``convert/lpips.py`` writes them from the
torchvision ImageNet trunk weights and the lin weights shipped in the lpips package.

Use: ``config, params = load(DIR)``; ``distance(config, params, img0, img1)`` -> (B,) (jit-compiled per config and
flags; inputs of any size the trunk accepts, AlexNet >= 31 px, VGG16 >= 16 px).
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

FAMILY = "lpips"
SHIFT = np.array([-.030, -.088, -.188], np.float32)
SCALE = np.array([.458, .448, .450], np.float32)

# torchvision ``features`` layer lists: ("conv", out, kernel, stride, padding) | ("pool",); ReLU follows every conv.
_ALEX = [("conv", 64, 11, 4, 2), ("pool",), ("conv", 192, 5, 1, 2), ("pool",), ("conv", 384, 3, 1, 1),
         ("conv", 256, 3, 1, 1), ("conv", 256, 3, 1, 1)]
_VGG16 = [("conv", 64, 3, 1, 1), ("conv", 64, 3, 1, 1), ("pool",),
          ("conv", 128, 3, 1, 1), ("conv", 128, 3, 1, 1), ("pool",),
          ("conv", 256, 3, 1, 1), ("conv", 256, 3, 1, 1), ("conv", 256, 3, 1, 1), ("pool",),
          ("conv", 512, 3, 1, 1), ("conv", 512, 3, 1, 1), ("conv", 512, 3, 1, 1), ("pool",),
          ("conv", 512, 3, 1, 1), ("conv", 512, 3, 1, 1), ("conv", 512, 3, 1, 1)]
# torchvision features index after which lpips taps a feature (the ReLU of that slice's last conv).
_TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
# lpips pretrained_networks: the torchvision features indices of each slice (slice k+1 = [start_k, end_k)).
SLICES = {"alex": ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)),
          "vgg": ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))}


@dataclasses.dataclass(frozen=True)
class Config(ConfigBase):
    net: str = "alex"  # "alex" (torchvision AlexNet trunk) or "vgg" (VGG16)

    def __post_init__(self):
        if self.net not in _TAPS:
            raise ValueError(f"lpips.Config.net must be one of {sorted(_TAPS)}, got {self.net!r}")


def layers(net: str) -> list[tuple[int, tuple]]:
    """(torchvision features index, spec) of every conv and max-pool (ReLUs take the indices in between)."""
    spec = _ALEX if net == "alex" else _VGG16
    out, i = [], 0
    for s in spec:
        out.append((i, s))
        i += 2 if s[0] == "conv" else 1
    return out


def conv_indices(net: str) -> list[int]:
    return [i for i, s in layers(net) if s[0] == "conv"]


class Trunk(nn.Module):
    """The five tapped ReLU feature maps (NHWC) of AlexNet / VGG16 ``features``."""
    net: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        taps, outs = _TAPS[self.net], []
        for i, s in layers(self.net):
            if s[0] == "pool":  # MaxPool2d: AlexNet kernel 3 stride 2, VGG kernel 2 stride 2 (no padding, floor)
                k = 3 if self.net == "alex" else 2
                x = nn.max_pool(x, (k, k), strides=(2, 2), padding="VALID")
                continue
            _, features, kernel, stride, pad = s
            x = nn.Conv(features, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                        dtype=self.dtype, name=f"conv_{i}")(x)
            x = nn.relu(x)
            if i + 1 in taps:
                outs.append(x.astype(jnp.float32))
        return outs


def normalize_channels(f: jax.Array, eps: float = 1e-10) -> jax.Array:
    """lpips ``normalize_tensor``: f / (sqrt(Σ_c f²) + eps), channels last."""
    return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + eps)


class Network(nn.Module):
    """LPIPS distance of NHWC image pairs in [-1, 1]: (B,) or, with ``per_layer``, (total, [(B,) per layer])."""
    config: Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x0: jax.Array, x1: jax.Array, per_layer: bool = False):
        if x0.shape != x1.shape:
            raise ValueError(f"lpips: the two image batches differ in shape, {x0.shape} vs {x1.shape}")
        b = x0.shape[0]
        x = jnp.concatenate([x0, x1]).astype(jnp.float32)
        x = (x - SHIFT) / SCALE
        feats = Trunk(self.config.net, self.dtype, name="trunk")(x.astype(self.dtype))
        res = []
        for k, f in enumerate(feats):
            f = normalize_channels(f)
            d = (f[:b] - f[b:]) ** 2
            lin = nn.Dense(1, use_bias=False, dtype=jnp.float32, name=f"lin_{k}")(d)  # 1x1 conv, no bias
            res.append(jnp.mean(lin, axis=(1, 2))[:, 0])
        total = functools.reduce(lambda a, r: a + r, res)
        return (total, res) if per_layer else total


def init_params(config: Config, seed: int = 0, size: int = 64) -> dict:
    """Randomly initialised params (tests, shapes)."""
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    return Network(config).init(jax.random.key(seed), x, x)["params"]


@functools.partial(jax.jit, static_argnames=("config", "normalize", "per_layer", "dtype"))
def distance(config: Config, params: Any, img0: jax.Array, img1: jax.Array, normalize: bool = False,
             per_layer: bool = False, dtype: Any = jnp.float32):
    """LPIPS between NCHW batches ``img0``, ``img1`` (B, 3, H, W) in [-1, 1] (``normalize``: in [0, 1]) -> (B,)
    float32, or (total, per-layer list) with ``per_layer``. ``dtype``: the trunk's compute dtype (params stay
    float32; the normalisation, heads and averages are float32)."""
    img0, img1 = jnp.asarray(img0, jnp.float32), jnp.asarray(img1, jnp.float32)
    if normalize:
        img0, img1 = 2 * img0 - 1, 2 * img1 - 1
    nhwc = (0, 2, 3, 1)
    return Network(config, dtype).apply({"params": params}, img0.transpose(nhwc), img1.transpose(nhwc),
                                        per_layer=per_layer)


def load(name_or_path: str, dtype: Any = None) -> tuple[Config, Any]:
    """(Config, params) of a converted LPIPS checkpoint (``convert/lpips.py``): a checkpoint folder or a name in the
    jtaba model home (e.g. ``lpips_alex``)."""
    from jtaba.metrics.networks import read_checkpoint

    return read_checkpoint(name_or_path, FAMILY, Config, dtype)
