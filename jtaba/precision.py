"""Numerical precision as an explicit, recorded choice.

* ``"float32"`` (default): float32 compute with matmuls and convolutions at precision HIGHEST, so GPUs and TPUs
  give the numbers of the original code and of a CPU (on a GPU JAX would otherwise run float32 as TF32);
* ``"tf32"``: float32 storage, TF32 matmuls / convolutions on GPUs that have them (as PyTorch's convolutions run by
  default); identical to float32 on CPUs;
* ``"bfloat16"``: network compute in bfloat16 (params stay float32; the DDIM arithmetic stays float32).
"""
from __future__ import annotations

import contextlib
import dataclasses

import jax
import jax.numpy as jnp

PRECISIONS = ("float32", "tf32", "bfloat16")
MATMUL = {"float32": "highest", "tf32": "tensorfloat32", "bfloat16": "default"}


def check(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def compute_dtype(precision: str):
    return jnp.bfloat16 if check(precision) == "bfloat16" else jnp.float32


@contextlib.contextmanager
def scope(precision: str):
    """Run (trace and compile) the enclosed JAX code at ``precision``'s matmul / convolution precision."""
    with jax.default_matmul_precision(MATMUL[check(precision)]):
        yield


def with_precision(model, precision: str):
    """``model`` (a ``jtaba.Model``) with its networks (decoder included) computing in ``precision``'s dtype."""
    dtype = compute_dtype(precision)
    decoder = with_precision(model.decoder, precision) if model.decoder is not None else None
    network = model.network if model.network.dtype == dtype else model.network.clone(dtype=dtype)
    return dataclasses.replace(model, network=network, decoder=decoder)
