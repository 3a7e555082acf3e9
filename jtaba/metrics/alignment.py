"""Representation alignment between two aligned sets (sample i of one set <-> sample i of the other): CKA, SVCCA and
mutual k-NN (paper App. G.3, Fig. 16-19: samples / latents of checkpoint c vs those of the final checkpoint).

Pure numpy, float64. Inputs (N, ...) are flattened to (N, D) features; both sets need the same N (D may differ).

- ``cka``: centred kernel alignment, HSIC(K, L) / (sqrt(HSIC(K, K)·HSIC(L, L)) + eps) with the HSIC normalisation of
  upstream / the platonic-representation code (Huh et al. 2024, ``metrics.py``; upstream ``alignment.py`` is a copy):
  biased HSIC = tr(K H L H) (H = I − 11ᵀ/N, no 1/(N−1)² factor; Kornblith et al. 2019), unbiased HSIC = Song et al.
  2012 eq. 5: [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((N−1)(N−2)) − 2/(N−2)·1ᵀK̃L̃1] / (N(N−3)) with zero-diagonal K̃, L̃.
  eps = 1e-6 as upstream (``eps=0`` for the textbook ratio). Kernels: "linear" K = XXᵀ (upstream "ip"), "rbf"
  K = exp(−|xi − xj|² / (2σ²)) with σ = ``rbf_sigma`` (platonic-rep) or, with ``rbf_median_scale=t``, σ² = t²·median
  of the squared distances (Kornblith et al.'s ``gram_rbf(threshold=t)``). O(N²) memory, O(N²·D) time.
- ``svcca``: Raghu et al. 2017: centre each feature, keep the top singular directions (``keep_variance``: the fewest
  that explain that fraction of the variance Σs², default 0.99; or exactly ``n_components``), then CCA between the two
  reduced sets; SVCCA = mean canonical correlation (min(k1, k2) of them). Upstream / platonic-rep
  (``svcca(cca_dim=10)``) = ``svcca(x, y, n_components=10, standardize=True)``: standardise features
  ((x − mean) / (std_unbiased + 1e-8)), top-10 left singular vectors, CCA, mean correlation; upstream obtained these
  with randomized ``torch.svd_lowrank(q=10)`` and sklearn's iterative ``CCA`` plus 1e-10 jitter, all approximations
  of the exact values computed here (exact SVD; canonical correlations = singular values of Q1ᵀQ2 of the
  orthonormalised reduced sets).
- ``mutual_knn``: Huh et al.'s mutual k-NN alignment: each sample's k nearest neighbours (self excluded) in each set;
  per sample the size of the intersection; mean fraction over samples. metric "ip" (platonic-rep: largest inner
  products, features usually L2-normalised first) or "euclidean" (upstream G.3: k = 50, scipy cdist on
  whole-batch-min-max features, reported as mean and std of the per-sample counts = ``mutual_knn_counts``).
  Ties -> lower index.
- ``batch_min_max``: upstream G.3 feature scaling x̃ = (x − min) / (max − min) over the whole batch.
"""
from __future__ import annotations

import numpy as np

from jtaba.metrics._chunks import flat_rows

KERNELS = ("linear", "rbf")
KNN_METRICS = ("ip", "euclidean")


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    xf, yf = np.asarray(flat_rows(x), np.float64), np.asarray(flat_rows(y), np.float64)
    if xf.shape[0] != yf.shape[0]:
        raise ValueError(f"sets must be aligned (same N), got {xf.shape[0]} and {yf.shape[0]} samples")
    return xf, yf


def batch_min_max(x) -> np.ndarray:
    """Whole-batch min-max scaling to [0, 1] in float64 (upstream ``tensors_to_tensors``)."""
    x = np.asarray(x, np.float64)
    x = x - x.min()
    return x / x.max()


# ---------------------------------------------------------------------------------------------------------------
# CKA


def _sq_distances(f: np.ndarray) -> np.ndarray:
    g = f @ f.T
    n = np.diag(g)
    return np.maximum(n[:, None] + n[None, :] - 2.0 * g, 0.0)


def gram(features, *, kernel: str = "linear", rbf_sigma: float = 1.0,
         rbf_median_scale: float | None = None) -> np.ndarray:
    """(N, N) kernel matrix of (N, ...) features (see module docstring)."""
    f = np.asarray(flat_rows(features), np.float64)
    if kernel == "linear":
        return f @ f.T
    if kernel != "rbf":
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    d2 = _sq_distances(f)
    sigma2 = rbf_sigma ** 2 if rbf_median_scale is None else rbf_median_scale ** 2 * float(np.median(d2))
    return np.exp(-d2 / (2.0 * sigma2))


def hsic(k, l, *, unbiased: bool = False) -> float:
    """HSIC of two (N, N) kernel matrices with upstream's normalisation (see module docstring)."""
    k, l = np.asarray(k, np.float64), np.asarray(l, np.float64)
    m = k.shape[0]
    if not unbiased:  # tr(K H L H) = <HKH, HLH>_F
        return float(np.sum(_centre(k) * _centre(l)))
    if m < 4:
        raise ValueError(f"unbiased HSIC needs N >= 4, got {m}")
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    value = (np.sum(kt * lt.T) + kt.sum() * lt.sum() / ((m - 1) * (m - 2))
             - 2.0 * np.dot(kt.sum(axis=0), lt.sum(axis=1)) / (m - 2))
    return float(value / (m * (m - 3)))


def _centre(k: np.ndarray) -> np.ndarray:
    return k - k.mean(axis=0, keepdims=True) - k.mean(axis=1, keepdims=True) + k.mean()


