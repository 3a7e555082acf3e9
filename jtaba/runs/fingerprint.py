"""Content fingerprints (sha256, hex) of what determines a run's results: model parameters and input arrays.

A run is identified by what it computes from, not by paths: a re-exported model with other weights or a rewritten
noise file gives another fingerprint, the same files moved elsewhere give the same one.
"""
from __future__ import annotations

import hashlib
import json
import weakref

import jax
import numpy as np
from jax.experimental import multihost_utils

BLOCK_BYTES = 1 << 26
# params-tree digests by (tree structure, id of every leaf); an entry is dropped when one of its leaves is
# collected (weakref.finalize), never evicted otherwise, and holds no reference to the arrays.
_PARAMS_DIGESTS: dict[tuple, str] = {}


def _update_array(h, a) -> None:
    a = np.asarray(a) if not isinstance(a, np.ndarray) else a
    h.update(json.dumps([str(a.dtype), list(a.shape)]).encode())
    flat = a.reshape(-1) if a.flags.c_contiguous else np.ascontiguousarray(a).reshape(-1)
    step = max(1, BLOCK_BYTES // max(1, a.itemsize))
    for i in range(0, flat.size, step):  # memmaps are read block by block, hashed in place (no bytes copy)
        h.update(flat[i:i + step].view(np.uint8))


def array_digest(a, rows: int | None = None) -> str:
    """Fingerprint of ``a`` (its first ``rows`` rows when given): dtype, shape and bytes."""
    h = hashlib.sha256()
    _update_array(h, a if rows is None else a[:rows])
    return h.hexdigest()


def _host(leaf) -> np.ndarray:
    """One parameter on the host, one shard copy at a time, not kept: ``np.asarray`` of a device array would cache
    the host copy on the array, a second copy of the model in host memory for as long as the model lives."""
    if not isinstance(leaf, jax.Array):
        return np.asarray(leaf)
    if not leaf.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    out = np.empty(leaf.shape, leaf.dtype)
    for shard in leaf.addressable_shards:
        if shard.replica_id == 0:  # a replicated parameter is copied from one device only
            out[shard.index] = np.asarray(shard.data)
    return out


def params_digest(params) -> str:
    """Fingerprint of a params pytree: every leaf's path, dtype, shape and bytes, in path order. Cached while its
    leaves live: the same arrays are hashed once however many runs (or models sharing a decoder) use them."""
    leaves = sorted(jax.tree_util.tree_flatten_with_path(params)[0], key=lambda kv: jax.tree_util.keystr(kv[0]))
    key = (jax.tree_util.tree_structure(params), *(id(leaf) for _, leaf in leaves))
    digest = _PARAMS_DIGESTS.get(key)
    if digest is not None:
        return digest
    h = hashlib.sha256()
    for path, leaf in leaves:
        h.update(jax.tree_util.keystr(path).encode())
        _update_array(h, _host(leaf))
    digest = h.hexdigest()
    try:
        for _, leaf in leaves:
            weakref.finalize(leaf, _PARAMS_DIGESTS.pop, key, None)
    except TypeError:  # a leaf that takes no weak reference (a Python scalar): not cached
        return digest
    _PARAMS_DIGESTS[key] = digest
    return digest


def model_digest(model) -> str:
    """Fingerprint of a ``jtaba.Model``: family, network config, diffusion conventions, every parameter (path
    sorted; ``params_digest``, cached), the decoder's (its own cached params digest) and the null prompt."""
    h = hashlib.sha256(params_digest(model.params).encode())
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
