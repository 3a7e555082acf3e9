"""Whole-tensor distribution statistics of noise and latents (paper Sec. 3.2, Tab. 4), in float64.

Inputs are arrays of any shape (files are NCHW); "std" is always the unbiased (ddof=1) estimate, as torch's
``Tensor.std()``. Upstream computes these in the stored dtype (fp16 for DiT/IF); float64 here.
"""
from __future__ import annotations

import numpy as np

from jtaba.metrics._chunks import flat_rows, float64_blocks, row_blocks


def mean_std(x) -> tuple[float, float]:
    """Global mean and unbiased std over all elements (two-pass, float64, bounded memory)."""
    n, total = 0, 0.0
    for (b,) in float64_blocks(x):
        n += b.size
        total += b.sum()
    mean = total / n
    ss = 0.0
    for (b,) in float64_blocks(x):
        ss += np.square(b - mean).sum()
    std = np.sqrt(ss / (n - 1)) if n > 1 else float("nan")
    return float(mean), float(std)


def stats(x) -> dict:
    """``stats_from_tensor``: {"mean", "std"} over all elements (metrics.json ``latent_stats`` / ``noise_stats``)."""
    mean, std = mean_std(x)
    return {"mean": mean, "std": std}


def mae(a, b) -> float:
    """``reconstruction_error``: mean |a - b| over all elements."""
    n, total = 0, 0.0
    for x, y in float64_blocks(a, b):
        n += x.size
        total += np.abs(x - y).sum()
    return float(total / n)


def gaussian_kl(mu_p, sigma_p, mu_q, sigma_q):
    """KL(N(mu_p, sigma_p^2) || N(mu_q, sigma_q^2)) as torch.distributions (elementwise)."""
    var_ratio = np.square(sigma_p / sigma_q)
    t1 = np.square((mu_p - mu_q) / sigma_q)
    return 0.5 * (var_ratio + t1 - 1.0 - np.log(var_ratio))


def kl_div(noise, latents) -> float:
    """``kl_div``: KL(P || Q) of 1-D Gaussians fitted to all elements (mean, unbiased std); P = noise, Q = latents
    (upstream quirk: one Gaussian over every element, not per dimension)."""
    mu_p, sd_p = mean_std(noise)
    mu_q, sd_q = mean_std(latents)
    return float(gaussian_kl(mu_p, sd_p, mu_q, sd_q))


def kl_div2(noise, latents) -> float:
    """``kl_div2`` (unused upstream): per-element Gaussians over the sample axis 0 (std + 1e-6), KL summed over the
    C*H*W positions and divided by C*H*W. Inputs (N, ...)."""
    p, q = flat_rows(noise), flat_rows(latents)
    if p.shape != q.shape:
        raise ValueError(f"shapes differ: {p.shape} vs {q.shape}")
    n, d = p.shape
    total = 0.0
    for cols in row_blocks(d, n):  # column blocks of the (N, D) matrices
        pb = np.asarray(p[:, cols], np.float64)
        qb = np.asarray(q[:, cols], np.float64)
        kl = gaussian_kl(pb.mean(0), pb.std(0, ddof=1) + 1e-6, qb.mean(0), qb.std(0, ddof=1) + 1e-6)
        total += kl.sum()
    return float(total / d)


def latent_variance(latents, per_sample: bool = False) -> float:
    """Tab. 4 latent variance. per_sample=False: global unbiased variance over all elements (= metrics.json
    ``latent_stats.std`` squared); True: mean over samples of each sample's unbiased variance over C*H*W."""
    if not per_sample:
        return mean_std(latents)[1] ** 2
    x = flat_rows(latents)
    variances = [np.asarray(x[sl], np.float64).var(axis=1, ddof=1) for sl in row_blocks(x.shape[0], x.shape[1])]
    return float(np.concatenate(variances).mean())
