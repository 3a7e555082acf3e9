"""CKA, SVCCA and mutual k-NN (jtaba.metrics.alignment) against re-typings of Kornblith et al.'s notebook, the
platonic-representation / upstream code and Google's SVCCA recipe, plus invariances with known answers."""
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from jtaba.metrics.alignment import (
    batch_min_max,
    cca_correlations,
    cca_nipals,
    cka,
    gram,
    hsic,
    knn_indices,
    mutual_knn,
    mutual_knn_counts,
    randomized_svcca,
    svcca,
    svd_lowrank,
    svd_reduce,
)


def _sets(n=60, dx=20, dy=30, seed=0):
    """Related but not identical representations of the same n samples."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx)) @ rng.normal(size=(dx, dx))
    y = np.tanh(x @ rng.normal(size=(dx, dy)) / np.sqrt(dx)) + 0.5 * rng.normal(size=(n, dy))
    return x, y


def _orthogonal(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


# --- Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited", demo notebook (re-typed) ---

def _k_gram_linear(x):
    return x.dot(x.T)


def _k_gram_rbf(x, threshold=1.0):
    dot_products = x.dot(x.T)
    sq_norms = np.diag(dot_products)
    sq_distances = -2 * dot_products + sq_norms[:, None] + sq_norms[None, :]
    sq_median_distance = np.median(sq_distances)
    return np.exp(-sq_distances / (2 * threshold ** 2 * sq_median_distance))


def _k_center_gram(gram, unbiased=False):
    gram = gram.copy()
    if unbiased:
        n = gram.shape[0]
        np.fill_diagonal(gram, 0)
        means = np.sum(gram, 0, dtype=np.float64) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
    else:
        means = np.mean(gram, 0, dtype=np.float64)
        means -= np.mean(means) / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def _k_cka(gram_x, gram_y, debiased=False):
    gram_x = _k_center_gram(gram_x, unbiased=debiased)
    gram_y = _k_center_gram(gram_y, unbiased=debiased)
    scaled_hsic = gram_x.ravel().dot(gram_y.ravel())
    return scaled_hsic / (np.linalg.norm(gram_x) * np.linalg.norm(gram_y))


# --- platonic-rep metrics.py / upstream taba/metrics/alignment.py HSIC (torch -> numpy, re-typed) ---

def _p_hsic_unbiased(k, g):
    m = k.shape[0]
    kt, lt = k.copy(), g.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    value = (np.sum(kt * lt.T) + np.sum(kt) * np.sum(lt) / ((m - 1) * (m - 2)) - 2 * np.sum(kt @ lt) / (m - 2))
    return value / (m * (m - 3))


def _p_hsic_biased(k, g):
    h = np.eye(k.shape[0]) - 1 / k.shape[0]
    return np.trace(k @ h @ g @ h)


def _p_cka(a, b, kernel_metric="ip", rbf_sigma=1.0, unbiased=False):
    if kernel_metric == "ip":
        k, g = a @ a.T, b @ b.T
    else:
        k = np.exp(-cdist(a, a) ** 2 / (2 * rbf_sigma ** 2))
        g = np.exp(-cdist(b, b) ** 2 / (2 * rbf_sigma ** 2))
    fn = _p_hsic_unbiased if unbiased else _p_hsic_biased
    return fn(k, g) / (np.sqrt(fn(k, k) * fn(g, g)) + 1e-6)


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_matches_kornblith_notebook(unbiased):
    x, y = _sets()
    ref = _k_cka(_k_gram_linear(x), _k_gram_linear(y), debiased=unbiased)
    assert 0.2 < ref < 0.95
    assert cka(x, y, unbiased=unbiased, eps=0.0) == pytest.approx(ref, rel=1e-12)
    ref_rbf = _k_cka(_k_gram_rbf(x, 0.5), _k_gram_rbf(y, 0.5), debiased=unbiased)
    assert cka(x, y, kernel="rbf", rbf_median_scale=0.5, unbiased=unbiased, eps=0.0) == pytest.approx(ref_rbf,
                                                                                                   rel=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_matches_platonic_rep_and_upstream(unbiased):
    # upstream G.3 calls cka(x̃, ỹ) (linear, biased, + 1e-6) on whole-batch-min-max features.
    x, y = _sets(seed=1)
    xs, ys = batch_min_max(x), batch_min_max(y)
    assert cka(xs, ys, unbiased=unbiased) == pytest.approx(_p_cka(xs, ys, unbiased=unbiased), rel=1e-10)
    # small features: the 1e-6 matters and is reproduced
    xt, yt = xs * 1e-3, ys * 1e-3
    assert cka(xt, yt, unbiased=unbiased) == pytest.approx(_p_cka(xt, yt, unbiased=unbiased), rel=1e-10)
    assert cka(xt, yt, unbiased=unbiased) != pytest.approx(cka(xt, yt, unbiased=unbiased, eps=0.0), rel=1e-6)
    ref = _p_cka(x / 10, y / 10, "rbf", 2.0, unbiased)
    assert cka(x / 10, y / 10, kernel="rbf", rbf_sigma=2.0, unbiased=unbiased) == pytest.approx(ref, rel=1e-10)
    k, g = gram(xs), gram(ys)
    fn = _p_hsic_unbiased if unbiased else _p_hsic_biased
    assert hsic(k, g, unbiased=unbiased) == pytest.approx(fn(k, g), rel=1e-12)


def test_cka_invariances():
    x, _ = _sets(seed=2)
    z = x @ _orthogonal(x.shape[1], 3) * 3.7  # orthogonal transform and isotropic scaling
    for unbiased in (False, True):
        assert cka(x, z, eps=0.0, unbiased=unbiased) == pytest.approx(1.0, abs=1e-12)
        assert cka(x, z, kernel="rbf", rbf_median_scale=1.0, eps=0.0, unbiased=unbiased) == pytest.approx(1.0,
                                                                                                         abs=1e-12)
    rng = np.random.default_rng(4)
    assert abs(cka(rng.normal(size=(500, 5)), rng.normal(size=(500, 5)), unbiased=True, eps=0.0)) < 0.05
    with pytest.raises(ValueError, match="kernel"):
        cka(x, z, kernel="poly")
    with pytest.raises(ValueError, match="aligned"):
        cka(x, z[:-1])


def _google_svcca(x, y, keep_variance=0.99):
    """Raghu et al. 2017 / google/svcca recipe, re-typed on (neurons, datapoints) activations: centre each neuron,
    SVD, keep the top directions explaining ``keep_variance`` of the variance (s_k V_k), then CCA through the
    covariance matrices (Σxx^-1/2 Σxy Σyy^-1/2 singular values); SVCCA = their mean."""
    def reduce(acts):
        c = acts - acts.mean(axis=1, keepdims=True)
        _, s, v = np.linalg.svd(c, full_matrices=False)
        k = int(np.argmax(np.cumsum(s ** 2) / np.sum(s ** 2) >= keep_variance)) + 1
        return s[:k, None] * v[:k]

    def inv_sqrt(m):
        w, u = np.linalg.eigh(m)
        return (u / np.sqrt(w)) @ u.T

    a, b = reduce(x.T), reduce(y.T)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    sxx, syy, sxy = a @ a.T, b @ b.T, a @ b.T
    rho = np.linalg.svd(inv_sqrt(sxx) @ sxy @ inv_sqrt(syy), compute_uv=False)
    return float(np.mean(rho[:min(len(a), len(b))])), len(a), len(b)


def test_svcca_matches_google_recipe():
    x, y = _sets(n=200, dx=20, dy=30, seed=5)
    ref, kx, ky = _google_svcca(x, y)
    assert kx < 20 and ky < 30  # the 99 % cut removes directions
    assert svd_reduce(x).shape == (200, kx) and svd_reduce(y).shape == (200, ky)
    assert svcca(x, y) == pytest.approx(ref, rel=1e-10)
    ref, _, _ = _google_svcca(x, y, keep_variance=0.9)
    assert svcca(x, y, keep_variance=0.9) == pytest.approx(ref, rel=1e-10)


def test_svcca_upstream_variant_matches_sklearn_cca():
    # upstream / platonic-rep svcca(cca_dim=10): standardise, top-10 left singular vectors (torch.svd_lowrank there,
    # exact SVD here), sklearn CCA(n_components=10), mean per-component correlation.
    sklearn_cca = pytest.importorskip("sklearn.cross_decomposition")
    x, y = _sets(n=200, dx=30, dy=40, seed=6)

    def standardize(a):
        a = a - a.mean(axis=0)
        return a / (a.std(axis=0, ddof=1) + 1e-8)

    u1 = np.linalg.svd(standardize(x), full_matrices=False)[0][:, :10]
    u2 = np.linalg.svd(standardize(y), full_matrices=False)[0][:, :10]
    model = sklearn_cca.CCA(n_components=10)
    model.fit(u1, u2)
    c1, c2 = model.transform(u1, u2)
    ref = np.mean([np.corrcoef(c1[:, i], c2[:, i])[0, 1] for i in range(10)])
    assert svcca(x, y, n_components=10, standardize=True) == pytest.approx(ref, abs=1e-5)


def test_svcca_invariances():
    rng = np.random.default_rng(7)
    # rank-5 representation whose 5 directions all carry > 1 % of the variance, in 12 dimensions
    x = rng.normal(size=(150, 5)) @ rng.normal(size=(5, 12))
    a = _orthogonal(12, 8) @ np.diag(np.linspace(0.5, 2.0, 12)) @ _orthogonal(12, 9)  # invertible
    assert svcca(x, x @ a) == pytest.approx(1.0, abs=1e-10)
    full = rng.normal(size=(150, 12))
    assert svcca(full, full @ a, keep_variance=1.0) == pytest.approx(1.0, abs=1e-10)
    np.testing.assert_allclose(cca_correlations(full, full @ a + 3.0), 1.0, atol=1e-10)
    assert svcca(full, rng.normal(size=(150, 12)), keep_variance=1.0) < 0.4
    with pytest.raises(ValueError, match="n_components"):
        svcca(x, x, n_components=6)  # rank 5
    with pytest.raises(ValueError, match="constant"):
        svd_reduce(np.ones((10, 3)))


def _platonic_knn(feats, topk):
    sim = feats @ feats.T
    np.fill_diagonal(sim, -1e8)
    return np.argsort(-sim, axis=1, kind="stable")[:, :topk]


def test_mutual_knn_matches_platonic_rep_and_upstream():
    x, y = _sets(n=120, seed=10)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    # platonic-rep mutual_knn: masks of the topk inner-product neighbours, mean of |A ∩ B| / topk
    ka, kb = _platonic_knn(xn, 10), _platonic_knn(yn, 10)
    n = len(xn)
    ma, mb = np.zeros((n, n)), np.zeros((n, n))
    ma[np.arange(n)[:, None], ka] = 1
    mb[np.arange(n)[:, None], kb] = 1
    ref = ((ma * mb).sum(axis=1) / 10).mean()
    assert 0.1 < ref < 0.9
    assert mutual_knn(xn, yn, 10) == pytest.approx(ref, abs=1e-15)
    np.testing.assert_array_equal(knn_indices(xn, 10, metric="ip"), ka)
    # upstream G.3: scipy cdist, topk(k + 1) smallest without the first (self), per-sample isin counts
    xs, ys = batch_min_max(x), batch_min_max(y)
    knn_x = np.argsort(cdist(xs, xs), axis=1, kind="stable")[:, 1:11]
    knn_y = np.argsort(cdist(ys, ys), axis=1, kind="stable")[:, 1:11]
    counts = np.array([np.isin(knn_y[i], knn_x[i]).sum() for i in range(n)])
    np.testing.assert_array_equal(mutual_knn_counts(xs, ys, 10), counts)
    np.testing.assert_array_equal(knn_indices(xs, 10, block_rows=7), knn_x)


def test_mutual_knn_known_answers():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(300, 8))
    assert mutual_knn(x, x, 10) == 1.0
    assert mutual_knn(x, x * 2.0 + 1.0, 10, metric="euclidean") == 1.0
    independent = [mutual_knn(x, rng.normal(size=(300, 8)), 10, metric=m) for m in ("ip", "euclidean")]
    np.testing.assert_allclose(independent, 10 / 299, atol=0.012)
    with pytest.raises(ValueError, match="k must be"):
        mutual_knn(x[:5], x[:5], 5)
    with pytest.raises(ValueError, match="metric"):
        mutual_knn(x, x, 3, metric="cosine")


def test_batch_min_max_is_whole_batch():
    x = np.random.default_rng(12).normal(size=(4, 3, 2, 2)) * 5 + 1
    out = batch_min_max(x)
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out, (x - x.min()) / (x.max() - x.min()), rtol=1e-12)


# --- upstream SVCCA (App. G.3): torch.svd_lowrank + sklearn CCA on the same Gaussian test matrices ---

def _power_law_pair(n=48, d=200, seed=13):
    rng = np.random.default_rng(seed)
    spectrum = np.arange(1, d + 1) ** -1.0
    x = rng.normal(size=(n, d)) * spectrum
    return x, x + 0.5 * rng.normal(size=(n, d)) * spectrum


def _upstream_svcca(feats_a, feats_b, cca_dim=10):
    """upstream ``taba/metrics/alignment.py`` svcca, re-typed (float64 tensors; the jitter from numpy's global RNG)."""
    import torch
    from sklearn.cross_decomposition import CCA

    def preprocess(act):
        act = act - act.mean(dim=0)
        return act / (act.std(dim=0) + 1e-8)

    u1, _, _ = torch.svd_lowrank(preprocess(feats_a), q=cca_dim)
    u2, _, _ = torch.svd_lowrank(preprocess(feats_b), q=cca_dim)
    cca = CCA(n_components=cca_dim)
    cca.fit(u1.numpy(), u2.numpy())
    c1, c2 = cca.transform(u1.numpy(), u2.numpy())
    c1 += 1e-10 * np.random.randn(*c1.shape)
    c2 += 1e-10 * np.random.randn(*c2.shape)
    return np.mean([np.corrcoef(c1[:, i], c2[:, i])[0, 1] for i in range(cca_dim)])


def test_svd_lowrank_matches_torch_given_its_gaussian():
    torch = pytest.importorskip("torch")
    x, _ = _power_law_pair()
    for a in (x, x.T.copy()):  # wide (torch transposes it) and tall
        torch.manual_seed(5)
        gaussian = torch.randn(min(a.shape), 10, dtype=torch.float64).numpy()
        torch.manual_seed(5)
        ref = [t.numpy() for t in torch.svd_lowrank(torch.from_numpy(a), q=10)]
        u, s, v = svd_lowrank(a, 10, gaussian=gaussian)
        np.testing.assert_allclose(s, ref[1], rtol=1e-12)
        signs = np.sign(np.sum(u * ref[0], axis=0))  # LAPACK drivers may flip singular-vector pairs
        np.testing.assert_allclose(u * signs, ref[0], atol=1e-12)
        np.testing.assert_allclose(v * signs, ref[2], atol=1e-12)


def test_cca_nipals_matches_sklearn():
    cross = pytest.importorskip("sklearn.cross_decomposition")
    x, y = _sets(n=40, dx=10, dy=10, seed=14)
    ref = cross.CCA(n_components=6).fit(x, y).transform(x, y)
    for ours, theirs in zip(cca_nipals(x, y, 6), ref):
        np.testing.assert_allclose(ours, theirs, atol=1e-10)


def test_svcca_upstream_matches_torch_and_sklearn():
    torch = pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    x, y = _power_law_pair()
    for seed in (0, 1):
        torch.manual_seed(seed)
        gaussians = [torch.randn(48, 10, dtype=torch.float64).numpy() for _ in range(2)]
        torch.manual_seed(seed)
        np.random.seed(seed)
        ref = _upstream_svcca(torch.from_numpy(x), torch.from_numpy(y))
        std = (_standardize_ddof1(x), _standardize_ddof1(y))
        assert randomized_svcca(*std, 10, gaussians=gaussians) == pytest.approx(ref, abs=1e-8)
    # Randomized and iterative: below the exact value on this slowly decaying spectrum, and seed-dependent.
    exact = svcca(x, y, n_components=10, standardize=True)
    upstream = [svcca(x, y, n_components=10, standardize=True, method="upstream", seed=s) for s in range(3)]
    assert max(upstream) < exact and len(set(upstream)) == 3
    with pytest.raises(ValueError, match="n_components"):
        svcca(x, y, method="upstream")


def _standardize_ddof1(f):
    f = f - f.mean(axis=0)
    return f / (f.std(axis=0, ddof=1) + 1e-8)
