"""SSIM and PSNR per image pair (paper Sec. 4.2 diversity, App. G.3 alignment), computed by dm-pix, jit-able.

Inputs: batches (N, C, H, W) (or one (C, H, W) image; ``channels_last=True`` for (N, H, W, C) / (H, W, C)) of
floats. Returns one value per image pair, shape (N,) (a scalar for a single image). Arithmetic in the input's float
dtype (float32 unless jax x64 is enabled and float64 is passed); integer inputs are cast to float32.

Value range (explicit, never guessed from the values): ``value_range`` says where the images live,
  ``"[-1,1]"`` or ``(-1, 1)`` for model-space images, ``"[0,1]"`` or ``(0, 1)``, ``"[0,255]"`` or ``(0, 255)``.
The images are mapped to [0, 1] by (x − lo) / (hi − lo) and the standard metrics are computed there with data range
R = 1, i.e. the values are those of the same images stored in [0, 1] (or as uint8, up to quantisation):
  PSNR = 10·log10(1 / MSE01) = 10·log10((hi − lo)² / MSE) (``dm_pix.psnr``; identical images -> inf);
  SSIM with C1 = 0.01², C2 = 0.03² (``dm_pix.ssim``). SSIM is not shift-invariant (its luminance term uses the
  local means), so SSIM of raw [-1, 1] arrays with data_range 2 differs from SSIM of the [0, 1] images; that raw
  variant is not offered except as upstream's quirk below.

SSIM windows (``window=``):
  "gaussian": Wang et al. 2004 / dm-pix / tf.image.ssim defaults, 11x11 Gaussian σ = 1.5, population (co)variances
    (= skimage ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``);
  "skimage": skimage ``structural_similarity`` defaults, 7x7 uniform window with sample (co)variances (×49/48).
Both average the SSIM map over the 'valid' window positions and over channels (= skimage's crop-then-mean, and the
mean of per-channel skimage values).

Upstream's quirky variants (``upstream=True``; upstream ``calc_diversity_two_samples.py``), to reproduce upstream
numbers; they use the raw arrays and ignore ``value_range``:
  ``ssim(x, y, upstream=True)``: skimage ``structural_similarity(a[..., c], b[..., c], data_range=1)`` per channel,
    mean over the 3 channels, on the raw arrays (upstream fed [-1, 1] images in the diversity script, whole-batch
    min-max [0, 1] images in G.3) -> window "skimage", data range 1, no shift.
  ``psnr(x, y, upstream=True)``: ``cv2.PSNR(a, b)`` on the raw float arrays: 20·log10(255 / (RMSE + DBL_EPSILON))
    with R = 255 whatever the range (identical images -> 361.20…, not inf).
"""
from __future__ import annotations

import functools

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

DBL_EPSILON = float(np.finfo(np.float64).eps)  # OpenCV's DBL_EPSILON in cv::PSNR
UPSTREAM_SSIM_DATA_RANGE = 1.0
UPSTREAM_PSNR_DATA_RANGE = 255.0
_NAMED_RANGES = {"[-1,1]": (-1.0, 1.0), "[0,1]": (0.0, 1.0), "[0,255]": (0.0, 255.0)}
SKIMAGE_WIN_SIZE = 7
WINDOWS = ("gaussian", "skimage")


def resolve_value_range(value_range) -> tuple[float, float]:
    """(lo, hi) from a pair of numbers (lo < hi) or one of "[-1,1]", "[0,1]", "[0,255]"."""
    if isinstance(value_range, str):
        key = value_range.replace(" ", "")
        if key not in _NAMED_RANGES:
            raise ValueError(f"unknown value_range {value_range!r}; use (lo, hi) or one of {sorted(_NAMED_RANGES)}")
        return _NAMED_RANGES[key]
    if value_range is None:
        raise ValueError("value_range is required: '[-1,1]' for model-space images, '[0,1]', '[0,255]' or (lo, hi)")
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be (lo, hi) or a named range, got {value_range!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"value_range must have finite lo < hi, got {value_range!r}")
    return lo, hi


def _as_float(x) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _to_channels_last(x, y, channels_last: bool):
    x, y = _as_float(x), _as_float(y)
    if x.shape != y.shape:
        raise ValueError(f"image batches must have the same shape, got {x.shape} and {y.shape}")
    if x.ndim not in (3, 4):
        raise ValueError(f"expected (N, C, H, W) or (C, H, W) images, got shape {x.shape}")
    if x.dtype != y.dtype:
        dtype = jnp.promote_types(x.dtype, y.dtype)
        x, y = x.astype(dtype), y.astype(dtype)
    if not channels_last:
        x, y = jnp.moveaxis(x, -3, -1), jnp.moveaxis(y, -3, -1)
    return x, y


