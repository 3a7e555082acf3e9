"""Pixel-correlation metric (paper Tab. 2 / Tab. 9, upstream
``taba/metrics/correlation.py``): top-k absolute Pearson correlations between
features (pixels x channels) measured across the N samples, in float64 (upstream uses the stored dtype,
fp16 for DiT/IF).

Input (N, C, H, W). Constant features have no correlation: their entries are NaN, which, as in ``torch.topk``, rank
above every number (so they make the result NaN, as upstream).

``arithmetic="float16"`` computes as upstream's Tab. 2 script did on its float16 tensors (``torch.corrcoef`` on CPU
half tensors): inputs rounded to float16, then every tensor operation rounded to float16 once (torch computes half
ops in float and rounds the result): the patch standardisation (P − mean) / (std + 1e-5), the covariance
(feature sums -> mean, centring, the centred products summed to one float16 value per entry, divided by N − 1),
the division by the row and column standard deviations, the clip to [-1, 1], and the final mean / std of the
collected values. Sums are accumulated in float64 before their one rounding (torch accumulates in float32 in a
blocked order, so about 0.1 % of the coefficients differ from torch's by one float16 ulp).
"""
from __future__ import annotations

import numpy as np

from jtaba.metrics._chunks import flat_rows, row_blocks

ARITHMETICS = ("float64", "float16")


def _round16(v) -> np.ndarray:
    """One float16 rounding of a result computed in higher precision."""
    return np.asarray(v).astype(np.float16)


def _half_standardize(p: np.ndarray) -> np.ndarray:
    """Upstream's patch standardisation (P − mean) / (std_unbiased + 1e-5) on float16 (N, D), each op rounded."""
    p64 = p.astype(np.float64)
    mean = _round16(p64.mean(axis=0)).astype(np.float64)
    std = _round16(p64.std(axis=0, ddof=1)).astype(np.float32)
    centred = _round16(p64 - mean).astype(np.float64)
    return _round16(centred / _round16(std + np.float32(1e-5)).astype(np.float64))


def _half_corr_block(p: np.ndarray):
    """(rows, cols) -> |corrcoef| block of the columns of float16 (N, D) ``p`` as ``torch.corrcoef(p.T)`` computes
    it in float16 (module docstring); NaN where a column is constant."""
    n = p.shape[0]
    total = _round16(p.astype(np.float64).sum(axis=0)).astype(np.float64)
    centred = _round16(p.astype(np.float64) - _round16(total / n).astype(np.float64)).astype(np.float64)
    var = _round16(_round16(np.square(centred).sum(axis=0)).astype(np.float64) / (n - 1))
    sd = _round16(np.sqrt(var.astype(np.float64))).astype(np.float64)

    def block(rows: slice, cols: slice) -> np.ndarray:
        c = _round16(_round16(centred[:, rows].T @ centred[:, cols]).astype(np.float64) / (n - 1)).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            c = _round16(c / sd[rows, None]).astype(np.float64)
            c = _round16(c / sd[None, cols])
        return np.abs(np.clip(c, np.float16(-1), np.float16(1)))

    return block


def _corr_block(p, arithmetic: str):
    """(rows, cols) -> |corrcoef| block between the columns of (N, D) ``p`` in ``arithmetic``."""
    if arithmetic == "float16":
        return _half_corr_block(np.asarray(p).astype(np.float16))
    if arithmetic != "float64":
        raise ValueError(f"arithmetic must be one of {ARITHMETICS}, got {arithmetic!r}")
    z = _unit_columns(p)
    return lambda rows, cols: _abs_corr(z[:, rows], z[:, cols])


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
    """{"mean", "std" (unbiased)}, rounded to float16 for float16 values (torch's ``.mean().item()`` on half)."""
    mean = values.astype(np.float64).mean()
    std = values.astype(np.float64).std(ddof=1) if values.size > 1 else float("nan")
    if values.dtype == np.float16:
        mean, std = _round16(mean), _round16(std)
    return {"mean": float(mean), "std": float(std)}


def require_samples(n: int, least: int = 2, what: str = "correlations across samples") -> None:
    """ValueError unless there are ``least`` samples (a Pearson correlation of one sample is 0 / 0)."""
    if n < least:
        raise ValueError(f"{what} need N >= {least} samples, got N = {n} (raise --n)")


def top_k_corr_in_patches(x, patch_size: int = 8, top_k: int = 20, arithmetic: str = "float64") -> dict:
    """``get_top_k_corr_in_patches`` (every upstream call uses patch 8, top_k 20): for each non-overlapping patch
    (border patches may be smaller) with D = C*ph*pw > 1 features (channel-major order), the top-min(k, D(D-1)/2)
    values of |corrcoef| over the strict upper triangle; returns {"mean", "std" (unbiased)} of all patches'
    values together ({0, 0} when no patch has two features). ``arithmetic``: module docstring."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"expected (N, C, H, W), got shape {x.shape}")
    n, _, h, w = x.shape
    require_samples(n)
    collected = []
    for i in range(0, h, patch_size):
        for j in range(0, w, patch_size):
            patch = x[:, :, i:i + patch_size, j:j + patch_size].reshape(n, -1)
            d = patch.shape[1]
            if d < 2:
                continue
            if arithmetic == "float16":  # upstream's standardisation changes nothing in float64
                patch = _half_standardize(patch.astype(np.float16))
            rows, cols = np.triu_indices(d, k=1)
            upper = _corr_block(patch, arithmetic)(slice(None), slice(None))[rows, cols]
            collected.append(_top_k(upper, min(top_k, upper.size)))
    if not collected:
        return {"mean": 0, "std": 0}
    return _mean_std(np.concatenate(collected))


def top_k_corr(x, top_k: int = 10, block: int = 1024, arithmetic: str = "float64") -> dict:
    """``get_top_k_corr``: top-k of |corrcoef| over all C*H*W features of the (N, C, H, W) input, taken from the
    whole D x D matrix after ``triu(diagonal=1)`` (so zeros fill in when k exceeds D(D-1)/2). {"mean", "std"}.
    Computed in row blocks of ``block`` features (memory ~ N*D + block*D float64). ``arithmetic``: module
    docstring."""
    p = flat_rows(x)
    require_samples(len(p))
    d = p.shape[1]
    if top_k > d * d:
        raise ValueError(f"top_k={top_k} exceeds the {d * d} matrix entries")
    corr_block = _corr_block(p, arithmetic)
    best = np.empty(0, np.float16 if arithmetic == "float16" else np.float64)
    for sl in row_blocks(d, 1, block):
        corr = corr_block(sl, slice(sl.start, None))  # rows sl, columns >= sl.start
        upper = corr[np.triu(np.ones(corr.shape, bool), k=1)]
        best = _top_k(np.concatenate([best, upper]), min(top_k, best.size + upper.size))
    if best.size < top_k:
        best = np.concatenate([np.zeros(top_k - best.size, best.dtype), best])
    return _mean_std(best)
