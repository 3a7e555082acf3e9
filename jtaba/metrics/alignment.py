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


def hsic(k, g, *, unbiased: bool = False) -> float:
    """HSIC of two (N, N) kernel matrices with upstream's normalisation (see module docstring)."""
    k, g = np.asarray(k, np.float64), np.asarray(g, np.float64)
    m = k.shape[0]
    if not unbiased:  # tr(K H L H) = <HKH, HLH>_F
        return float(np.sum(_centre(k) * _centre(g)))
    if m < 4:
        raise ValueError(f"unbiased HSIC needs N >= 4, got {m}")
    kt, lt = k.copy(), g.copy()
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
    k, g = gram(xf, **kw), gram(yf, **kw)
    kl, kk, ll = (hsic(a, b, unbiased=unbiased) for a, b in ((k, g), (k, k), (g, g)))
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


def svd_lowrank(a, q: int, *, niter: int = 2, gaussian=None, rng: np.random.Generator | None = None,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``torch.svd_lowrank(a, q, niter)`` (Halko et al. 2009, Alg. 4.4 + 5.1) in float64 numpy: (U (m, q), S (q,),
    V (n, q)) of the (m, n) matrix ``a``. A wide ``a`` is transposed first, as torch does; the Gaussian test matrix
    has shape (min(m, n), q): ``gaussian`` if given (torch draws ``torch.randn(min(m, n), q)``), else drawn from
    ``rng``. Randomized: the columns approximate the top-q singular vectors (exact when rank(a) <= q)."""
    a = np.asarray(a, np.float64)
    m, n = a.shape
    tall = a if m >= n else a.T
    if gaussian is None:
        gaussian = (rng or np.random.default_rng(0)).standard_normal((tall.shape[1], q))
    gaussian = np.asarray(gaussian, np.float64)
    if gaussian.shape != (tall.shape[1], q):
        raise ValueError(f"gaussian must have shape {(tall.shape[1], q)}, got {gaussian.shape}")
    basis = np.linalg.qr(tall @ gaussian)[0]
    for _ in range(niter):  # subspace iterations
        basis = np.linalg.qr(tall.T @ basis)[0]
        basis = np.linalg.qr(tall @ basis)[0]
    u, s, vh = np.linalg.svd(basis.T @ tall, full_matrices=False)
    u = basis @ u
    return (u, s, vh.T) if m >= n else (vh.T, s, u)


def _pinv_rank_cut(a: np.ndarray) -> np.ndarray:
    """Pseudo-inverse dropping singular values <= max(s)·1e6·eps (scipy's old ``pinv2``, as sklearn's CCA)."""
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    rank = int(np.sum(s > s.max() * 1e6 * np.finfo(np.float64).eps))
    return (u[:, :rank] / s[:rank] @ vh[:rank]).T


def _centre_scale(f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = f.mean(axis=0)
    std = f.std(axis=0, ddof=1)
    std[std == 0.0] = 1.0
    return (f - mean) / std, mean, std


def cca_nipals(a, b, n_components: int, *, max_iter: int = 500, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(N, n_components) x and y scores of sklearn's ``CCA(n_components).fit(a, b).transform(a, b)`` (scale=True):
    per component, NIPALS power iterations in mode B (weights through the pseudo-inverses of the deflated sets,
    stopped when the squared change of the x weights is below ``tol`` or after ``max_iter``), sign fixed so the
    largest |x weight| is positive, canonical deflation of both sets; scores = the standardised inputs times the
    rotations W (Pᵀ W)⁺. Float64; iterative, so the correlations approximate the exact canonical ones."""
    a, b = _pair(a, b)
    if not 1 <= n_components <= min(a.shape[0], a.shape[1], b.shape[1]):
        raise ValueError(f"n_components must be in [1, min(N, ka, kb)], got {n_components}")
    xk, x_mean, x_std = _centre_scale(a)
    yk, y_mean, y_std = _centre_scale(b)
    eps = np.finfo(np.float64).eps
    x_w_all, x_load_all = np.zeros((a.shape[1], n_components)), np.zeros((a.shape[1], n_components))
    y_w_all, y_load_all = np.zeros((b.shape[1], n_components)), np.zeros((b.shape[1], n_components))
    for k in range(n_components):
        yk[:, np.all(np.abs(yk) < 10 * eps, axis=0)] = 0.0
        nonzero = [col for col in yk.T if np.any(np.abs(col) > eps)]
        if not nonzero:  # sklearn warns "y residual is constant" and stops; the rest stay zero
            break
        y_score, x_pinv, y_pinv, x_old = nonzero[0], _pinv_rank_cut(xk), _pinv_rank_cut(yk), 100.0
        for _ in range(max_iter):
            x_w = x_pinv @ y_score
            x_w /= np.sqrt(x_w @ x_w) + eps
            x_score = xk @ x_w
            y_w = y_pinv @ x_score
            y_w /= np.sqrt(y_w @ y_w) + eps
            y_score = yk @ y_w / (y_w @ y_w + eps)
            diff = x_w - x_old
            if diff @ diff < tol or yk.shape[1] == 1:
                break
            x_old = x_w
        sign = np.sign(x_w[np.argmax(np.abs(x_w))])
        x_w, y_w = x_w * sign, y_w * sign
        x_score, y_score = xk @ x_w, yk @ y_w
        x_load, y_load = x_score @ xk / (x_score @ x_score), y_score @ yk / (y_score @ y_score)
        xk, yk = xk - np.outer(x_score, x_load), yk - np.outer(y_score, y_load)
        x_w_all[:, k], x_load_all[:, k], y_w_all[:, k], y_load_all[:, k] = x_w, x_load, y_w, y_load
    x_rot = x_w_all @ np.linalg.pinv(x_load_all.T @ x_w_all)
    y_rot = y_w_all @ np.linalg.pinv(y_load_all.T @ y_w_all)
    return (a - x_mean) / x_std @ x_rot, (b - y_mean) / y_std @ y_rot


def randomized_svcca(x, y, n_components: int, *, seed: int = 0, gaussians=None) -> float:
    """Upstream's SVCCA core on already standardised (N, Dx), (N, Dy) features: U of ``svd_lowrank(q=n_components)``
    of each set, ``cca_nipals``, 1e-10 Gaussian jitter on the scores, mean of the per-component Pearson
    correlations. ``gaussians`` = the two test matrices (torch draws them in this order), else drawn from ``seed``,
    which also draws the jitter."""
    xf, yf = _pair(x, y)
    rng = np.random.default_rng(seed)
    g1, g2 = gaussians if gaussians is not None else (None, None)
    u1 = svd_lowrank(xf, n_components, gaussian=g1, rng=rng)[0]
    u2 = svd_lowrank(yf, n_components, gaussian=g2, rng=rng)[0]
    s1, s2 = cca_nipals(u1, u2, n_components)
    s1 = s1 + 1e-10 * rng.standard_normal(s1.shape)  # upstream's jitter (keeps corrcoef defined for zero scores)
    s2 = s2 + 1e-10 * rng.standard_normal(s2.shape)
    return float(np.mean([np.corrcoef(s1[:, i], s2[:, i])[0, 1] for i in range(n_components)]))


SVCCA_METHODS = ("exact", "upstream")


def svcca(x, y, *, keep_variance: float = 0.99, n_components: int | None = None, standardize: bool = False,
          method: str = "exact", seed: int = 0) -> float:
    """Mean canonical correlation of the SVD-reduced sets (see module docstring; upstream:
    ``n_components=10, standardize=True``).

    ``method="exact"``: exact SVD (k directions as U_k·s_k) and exact canonical correlations. ``method="upstream"``
    (App. G.3 as upstream ``taba/metrics/alignment.py`` computed it; needs ``n_components``): the left vectors U
    (unscaled) of the randomized ``svd_lowrank(q=n_components, niter=2)`` with Gaussian test matrices from
    ``seed``, then sklearn's iterative CCA (``cca_nipals``), 1e-10 Gaussian jitter on the scores and the mean of the
    per-component Pearson correlations. It differs from the exact value because the randomized basis only
    approximates the top-q subspace (2 subspace iterations: on slowly decaying spectra the kept directions mix in
    lower ones) and NIPALS stops at a tolerance; it is typically lower (App. G.3's numbers sit below the exact ones)
    and varies with the seed as upstream's varied run to run. Float64 throughout (upstream: float32 features and
    SVD, float64 CCA)."""
    if method not in SVCCA_METHODS:
        raise ValueError(f"method must be one of {SVCCA_METHODS}, got {method!r}")
    xf, yf = _pair(x, y)
    if standardize:
        xf, yf = _standardize(xf), _standardize(yf)
    if method == "upstream":
        if n_components is None:
            raise ValueError("method='upstream' needs n_components (upstream: 10)")
        return randomized_svcca(xf, yf, n_components, seed=seed)
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
