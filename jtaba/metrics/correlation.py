"""Pixel-correlation metric (paper Tab. 2 / Tab. 9, upstream
``taba/metrics/correlation.py``): top-k absolute Pearson correlations between
features (pixels x channels) measured across the N samples, in float64 (upstream uses the stored dtype,
fp16 for DiT/IF).

Input (N, C, H, W). Constant features have no correlation: their entries are NaN, which, as in ``torch.topk``, rank
above every number (so they make the result NaN, as upstream).
"""
from __future__ import annotations

import numpy as np

from jtaba.metrics._chunks import flat_rows, row_blocks


def _unit_columns(p: np.ndarray) -> np.ndarray:
    """(N, D) -> float64 Z with Z.T @ Z = Pearson correlation matrix of the D columns."""
    z = np.asarray(p, np.float64)
    z = z - z.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return z / np.sqrt(np.square(z).sum(axis=0))


def _abs_corr(za: np.ndarray, zb: np.ndarray) -> np.ndarray:
    """|corrcoef| block between the columns of za and zb, clipped to [0, 1] as torch/numpy corrcoef."""
    return np.abs(np.clip(za.T @ zb, -1.0, 1.0))


def _top_k(values: np.ndarray, k: int) -> np.ndarray:
    """The k largest values, NaN ranked largest (torch.topk semantics; order irrelevant here)."""
    return np.sort(values)[values.size - k:]


def _mean_std(values: np.ndarray) -> dict:
    std = values.std(ddof=1) if values.size > 1 else float("nan")
    return {"mean": float(values.mean()), "std": float(std)}


def top_k_corr_in_patches(x, patch_size: int = 8, top_k: int = 20) -> dict:
    """``get_top_k_corr_in_patches`` (every upstream call uses patch 8, top_k 20): for each non-overlapping patch
    (border patches may be smaller) with D = C*ph*pw > 1 features (channel-major order), the top-min(k, D(D-1)/2)
    values of |corrcoef| over the strict upper triangle; returns {"mean", "std" (unbiased)} of all patches'
    values together ({0, 0} when no patch has two features)."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"expected (N, C, H, W), got shape {x.shape}")
    n, _, h, w = x.shape
    collected = []
    for i in range(0, h, patch_size):
        for j in range(0, w, patch_size):
            patch = x[:, :, i:i + patch_size, j:j + patch_size].reshape(n, -1)
            d = patch.shape[1]
            if d < 2:
                continue
            z = _unit_columns(patch)
            rows, cols = np.triu_indices(d, k=1)
            upper = _abs_corr(z, z)[rows, cols]
            collected.append(_top_k(upper, min(top_k, upper.size)))
    if not collected:
        return {"mean": 0, "std": 0}
    return _mean_std(np.concatenate(collected))


def top_k_corr(x, top_k: int = 10, block: int = 1024) -> dict:
    """``get_top_k_corr``: top-k of |corrcoef| over all C*H*W features of the (N, C, H, W) input, taken from the
    whole D x D matrix after ``triu(diagonal=1)`` (so zeros fill in when k exceeds D(D-1)/2). {"mean", "std"}.
    Computed in row blocks of ``block`` features (memory ~ N*D + block*D float64)."""
    z = _unit_columns(flat_rows(x))
    d = z.shape[1]
    if top_k > d * d:
        raise ValueError(f"top_k={top_k} exceeds the {d * d} matrix entries")
    best = np.empty(0)
    for sl in row_blocks(d, 1, block):
        corr = _abs_corr(z[:, sl], z[:, sl.start:])  # rows sl, columns >= sl.start
        upper = corr[np.triu(np.ones(corr.shape, bool), k=1)]
        best = _top_k(np.concatenate([best, upper]), min(top_k, best.size + upper.size))
    if best.size < top_k:
        best = np.concatenate([np.zeros(top_k - best.size), best])
    return _mean_std(best)
