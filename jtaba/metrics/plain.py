"""Plain-surface masks and plain vs non-plain statistics (paper App. C, Tab. 5, Fig. 11; masks for App. D).

Masks are computed on the final generations in the diffusion space (pixels in [-1, 1] for ADM/IF, VAE/VQ latents
for LDM/DiT), so they have the latents' spatial size.
"""
from __future__ import annotations

import numpy as np

from jtaba.metrics._chunks import row_blocks

PLAIN_THRESHOLD = 0.025


def find_plain_areas(images, threshold: float = PLAIN_THRESHOLD) -> np.ndarray:
    """``find_plain_areas``: (N, C, H, W) -> bool (N, H, W). Dh = |I[y+1] - I[y]| with a zero bottom row,
    Dw = |I[:, x+1] - I[:, x]| with a zero right column, plain where (Dh + Dw) / 2 < threshold in every channel.
    Arithmetic in the input's floating dtype (as upstream: fp16 files stay fp16, threshold rounded to it)."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected (N, C, H, W), got shape {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        images = images.astype(np.float32)
    thr = images.dtype.type(threshold)
    n, _, h, w = images.shape
    out = np.empty((n, h, w), bool)
    for sl in row_blocks(n, images[0].size):
        x = images[sl]
        dh = np.zeros_like(x)
        dw = np.zeros_like(x)
        dh[:, :, :-1, :] = np.abs(x[:, :, 1:, :] - x[:, :, :-1, :])
        dw[:, :, :, :-1] = np.abs(x[:, :, :, 1:] - x[:, :, :, :-1])
        out[sl] = ((dh + dw) / x.dtype.type(2) < thr).all(axis=1)
    return out


def _masked_moments(values, n: int, row_size: int, mask: np.ndarray) -> tuple[float, float]:
    """Two-pass float64 mean and unbiased std of ``values(rows)`` ((rows, C, H, W)) where ``mask[rows]`` (rows, H, W)
    is True (all channels); NaN when empty."""
    def picked(sl):
        v = values(sl)
        return v[np.broadcast_to(mask[sl][:, None], v.shape)]

    slices = list(row_blocks(n, row_size))
    count, total = 0, 0.0
    for sl in slices:
        v = picked(sl)
        count += v.size
        total += v.sum()
    if count == 0:
        return float("nan"), float("nan")
    mean = total / count
    if count == 1:
        return float(mean), float("nan")
    ss = sum(np.square(picked(sl) - mean).sum() for sl in slices)
    return float(mean), float(np.sqrt(ss / (count - 1)))


def masked_mean_std(x, mask) -> tuple[float, float]:
    """Mean and unbiased std (float64) of the values of (N, C, H, W) ``x`` at positions where the (N, H, W) mask is
    True, over all channels and samples (NaN when empty)."""
    x = np.asarray(x)
    mask = _check_mask(mask, x)
    return _masked_moments(lambda sl: np.asarray(x[sl], np.float64), x.shape[0], x[0].size, mask)


def plain_stats(noise, latents, mask) -> dict:
    """Tab. 5: {"mae_plain", "mae_non_plain"} = mean |noise - latent| over plain / non-plain positions (all channels
    and samples), {"std_plain", "std_non_plain"} = unbiased std of the latent values there, and "plain_fraction"
    (share of plain positions). ``mask`` from :func:`find_plain_areas` on the samples."""
    noise, latents = np.asarray(noise), np.asarray(latents)
    if noise.shape != latents.shape:
        raise ValueError(f"shapes differ: {noise.shape} vs {latents.shape}")
    mask = _check_mask(mask, latents)
    n, row = latents.shape[0], latents[0].size

    def err(sl):
        return np.abs(np.asarray(noise[sl], np.float64) - np.asarray(latents[sl], np.float64))

    def lat(sl):
        return np.asarray(latents[sl], np.float64)

    return {
        "mae_plain": _masked_moments(err, n, row, mask)[0],
        "mae_non_plain": _masked_moments(err, n, row, ~mask)[0],
        "std_plain": _masked_moments(lat, n, row, mask)[1],
        "std_non_plain": _masked_moments(lat, n, row, ~mask)[1],
        "plain_fraction": float(mask.mean()),
    }


def _check_mask(mask, x: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, bool)
    if mask.shape != (x.shape[0],) + x.shape[2:]:
        raise ValueError(f"mask {mask.shape} does not match (N, H, W) of {x.shape}")
    return mask