def _uniform_filter_valid(z: jax.Array, size: int) -> jax.Array:
    """Mean over size x size windows at 'valid' positions of (..., H, W, C) (skimage's uniform_filter, cropped)."""
    window = (1,) * (z.ndim - 3) + (size, size, 1)
    return jax.lax.reduce_window(z, jnp.zeros((), z.dtype), jax.lax.add, window, (1,) * z.ndim, "VALID") / (
        size * size)


def _to_unit(x, y, lo: float, hi: float):
    if (lo, hi) == (0.0, 1.0):
        return x, y
    return (x - lo) / (hi - lo), (y - lo) / (hi - lo)


@functools.partial(jax.jit, static_argnames=("lo", "hi", "data_range", "window", "return_map"))
def _ssim_nhwc(x, y, lo: float, hi: float, data_range: float, window: str, return_map: bool):
    x, y = _to_unit(x, y, lo, hi)
    if window == "gaussian":
        return dm_pix.ssim(x, y, max_val=data_range, filter_size=11, filter_sigma=1.5, k1=0.01, k2=0.03,
                           return_map=return_map)
    # skimage: variances with the sample normalisation n/(n-1), n = 7*7, multiply every σ term of the SSIM formula;
    # (2·c·σxy + C2) / (c·σx² + c·σy² + C2) = (2·σxy + C2/c) / (σx² + σy² + C2/c), i.e. k2 -> k2·sqrt(1/c).
    n = SKIMAGE_WIN_SIZE * SKIMAGE_WIN_SIZE
    return dm_pix.ssim(x, y, max_val=data_range, k1=0.01, k2=0.03 * float(np.sqrt((n - 1) / n)),
                       filter_fn=functools.partial(_uniform_filter_valid, size=SKIMAGE_WIN_SIZE),
                       return_map=return_map)


def ssim(x, y, *, value_range=None, window: str = "gaussian", upstream: bool = False, channels_last: bool = False,
         return_map: bool = False) -> jax.Array:
    """SSIM per image pair (N,) of the images mapped to [0, 1] from ``value_range`` (see module docstring).
    ``upstream=True``: skimage per channel with data_range=1 on the raw arrays (window "skimage", value_range
    ignored). ``return_map``: the (N, H', W', C) SSIM map at the valid window positions instead of its mean."""
    if upstream:
        lo, hi, data_range, window = 0.0, 1.0, UPSTREAM_SSIM_DATA_RANGE, "skimage"
    else:
        (lo, hi), data_range = resolve_value_range(value_range), 1.0
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")
    x, y = _to_channels_last(x, y, channels_last)
    size = 11 if window == "gaussian" else SKIMAGE_WIN_SIZE
    if min(x.shape[-3], x.shape[-2]) < size:
        raise ValueError(f"SSIM window {window!r} needs images of at least {size}x{size}, got {x.shape[-3:-1]}")
    return _ssim_nhwc(x, y, lo, hi, data_range, window, return_map)


@functools.partial(jax.jit, static_argnames=("lo", "hi", "upstream"))
def _psnr_nhwc(x, y, lo: float, hi: float, upstream: bool):
    if upstream:  # cv::PSNR: 20·log10(R / (sqrt(mean((a - b)²)) + DBL_EPSILON)), R = 255, raw values
        rmse = dm_pix.rmse(x, y)
        return 20.0 * jnp.log10(UPSTREAM_PSNR_DATA_RANGE / (rmse + jnp.asarray(DBL_EPSILON, rmse.dtype)))
    x, y = _to_unit(x, y, lo, hi)
    return dm_pix.psnr(x, y)


def psnr(x, y, *, value_range=None, upstream: bool = False, channels_last: bool = False) -> jax.Array:
    """PSNR in dB per image pair (N,): 10·log10((hi − lo)² / MSE). ``upstream=True``: ``cv2.PSNR`` on the raw
    arrays (R = 255, RMSE + DBL_EPSILON; value_range ignored)."""
    lo, hi = (0.0, 1.0) if upstream else resolve_value_range(value_range)
    x, y = _to_channels_last(x, y, channels_last)
    return _psnr_nhwc(x, y, lo, hi, upstream)
