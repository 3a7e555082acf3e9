"""Fréchet distance, improved precision / recall and KID (jtaba.metrics.fid) against clean-fid / pytorch-fid code and
re-typings of torch-fidelity and the Kynkäänniemi et al. algorithm, on small random feature sets."""
import ast
import importlib.util
import os
import warnings

import numpy as np
import pytest
import scipy.linalg

from jtaba.metrics.fid import (
    KEY_F_SCORE,
    KEY_KID_MEAN,
    KEY_KID_STD,
    KEY_PRECISION,
    KEY_RECALL,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    kid,
    knn_radii,
    precision_recall,
)


class _LegacyLinalg:
    """scipy.linalg as clean-fid / pytorch-fid call it: ``sqrtm(A, disp=False)`` -> (sqrtm, error estimate) (``disp``
    is deprecated in SciPy 1.16 and removed in 1.18)."""

    @staticmethod
    def sqrtm(a, disp=True):
        root = scipy.linalg.sqrtm(a)
        return root if disp else (root, 0.0)


def _library_functions(package, relpath, names):
    """The named top-level functions of an installed package's source file, executed without importing the package
    (clean-fid / pytorch-fid import torch and torchvision at module level); None when the package is absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(next(iter(spec.submodule_search_locations)), relpath)
    with open(path) as f:
        tree = ast.parse(f.read())
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    if {n.name for n in body} != set(names):
        return None
    namespace = {"np": np, "linalg": _LegacyLinalg}
    exec(compile(ast.Module(body=body, type_ignores=[]), path, "exec"), namespace)  # noqa: S102 (library source)
    return {name: namespace[name] for name in names}


def _retyped_clean_fid_frechet(mu1, sigma1, mu2, sigma2, eps=1e-6):
    # clean-fid 0.1.35 cleanfid/fid.py::frechet_distance (= pytorch-fid calculate_frechet_distance), re-typed.
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    covmean, _ = _LegacyLinalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _LegacyLinalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


CLEAN_FID = _library_functions("cleanfid", "fid.py", ["frechet_distance", "kernel_distance"])
PYTORCH_FID = _library_functions("pytorch_fid", "fid_score.py", ["calculate_frechet_distance"])


def _feature_sets(n1=300, n2=260, d=24, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    f1 = rng.normal(size=(n1, d)) @ mix
    f2 = (rng.normal(size=(n2, d)) * np.linspace(0.5, 1.5, d)) @ mix + 0.2
    return f1, f2


@pytest.mark.parametrize("shape", [(300, 260, 24), (20, 25, 64)])  # well-conditioned; rank-deficient covariances
def test_frechet_distance_matches_clean_fid_and_pytorch_fid(shape):
    f1, f2 = _feature_sets(*shape)
    (mu1, s1), (mu2, s2) = feature_statistics(f1), feature_statistics(f2)
    np.testing.assert_array_equal(mu1, np.mean(f1, axis=0))
    np.testing.assert_array_equal(s1, np.cov(f1, rowvar=False))
    ours = fid_from_features(f1, f2)
    assert ours == frechet_distance(mu1, s1, mu2, s2)
    refs = {"retyped": _retyped_clean_fid_frechet(mu1, s1, mu2, s2)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the libraries print / warn about the singular product
        if CLEAN_FID:
            refs["clean-fid"] = CLEAN_FID["frechet_distance"](mu1, s1, mu2, s2)
        if PYTORCH_FID:
            refs["pytorch-fid"] = PYTORCH_FID["calculate_frechet_distance"](mu1, s1, mu2, s2)
    for name, ref in refs.items():
        assert ours == pytest.approx(float(ref), rel=1e-12, abs=1e-9), name
    # torch-fidelity's eigenvalue route agrees with the sqrtm route
    assert frechet_distance(mu1, s1, mu2, s2, method="eigvals") == pytest.approx(ours, rel=1e-6)


def test_frechet_distance_known_answers():
    # N(m1, diag(a)) vs N(m2, diag(b)): |m1 - m2|² + Σ (sqrt(a) - sqrt(b))².
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 2.0, 6), rng.uniform(0.1, 2.0, 6)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    for method in ("sqrtm", "eigvals"):
        assert frechet_distance(m1, np.diag(a), m2, np.diag(b), method=method) == pytest.approx(expected, rel=1e-12)
    f1, _ = _feature_sets(seed=2)
    assert abs(fid_from_features(f1, f1)) < 1e-9
    with pytest.raises(ValueError, match="method"):
        frechet_distance(m1, np.diag(a), m2, np.diag(b), method="svd")
    with pytest.raises(ValueError, match="lengths"):
        frechet_distance(m1, np.diag(a), m2[:3], np.diag(b)[:3, :3])


def _brute_force_precision_recall(real, fake, k=3):
    """Kynkäänniemi et al. / torch-fidelity ``calculate_precision_recall_full``, re-typed: direct float64 distances,
    k-th nearest neighbour radius with the sample itself at rank 0 (``kthvalue(k + 1)``)."""
    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    r_real = np.sort(dist(real, real), axis=1)[:, k]
    r_fake = np.sort(dist(fake, fake), axis=1)[:, k]
    d_fake_real = dist(fake, real)
    precision = (d_fake_real <= r_real[None, :]).any(axis=1).mean()
    recall = (d_fake_real.T <= r_fake[None, :]).any(axis=1).mean()
    return precision, recall


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_matches_brute_force(k):
    rng = np.random.default_rng(3)
    real = rng.normal(size=(150, 12))
    fake = rng.normal(size=(120, 12)) * 1.1 + 0.8
    p_ref, r_ref = _brute_force_precision_recall(real, fake, k)
    out = precision_recall(real, fake, k=k)
    assert 0.05 < p_ref < 0.95 and 0.05 < r_ref < 0.95  # a non-degenerate case
    assert out[KEY_PRECISION] == p_ref and out[KEY_RECALL] == r_ref
    assert out[KEY_F_SCORE] == pytest.approx(2 * p_ref * r_ref / max(1e-5, p_ref + r_ref))
    # blocking does not change anything
    assert precision_recall(real, fake, k=k, block_size=32) == out
    radii = np.sort(np.sqrt(((real[:, None] - real[None]) ** 2).sum(-1)), axis=1)[:, k]
    np.testing.assert_allclose(knn_radii(real, k, block_size=64), radii, rtol=1e-5)


def test_precision_recall_identical_sets_and_errors():
    real = np.random.default_rng(4).normal(size=(40, 5)).astype(np.float32)
    assert precision_recall(real, real) == {KEY_PRECISION: 1.0, KEY_RECALL: 1.0, KEY_F_SCORE: 1.0}
    with pytest.raises(ValueError, match="feature sizes"):
        precision_recall(real, real[:, :3])
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(real[:3], real[:3], k=3)


def _retyped_torch_fidelity_kid(f1, f2, subsets, subset_size, seed, degree=3, gamma=None, coef0=1):
    # torch-fidelity metric_kid.py: kid_features_to_metric / polynomial_mmd / mmd2(unbiased), re-typed.
    def kernel(x, y):
        g = 1.0 / x.shape[1] if gamma is None else gamma
        return (np.matmul(x, y.T) * g + coef0) ** degree

    def mmd2(k_xx, k_xy, k_yy):
        m = k_xx.shape[0]
        kt_xx_sum = (k_xx.sum(axis=1) - np.diagonal(k_xx)).sum()
        kt_yy_sum = (k_yy.sum(axis=1) - np.diagonal(k_yy)).sum()
        return (kt_xx_sum + kt_yy_sum) / (m * (m - 1)) - 2 * k_xy.sum(axis=0).sum() / (m * m)

    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        a = f1[rng.choice(len(f1), subset_size, replace=False)]
        b = f2[rng.choice(len(f2), subset_size, replace=False)]
        mmds[i] = mmd2(kernel(a, a), kernel(a, b), kernel(b, b))
    return float(np.mean(mmds)), float(np.std(mmds))


def test_kid_matches_torch_fidelity_and_clean_fid():
    f1, f2 = _feature_sets(80, 70, 16, seed=5)
    out = kid(f1, f2, subsets=7, subset_size=50, seed=2020)
    mean, std = _retyped_torch_fidelity_kid(f1, f2, 7, 50, 2020)
    assert out[KEY_KID_MEAN] == pytest.approx(mean, rel=1e-12) and out[KEY_KID_STD] == pytest.approx(std, rel=1e-9)
    assert std > 0
    # clean-fid's kernel_distance draws its subsets from the global RNG (set 2 first): compare on full sets, where
    # every subset is a permutation of the whole set and the unbiased estimator does not depend on the order.
    full = kid(f1[:60], f2[:60], subsets=2, subset_size=60)
    if CLEAN_FID:
        np.random.seed(0)
        ref = CLEAN_FID["kernel_distance"](f1[:60], f2[:60], num_subsets=2, max_subset_size=60)
        assert full[KEY_KID_MEAN] == pytest.approx(ref, rel=1e-10)
    assert full[KEY_KID_STD] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="subset_size"):
        kid(f1, f2, subsets=1, subset_size=71)


def test_upstream_export_uint8_matches_to_pil_image():
    """upstream eval_fids.py: tensors_to_pil_single (per-image min-max) + torchvision ToPILImage, and the LDM branch
    ldm_tensor_to_images ((x + 1) * 127.5, clamp, uint8), re-typed on torch tensors."""
    torch = pytest.importorskip("torch")
    from convert.common import import_torchvision
    from jtaba.metrics.fid import upstream_export_uint8

    transforms = import_torchvision().transforms
    x = (np.random.default_rng(0).standard_normal((3, 3, 8, 8)) * 0.6).astype(np.float32)
    x[1] = np.clip(x[1], -1, 1)
    want = []
    for t in torch.from_numpy(x):
        t = t - t.min()
        t = t / t.max()
        want.append(np.asarray(transforms.ToPILImage()(t)).transpose(2, 0, 1))
    np.testing.assert_array_equal(upstream_export_uint8(x), np.stack(want))
    ldm = ((torch.from_numpy(x).permute(0, 2, 3, 1) + 1.0) * 127.5).clamp(0, 255).numpy().astype(np.uint8)
    np.testing.assert_array_equal(upstream_export_uint8(x, ldm=True), ldm.transpose(0, 3, 1, 2))
