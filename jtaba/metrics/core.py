"""The ``metrics`` object of metrics.json written by every sample / invert / reconstruct run (upstream
``taba/scripts/sampling/run_*_sampling.py``)."""
from __future__ import annotations

from jtaba.metrics.correlation import top_k_corr_in_patches
from jtaba.metrics.distribution import kl_div, mae, stats

CORRELATION_PATCH = 8
CORRELATION_TOP_K = 20


def core_metrics(noise, latents, samples=None, samples2=None) -> dict:
    """metrics.json["metrics"] from NCHW arrays as on disk (diffusion space; for LDM / DiT the image error is taken
    on the decoded images the caller passes as samples / samples2):
    kl_div_noise_latent (1-D Gaussian KL, noise || latents), reconstruction_error_noise (mean |noise - latents|),
    correlation (latents, patch 8, top 20: {mean, std}; None for one sample), latent_stats, noise_stats ({mean,
    std}), and reconstruction_error_images (mean |samples2 - samples|) when both samples and samples2 are given.
    All values are python floats (JSON-ready)."""
    out = {
        "kl_div_noise_latent": kl_div(noise, latents),
        "reconstruction_error_noise": mae(noise, latents),
        "correlation": (top_k_corr_in_patches(latents, patch_size=CORRELATION_PATCH, top_k=CORRELATION_TOP_K)
                        if len(latents) > 1 else None),  # not defined for one sample
        "latent_stats": stats(latents),
        "noise_stats": stats(noise),
    }
    if samples is not None and samples2 is not None:
        out["reconstruction_error_images"] = mae(samples2, samples)
    return out
