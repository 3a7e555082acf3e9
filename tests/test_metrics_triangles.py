"""Angles, distances and the most-probable-triangle search (paper App. B) against the upstream torch code
re-typed here, synthetic triangles with known angles, and the strict '>' tie rule."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jtaba.metrics import _chunks
from jtaba.metrics.triangles import (
    angle_histogram,
    calc_angles,
    calc_distances,
    find_max_prob_triangle,
    most_probable_triangle,
    vertex_angles,
)


# ---- upstream oracles (taba/metrics/angles_distances.py, taba/exp_pipelines/most_probable_triangle.py) ----
def _cossim_mean_std(v1, v2):
    v1 = F.normalize(v1.view(v1.shape[0], -1), dim=1)
    v2 = F.normalize(v2.view(v2.shape[0], -1), dim=1)
    c = torch.sum(v1 * v2, dim=1)
    return c.mean(), c.std()


def _torch_calc_angles(noises, samples, latents):
    out = {}
    pairs = {"img": (noises - samples, latents - samples), "noise": (samples - noises, latents - noises),
             "latent": (noises - latents, samples - latents)}
    stds = {}
    for k, (a, b) in pairs.items():
        m, s = _cossim_mean_std(a, b)
        out[f"mean_cossim_{k}"] = torch.rad2deg(torch.acos(m)).item()
        stds[f"std_cossim_{k}"] = torch.rad2deg(torch.acos(s)).item()
    return {**out, **stds}


def _torch_calc_distances(noise, sample, latent, sample2=None):
    def l2(a, b):
        d = torch.norm(a - b, p=2, dim=[1, 2, 3])
        return d.mean().item(), d.std().item()
    (m1, s1), (m2, s2), (m3, s3) = l2(sample, latent), l2(sample, noise), l2(noise, latent)
    out = {"mean_l2_img_lat": m1, "mean_l2_img_noise": m2, "mean_l2_noise_lat": m3,
           "std_l2_img_lat": s1, "std_l2_img_noise": s2, "std_l2_noise_lat": s3}
    if sample2 is not None:
        out["mean_mse_img_img2"] = F.mse_loss(sample, sample2, reduction="none").mean(dim=[1, 2, 3]).mean().item()
    return out


def _calculate_angle(v1, v2):
    cos = torch.clamp(torch.dot(v1, v2) / (v1.norm() * v2.norm()), -1.0, 1.0)
    return torch.rad2deg(torch.acos(cos))


def _torch_angles(noise, samples, latents):
    al, as_, an = [], [], []
    for i in range(noise.shape[0]):
        ns = noise[i].flatten() - samples[i].flatten()
        ls = latents[i].flatten() - samples[i].flatten()
        nl = noise[i].flatten() - latents[i].flatten()
        as_.append(_calculate_angle(ns, ls).item())
        al.append(_calculate_angle(nl, -ls).item())
        an.append(_calculate_angle(-nl, -ns).item())
    return np.array(al), np.array(as_), np.array(an)


def _torch_find_max_prob(hist_a, hist_b, hist_c, angle_bins):
    max_prob, best = 0.0, None
    for i, a in enumerate(angle_bins):
        for j, b in enumerate(angle_bins):
            c = 180 - a - b
            if c in angle_bins:
                k = (angle_bins == c).nonzero(as_tuple=True)[0].item()
                joint = hist_a[i] * hist_b[j] * hist_c[k]
                if joint > max_prob:
                    max_prob, best = joint, (a.item(), b.item(), c.item())
    return best, max_prob


def _torch_most_probable(angles_l, angles_s, angles_n):
    hl, bins = np.histogram(angles_l, bins=range(1, 180))
    hs, _ = np.histogram(angles_s, bins=range(1, 180))
    hn, _ = np.histogram(angles_n, bins=range(1, 180))
    return _torch_find_max_prob(hl / hl.sum(), hs / hs.sum(), hn / hn.sum(), torch.from_numpy(bins))


# ---- synthetic triangles with prescribed angles ----
def _triangles(angle_s, angle_n, shape=(3, 4, 4), seed=0):
    """Per sample: random 2-D plane, offset and scale; angle_s at the sample, angle_n at the noise vertex."""
    rng = np.random.default_rng(seed)
    n, d = len(angle_s), int(np.prod(shape))
    s_rad, n_rad = np.deg2rad(angle_s), np.deg2rad(angle_n)
    l_rad = np.pi - s_rad - n_rad
    basis = np.linalg.qr(rng.standard_normal((n, d, 2)))[0]  # (n, d, 2) orthonormal columns
    u1, u2 = basis[..., 0], basis[..., 1]
    side_sn = rng.uniform(5, 50, n)[:, None]  # |sample - noise|
    side_sl = side_sn * np.sin(n_rad)[:, None] / np.sin(l_rad)[:, None]  # law of sines
    sample = rng.standard_normal((n, d))
    noise = sample + side_sn * u1
    latent = sample + side_sl * (np.cos(s_rad)[:, None] * u1 + np.sin(s_rad)[:, None] * u2)
    return [v.reshape((n,) + shape) for v in (noise, sample, latent)]


def _random_triplet(n=12, seed=0):
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, 3, 4, 4))
    samples = np.clip(rng.standard_normal((n, 3, 4, 4)), -1, 1)
    latents = 0.7 * noise + 0.2 * samples + 0.2 * rng.standard_normal(noise.shape)
    return noise, samples, latents


def test_vertex_angles_geometry_and_torch(monkeypatch):
    monkeypatch.setattr(_chunks, "MAX_BLOCK_ELEMENTS", 100)  # several blocks
    rng = np.random.default_rng(1)
    s, n = rng.uniform(20, 100, 30), rng.uniform(20, 50, 30)
    noise, samples, latents = _triangles(s, n)
    al, as_, an = vertex_angles(noise, samples, latents)
    np.testing.assert_allclose(as_, s, atol=1e-9)
    np.testing.assert_allclose(an, n, atol=1e-9)
    np.testing.assert_allclose(al, 180 - s - n, atol=1e-9)
    ref = _torch_angles(*(torch.from_numpy(v) for v in (noise, samples, latents)))
    for got, want in zip((al, as_, an), ref):
        np.testing.assert_allclose(got, want, atol=1e-9)


def test_calc_angles_and_distances_match_torch():
    noise, samples, latents = _random_triplet()
    samples2 = samples + 0.05 * np.random.default_rng(9).standard_normal(samples.shape)
    t = [torch.from_numpy(v) for v in (noise, samples, latents, samples2)]
    got, ref = calc_angles(noise, samples, latents), _torch_calc_angles(*t[:3])
    assert list(got) == list(ref) and got == pytest.approx(ref, rel=1e-10)
    got, ref = calc_distances(noise, samples, latents, samples2), _torch_calc_distances(*t)
    assert list(got) == list(ref) and got == pytest.approx(ref, rel=1e-10)
    assert "mean_mse_img_img2" not in calc_distances(noise, samples, latents)


def test_calc_angles_is_acos_of_mean_cosine():
    # two samples with image-vertex angles 0 and 90 degrees: acos(mean cos) = 60, not the mean angle 45
    noise, samples, latents = _triangles(np.array([30.0, 90.0]), np.array([60.0, 45.0]))
    cos = np.cos(np.deg2rad([30.0, 90.0]))
    out = calc_angles(noise, samples, latents)
    assert out["mean_cossim_img"] == pytest.approx(np.rad2deg(np.arccos(cos.mean())), abs=1e-9)
    assert out["std_cossim_img"] == pytest.approx(np.rad2deg(np.arccos(cos.std(ddof=1))), abs=1e-9)


def test_histogram_bins():
    p = angle_histogram([0.5, 1.0, 1.99, 2.0, 178.5, 179.0, 179.5])  # 0.5 and 179.5 dropped, 179 in last bin
    assert p.shape == (178,)
    np.testing.assert_allclose(p[[0, 1, 177]], [2 / 5, 1 / 5, 2 / 5])
    assert p.sum() == pytest.approx(1.0)


def test_known_triangle_from_synthetic_angles():
    """Image angles mostly in bin 60, noise angles in bin 90, so latent angles (180 - s - n ~ 29.4) mostly in bin 29;
    (29, 60, 90) sums to 179, and the best valid triangle is (30, 60, 90) (p_l[30] ~ 0.08 beats p_s[61], p_n[91])."""
    rng = np.random.default_rng(2)
    s = 60.3 + 0.15 * rng.standard_normal(4000)
    n = 90.3 + 0.15 * rng.standard_normal(4000)
    tri = most_probable_triangle(*_triangles(s, n, shape=(1, 4, 4), seed=3))
    assert tri.angles == (30, 60, 90)
    assert tri.hist_l.argmax() + 1 == 29 and tri.hist_s.argmax() + 1 == 60 and tri.hist_n.argmax() + 1 == 90
    assert tri.probability == pytest.approx(tri.hist_l[29] * tri.hist_s[59] * tri.hist_n[89], rel=1e-15)
    ref, ref_prob = _torch_most_probable(*vertex_angles(*_triangles(s, n, shape=(1, 4, 4), seed=3)))
    assert ref == tri.angles and ref_prob == tri.probability


def test_search_matches_upstream_loop_on_random_histograms():
    rng = np.random.default_rng(4)
    for _ in range(2):
        mu_s, mu_n = rng.uniform(20, 80, 2)
        angles = [rng.normal(mu, 4, 300) for mu in (180 - mu_s - mu_n, mu_s, mu_n)]
        got = find_max_prob_triangle(*(angle_histogram(a) for a in angles))
        assert got == _torch_most_probable(*angles)


def test_ties_keep_first_in_a_outer_b_inner_order():
    def probs(mass):
        p = np.zeros(178)
        for edge, m in mass.items():
            p[edge - 1] = m
        return p

    # equal products (exact dyadic values): A=30 beats A=40 (outer loop), then B=50 beats B=60 (inner loop)
    p_l, p_s, p_n = probs({30: 0.5, 40: 0.5}), probs({60: 1.0}), probs({90: 0.5, 80: 0.5})
    assert find_max_prob_triangle(p_l, p_s, p_n) == ((30, 60, 90), 0.25)
    p_l, p_s, p_n = probs({30: 1.0}), probs({60: 0.5, 50: 0.5}), probs({90: 0.5, 100: 0.5})
    assert find_max_prob_triangle(p_l, p_s, p_n) == ((30, 50, 100), 0.25)
    for case in [(probs({30: 0.5, 40: 0.5}), probs({60: 1.0}), probs({90: 0.5, 80: 0.5})),
                 (probs({30: 1.0}), probs({60: 0.5, 50: 0.5}), probs({90: 0.5, 100: 0.5}))]:
        assert find_max_prob_triangle(*case) == _torch_find_max_prob(*case, torch.arange(1, 180))


def test_no_valid_triangle_is_an_error():
    p = np.zeros(178)
    p[99] = 1.0  # all three angles at 100 degrees: no triangle
    with pytest.raises(ValueError):
        find_max_prob_triangle(p, p, p)
    assert _torch_find_max_prob(p, p, p, torch.arange(1, 180))[0] is None


def test_float16_angles_match_upstream_on_half_tensors():
    """DiT / IF: upstream's calculate_angle on float16 tensors (the re-typed oracle run on half tensors)."""
    rng = np.random.default_rng(7)
    noise = rng.standard_normal((96, 4, 16, 16))
    samples = np.clip(0.5 * rng.standard_normal(noise.shape), -1, 1)
    latents = 0.9 * noise + 0.1 * samples + 0.3 * rng.standard_normal(noise.shape)
    half = [v.astype(np.float16) for v in (noise, samples, latents)]
    ref = _torch_angles(*(torch.from_numpy(v) for v in half))
    got = vertex_angles(*half, arithmetic="float16")
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g.astype(np.float64), r)
    assert max(np.abs(f - r).max() for f, r in zip(vertex_angles(*half), ref)) > 0.01  # float64 differs
    (a, b, c), prob = _torch_most_probable(*ref)
    tri = most_probable_triangle(*half, arithmetic="float16")
    assert tri.angles == (a, b, c) and tri.probability == pytest.approx(prob, rel=1e-12)
