"""Where the sampling trajectory runs relative to the noise-latent segment (paper Sec. 3.3, Fig. 3; upstream
``interpolate_with_steps.py``, ``plotting/interpolate_denoising.py``).

Per sampling step k = 1..T: the mean L2 distance of the sampling state to ``alphas`` points on the segment from the
noise (alpha 0) to the latent (alpha 1), the nearest alpha, and the share of sampling states (and of inversion
states at the same noise level) closer to the noise than to the latent.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jtaba.analyses._result import Result


@dataclasses.dataclass(frozen=True)
class TrajectoryTable(Result):
    """Fig. 3 in numbers, per sampling step k = 1..T (lists): ``distances`` (T, alphas) mean L2 to each point,
    ``scaled`` their per-step min-max scaling, the nearest alpha (index and value), and the shares closer to the
    noise of the sampling states, of the inversion states at the same level and of the inversion states by step."""
    alphas: list
    distances: list
    scaled: list
    nearest_alpha_index: list
    nearest_alpha: list
    closer_to_noise_sampling: list
    closer_to_noise_inversion_same_level: list
    closer_to_noise_inversion_by_step: list


def trajectory_table(all_t_samples, all_t_latents, noise, latents, alphas: int = 25) -> TrajectoryTable:
    """``TrajectoryTable`` of the recorded sampling states (T, N, C, H, W), the recorded inversion states
    (T, N, C, H, W), the noise and the final latents (N, C, H, W)."""
    from jtaba.metrics import closer_to_noise_fraction, interpolation_distances, min_max_scale

    if alphas < 2:
        raise ValueError(f"alphas must be at least 2, got {alphas}")
    dist = interpolation_distances(all_t_samples, noise, latents, alphas)
    alpha = np.linspace(0, 1, alphas)
    nearest = dist.argmin(axis=1)
    sampling = closer_to_noise_fraction(all_t_samples, noise, latents)
    inversion = closer_to_noise_fraction(all_t_latents, noise, latents)  # after 1..T inversion steps
    # sampling step k (level T - k) <-> inversion after T - k steps; k = T: the image, as the sampling state
    same_level = np.concatenate([inversion[::-1][1:], sampling[-1:]])
    return TrajectoryTable(alpha.tolist(), dist.tolist(), min_max_scale(dist).tolist(), nearest.tolist(),
                           alpha[nearest].tolist(), sampling.tolist(), same_level.tolist(), inversion.tolist())


def of_runs(sampling, inversion, alphas: int = 25) -> TrajectoryTable:
    """``trajectory_table`` of a finished recorded sampling run and the recorded inversion of its samples."""
    return trajectory_table(sampling["all_t_samples"], inversion["all_t_latents"], sampling["noise"],
                            inversion["latents"], alphas)
