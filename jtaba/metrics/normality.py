"""Per-sample Shapiro-Wilk normality test of latents (upstream ``stat_test_normality``; paper Sec. 3.2)
and the two-sample quantiles of a QQ plot (upstream ``plt_qq``: statsmodels ``qqplot_2samples``), in float64.

Upstream draws each latent's subsample with ``torch.randint`` from torch's global generator; here a numpy
``Generator`` seeded with ``seed`` draws them (same distribution: min(numel, limit) indices with replacement), one
generator per call, so two inputs of the same shape tested with the same seed use the same indices.

Drawing with replacement repeats values (about 37 % of the draws when numel <= limit), and Shapiro-Wilk rejects such
tied samples far more often than the nominal level: standard Gaussian samples of 768 or 3,072 elements (ADM-16 /
ADM-32 sizes) are rejected about half the time at p = 0.05, of 12,288 elements (ADM-64) about a fifth of the time.
``replace=False`` draws distinct indices instead (all elements when numel <= limit), which is calibrated.
"""
from __future__ import annotations

import warnings

import numpy as np

SHAPIRO_LIMIT = 5000
P_VALUE = 0.05


def shapiro_p_values(x, limit: int = SHAPIRO_LIMIT, seed: int = 0, replace: bool = True) -> np.ndarray:
    """Shapiro-Wilk p-value of every sample of the (N, ...) input: per sample, ``min(numel, limit)`` element
    indices are drawn uniformly with replacement (``rng.integers(0, numel, m)``, one ``np.random.default_rng(seed)``
    for the whole call, samples in order) and ``scipy.stats.shapiro`` tests those values. ``replace=False``: all
    elements when numel <= limit, else ``rng.choice(numel, limit, replace=False)``. Returns (N,) float64."""
    from scipy.stats import shapiro

    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"expected (N, ...) samples, got shape {x.shape}")
    if limit < 3:
        raise ValueError(f"Shapiro-Wilk needs at least 3 values, got limit={limit}")
    rng = np.random.default_rng(seed)
    numel = int(np.prod(x.shape[1:]))
    m = min(numel, limit)
    if m < 3:
        raise ValueError(f"Shapiro-Wilk needs at least 3 values per sample, got {numel}")
    out = np.empty(x.shape[0], np.float64)
    for i in range(x.shape[0]):
        flat = np.asarray(x[i], np.float64).reshape(-1)
        if replace:
            values = flat[rng.integers(0, numel, m)]
        else:
            values = flat if m == numel else flat[rng.choice(numel, m, replace=False)]
        with warnings.catch_warnings():  # "Input data has range zero": p = 1, as scipy returns it
            warnings.simplefilter("ignore", UserWarning)
            out[i] = shapiro(values).pvalue
    return out


def normality_counts(p_values, p_value: float = P_VALUE) -> dict:
    """Upstream's summary of per-sample p-values: a sample is accepted as normal when p > ``p_value``.
    {"n_rej", "%_rej", "n_acc", "%_acc"}; as upstream, the "%" entries are fractions in [0, 1]."""
    p = np.asarray(p_values, np.float64)
    n = p.size
    n_acc = int((p > p_value).sum())
    n_rej = n - n_acc
    return {"n_rej": n_rej, "%_rej": n_rej / n if n else float("nan"),
            "n_acc": n_acc, "%_acc": n_acc / n if n else float("nan")}


def shapiro_normality(x, limit: int = SHAPIRO_LIMIT, p_value: float = P_VALUE, seed: int = 0,
                      replace: bool = True) -> dict:
    """``stat_test_normality(latents, limit=5000, p_val=0.05)``: ``normality_counts`` of ``shapiro_p_values``
    (``replace=True`` as upstream)."""
    return normality_counts(shapiro_p_values(x, limit, seed, replace), p_value)


def qq_quantiles(a, b, points: int = 1000, limit: int = 2_000_000, seed: int = 0) -> dict:
    """Two-sample QQ data of all elements of ``a`` (x axis, e.g. noise) against all elements of ``b`` (y axis, e.g.
    latents): both sets' empirical quantiles (``np.quantile``, linear) at the plotting positions
    (k - 0.5) / points, k = 1..points, plus the ends (min, max). A set with more than ``limit`` elements is
    represented by ``limit`` elements drawn uniformly with replacement (seeded). Also the statsmodels ``line="s"``
    reference, y = mean(b) + std(b) x (b's mean and population std over the values used): where a Gaussian with
    b's mean and std would lie if ``a`` is standard normal. Returns {"probabilities", "x", "y", "line_slope",
    "line_intercept"}."""
    rng = np.random.default_rng(seed)

    def values(arr):
        flat = np.asarray(arr).reshape(-1)
        if flat.size > limit:
            flat = flat[np.sort(rng.integers(0, flat.size, limit))]
        return np.asarray(flat, np.float64)

    probs = np.concatenate([[0.0], (np.arange(1, points + 1) - 0.5) / points, [1.0]])
    va = values(a)
    vb = values(b)
    return {"probabilities": probs, "x": np.quantile(va, probs), "y": np.quantile(vb, probs),
            "line_slope": float(vb.std()), "line_intercept": float(vb.mean())}
