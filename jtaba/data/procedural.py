"""A built-in image dataset that needs no download: shapes on flat backgrounds, some flat, some textured.

Each image is a flat-coloured background (a plain region) with one or two shapes (disc, square, or triangle),
each filled either with a flat colour (plain) or with a texture (stripes, checkerboard, or noise). The paper's
inversion effects live in plain regions, so both kinds are always present. Image ``i`` depends only on
``(seed, i)``. Shape edges are anti-aliased by 4x supersampling.
"""
from __future__ import annotations

import numpy as np

PALETTE = np.array([
    [230, 57, 70], [241, 162, 8], [250, 220, 60], [42, 157, 143], [69, 123, 157], [29, 53, 87],
    [131, 56, 236], [240, 240, 235], [38, 38, 38], [120, 190, 90],
], dtype=np.float64)
_SUPERSAMPLE = 4
_SHAPES = ("disc", "square", "triangle")
_TEXTURES = ("flat", "stripes", "checker", "noise")


def _coverage(kind: str, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    """Fraction (H, W) of each pixel covered by the shape centred at (cx, cy) with half-size r (pixel units)."""
    n = size * _SUPERSAMPLE
    c = (np.arange(n) + 0.5) / _SUPERSAMPLE
    y, x = np.meshgrid(c, c, indexing="ij")
    dx, dy = x - cx, y - cy
    if kind == "disc":
        inside = dx ** 2 + dy ** 2 <= r ** 2
    elif kind == "square":
        inside = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    else:  # upward triangle inscribed in the square of half-size r
        inside = (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    return inside.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(axis=(1, 3))


def _fill(rng: np.random.Generator, texture: str, size: int) -> np.ndarray:
    """(H, W, 3) float64 fill pattern in [0, 255]."""
    a, b = PALETTE[rng.choice(len(PALETTE), 2, replace=False)]
    if texture == "flat":
        return np.broadcast_to(a, (size, size, 3))
    y, x = np.mgrid[:size, :size]
    if texture == "stripes":
        width = int(rng.integers(1, 3))
        coord = (x, y, x + y)[int(rng.integers(3))]
        on = (coord // width) % 2 == 0
    elif texture == "checker":
        cell = int(rng.integers(1, 3))
        on = ((x // cell) + (y // cell)) % 2 == 0
    else:
        on = rng.random((size, size)) < 0.5
    return np.where(on[..., None], a, b)


def procedural_image(seed: int, index: int, size: int) -> np.ndarray:
    """Image ``index`` of the dataset with ``seed``: (size, size, 3) uint8."""
    rng = np.random.default_rng([seed, index])
    bg = PALETTE[int(rng.integers(len(PALETTE)))]
    img = np.broadcast_to(bg, (size, size, 3)).copy()
    n_shapes = int(rng.integers(1, 3))
    for k in range(n_shapes):
        kind = _SHAPES[int(rng.integers(len(_SHAPES)))]
        # the first shape is textured, so every image has a plain background and a textured region
        texture = _TEXTURES[int(rng.integers(1, len(_TEXTURES)))] if k == 0 else \
            _TEXTURES[int(rng.integers(len(_TEXTURES)))]
        r = rng.uniform(0.18, 0.32) * size
        cx, cy = rng.uniform(r * 0.6, size - r * 0.6, 2)
        alpha = _coverage(kind, size, cx, cy, r)[..., None]
        img = alpha * _fill(rng, texture, size) + (1 - alpha) * img
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


class ProceduralImages:
    """Indexable dataset of ``length`` procedural images (uint8 HWC) at ``size``x``size``."""

    def __init__(self, size: int, seed: int = 0, length: int = 50_000):
        self.size, self.seed, self.length = size, seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return procedural_image(self.seed, int(index), self.size)
