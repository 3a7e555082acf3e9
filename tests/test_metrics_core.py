"""metrics.json "metrics" object (upstream sampling scripts) against the upstream torch metrics re-typed here."""
import json

import numpy as np
import pytest
import torch
import torch.distributions as dist

from jtaba.metrics import core_metrics


def _torch_core(noise, latents, samples, samples2):  # run_adm_sampling.py metrics block (float64 here)
    def corr(t, patch=8, top_k=20):
        n, _, h, w = t.shape
        vals = []
        for i in range(0, h, patch):
            for j in range(0, w, patch):
                p = t[:, :, i:i + patch, j:j + patch].reshape(n, -1)
                c = torch.corrcoef(((p - p.mean(0, keepdim=True)) / (p.std(0, keepdim=True) + 1e-5)).T)
                tri = torch.triu_indices(p.size(1), p.size(1), offset=1)
                vals.append(torch.topk(c[tri[0], tri[1]].abs(), min(top_k, tri.shape[1]))[0])
        v = torch.cat(vals)
        return {"mean": v.mean().item(), "std": v.std().item()}

    kl = dist.kl_divergence(dist.Normal(torch.tensor([noise.mean()]), torch.tensor([noise.std()])),
                            dist.Normal(torch.tensor([latents.mean()]), torch.tensor([latents.std()]))).item()
    return {
        "kl_div_noise_latent": kl,
        "reconstruction_error_noise": torch.abs(noise - latents).mean().item(),
        "correlation": corr(latents),
        "latent_stats": {"mean": latents.mean().item(), "std": latents.std().item()},
        "noise_stats": {"mean": noise.mean().item(), "std": noise.std().item()},
        "reconstruction_error_images": torch.abs(samples2 - samples).mean().item(),
    }


def test_core_metrics_match_torch_and_are_json_ready():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((24, 3, 16, 16)).astype(np.float32)
    samples = np.clip(rng.standard_normal(noise.shape), -1, 1).astype(np.float32)
    latents = (0.9 * noise + 0.2 * np.roll(noise, 1, axis=-1) + 0.1 * samples).astype(np.float32)
    samples2 = (samples + 0.01 * rng.standard_normal(noise.shape)).astype(np.float32)
    got = core_metrics(noise, latents, samples, samples2)
    ref = _torch_core(*(torch.from_numpy(v).double() for v in (noise, latents, samples, samples2)))
    assert list(got) == list(ref)
    for key in ref:
        assert got[key] == pytest.approx(ref[key], rel=1e-10), key
    assert json.loads(json.dumps(got)) == got
    assert "reconstruction_error_images" not in core_metrics(noise, latents)
    assert "reconstruction_error_images" not in core_metrics(noise, latents, samples=samples)
