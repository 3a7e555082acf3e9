"""SSIM / PSNR (jtaba.metrics.image_quality) against skimage, OpenCV, the PSNR formula and dm-pix itself."""
import functools

import dm_pix
import jax
import numpy as np
import pytest

from jtaba.metrics.image_quality import DBL_EPSILON, psnr, resolve_value_range, ssim


def _skimage_metrics():
    return pytest.importorskip("skimage.metrics")  # scikit-image (test extra)


def _pairs(lo=-1.0, hi=1.0, shape=(3, 3, 24, 20), seed=0):
    """NCHW float32 pairs in [lo, hi]: y = x + noise, so SSIM is neither ~0 nor ~1."""
    rng = np.random.default_rng(seed)
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    x = np.clip(mid + rng.normal(0, 0.5 * half, shape), lo, hi)
    y = np.clip(x + rng.normal(0, 0.2 * half, shape), lo, hi)
    return x.astype(np.float32), y.astype(np.float32)


def _hwc(img):
    return np.transpose(img, (1, 2, 0))


def test_ssim_upstream_matches_skimage_per_channel():
    skimage_metrics = _skimage_metrics()
    # upstream diversity: skimage structural_similarity per channel of the raw HWC [-1, 1] arrays, data_range=1.
    x, y = _pairs()
    ours = np.asarray(ssim(x, y, upstream=True))
    ref = np.array([np.mean([skimage_metrics.structural_similarity(_hwc(a)[..., c], _hwc(b)[..., c], data_range=1)
                             for c in range(3)]) for a, b in zip(x, y)])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)
    # the same as the explicit flags on [0, 1] data (no shift); upstream ignores value_range
    np.testing.assert_array_equal(ours, np.asarray(ssim(x, y, value_range="[0,1]", window="skimage")))
    np.testing.assert_array_equal(ours, np.asarray(ssim(x, y, value_range="[-1,1]", upstream=True)))


def test_ssim_skimage_window_on_unit_range():
    skimage_metrics = _skimage_metrics()
    x, y = _pairs(0.0, 1.0, seed=1)
    ours = np.asarray(ssim(x, y, value_range="[0,1]", window="skimage"))
    ref = np.array([skimage_metrics.structural_similarity(a, b, data_range=1.0, channel_axis=0)
                    for a, b in zip(x, y)])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)


def test_ssim_gaussian_matches_skimage_gaussian_and_dm_pix():
    skimage_metrics = _skimage_metrics()
    # [-1, 1] images are mapped to [0, 1] (SSIM is not shift-invariant): == skimage / dm-pix on the [0, 1] images.
    x, y = _pairs(seed=2)
    u, v = (x + 1) / 2, (y + 1) / 2
    ours = np.asarray(ssim(x, y, value_range="[-1,1]"))
    ref = np.array([skimage_metrics.structural_similarity(a, b, data_range=1.0, channel_axis=0,
                                                          gaussian_weights=True, sigma=1.5,
                                                          use_sample_covariance=False) for a, b in zip(u, v)])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)
    pix = np.asarray(dm_pix.ssim(np.transpose(u, (0, 2, 3, 1)), np.transpose(v, (0, 2, 3, 1))))
    np.testing.assert_allclose(np.asarray(ssim(u, v, value_range=(0, 1))), pix, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours, pix, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ssim(u * 255, v * 255, value_range="[0,255]")), pix, rtol=0, atol=1e-6)
    # the raw-value computation (upstream's kind) differs: the luminance term sees means near 0
    raw = np.array([skimage_metrics.structural_similarity(a, b, data_range=2.0, channel_axis=0,
                                                          gaussian_weights=True, sigma=1.5,
                                                          use_sample_covariance=False) for a, b in zip(x, y)])
    assert np.abs(raw - ours).max() > 0.05


