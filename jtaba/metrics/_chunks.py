"""Bounded-memory iteration for host metrics over large sample files (e.g. 10,240 x 3x64x64 float32, possibly
``np.load(..., mmap_mode="r")``): blocks of leading-axis rows are cast to float64 one at a time."""
from __future__ import annotations

from typing import Iterator

import numpy as np

MAX_BLOCK_ELEMENTS = 1 << 22  # float64 elements per array and block (32 MiB)


def flat_rows(x) -> np.ndarray:
    """(N, ...) -> (N, D) view (no copy for contiguous arrays and memmaps)."""
    x = np.asarray(x)
    return x.reshape(x.shape[0], -1)


def row_blocks(n_rows: int, row_size: int, max_elements: int | None = None) -> Iterator[slice]:
    """Consecutive row slices covering range(n_rows), each at most max(1, max_elements // row_size) rows."""
    per = max(1, (max_elements or MAX_BLOCK_ELEMENTS) // max(1, row_size))
    for start in range(0, n_rows, per):
        yield slice(start, min(n_rows, start + per))


def float64_blocks(*arrays) -> Iterator[tuple[np.ndarray, ...]]:
    """Aligned float64 (rows, D) blocks of same-shaped arrays (each flattened to (N, D); 0-d / 1-d -> (size, 1))."""
    flats = [np.asarray(a).reshape(-1, 1) if np.ndim(a) < 2 else flat_rows(a) for a in arrays]
    shape = flats[0].shape
    for f in flats[1:]:
        if f.shape != shape:
            raise ValueError(f"arrays must have the same shape, got {[np.shape(a) for a in arrays]}")
    for sl in row_blocks(shape[0], shape[1]):
        yield tuple(np.asarray(f[sl], dtype=np.float64) for f in flats)
