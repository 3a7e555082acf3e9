"""Pixel correlations of noise, latents and samples against pure chance (paper Sec. 3.2, Tab. 2; upstream
``taba/metrics/correlation.py``).

The paper's metric (``jtaba.metrics.top_k_corr_in_patches``: patch 8, top 20): in every non-overlapping 8x8 patch,
the 20 largest |Pearson r| between two of its C*64 features (pixel x channel) measured across the N samples; mean
and std over all patches' values. Arrays are (N, C, H, W), read one patch at a time (memory maps welcome).

At small N even independent Gaussians show sizeable top-20 correlations, so ``null_correlation`` measures fresh
standard Gaussian sets of the same shape: the spread against which the noise / latents / samples rows mean something.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from jtaba.analyses._result import Result
from jtaba.metrics import top_k_corr_in_patches
from jtaba.metrics.core import CORRELATION_PATCH, CORRELATION_TOP_K

ROWS = ("noise", "latents", "samples")  # paper column order of Tab. 2 (noise, latent, sample)


@dataclasses.dataclass(frozen=True)
class PatchCorrelation(Result):
    """Mean and unbiased std of the top-k |Pearson r| of all patches."""
    mean: float
    std: float


@dataclasses.dataclass(frozen=True)
class NullCorrelation(Result):
    """The metric on ``len(sets)`` fresh standard Gaussian sets: means over sets of each set's mean / std, their
    unbiased sd over sets (None for one set), and each set's own."""
    mean: float
    std: float
    mean_sd: float | None
    std_sd: float | None
    sets: tuple[PatchCorrelation, ...]


@dataclasses.dataclass(frozen=True)
class CorrelationTable(Result):
    """Tab. 2 with its null: ``correlation`` per row of ``ROWS``, the null (None without null sets) and each row's
    distance from the null mean in null sds (``z_vs_null``; None without a spread, i.e. fewer than two sets)."""
    patch_size: int
    top_k: int
    upstream_fp16: bool
    null_sets: int
    null_seed: int
    correlation: dict[str, PatchCorrelation]
    null: NullCorrelation | None
    z_vs_null: dict[str, float] | None


def _patch_grid(height: int, width: int, patch: int):
    """(i, j, ph, pw) of the non-overlapping patches, row-major (border patches may be smaller)."""
    for i in range(0, height, patch):
        for j in range(0, width, patch):
            yield i, j, min(patch, height - i), min(patch, width - j)


def _pool(parts: list[tuple[int, float, float]]) -> PatchCorrelation:
    """Mean and unbiased std of the concatenation of groups given as (count, mean, unbiased std)."""
    if not parts:
        return PatchCorrelation(0, 0)  # no patch with two features (as the metric)
    k = np.array([p[0] for p in parts], np.float64)
    m = np.array([p[1] for p in parts], np.float64)
    s = np.array([p[2] if p[0] > 1 else 0.0 for p in parts], np.float64)
    total = k.sum()
    mean = (k * m).sum() / total
    ss = ((k - 1) * s ** 2).sum() + (k * (m - mean) ** 2).sum()
    return PatchCorrelation(float(mean), float(np.sqrt(ss / (total - 1))) if total > 1 else float("nan"))


def patch_correlation(blocks: Iterable[np.ndarray], arithmetic: str = "float64") -> PatchCorrelation:
    """The patch-correlation metric (patch 8, top 20) of an array given as its patches: ``blocks`` yields each
    patch (N, C, ph, pw); every patch goes through ``jtaba.metrics.top_k_corr_in_patches`` alone and the per-patch
    mean / std are pooled exactly, so only one patch is in memory (memmaps, float16 casts, patch-wise null draws)."""
    parts = []
    for b in blocks:
        d = int(np.prod(b.shape[1:]))
        if d < 2:
            continue
        r = top_k_corr_in_patches(b, patch_size=CORRELATION_PATCH, top_k=CORRELATION_TOP_K, arithmetic=arithmetic)
        parts.append((min(CORRELATION_TOP_K, d * (d - 1) // 2), r["mean"], r["std"]))
    return _pool(parts)


def array_correlation(x, fp16: bool = False) -> PatchCorrelation:
    """``patch_correlation`` of an (N, C, H, W) array (memmap), optionally rounded to float16 patch by patch and
    measured in float16 arithmetic (as upstream's correlation.py ``__main__``, the Tab. 2 producer)."""
    x = np.asarray(x)  # a view for memmaps: patches are read one at a time
    if x.ndim != 4:
        raise ValueError(f"expected (N, C, H, W), got shape {x.shape}")

    def blocks():
        for i, j, ph, pw in _patch_grid(x.shape[2], x.shape[3], CORRELATION_PATCH):
            b = np.asarray(x[:, :, i:i + ph, j:j + pw])
            yield b.astype(np.float16) if fp16 else b

    return patch_correlation(blocks(), "float16" if fp16 else "float64")


def null_correlation(shape, sets: int, seed: int = 0, fp16: bool = False) -> NullCorrelation:
    """The null row: ``sets`` standard Gaussian arrays of ``shape`` (N, C, H, W), drawn from one
    ``np.random.default_rng(seed)`` set after set, patch by patch in row-major patch order (each patch
    ``rng.standard_normal((N, C, ph, pw))`` float64, rounded to float16 with ``fp16``)."""
    n, c, h, w = shape
    rng = np.random.default_rng(seed)

    def blocks():
        for _, _, ph, pw in _patch_grid(h, w, CORRELATION_PATCH):
            b = rng.standard_normal((n, c, ph, pw))
            yield b.astype(np.float16) if fp16 else b

    per_set = tuple(patch_correlation(blocks(), "float16" if fp16 else "float64") for _ in range(sets))
    means = np.array([r.mean for r in per_set], np.float64)
    stds = np.array([r.std for r in per_set], np.float64)

    def sd(v):
        return float(v.std(ddof=1)) if v.size > 1 else None

    return NullCorrelation(float(means.mean()), float(stds.mean()), sd(means), sd(stds), per_set)


def correlation_table(noise, latents, samples, *, null_sets: int = 5, null_seed: int = 0,
                      fp16: bool = False) -> CorrelationTable:
    """``CorrelationTable`` of (N, C, H, W) noise, latents and samples; ``null_sets`` Gaussian sets of the noise's
    shape (0: no null row); ``fp16`` rounds every input (the null sets included) to float16 and computes the
    coefficients in float16 as upstream (``top_k_corr_in_patches(arithmetic="float16")``; the per-patch float16
    means / stds are pooled in float64)."""
    if null_sets < 0:
        raise ValueError(f"null_sets must be >= 0, got {null_sets}")
    rows = {k: array_correlation(x, fp16) for k, x in zip(ROWS, (noise, latents, samples), strict=True)}
    null = null_correlation(np.shape(noise), null_sets, null_seed, fp16) if null_sets > 0 else None
    z = {k: (rows[k].mean - null.mean) / null.mean_sd for k in ROWS} if null is not None and null.mean_sd else None
    return CorrelationTable(CORRELATION_PATCH, CORRELATION_TOP_K, fp16, null_sets, null_seed, rows, null, z)


def of_run(run, **kwargs) -> CorrelationTable:
    """``correlation_table`` of a finished ``jtaba.runs.Run`` (keyword arguments as there)."""
    return correlation_table(run["noise"], run["latents"], run["samples"], **kwargs)
