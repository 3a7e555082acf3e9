"""Distribution statistics (paper Sec. 3.2, Tab. 4) against the upstream torch code re-typed here, in float64."""
import numpy as np
import pytest
import torch
import torch.distributions as dist

from jtaba.metrics import _chunks
from jtaba.metrics import distribution as D


def _torch_kl_div(d1, d2):  # taba/metrics/normality.py::kl_div
    p = dist.Normal(torch.tensor([d1.mean()]), torch.tensor([torch.std(d1)]))
    q = dist.Normal(torch.tensor([d2.mean()]), torch.tensor([torch.std(d2)]))
    return dist.kl_divergence(p, q).item()


def _torch_kl_div2(noise, latents):  # normality.py::kl_div2
    p = dist.Normal(noise.mean(dim=0), noise.std(dim=0) + 1e-6)
    q = dist.Normal(latents.mean(dim=0), latents.std(dim=0) + 1e-6)
    return (dist.kl_divergence(p, q).sum() / (noise.shape[1] * noise.shape[2] * noise.shape[3])).item()


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    latents = (0.8 * noise + 0.3 * rng.standard_normal(noise.shape) + 0.1).astype(np.float32)
    latents[:, 1] *= 1.7  # per-element structure for kl_div2
    return noise, latents


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Force one-row (and few-column) blocks through the bounded-memory paths."""
    monkeypatch.setattr(_chunks, "MAX_BLOCK_ELEMENTS", 100)


@pytest.mark.parametrize("blocked", [False, True])
def test_stats_mae_kl_match_torch(pair, blocked, request):
    if blocked:
        request.getfixturevalue("tiny_blocks")
    noise, latents = pair
    tn, tl = torch.from_numpy(noise).double(), torch.from_numpy(latents).double()
    assert D.stats(latents) == pytest.approx({"mean": tl.mean().item(), "std": tl.std().item()}, rel=1e-12)
    assert D.mae(noise, latents) == pytest.approx(torch.abs(tn - tl).mean().item(), rel=1e-12)
    assert D.kl_div(noise, latents) == pytest.approx(_torch_kl_div(tn, tl), rel=1e-10)
    assert D.kl_div2(noise, latents) == pytest.approx(_torch_kl_div2(tn, tl), rel=1e-10)


def test_kl_hand_values():
    # N(0, 1) || N(1, 2): log 2 + (1 + 1) / 8 - 1/2
    assert float(D.gaussian_kl(0.0, 1.0, 1.0, 2.0)) == pytest.approx(np.log(2) + 0.25 - 0.5, rel=1e-14)
    # data with exact mean 0 / unbiased std 1 and mean 1 / unbiased std 2 (one Gaussian over all elements)
    x = np.array([-1.0, 1.0, -1.0, 1.0]) * np.sqrt(3 / 4)
    assert D.mean_std(x) == pytest.approx((0.0, 1.0), abs=1e-15)
    assert D.kl_div(x.reshape(2, 2), (1 + 2 * x).reshape(2, 1, 2)) == pytest.approx(np.log(2) - 0.25, rel=1e-12)
    assert D.kl_div(x, x) == 0.0


def test_latent_variance_both_ways(pair, tiny_blocks):
    _, latents = pair
    tl = torch.from_numpy(latents).double()
    assert D.latent_variance(latents) == pytest.approx(tl.std().item() ** 2, rel=1e-12)
    per_sample = np.mean([s.var().item() for s in tl])  # torch .var() is unbiased
    assert D.latent_variance(latents, per_sample=True) == pytest.approx(per_sample, rel=1e-12)
    assert D.latent_variance(latents, per_sample=True) != pytest.approx(D.latent_variance(latents), rel=1e-3)


def test_float16_inputs_computed_in_float64():
    x = np.random.default_rng(1).standard_normal((4, 4, 8, 8)).astype(np.float16)
    ref = x.astype(np.float64)
    assert D.stats(x) == pytest.approx({"mean": ref.mean(), "std": ref.std(ddof=1)}, rel=1e-12)
