"""Content fingerprints (sha256, hex) of what determines a run's results: model parameters and input arrays.

A run is identified by what it computes from, not by paths: a re-exported model with other weights or a rewritten
noise file gives another fingerprint, the same files moved elsewhere give the same one.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

BLOCK_BYTES = 1 << 26
_MODEL_CACHE: dict[int, tuple[Any, str]] = {}


def _update_array(h, a) -> None:
    a = np.asarray(a) if not isinstance(a, np.ndarray) else a
    h.update(json.dumps([str(a.dtype), list(a.shape)]).encode())
    flat = a.reshape(-1) if a.flags.c_contiguous else np.ascontiguousarray(a).reshape(-1)
    step = max(1, BLOCK_BYTES // max(1, a.itemsize))
    for i in range(0, flat.size, step):  # memmaps are read block by block
        h.update(np.ascontiguousarray(flat[i:i + step]).tobytes())


def array_digest(a, rows: int | None = None) -> str:
    """Fingerprint of ``a`` (its first ``rows`` rows when given): dtype, shape and bytes."""
    h = hashlib.sha256()
    _update_array(h, a if rows is None else a[:rows])
    return h.hexdigest()


def _host(leaf) -> np.ndarray:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(leaf)


def model_digest(model) -> str:
    """Fingerprint of a ``jtaba.Model``: family, network config, diffusion conventions, every parameter (path
    sorted), the decoder's and the null prompt. Cached per params object (a run fingerprints its model once)."""
    key = id(model.params)
    hit = _MODEL_CACHE.get(key)
    if hit is not None and hit[0] is model.params:
        digest = hit[1]
    else:
        h = hashlib.sha256()
        for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(model.params)[0],
                                 key=lambda kv: jax.tree_util.keystr(kv[0])):
            h.update(jax.tree_util.keystr(path).encode())
            _update_array(h, _host(leaf))
        digest = h.hexdigest()
        _MODEL_CACHE.clear()  # one entry: hold at most one extra reference to a params tree
        _MODEL_CACHE[key] = (model.params, digest)
    h = hashlib.sha256(digest.encode())
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else repr(model.config)
    h.update(json.dumps([model.family, config, model.diffusion.to_dict() if model.diffusion else None],
                        sort_keys=True, default=str).encode())
    if model.decoder is not None:
        h.update(model_digest(model.decoder).encode())
    if model.null_prompt is not None:
        _update_array(h, model.null_prompt)
    return h.hexdigest()


def settings_digest(identity: dict) -> str:
    """Fingerprint of a JSON-able identity dict."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
