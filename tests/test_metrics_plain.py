"""Plain-surface masks and plain vs non-plain statistics (paper App. C) on a hand-made image and against the
upstream torch code re-typed here."""
import numpy as np
import pytest
import torch

from jtaba.metrics import _chunks
from jtaba.metrics.plain import find_plain_areas, masked_mean_std, plain_stats


def _torch_find_plain_areas(images, threshold=0.025):  # taba/exp_pipelines/plain_masks.py
    diff_h = torch.abs(images[:, :, 1:, :] - images[:, :, :-1, :])
    diff_w = torch.abs(images[:, :, :, 1:] - images[:, :, :, :-1])
    diff_h = torch.nn.functional.pad(diff_h, (0, 0, 0, 1))
    diff_w = torch.nn.functional.pad(diff_w, (0, 1, 0, 0))
    return ((diff_h + diff_w) / 2 < threshold).all(dim=1)


def test_hand_made_image():
    # one channel, rows y / columns x:   0 0 .1 .1
    #                                    0 0 .1 .1
    #                                    0 0 .1 .1
    #                                    0 0 .1 .14
    img = np.zeros((1, 1, 4, 4), np.float32)
    img[..., 2:] = 0.1
    img[0, 0, 3, 3] = 0.14
    # column 1: Dw = 0.1 -> D = 0.05 (non-plain). (2, 3): Dh = 0.04, Dw = 0 (padded right column) -> D = 0.02;
    # (3, 2): Dw = 0.04, Dh = 0 (padded bottom row) -> D = 0.02; (3, 3): both padded -> 0. Everything else 0.
    expected = np.ones((4, 4), bool)
    expected[:, 1] = False
    np.testing.assert_array_equal(find_plain_areas(img)[0], expected)
    expected[2, 3] = expected[3, 2] = False  # D = 0.02 is not < 0.01
    np.testing.assert_array_equal(find_plain_areas(img, threshold=0.01)[0], expected)
    # plain needs every channel: add a channel that is a steep ramp (non-plain except the padded corner)
    ramp = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    corner_only = np.zeros((4, 4), bool)
    corner_only[3, 3] = True
    np.testing.assert_array_equal(find_plain_areas(np.concatenate([img, ramp], axis=1))[0], corner_only)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_masks_match_torch(dtype, monkeypatch):
    monkeypatch.setattr(_chunks, "MAX_BLOCK_ELEMENTS", 200)
    rng = np.random.default_rng(0)
    # smooth images with values near the threshold so rounding in the stored dtype matters
    base = rng.uniform(-1, 1, (6, 3, 1, 1))
    img = (base + 0.03 * np.cumsum(rng.uniform(-1, 1, (6, 3, 12, 10)), axis=-1)).astype(dtype)
    ref = _torch_find_plain_areas(torch.from_numpy(img)).numpy()
    got = find_plain_areas(img)
    np.testing.assert_array_equal(got, ref)
    assert 0.1 < got.mean() < 0.9


def test_plain_stats_match_boolean_indexing(monkeypatch):
    monkeypatch.setattr(_chunks, "MAX_BLOCK_ELEMENTS", 150)
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((5, 3, 6, 6)).astype(np.float32)
    latents = (noise + rng.standard_normal(noise.shape) * 0.2).astype(np.float32)
    mask = rng.uniform(size=(5, 6, 6)) < 0.3
    tn, tl = torch.from_numpy(noise).double(), torch.from_numpy(latents).double()
    tm = torch.from_numpy(mask)[:, None].expand_as(tn)
    got = plain_stats(noise, latents, mask)
    assert got["mae_plain"] == pytest.approx((tn - tl).abs()[tm].mean().item(), rel=1e-12)
    assert got["mae_non_plain"] == pytest.approx((tn - tl).abs()[~tm].mean().item(), rel=1e-12)
    assert got["std_plain"] == pytest.approx(tl[tm].std().item(), rel=1e-12)
    assert got["std_non_plain"] == pytest.approx(tl[~tm].std().item(), rel=1e-12)
    assert got["plain_fraction"] == pytest.approx(mask.mean())
    assert masked_mean_std(latents, np.zeros_like(mask)) != masked_mean_std(latents, np.zeros_like(mask))  # NaN
    with pytest.raises(ValueError):
        plain_stats(noise, latents, mask[:, :5])
