"""Distribution metrics from precomputed features (paper Sec. 4.1, Fig. 5, Tab. 12): Fréchet distance (FID when the
features are Inception pool3), improved precision / recall (Kynkäänniemi et al. 2019) and KID (Bińkowski et al. 2018).
No network here: features come from the caller (Inception-v3 2048-d for FID / KID, VGG16 fc2 4096-d for torch-fidelity's
precision / recall).

Conventions follow the libraries upstream used (torch-fidelity ``calculate_metrics(input1=ref, input2=generated)``,
clean-fid ``frechet_distance``): ``features_1`` / ``real`` is the reference set, ``features_2`` / ``fake`` the
generated one; results use torch-fidelity's keys.

- ``feature_statistics``: mu = mean over samples, sigma = ``np.cov(rowvar=False)`` (unbiased), float64.
- ``frechet_distance``: |mu1 − mu2|² + tr(σ1) + tr(σ2) − 2·tr(sqrtm(σ1 σ2)); ``method="sqrtm"`` is clean-fid's and
  pytorch-fid's code path: ``scipy.linalg.sqrtm(σ1 @ σ2)``; if not finite, retry with eps·I added to both covariances
  (warning); a complex result whose diagonal has |imag| > 1e-3 raises ValueError, otherwise the real part is used.
  ``method="eigvals"`` is torch-fidelity's (master): tr sqrtm = Σ Re sqrt(complex eigvals(σ1 σ2)) (tiny negative
  eigenvalues of a singular product contribute 0). ``fid_from_features(method="auto")`` takes tr sqrtm exactly from
  an N1 x N2 SVD of the centred features when a set has fewer samples than dimensions (small-N analyses).
- ``precision_recall``: torch-fidelity ``prc`` / the NVlabs reference: radius of a sample = distance to its k-th
  nearest neighbour in its own set (self excluded, k = 3); precision = fraction of fake samples within the radius of
  some real sample; recall = fraction of real samples within the radius of some fake sample; f_score = 2PR /
  max(1e-5, P + R). Euclidean distances computed blockwise in jax (jit; float32 unless x64 and float64 inputs), never
  the full N x M matrix at once.
- ``upstream_export_uint8``: the uint8 images upstream's ``eval_fids.py`` wrote as PNGs for torch-fidelity: each
  image stretched to [0, 1] by its own min and max, then torchvision ``ToPILImage`` (⌊255·x⌋); the CelebA-HQ LDM's
  decoded images instead as ⌊clamp((x + 1)·127.5, 0, 255)⌋. float32 arithmetic (float16 for float16 inputs, as
  DiT's half tensors).
- ``kid``: torch-fidelity ``kid``: ``subsets`` random subsets (``np.random.RandomState(seed)``: ``subset_size``
  indices of set 1 then of set 2, without replacement, per subset), unbiased MMD² with the polynomial kernel
  (x·y·gamma + coef0)^degree, gamma = 1/D by default; mean and (population) std over subsets. float64 here
  (torch-fidelity multiplies float32 features).
"""
from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg

KEY_FID = "frechet_inception_distance"
KEY_PRECISION = "precision"
KEY_RECALL = "recall"
KEY_F_SCORE = "f_score"
KEY_KID_MEAN = "kernel_inception_distance_mean"
KEY_KID_STD = "kernel_inception_distance_std"
FRECHET_METHODS = ("sqrtm", "eigvals")


def upstream_export_uint8(images, *, ldm: bool = False) -> np.ndarray:
    """(N, C, H, W) model-range images -> (N, C, H, W) uint8 as upstream exported them (module docstring)."""
    x = np.asarray(images)
    dtype = np.float16 if x.dtype == np.float16 else np.float32
    x = x.astype(dtype)
    if ldm:
        return np.clip((x + dtype(1)) * dtype(127.5), 0, 255).astype(np.uint8)
    x = x - x.min(axis=(1, 2, 3), keepdims=True)
    x = x / x.max(axis=(1, 2, 3), keepdims=True)
    return (x * dtype(255)).astype(np.uint8)


