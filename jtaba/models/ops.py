"""torch-equivalent elementary ops shared by the model families, NHWC. Params float32; GroupNorm computes in
float32 (two-pass variance) and casts back; convs compute in the given ``dtype``. The functions that create
params (``group_norm``, ``conv``) must be called inside a compact method."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def group_norm(x: jax.Array, num_groups: int, eps: float, name: str) -> jax.Array:
    """torch ``nn.GroupNorm`` over the last (channel) axis, in float32, cast back to ``x.dtype``; params
    ``name/{scale,bias}``."""
    norm = nn.GroupNorm(num_groups=num_groups, epsilon=eps, use_fast_variance=False, dtype=jnp.float32, name=name)
    return norm(x.astype(jnp.float32)).astype(x.dtype)


def conv(features: int, kernel: int, dtype: Any, name: str, stride: int = 1, padding: int = 1,
         use_bias: bool = True, zero_init: bool = False) -> nn.Conv:
    """torch ``nn.Conv2d(kernel_size=kernel, stride, padding)`` (symmetric zero padding). ``zero_init``: the
    kernel starts at zero (guided-diffusion's ``zero_module``; biases always start at zero)."""
    init = {"kernel_init": nn.initializers.zeros} if zero_init else {}
    return nn.Conv(features, (kernel, kernel), strides=stride, padding=((padding, padding), (padding, padding)),
                   use_bias=use_bias, dtype=dtype, name=name, **init)


def upsample_nearest(x: jax.Array, output_size: Sequence[int] | None = None) -> jax.Array:
    """torch ``F.interpolate(mode="nearest")``: x2, or to ``output_size`` (H, W) with src = floor(dst * in / out)."""
    if output_size is None:
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    for axis, out in zip((1, 2), output_size):
        size = x.shape[axis]
        idx = np.minimum(np.floor(np.arange(out) * np.float32(size / out)).astype(np.int64), size - 1)
        x = jnp.take(x, idx, axis=axis)
    return x


def avg_pool2(x: jax.Array) -> jax.Array:
    """torch ``nn.AvgPool2d(2, 2)`` (odd sizes floor)."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2))
