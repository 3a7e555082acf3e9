"""torch-equivalent elementary ops shared by the model families, NHWC. Params float32; GroupNorm computes in
float32 (two-pass variance) and casts back; convs compute in the given ``dtype``; ``attention`` is every model's
softmax(q k^T) v. The functions that create params (``group_norm``, ``conv``) must be called inside a compact
method."""
from __future__ import annotations

import os
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


# ---- attention -----------------------------------------------------------------------------------------------
ATTENTION_ENV = "JTABA_ATTENTION"  # "auto" (default) | "xla": force XLA's attention even where cuDNN's would run
_CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _cuda_head_dim_max() -> int | None:
    """cuDNN flash attention's largest head dim on this machine's first CUDA GPU: 256 from Hopper (compute
    capability 9.0) on, else 128; None when JAX runs on no CUDA GPU."""
    try:
        if jax.default_backend() != "gpu":
            return None
        device = jax.local_devices(backend="gpu")[0]
        if "cuda" not in device.client.platform_version.lower():
            return None  # ROCm
        cc = tuple(int(v) for v in str(device.compute_capability).split("."))
    except Exception:  # noqa: BLE001 - no GPU backend, or a runtime that does not report these
        return None
    return 256 if cc >= (9, 0) else 128


def cudnn_eligible(dtypes: Sequence[Any], head_dim: int, value_head_dim: int, head_dim_max: int | None) -> bool:
    """Whether cuDNN's fused flash attention takes q/k/v of these dtypes and head dims (no bias, no mask): one
    float16 or bfloat16 dtype, equal head dims that are multiples of 8 and at most ``head_dim_max`` (None: no
    CUDA GPU)."""
    return (head_dim_max is not None and len(set(map(jnp.dtype, dtypes))) == 1
            and jnp.dtype(dtypes[0]) in _CUDNN_DTYPES and head_dim == value_head_dim and head_dim % 8 == 0
            and head_dim <= head_dim_max)


def attention_implementation(q: jax.Array, k: jax.Array, v: jax.Array) -> str | None:
    """``"cudnn"`` when ``jax.nn.dot_product_attention`` can run these (B, T, N, H) / (B, S, N, H) inputs as
    cuDNN's fused flash attention (``cudnn_eligible`` on this machine's CUDA GPU); else None (XLA's
    implementation: CPUs, float32, other head dims). ``JTABA_ATTENTION=xla`` forces None."""
    if os.environ.get(ATTENTION_ENV, "auto") == "xla":
        return None
    ok = cudnn_eligible((q.dtype, k.dtype, v.dtype), q.shape[-1], v.shape[-1], _cuda_head_dim_max())
    return "cudnn" if ok else None


def attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
    """softmax(q k^T · scale) v per head: q (B, T, N, H), k and v (B, S, N, H) -> (B, T, N, H) in v's dtype,
    through ``jax.nn.dot_product_attention``. On CPUs and for float32 inputs that is XLA's implementation
    (``implementation=None``): logits q·k accumulated in float32 and then scaled, softmax in float32,
    probabilities cast to v's dtype, then ·v, i.e. the einsum/softmax the models computed before. With float16 /
    bfloat16 inputs on a CUDA GPU it is cuDNN's fused flash attention (``attention_implementation``), which keeps
    the float32 softmax. A model that scales q and k separately (guided-diffusion) scales them itself and passes
    ``scale=1.0``."""
    impl = attention_implementation(q, k, v)
    if impl is not None:
        try:
            return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=impl)
        except (NotImplementedError, ValueError, RuntimeError):  # shapes cuDNN refuses at trace time
            pass
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=None)