def _features(f, name: str) -> np.ndarray:
    f = np.asarray(f)
    if f.ndim != 2:
        raise ValueError(f"{name} must be (N, D) features, got shape {f.shape}")
    return f


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(mu (D,), sigma (D, D)) in float64 of (N, D) features, as clean-fid / torch-fidelity / pytorch-fid."""
    f = _features(features, "features").astype(np.float64)
    if f.shape[0] < 2:
        raise ValueError("need at least 2 samples for a covariance")
    return np.mean(f, axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6, method: str = "sqrtm") -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (see module docstring for ``method``)."""
    if method not in FRECHET_METHODS:
        raise ValueError(f"method must be one of {FRECHET_METHODS}, got {method!r}")
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different lengths: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"covariances must be (D, D) for D={mu1.shape[0]}, got {sigma1.shape}, {sigma2.shape}")
    diff = mu1 - mu2
    if method == "eigvals":
        tr_covmean = float(np.sum(np.sqrt(np.linalg.eigvals(sigma1.dot(sigma2)).astype(np.complex128)).real))
    else:
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            warnings.warn(f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates",
                          RuntimeWarning, stacklevel=2)
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
            covmean = covmean.real
        tr_covmean = float(np.trace(covmean))
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def _fid_by_svd(features_1, features_2) -> float:
    """The Fréchet distance of two (N, D) feature sets with tr sqrtm(S1 S2) from an N1 x N2 SVD: the non-zero
    eigenvalues of S1 S2 (S = Xcᵀ Xc / (N − 1), Xc centred) are those of M Mᵀ / c, M = Xc1 Xc2ᵀ,
    c = (N1 − 1)(N2 − 1), so tr sqrtm(S1 S2) = ||M||_* / sqrt(c). Exact; cheap when N < D."""
    a, b = _features(features_1, "features_1").astype(np.float64), _features(features_2, "features_2").astype(
        np.float64)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if min(len(a), len(b)) < 2:
        raise ValueError("need at least 2 samples for a covariance")
    ac, bc = a - a.mean(0), b - b.mean(0)
    tr_sqrt = np.linalg.svd(ac @ bc.T, compute_uv=False).sum() / np.sqrt((len(a) - 1) * (len(b) - 1))
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + (ac * ac).sum() / (len(a) - 1) + (bc * bc).sum() / (len(b) - 1) - 2 * tr_sqrt)


def fid_from_features(features_1, features_2, *, eps: float = 1e-6, method: str = "sqrtm") -> float:
    """Fréchet distance between the Gaussian fits of two (N, D) feature sets. ``method``: "sqrtm" / "eigvals" (see
    the module docstring), or "auto": the exact N1 x N2 SVD route when either set has fewer samples than dimensions
    (a 2048 x 2048 sqrtm takes tens of seconds and its covariance is singular there anyway), else "eigvals"."""
    if method == "auto":
        n = min(len(features_1), len(features_2))
        if n < np.shape(features_1)[-1]:
            return _fid_by_svd(features_1, features_2)
        method = "eigvals"
    mu1, s1 = feature_statistics(features_1)
    mu2, s2 = feature_statistics(features_2)
    return frechet_distance(mu1, s1, mu2, s2, eps=eps, method=method)


# ---------------------------------------------------------------------------------------------------------------
# Improved precision / recall


def _cdist(a, b, b_sq):
    """Euclidean distances (len(a), len(b)) by |a|² + |b|² − 2a·b (torch.cdist's matmul path), clamped at 0."""
    a_sq = jnp.sum(a * a, axis=1)
    d2 = a_sq[:, None] + b_sq[None, :] - 2.0 * jnp.dot(a, b.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.sqrt(jnp.maximum(d2, 0.0))


@functools.partial(jax.jit, static_argnames=("k",))
def _kth_distance(queries, ref, ref_sq, k: int):
    # k-th nearest neighbour within the own set: the (k+1)-th smallest distance, the query itself being the first.
    return -jax.lax.top_k(-_cdist(queries, ref, ref_sq), k + 1)[0][:, k]


@jax.jit
def _within_any(queries, ref, ref_sq, radii):
    return jnp.any(_cdist(queries, ref, ref_sq) <= radii[None, :], axis=1)


def _row_blocks(n: int, block: int):
    return [slice(s, min(n, s + block)) for s in range(0, n, block)]


def _as_jax_features(f, name):
    f = _features(f, name)
    return jnp.asarray(f if np.issubdtype(f.dtype, np.floating) else f.astype(np.float32))


def knn_radii(features, k: int = 3, *, block_size: int = 4096) -> np.ndarray:
    """(N,) distance of each sample to its k-th nearest neighbour in the same set (itself excluded)."""
    f = _as_jax_features(features, "features")
    if not 1 <= k < f.shape[0]:
        raise ValueError(f"k must be in [1, N - 1] = [1, {f.shape[0] - 1}], got {k}")
    f_sq = jnp.sum(f * f, axis=1)
    return np.concatenate([np.asarray(_kth_distance(f[s], f, f_sq, k)) for s in _row_blocks(f.shape[0], block_size)])


def manifold_coverage(queries, ref, radii, *, block_size: int = 4096) -> np.ndarray:
    """(len(queries),) bool: query lies within radii[j] of some ref[j] (the k-NN manifold estimate of ``ref``)."""
    q, r = _as_jax_features(queries, "queries"), _as_jax_features(ref, "ref")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"feature sizes differ: {q.shape[1]} vs {r.shape[1]}")
    radii = jnp.asarray(radii, r.dtype)
    r_sq = jnp.sum(r * r, axis=1)
    return np.concatenate([np.asarray(_within_any(q[s], r, r_sq, radii)) for s in _row_blocks(q.shape[0], block_size)])