def cka(x, y, *, kernel: str = "linear", unbiased: bool = False, eps: float = 1e-6, rbf_sigma: float = 1.0,
        rbf_median_scale: float | None = None) -> float:
    """Centred kernel alignment of two aligned sets (see module docstring). Upstream G.3: ``cka(x̃, ỹ)``."""
    xf, yf = _pair(x, y)
    kw = {"kernel": kernel, "rbf_sigma": rbf_sigma, "rbf_median_scale": rbf_median_scale}
    k, l = gram(xf, **kw), gram(yf, **kw)
    kl, kk, ll = (hsic(a, b, unbiased=unbiased) for a, b in ((k, l), (k, k), (l, l)))
    return float(kl / (np.sqrt(kk * ll) + eps))


# ---------------------------------------------------------------------------------------------------------------
# SVCCA


def _standardize(f: np.ndarray) -> np.ndarray:
    f = f - f.mean(axis=0)
    return f / (f.std(axis=0, ddof=1) + 1e-8)


def svd_reduce(features, *, keep_variance: float = 0.99, n_components: int | None = None) -> np.ndarray:
    """(N, k) coordinates U_k·s_k of the centred (N, ...) features in their top-k singular directions: k = the fewest
    directions explaining ``keep_variance`` of Σs² (numerically zero directions never kept), or ``n_components``."""
    f = np.asarray(flat_rows(features), np.float64)
    f = f - f.mean(axis=0)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    rank = int(np.sum(s > s[0] * max(f.shape) * np.finfo(np.float64).eps)) if s.size and s[0] > 0 else 0
    if rank == 0:
        raise ValueError("features are constant: no direction to keep")
    if n_components is not None:
        if not 1 <= n_components <= rank:
            raise ValueError(f"n_components must be in [1, rank = {rank}], got {n_components}")
        k = n_components
    else:
        if not 0 < keep_variance <= 1:
            raise ValueError(f"keep_variance must be in (0, 1], got {keep_variance}")
        var = np.cumsum(s[:rank] ** 2) / np.sum(s[:rank] ** 2)
        k = min(rank, int(np.searchsorted(var, keep_variance - 1e-12)) + 1)
    return u[:, :k] * s[:k]


def cca_correlations(a, b) -> np.ndarray:
    """Canonical correlations (descending, min(ka, kb) of them) between (N, ka) and (N, kb) full-rank sets."""
    a, b = _pair(a, b)
    qa, _ = np.linalg.qr(a - a.mean(axis=0))
    qb, _ = np.linalg.qr(b - b.mean(axis=0))
    return np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), 0.0, 1.0)


def svcca(x, y, *, keep_variance: float = 0.99, n_components: int | None = None,
          standardize: bool = False) -> float:
    """Mean canonical correlation of the SVD-reduced sets (see module docstring; upstream:
    ``n_components=10, standardize=True``)."""
    xf, yf = _pair(x, y)
    if standardize:
        xf, yf = _standardize(xf), _standardize(yf)
    kw = {"keep_variance": keep_variance, "n_components": n_components}
    return float(np.mean(cca_correlations(svd_reduce(xf, **kw), svd_reduce(yf, **kw))))


# ---------------------------------------------------------------------------------------------------------------
# Mutual k-NN


def knn_indices(features, k: int, *, metric: str = "euclidean", block_rows: int = 1024) -> np.ndarray:
    """(N, k) indices of each sample's k nearest neighbours in its own set, self excluded, nearest first (ties ->
    lower index). metric "euclidean" (float64 distances) or "ip" (largest inner product)."""
    f = np.asarray(flat_rows(features), np.float64)
    n = f.shape[0]
    if metric not in KNN_METRICS:
        raise ValueError(f"metric must be one of {KNN_METRICS}, got {metric!r}")
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, N - 1] = [1, {n - 1}], got {k}")
    sq = np.einsum("ij,ij->i", f, f)
    out = np.empty((n, k), np.int64)
    for start in range(0, n, block_rows):
        rows = np.arange(start, min(n, start + block_rows))
        g = f[rows] @ f.T
        # Ordering key, smaller = nearer; self gets +inf.
        key = np.maximum(sq[rows, None] + sq[None, :] - 2.0 * g, 0.0) if metric == "euclidean" else -g
        key[np.arange(len(rows)), rows] = np.inf
        out[rows] = np.argsort(key, axis=1, kind="stable")[:, :k]
    return out


def mutual_knn_counts(x, y, k: int, *, metric: str = "euclidean") -> np.ndarray:
    """(N,) per-sample size of the intersection of the k-NN sets of sample i in x and in y (upstream G.3 "knn")."""
    xf, yf = _pair(x, y)
    kx, ky = knn_indices(xf, k, metric=metric), knn_indices(yf, k, metric=metric)
    counts = np.empty(xf.shape[0], np.int64)
    for start in range(0, len(counts), 1024):  # indices within a row are distinct: equal pairs = intersection
        rows = slice(start, start + 1024)
        counts[rows] = (kx[rows, :, None] == ky[rows, None, :]).sum(axis=(1, 2))
    return counts


def mutual_knn(x, y, k: int = 10, *, metric: str = "ip") -> float:
    """Mutual k-NN alignment (Huh et al. 2024): mean over samples of |kNN_x(i) ∩ kNN_y(i)| / k. Two independent
    random sets give ~ k / (N − 1); identical sets give 1."""
    return float(mutual_knn_counts(x, y, k, metric=metric).mean() / k)
