"""Gaussian noise drawn per sample index, so a run's noise never depends on how it is batched.

Sample ``i`` of a run gets ``normal(fold_in(stream_key(seed, stream), i), shape)``: the same values whatever the batch
size, device count, process count or resume point. Independent streams (initial noise, forward-diffusion noise, drawn
class labels) come from one seed via ``fold_in(key(seed), stream id)``. Arrays are NCHW float32 unless ``dtype`` says
otherwise. Upstream noise (torch generators) cannot be reproduced this way: pass upstream ``noise`` files instead.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

STREAMS = {"noise": 0, "forward": 1, "labels": 2}


def stream_key(seed: int, stream: str = "noise") -> jax.Array:
    """The key of one named stream (``STREAMS``) of run seed ``seed``."""
    return jax.random.fold_in(jax.random.key(seed), STREAMS[stream])


def normal_per_index(key: jax.Array, indices: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """(B, *shape) standard normal; row b depends only on ``key`` and ``indices[b]`` (int32, any sharding)."""
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), shape, dtype))(indices)


def randint_per_index(key: jax.Array, indices: jax.Array, maxval: int) -> jax.Array:
    """(B,) int32 uniform in [0, maxval); entry b depends only on ``key`` and ``indices[b]``."""
    return jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(key, i), (), 0, maxval))(indices)


_normal = jax.jit(normal_per_index, static_argnums=(2, 3))
_randint = jax.jit(randint_per_index, static_argnums=2)


def noise_for_indices(seed: int, indices, shape: tuple[int, ...], stream: str = "noise") -> jax.Array:
    """(len(indices), *shape) float32 noise of samples ``indices`` of the run with ``seed`` (jitted; ``indices`` may
    be a sharded int32 array, the result is sharded alike)."""
    return _normal(stream_key(seed, stream), jnp.asarray(indices, jnp.int32), tuple(shape), jnp.float32)


def noise_for_run(seed: int, n: int, shape: tuple[int, ...], stream: str = "noise") -> np.ndarray:
    """(n, *shape) float32 numpy noise of a whole run: rows equal ``noise_for_indices`` of any batching."""
    return np.asarray(noise_for_indices(seed, np.arange(n, dtype=np.int32), shape, stream))


def labels_for_indices(seed: int, indices, num_classes: int) -> jax.Array:
    """(len(indices),) int32 class labels drawn per sample index from stream ``"labels"``."""
    return _randint(stream_key(seed, "labels"), jnp.asarray(indices, jnp.int32), num_classes)
