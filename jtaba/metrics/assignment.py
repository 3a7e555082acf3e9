"""L2 nearest assignment between aligned sets (paper Sec. 4.3, App. E; Tab. 8, Tab. 11, Fig. 12-13, Fig. 15).

X (noises or latents) and Y (samples) are aligned (M, C, H, W) sets: pair i is (X[i], Y[i]). Distances are
d[i, j] = mean over (C, H, W) of (X[j] - Y[i])^2 (OLD ``distance_classification._find_closest_x_for_y``).
"img_to_noise" (upstream ``closest_noise_to_sample_acc``) is the fraction of i whose nearest X to Y[i] is X[i];
"noise_to_img" (``closest_sample_to_noise_acc``) the fraction whose nearest Y to X[i] is Y[i]. With X = latents
read "noise" as "latent".

Numerics: the matrix is formed blockwise in float64 via |x|^2 + |y|^2 - 2 x.y (error ~D*eps*(|x|^2 + |y|^2),
D = C*H*W); every argmin whose runner-up lies within a conservative bound of that error is re-decided on the
directly computed float64 sums of (X[j] - Y[i])^2, so the assignments equal those of the exact direct
computation (ties -> lowest index). Upstream computed in float32 on GPU. Pure numpy: deterministic.
"""
from __future__ import annotations

import numpy as np

from jtaba.metrics._chunks import flat_rows, row_blocks

_BLOCK_ROWS = 1024


def _sq_norms(z) -> np.ndarray:
    return np.concatenate([np.square(np.asarray(z[sl], np.float64)).sum(axis=1)
                           for sl in row_blocks(z.shape[0], z.shape[1])])


def _sq_distance_sums(xf, yf, nx, ny) -> np.ndarray:
    """(My, Mx) float64 sum over features of (x_j - y_i)^2 by expansion, in row blocks."""
    out = np.empty((yf.shape[0], xf.shape[0]))
    for ys in row_blocks(yf.shape[0], 1, _BLOCK_ROWS):
        yb = np.asarray(yf[ys], np.float64)
        for xs in row_blocks(xf.shape[0], 1, _BLOCK_ROWS):
            out[ys, xs] = ny[ys, None] + nx[None, xs] - 2.0 * (yb @ np.asarray(xf[xs], np.float64).T)
    return np.maximum(out, 0.0)


def mse_distance_matrix(x, y) -> np.ndarray:
    """(len(y), len(x)) float64 matrix d[i, j] = mean((x[j] - y[i])^2) over all non-leading axes (by expansion,
    not certified; for diagnostics such as most-attractive counts)."""
    xf, yf = flat_rows(x), flat_rows(y)
    return _sq_distance_sums(xf, yf, _sq_norms(xf), _sq_norms(yf)) / xf.shape[1]


def _certified_argmin(dist, tol, exact_row) -> np.ndarray:
    """Row argmins of ``dist`` (entries within ``tol`` of the truth); rows whose runner-up is within 2*tol of the
    minimum are re-decided by ``exact_row(i, candidates)`` -> exact values for those candidates."""
    best = dist.argmin(axis=1)
    near = dist <= dist[np.arange(dist.shape[0]), best][:, None] + 2.0 * tol
    for i in np.flatnonzero(near.sum(axis=1) > 1):
        cand = np.flatnonzero(near[i])
        best[i] = cand[int(np.argmin(exact_row(i, cand)))]
    return best


def nearest_indices(x, y) -> tuple[np.ndarray, np.ndarray]:
    """(nearest X index for each Y[i] (len(y),), nearest Y index for each X[j] (len(x),)) under mean squared
    distance, exact as the direct float64 computation (see module docstring)."""
    xf, yf = flat_rows(x), flat_rows(y)
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(f"feature sizes differ: {np.shape(x)} vs {np.shape(y)}")
    nx, ny = _sq_norms(xf), _sq_norms(yf)
    d = _sq_distance_sums(xf, yf, nx, ny)  # (My, Mx)
    # Expansion error <= ~2*D*eps*(|x|^2 + |y|^2) (norms and dot product); the bound below is >= 32x that.
    tol = max(1e-9, 64 * xf.shape[1] * np.finfo(np.float64).eps) * (nx.max(initial=0) + ny.max(initial=0))

    def sums(a, b):  # exact sum of squares of a (1, D) row minus candidate rows b (k, D)
        return np.square(np.asarray(b, np.float64) - np.asarray(a, np.float64)).sum(axis=1)

    x_for_y = _certified_argmin(d, tol, lambda i, cand: sums(yf[i:i + 1], xf[cand]))
    y_for_x = _certified_argmin(d.T, tol, lambda j, cand: sums(xf[j:j + 1], yf[cand]))
    return x_for_y, y_for_x


def assignment_accuracy(x, y) -> dict:
    """{"img_to_noise", "noise_to_img"}: fractions of correctly assigned pairs (top-1), see module docstring."""
    if np.shape(x)[0] != np.shape(y)[0]:
        raise ValueError(f"sets must be aligned, got {np.shape(x)[0]} and {np.shape(y)[0]} items")
    x_for_y, y_for_x = nearest_indices(x, y)
    idx = np.arange(len(x_for_y))
    return {"img_to_noise": float(np.mean(x_for_y == idx)), "noise_to_img": float(np.mean(y_for_x == idx))}


def assignment_accuracy_divs(x, y, divs: int = 8) -> dict:
    """``img_noise_cls_divs``: split into ``divs`` consecutive chunks of M // divs pairs (remainder dropped), the
    accuracies per chunk, and per direction {"mean", "std" (unbiased over chunks), "per_div"} in percent."""
    m = np.shape(x)[0]
    if np.shape(y)[0] != m:
        raise ValueError(f"sets must be aligned, got {m} and {np.shape(y)[0]} items")
    size = m // divs
    if size == 0:
        raise ValueError(f"{m} pairs cannot be split into {divs} chunks")
    per_div = [assignment_accuracy(x[k * size:(k + 1) * size], y[k * size:(k + 1) * size]) for k in range(divs)]
    out = {}
    for key in ("img_to_noise", "noise_to_img"):
        acc = 100.0 * np.array([r[key] for r in per_div])
        out[key] = {"mean": float(acc.mean()), "std": float(acc.std(ddof=1)) if divs > 1 else float("nan"),
                    "per_div": acc.tolist()}
    return out
