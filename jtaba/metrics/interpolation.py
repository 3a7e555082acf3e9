"""Interpolation between noises / latents (paper Fig. 3, Sec. 4.1 Fig. 5 / Tab. 12).

SLERP parity quirk: upstream ``slerp_interpolation`` takes norms and dot products along the **last axis only**,
so an (N, C, H, W) input is interpolated row by row (rows of width W); ``per_sample=True`` is the intended version
(one SLERP per flattened sample). Arithmetic in float64, result cast back to the inputs' dtype (upstream uses the
stored dtype, fp16 for DiT).
"""
from __future__ import annotations

import numpy as np

from jtaba.metrics._chunks import flat_rows, row_blocks

DOT_THRESHOLD = 0.9995


def lerp(a, b, alpha: float):
    """``linear_interpolation``: (1 - alpha) * a + alpha * b."""
    return (1 - alpha) * np.asarray(a) + alpha * np.asarray(b)


def _torch_lerp(v0: np.ndarray, v1: np.ndarray, t: float) -> np.ndarray:
    """torch.lerp's formula (the SLERP fallback): v0 + t (v1 - v0) for |t| < 0.5, else v1 - (v1 - v0)(1 - t)."""
    diff = v1 - v0
    return v0 + t * diff if abs(t) < 0.5 else v1 - diff * (1 - t)


def _slerp_last_axis(v0: np.ndarray, v1: np.ndarray, t: float, dot_threshold: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        dot = ((v0 / np.linalg.norm(v0, axis=-1, keepdims=True))
               * (v1 / np.linalg.norm(v1, axis=-1, keepdims=True))).sum(-1, keepdims=True)
        use_lerp = np.isnan(dot) | (np.abs(dot) > dot_threshold)  # zero rows give NaN -> lerp
        theta0 = np.arccos(np.where(use_lerp, 0.0, dot))
        sin0 = np.sin(theta0)
        slerped = (np.sin(theta0 - theta0 * t) / sin0) * v0 + (np.sin(theta0 * t) / sin0) * v1
    return np.where(use_lerp, _torch_lerp(v0, v1, t), slerped)


def slerp(v0, v1, t: float, *, per_sample: bool = False, dot_threshold: float = DOT_THRESHOLD) -> np.ndarray:
    """Spherical interpolation at scalar ``t`` (t=0 -> v0, t=1 -> v1) between same-shaped arrays.

    per_sample=False: upstream ``slerp_interpolation`` (its quirk), independently for every vector along the last
    axis. per_sample=True: one SLERP per item of the leading axis over all its other elements. Rows with
    |cos| > dot_threshold, or a zero vector, fall back to torch.lerp. The vectors are not normalized (norms are
    interpolated by the sin weights)."""
    v0, v1 = np.asarray(v0), np.asarray(v1)
    if v0.shape != v1.shape:
        raise ValueError(f"shapes of v0 and v1 must match, got {v0.shape} and {v1.shape}")
    dtype = np.result_type(v0, v1)
    a, b = v0.astype(np.float64), v1.astype(np.float64)
    if per_sample:
        out = _slerp_last_axis(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1), float(t), dot_threshold)
        out = out.reshape(v0.shape)
    else:
        out = _slerp_last_axis(a, b, float(t), dot_threshold)
    return out.astype(dtype if np.issubdtype(dtype, np.floating) else np.float64)


def interpolation_distances(all_t, noise, latents, alphas: int = 25) -> np.ndarray:
    """``get_interpolations_distances``: (T, alphas) float64 array, entry [i, j] = mean over samples k of
    || all_t[i, k] - (alpha_j * latents[k] + (1 - alpha_j) * noise[k]) ||_2, alpha = linspace(0, 1, alphas)
    (j = 0 is the noise, j = alphas-1 the latent). all_t (T, N, C, H, W) may be a memmap; it is read one step and
    block at a time. Uses |e - alpha f|^2 = |e|^2 - 2 alpha e.f + alpha^2 |f|^2 with e = x - noise,
    f = latent - noise in float64 (absolute error ~1e-8 |e|, far below the float32 rounding upstream)."""
    noise, latents = flat_rows(noise), flat_rows(latents)
    n, d = noise.shape
    if latents.shape != (n, d) or np.shape(all_t)[1] != n:
        raise ValueError(f"inconsistent shapes: all_t {np.shape(all_t)}, noise {noise.shape}, latents {latents.shape}")
    alpha = np.linspace(0, 1, alphas)
    blocks = list(row_blocks(n, d))
    out = np.empty((np.shape(all_t)[0], alphas))
    for i in range(out.shape[0]):
        step = np.asarray(all_t[i]).reshape(n, d)
        total = np.zeros(alphas)
        for sl in blocks:
            nb = np.asarray(noise[sl], np.float64)
            e = np.asarray(step[sl], np.float64) - nb
            f = np.asarray(latents[sl], np.float64) - nb
            ee, ef, ff = (np.einsum("nd,nd->n", u, v)[:, None] for u, v in ((e, e), (e, f), (f, f)))
            total += np.sqrt(np.maximum(ee - 2.0 * alpha * ef + np.square(alpha) * ff, 0.0)).sum(axis=0)
        out[i] = total / n
    return out


def min_max_scale(arr) -> np.ndarray:
    """Per-row min-max scaling to [0, 1] (``plotting.interpolate_denoising.min_max_scale``, axis 1)."""
    arr = np.asarray(arr, np.float64)
    lo = arr.min(axis=1, keepdims=True)
    hi = arr.max(axis=1, keepdims=True)
    return (arr - lo) / (hi - lo)
