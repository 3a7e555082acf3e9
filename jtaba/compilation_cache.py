"""JAX's persistent compilation cache under the jtaba home: compiled executables are written to disk and reused by
later processes, so a second run of a CLI skips XLA compilation (seconds per loop for the paper models).

    from jtaba import compilation_cache
    compilation_cache.enable()          # $JTABA_HOME/compilation_cache, default ~/.cache/jtaba/compilation_cache
    compilation_cache.enable("/tmp/c")  # or any directory
    compilation_cache.disable()

The cache key covers the program, the compile options, the devices and the jax / jaxlib versions, so a stale entry
is never used. The cache is trusted input: do not point it at a directory that others can write to.
"""
from __future__ import annotations

import collections
import contextlib
import os
from typing import Iterator, Optional

import jax
from jax.experimental.compilation_cache import compilation_cache as _jax_cache

from jtaba import home

SUBDIR = "compilation_cache"
HIT_EVENT = "/jax/compilation_cache/cache_hits"
MISS_EVENT = "/jax/compilation_cache/cache_misses"


def default_directory() -> str:
    """``$JTABA_HOME/compilation_cache`` (default ``~/.cache/jtaba/compilation_cache``)."""
    return os.path.join(home.jtaba_home(), SUBDIR)


def enable(directory: Optional[str] = None, *, min_compile_time_secs: float = 0.0,
           min_entry_size_bytes: int = 0) -> str:
    """Turn on JAX's persistent compilation cache in ``directory`` (created if missing; default
    ``default_directory()``) and return its absolute path. Every compilation that takes at least
    ``min_compile_time_secs`` and whose executable has at least ``min_entry_size_bytes`` is written there (JAX's own
    defaults, 1 s and 0, would skip the sub-second compiles of small models). May be called again to move the cache:
    the new directory takes effect for the next compilation in this process."""
    path = os.path.abspath(os.path.expanduser(directory or default_directory()))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_size_bytes))
    _jax_cache.reset_cache()  # JAX opens the cache once per process: make a changed directory take effect
    return path


def disable() -> None:
    """Turn the persistent cache off for the rest of the process (compiled code is still reused in memory)."""
    jax.config.update("jax_compilation_cache_dir", None)
    _jax_cache.reset_cache()


def directory() -> Optional[str]:
    """The directory of the persistent cache when it is on, else None."""
    if not jax.config.jax_enable_compilation_cache:
        return None
    return jax.config.jax_compilation_cache_dir


@contextlib.contextmanager
def count_events() -> Iterator[collections.Counter]:
    """Count persistent-cache hits and misses of the compilations inside the block: yields a Counter with keys
    ``"hits"`` and ``"misses"`` (filled as compilations happen)."""
    counts: collections.Counter = collections.Counter(hits=0, misses=0)

    def listener(event: str, **kwargs) -> None:
        if event == HIT_EVENT:
            counts["hits"] += 1
        elif event == MISS_EVENT:
            counts["misses"] += 1

    jax.monitoring.register_event_listener(listener)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_listener(listener)