def precision_recall(real, fake, *, k: int = 3, block_size: int = 4096) -> dict:
    """torch-fidelity / Kynkäänniemi et al. improved precision and recall, k-NN radii with k = 3 by default.
    Returns {"precision", "recall", "f_score"} (floats). ``block_size`` rows of distances are formed at a time
    (memory ~ block_size x max(N, M) floats)."""
    real, fake = _features(real, "real"), _features(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: {real.shape[1]} vs {fake.shape[1]}")
    precision = float(manifold_coverage(fake, real, knn_radii(real, k, block_size=block_size),
                                        block_size=block_size).mean())
    recall = float(manifold_coverage(real, fake, knn_radii(fake, k, block_size=block_size),
                                     block_size=block_size).mean())
    return {KEY_PRECISION: precision, KEY_RECALL: recall,
            KEY_F_SCORE: 2 * precision * recall / max(1e-5, precision + recall)}


# ---------------------------------------------------------------------------------------------------------------
# KID


def polynomial_kernel(x, y, *, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> np.ndarray:
    """(x·yᵀ·gamma + coef0)^degree, gamma = 1/D by default (float64)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(k_xx, k_xy, k_yy) -> float:
    """Unbiased MMD² estimate from (m, m) kernel blocks (torch-fidelity ``mmd2(mmd_est="unbiased")``):
    off-diagonal means of K_XX and K_YY minus twice the full mean of K_XY."""
    m = k_xx.shape[0]
    if k_xx.shape != (m, m) or k_xy.shape != (m, m) or k_yy.shape != (m, m):
        raise ValueError(f"kernel blocks must all be (m, m), got {k_xx.shape}, {k_xy.shape}, {k_yy.shape}")
    off_xx = k_xx.sum() - np.trace(k_xx)
    off_yy = k_yy.sum() - np.trace(k_yy)
    return float((off_xx + off_yy) / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))


def kid(features_1, features_2, *, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        gamma: float | None = None, coef0: float = 1.0, seed: int = 2020) -> dict:
    """Kernel Inception Distance as torch-fidelity (defaults = its defaults, rng_seed 2020). Returns
    {"kernel_inception_distance_mean", "kernel_inception_distance_std"}."""
    f1, f2 = _features(features_1, "features_1"), _features(features_2, "features_2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sizes differ: {f1.shape[1]} vs {f2.shape[1]}")
    n1, n2 = len(f1), len(f2)
    if not 2 <= subset_size <= min(n1, n2):
        raise ValueError(f"KID subset_size {subset_size} must be in [2, min(N1, N2)] = [2, {min(n1, n2)}]")
    rng = np.random.RandomState(seed)
    kw = {"degree": degree, "gamma": gamma, "coef0": coef0}
    mmds = np.zeros(subsets)
    for i in range(subsets):
        a = np.asarray(f1[rng.choice(n1, subset_size, replace=False)], np.float64)
        b = np.asarray(f2[rng.choice(n2, subset_size, replace=False)], np.float64)
        mmds[i] = mmd2_unbiased(polynomial_kernel(a, a, **kw), polynomial_kernel(a, b, **kw),
                                polynomial_kernel(b, b, **kw))
    return {KEY_KID_MEAN: float(np.mean(mmds)), KEY_KID_STD: float(np.std(mmds))}
