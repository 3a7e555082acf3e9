"""Which end of the noise-latent side a trajectory state lies nearer to (paper Fig. 3, upstream
``interpolate_with_steps.build_norm_df_closer``).

For states (T, N, C, H, W) (a recorded sampling or inversion trajectory), noise x_T and latent x̂_T (N, C, H, W):
per step i the fraction of samples k with ||states[i, k] - noise[k]||_2 < ||states[i, k] - latent[k]||_2 (strict:
ties count as closer to the latent, as upstream's ``if d_noise < d_latent ... else``). Upstream expected T + 1
states (stale); here any number of states, each read one at a time (memmaps work). Float64.
"""
from __future__ import annotations

import numpy as np

from jtaba.metrics._chunks import flat_rows, row_blocks


def closer_to_noise(states, noise, latents) -> np.ndarray:
    """(T, N) bool: state i of sample k is strictly closer (L2) to its noise than to its latent."""
    noise, latents = flat_rows(noise), flat_rows(latents)
    n, d = noise.shape
    if latents.shape != (n, d) or np.shape(states)[1] != n:
        raise ValueError(f"inconsistent shapes: states {np.shape(states)}, noise {noise.shape}, "
                         f"latents {latents.shape}")
    out = np.empty((np.shape(states)[0], n), bool)
    for i in range(out.shape[0]):
        step = np.asarray(states[i]).reshape(n, d)
        for sl in row_blocks(n, d):
            x = np.asarray(step[sl], np.float64)
            to_noise = np.square(x - np.asarray(noise[sl], np.float64)).sum(axis=1)
            to_latent = np.square(x - np.asarray(latents[sl], np.float64)).sum(axis=1)
            out[i, sl] = to_noise < to_latent
    return out


def closer_to_noise_fraction(states, noise, latents) -> np.ndarray:
    """(T,) float64 fraction of samples whose state i is closer to the noise than to the latent."""
    return closer_to_noise(states, noise, latents).mean(axis=1)