def test_psnr_formula_dm_pix_and_ranges():
    x, y = _pairs(seed=3)
    mse = ((x.astype(np.float64) - y.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    ours = np.asarray(psnr(x, y, value_range="[-1,1]"))
    np.testing.assert_allclose(ours, 10 * np.log10(4.0 / mse), rtol=1e-6)
    u, v = (x + 1) / 2, (y + 1) / 2
    pix = np.asarray(dm_pix.psnr(np.transpose(u, (0, 2, 3, 1)), np.transpose(v, (0, 2, 3, 1))))
    np.testing.assert_allclose(np.asarray(psnr(u, v, value_range="[0,1]")), pix, rtol=1e-6)
    np.testing.assert_allclose(ours, pix, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(psnr(u * 255, v * 255, value_range=(0, 255))), pix, rtol=1e-5)
    assert np.isinf(np.asarray(psnr(x, x, value_range="[-1,1]"))).all()


def test_psnr_upstream_matches_cv2_formula():
    # upstream diversity: cv2.PSNR(a, b) on raw float arrays, R = 255: 20 log10(255 / (RMSE + DBL_EPSILON)).
    x, y = _pairs(seed=4)
    ours = np.asarray(psnr(x, y, upstream=True))
    rmse = np.sqrt(((x.astype(np.float64) - y.astype(np.float64)) ** 2).mean(axis=(1, 2, 3)))
    np.testing.assert_allclose(ours, 20 * np.log10(255.0 / (rmse + DBL_EPSILON)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(psnr(x[:1], x[:1], upstream=True)), [20 * np.log10(255 / DBL_EPSILON)],
                               rtol=1e-6)  # 361.2 dB for identical images, as cv2
    cv2 = pytest.importorskip("cv2")
    ref = np.array([cv2.PSNR(_hwc(a), _hwc(b)) for a, b in zip(x, y)])
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    assert np.asarray(psnr(x[:1], x[:1], upstream=True))[0] == pytest.approx(cv2.PSNR(_hwc(x[0]), _hwc(x[0])),
                                                                             rel=1e-6)


def test_layouts_jit_and_errors():
    x, y = _pairs(shape=(2, 3, 16, 16), seed=5)
    ref = np.asarray(ssim(x, y, value_range="[-1,1]", window="skimage"))
    nhwc = np.asarray(ssim(np.transpose(x, (0, 2, 3, 1)), np.transpose(y, (0, 2, 3, 1)), value_range="[-1,1]",
                           window="skimage", channels_last=True))
    np.testing.assert_allclose(nhwc, ref, atol=1e-7)
    single = float(ssim(x[1], y[1], value_range="[-1,1]", window="skimage"))
    assert single == pytest.approx(ref[1], abs=1e-7)
    jitted = jax.jit(functools.partial(ssim, value_range="[-1,1]", window="skimage"))
    np.testing.assert_allclose(np.asarray(jitted(x, y)), ref, atol=1e-7)
    np.testing.assert_allclose(np.asarray(jax.jit(functools.partial(psnr, value_range="[-1,1]"))(x, y)),
                               np.asarray(psnr(x, y, value_range="[-1,1]")), rtol=1e-7)
    assert np.asarray(ssim(x, y, value_range="[-1,1]", return_map=True)).shape == (2, 6, 6, 3)
    assert resolve_value_range("[-1, 1]") == (-1.0, 1.0) and resolve_value_range((0, 255)) == (0.0, 255.0)
    for bad in (None, "[-2,2]", (1, 0), (0, float("inf")), 2.0):
        with pytest.raises(ValueError, match="value_range"):
            ssim(x, y, value_range=bad)
        with pytest.raises(ValueError, match="value_range"):
            psnr(x, y, value_range=bad)
    with pytest.raises(ValueError, match="window"):
        ssim(x, y, value_range="[0,1]", window="box")
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x[..., :8, :8], y[..., :8, :8], value_range="[0,1]")
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, y[:1], value_range="[0,1]")
