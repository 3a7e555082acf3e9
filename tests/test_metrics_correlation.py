"""Pixel-correlation metric (paper Tab. 2) against the upstream torch code re-typed here, run in float64."""
import numpy as np
import pytest
import torch

from jtaba.metrics.correlation import top_k_corr, top_k_corr_in_patches


def _torch_top_k_corr_in_patches(tensor, patch_size=8, top_k=10):  # taba/metrics/correlation.py
    n, _, h, w = tensor.shape
    vals = []
    for i in range(0, h, patch_size):
        for j in range(0, w, patch_size):
            patches = tensor[:, :, i:i + patch_size, j:j + patch_size].reshape(n, -1)
            if patches.size(1) > 1:
                normalized = (patches - patches.mean(dim=0, keepdim=True)) / (patches.std(dim=0, keepdim=True) + 1e-5)
                corr = torch.corrcoef(normalized.T)
                tri = torch.triu_indices(patches.size(1), patches.size(1), offset=1)
                upper = corr[tri[0], tri[1]]
                vals.append(torch.topk(upper.abs(), min(top_k, upper.numel()))[0])
    if not vals:
        return {"mean": 0, "std": 0}
    vals = torch.cat(vals)
    return {"mean": vals.mean().item(), "std": vals.std().item()}


def _torch_top_k_corr(tensor, top_k=10):  # correlation.py::get_top_k_corr
    corr = torch.corrcoef(tensor.flatten(1, 3).T).triu(diagonal=1)
    v = torch.topk(corr.abs().flatten(), top_k)[0]
    return {"mean": v.mean().item(), "std": v.std().item()}


def _correlated(shape, seed):
    """Samples with spatially smooth structure so top-k correlations are far from 0 and well separated."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    x = x + 0.8 * np.roll(x, 1, axis=-1) + 0.5 * np.roll(x, 1, axis=-2) + 0.3 * x[:, :1]
    return x.astype(np.float32)


@pytest.mark.parametrize("shape,patch,top_k", [((64, 3, 16, 16), 8, 20),  # the metrics.json setting
                                               ((40, 2, 12, 10), 8, 20),  # smaller border patches
                                               ((30, 1, 9, 9), 4, 5)])  # a 1x1 border patch (D=1, skipped)
def test_patches_match_torch(shape, patch, top_k):
    x = _correlated(shape, seed=sum(shape))
    ref = _torch_top_k_corr_in_patches(torch.from_numpy(x).double(), patch, top_k)
    got = top_k_corr_in_patches(x, patch_size=patch, top_k=top_k)
    assert got == pytest.approx(ref, rel=1e-10)
    assert 0.3 < got["mean"] < 1.0 and got["std"] > 0


def test_patches_defaults_and_no_valid_patch():
    x = _correlated((32, 3, 8, 8), seed=3)
    assert top_k_corr_in_patches(x) == pytest.approx(
        _torch_top_k_corr_in_patches(torch.from_numpy(x).double(), 8, 20), rel=1e-10)
    assert top_k_corr_in_patches(np.ones((4, 1, 1, 1), np.float32)) == {"mean": 0, "std": 0}


def test_patches_perfectly_correlated_hand_value():
    # every feature is an affine function of one variable -> all |corr| = 1
    t = np.random.default_rng(0).standard_normal((10, 1, 1, 1))
    x = np.concatenate([t * 2 + 1, -t, 3 * t], axis=1) * np.ones((1, 3, 2, 2))
    assert top_k_corr_in_patches(x, patch_size=2, top_k=4) == pytest.approx({"mean": 1.0, "std": 0.0}, abs=1e-12)


def test_constant_feature_gives_nan_like_torch():
    x = _correlated((20, 1, 4, 4), seed=5).astype(np.float64)
    x[:, 0, 0, 0] = 0.25
    ref = _torch_top_k_corr_in_patches(torch.from_numpy(x), 4, 3)
    got = top_k_corr_in_patches(x, patch_size=4, top_k=3)
    assert np.isnan(ref["mean"]) and np.isnan(got["mean"])


@pytest.mark.parametrize("top_k,block", [(10, 1024), (10, 7), (200, 5)])  # 200 > D(D-1)/2 = 120: zeros pad
def test_whole_image_matches_torch(top_k, block):
    x = _correlated((50, 1, 4, 4), seed=7)
    ref = _torch_top_k_corr(torch.from_numpy(x).double(), top_k)
    assert top_k_corr(x, top_k=top_k, block=block) == pytest.approx(ref, rel=1e-10)


# --- float16 arithmetic (upstream's Tab. 2 script on float16 tensors): torch's half corrcoef is the oracle ---

def test_patches_float16_arithmetic_matches_torch_half():
    x = _correlated((256, 4, 16, 16), seed=5).astype(np.float16)  # DiT-like 4-channel latents
    ref = _torch_top_k_corr_in_patches(torch.from_numpy(x), 8, 20)  # half tensors
    got = top_k_corr_in_patches(x, arithmetic="float16")
    assert got == ref  # float16 results, bit for bit
    exact = top_k_corr_in_patches(x)  # float64 on the same float16 inputs: what --upstream-fp16 measured before
    assert exact["mean"] != ref["mean"]


@pytest.mark.parametrize("block", [1024, 37])
def test_whole_image_float16_arithmetic_matches_torch_half(block):
    x = _correlated((200, 2, 8, 8), seed=6).astype(np.float16)
    ref = _torch_top_k_corr(torch.from_numpy(x), 10)
    assert top_k_corr(x, 10, block=block, arithmetic="float16") == ref
    with pytest.raises(ValueError, match="arithmetic"):
        top_k_corr(x, 10, arithmetic="float32")
