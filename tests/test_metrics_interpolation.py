"""SLERP / lerp (paper Sec. 4.1) and trajectory-vs-interpolation distances (Fig. 3) against the upstream
torch code re-typed here, plus SLERP invariants."""
import numpy as np
import pytest
import torch

from jtaba.metrics import _chunks
from jtaba.metrics.interpolation import interpolation_distances, lerp, min_max_scale, slerp


def _torch_slerp(v0, v1, t, DOT_THRESHOLD=0.9995):  # taba/interpolations/interpolations.py (scalar t)
    v0_normed = v0 / torch.norm(v0, dim=-1).unsqueeze(-1)
    v1_normed = v1 / torch.norm(v1, dim=-1).unsqueeze(-1)
    dot = (v0_normed * v1_normed).sum(-1)
    gotta_lerp = dot.abs().isnan() | (dot.abs() > DOT_THRESHOLD)
    can_slerp = ~gotta_lerp
    out = torch.zeros_like(v0)
    if gotta_lerp.any():
        out = torch.lerp(v0, v1, t).where(gotta_lerp.unsqueeze(-1), out)
    if can_slerp.any():
        theta_0 = dot.arccos().unsqueeze(-1)
        theta_t = theta_0 * t
        s0 = (theta_0 - theta_t).sin() / theta_0.sin()
        s1 = theta_t.sin() / theta_0.sin()
        out = (s0 * v0 + s1 * v1).where(can_slerp.unsqueeze(-1), out)
    return out


def _torch_interpolation_distances(all_t, noises, latents, alphas=25):  # interpolate_with_steps.py
    interps = torch.stack([a * latents + (1 - a) * noises for a in np.linspace(0, 1, alphas)])
    d = torch.zeros(noises.shape[0], all_t.shape[0], alphas, dtype=torch.float64)
    for i in range(all_t.shape[0]):
        for j in range(alphas):
            for k in range(noises.shape[0]):
                d[k, i, j] = torch.linalg.vector_norm(all_t[i][k] - interps[j][k])
    return d.mean(dim=0).numpy()


def _vectors(seed, shape=(4, 3, 5, 6)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape), rng.standard_normal(shape)


@pytest.mark.parametrize("t", [0.0, 1 / 6, 0.5, 5 / 6, 1.0])
def test_slerp_matches_torch_both_modes(t):
    v0, v1 = _vectors(0)
    v1[0, 0, 0] = 2.0 * v0[0, 0, 0]  # a parallel row -> lerp fallback
    v0[1, 1, 2] = 0.0  # a zero row -> NaN dot -> lerp fallback
    ref = _torch_slerp(torch.from_numpy(v0), torch.from_numpy(v1), t).numpy()
    np.testing.assert_allclose(slerp(v0, v1, t), ref, rtol=1e-12, atol=1e-14)
    ref_flat = _torch_slerp(torch.from_numpy(v0.reshape(4, -1)), torch.from_numpy(v1.reshape(4, -1)), t)
    np.testing.assert_allclose(slerp(v0, v1, t, per_sample=True), ref_flat.numpy().reshape(v0.shape),
                               rtol=1e-12, atol=1e-14)


def test_slerp_endpoints_dtype_and_quirk_differs():
    v0, v1 = (v.astype(np.float32) for v in _vectors(1))
    for per_sample in (False, True):
        np.testing.assert_allclose(slerp(v0, v1, 0.0, per_sample=per_sample), v0, atol=1e-6)
        np.testing.assert_allclose(slerp(v0, v1, 1.0, per_sample=per_sample), v1, atol=1e-6)
        assert slerp(v0, v1, 0.3, per_sample=per_sample).dtype == np.float32
    assert np.abs(slerp(v0, v1, 0.5) - slerp(v0, v1, 0.5, per_sample=True)).max() > 1e-2


def test_slerp_norm_behaviour():
    e1, e2 = np.eye(2)
    # orthogonal unit vectors: stays on the unit circle, midpoint (e1 + e2) / sqrt(2)
    np.testing.assert_allclose(slerp(e1, e2, 0.5), (e1 + e2) / np.sqrt(2), atol=1e-15)
    for t in np.linspace(0, 1, 7):
        assert np.linalg.norm(slerp(e1, e2, t)) == pytest.approx(1.0, abs=1e-14)
        np.testing.assert_allclose(slerp(e1, e2, t), [np.cos(t * np.pi / 2), np.sin(t * np.pi / 2)], atol=1e-15)
    # equal-norm rows keep their norm (per flattened sample, per row in the quirk)
    v0, v1 = _vectors(2, (3, 64))
    v1 *= (np.linalg.norm(v0, axis=1) / np.linalg.norm(v1, axis=1))[:, None]
    np.testing.assert_allclose(np.linalg.norm(slerp(v0, v1, 0.37), axis=1), np.linalg.norm(v0, axis=1), rtol=1e-12)
    # unequal norms are not normalized: weights sin(45°) / sin(90°) on the raw vectors -> (e1 + 3 e2) / sqrt(2)
    np.testing.assert_allclose(slerp(e1, 3 * e2, 0.5), (e1 + 3 * e2) / np.sqrt(2), atol=1e-15)


def test_lerp_fallback_near_parallel():
    rng = np.random.default_rng(3)
    v0 = rng.standard_normal((2, 50))
    v1 = 1.5 * v0 + 1e-3 * rng.standard_normal((2, 50))  # |cos| > 0.9995
    v1[1] = -v1[1]  # anti-parallel also lerps
    t = 0.7
    np.testing.assert_allclose(slerp(v0, v1, t), v1 - (v1 - v0) * (1 - t), rtol=0, atol=1e-15)  # torch.lerp form
    np.testing.assert_allclose(slerp(v0, v1, 0.2), lerp(v0, v1, 0.2), atol=1e-14)
    assert lerp(np.float64(2.0), np.float64(4.0), 0.25) == 2.5


def test_interpolation_distances_match_torch(monkeypatch):
    monkeypatch.setattr(_chunks, "MAX_BLOCK_ELEMENTS", 100)
    rng = np.random.default_rng(4)
    noise = rng.standard_normal((5, 2, 4, 4)).astype(np.float32)
    latents = (0.6 * noise + 0.5 * rng.standard_normal(noise.shape)).astype(np.float32)
    w = np.linspace(0, 1, 6)[:, None, None, None, None]
    all_t = ((1 - w) * noise + w * np.clip(latents, -1, 1) + 0.1 * rng.standard_normal((6,) + noise.shape))
    all_t = all_t.astype(np.float32)
    got = interpolation_distances(all_t, noise, latents, alphas=25)
    ref = _torch_interpolation_distances(*(torch.from_numpy(v).double() for v in (all_t, noise, latents)))
    assert got.shape == (6, 25)
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    # a trajectory point on the path: distance ~0 at its alpha
    on_path = (0.25 * latents + 0.75 * noise)[None].astype(np.float64)
    assert interpolation_distances(on_path, noise, latents)[0, 6] == pytest.approx(0.0, abs=1e-6)


def test_min_max_scale_rows():
    arr = np.array([[1.0, 3.0, 2.0], [-4.0, 0.0, 4.0]])
    np.testing.assert_allclose(min_max_scale(arr), [[0, 1, 0.5], [0, 0.5, 1]])
