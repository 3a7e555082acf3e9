"""Attractor samples of the L2 nearest assignment (L2 assignment diagnostics; paper Fig. 12B-C, Fig. 13; App. E.3).

Upstream OLD ``distance_classification.plot_most_attractive``: for every noise (or latent) x_j the nearest sample
under mean squared distance; a sample's count is how many x_j it is nearest to; the samples with the largest counts
are the "attractors" (ties: lower sample index first; upstream's torch.sort left their order unspecified).
``mse_classify_distances __main__``: samples sorted by their pixel variance (torch ``Tensor.var()``: unbiased, over
all C*H*W elements), the least variant shown. ``sample_mean_squares``: each sample's mean squared distance to the
zero image, the mean of the Gaussian noise: for a noise x unrelated to y, mean((x - y)^2) ~ 1 + mean(y^2), so the
samples nearest to the origin attract the most noises (paper App. E.3: attractors lie "close to the mean").

Nearest indices come from ``assignment.nearest_indices`` (exact as the direct float64 computation); it forms the
(len(y), len(x)) float64 distance matrix (10,240 x 10,240: 0.8 GB).
"""
from __future__ import annotations

import numpy as np

from jtaba.metrics._chunks import flat_rows, row_blocks
from jtaba.metrics.assignment import nearest_indices


def attractor_counts(x, y) -> np.ndarray:
    """(len(y),) int64: for each y[i], the number of x[j] whose nearest y (mean squared distance) is y[i]."""
    _, y_for_x = nearest_indices(x, y)
    return np.bincount(y_for_x, minlength=np.shape(y)[0]).astype(np.int64)


def most_attractive(counts, top: int) -> np.ndarray:
    """Indices of the ``top`` largest counts, largest first (ties: lower index first); only counts > 0."""
    counts = np.asarray(counts)
    order = np.argsort(-counts, kind="stable")[:top]
    return order[counts[order] > 0]


def sample_variances(samples) -> np.ndarray:
    """(N,) float64 unbiased variance of each sample over all its C*H*W elements (``sample.var()``)."""
    flat = flat_rows(samples)
    return np.concatenate([np.asarray(flat[sl], np.float64).var(axis=1, ddof=1)
                           for sl in row_blocks(flat.shape[0], flat.shape[1])])


def sample_mean_squares(samples) -> np.ndarray:
    """(N,) float64 mean over C*H*W of each sample's squared values (mean squared distance to the zero image)."""
    flat = flat_rows(samples)
    return np.concatenate([np.square(np.asarray(flat[sl], np.float64)).mean(axis=1)
                           for sl in row_blocks(flat.shape[0], flat.shape[1])])


def lowest_variance(samples, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, variances) of the ``k`` least variant samples, ascending (ties: lower index first)."""
    var = sample_variances(samples)
    order = np.argsort(var, kind="stable")[:k]
    return order, var[order]
