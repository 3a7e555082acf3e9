"""Model checkpoints on disk: ``DIR/config.json`` plus an orbax ``DIR/params`` tree.

``config.json`` = {"family": str, "model": {...module config...}, "diffusion": {...schedule/convention...},
"extras": {...}}. Params are a nested dict of arrays (flax linen ``params`` collection, no ``{"params": ...}`` wrapper).
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

CONFIG_NAME = "config.json"
PARAMS_NAME = "params"


def save_checkpoint(directory: str, config: dict, params: Any) -> None:
    """Write ``config`` and ``params`` under ``directory`` (created; an existing params tree is replaced)."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(directory, PARAMS_NAME), params, force=True)
    ckptr.wait_until_finished()
    tmp = os.path.join(directory, CONFIG_NAME + ".tmp")
    with open(tmp, "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(directory, CONFIG_NAME))


def read_config(directory: str) -> dict:
    """``DIR/config.json``; FileNotFoundError / ValueError naming the file when it is missing or not JSON."""
    from jtaba import io

    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no jtaba checkpoint at {directory!r} ({CONFIG_NAME} missing)")
    return io.read_json(path)


def saved_shapes(directory: str) -> Any:
    """The saved params tree as ``jax.ShapeDtypeStruct`` leaves (no data read)."""
    path = os.path.join(os.path.abspath(directory), PARAMS_NAME)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: missing (a jtaba checkpoint holds config.json and params/)")
    try:
        with quiet_orbax():
            meta = ocp.StandardCheckpointer().metadata(path)
    except Exception as e:
        raise ValueError(f"{path}: the checkpoint's params cannot be read ({error_cause(e)}); it is damaged or "
                         f"incomplete: convert or export it again") from e
    tree = meta.item_metadata
    tree = getattr(tree, "tree", tree)
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree)


def load_params(directory: str, target: Any = None, dtype: Any = None,
                sharding: Callable[[Any], Any] | None = None) -> Any:
    """Restore the params tree.

    ``target``: a pytree of arrays or ``jax.ShapeDtypeStruct`` (with ``sharding``) giving shapes, dtypes and
    placement; otherwise the saved shapes are used, floating leaves cast to ``dtype`` (e.g. float32 params from a
    float16 checkpoint) and placed by ``sharding(abstract_tree) -> tree of Sharding`` when given (e.g. a model's
    ``param_shardings`` over a mesh, so a model larger than one device's memory is restored sharded)."""
    path = os.path.join(os.path.abspath(directory), PARAMS_NAME)
    ckptr = ocp.StandardCheckpointer()
    if target is None:
        target = saved_shapes(directory)
        if dtype is not None:
            target = jax.tree.map(
                lambda s: jax.ShapeDtypeStruct(s.shape, dtype if jnp.issubdtype(s.dtype, jnp.floating) else s.dtype),
                target)
        if sharding is not None:
            target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                  target, sharding(target))
    abstract = jax.tree.map(
        lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else jax.ShapeDtypeStruct(np.shape(x), x.dtype), target)
    try:
        with quiet_orbax():
            return ckptr.restore(path, abstract)
    except Exception as e:  # orbax / tensorstore raise many types (often wrapped) for damaged files
        raise ValueError(f"{path}: the checkpoint's params cannot be read ({error_cause(e)}); it is damaged or "
                         f"incomplete: convert or export it again") from e


def error_cause(e: BaseException) -> str:
    """The innermost exception's first line (orbax wraps tensorstore errors several times)."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text[:200]}"


@contextlib.contextmanager
def quiet_orbax():
    """Orbax and tensorstore log a damaged file's error at length (hundreds of lines) before raising it: keep
    their loggers to fatal messages meanwhile (the caller reports the error in one line)."""
    import logging

    from absl import logging as absl_logging

    old = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.FATAL)
    logging.disable(logging.CRITICAL - 1)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        absl_logging.set_verbosity(old)
