"""Spatial relations of noise, samples and latents over training time (paper App. G.1, G.2, Fig. 14-15; upstream
OLD ``trainsteps`` scripts): the statistics of one checkpoint's noise / samples / latents as a table row.
``experiments.training_dynamics`` samples and inverts with every saved checkpoint and keeps the rows resumable.
"""
from __future__ import annotations

ANGLE_KEYS = {"angle_image": "mean_cossim_img", "angle_noise": "mean_cossim_noise",
              "angle_latent": "mean_cossim_latent"}


def checkpoint_stats(noise, samples, latents, samples2=None) -> dict:
    """One table row's statistics from (N, C, H, W) arrays: vertex angles (degrees, acos of the mean cosine),
    L2 distances mean / std (+ ``mean_mse_img_img2`` with ``samples2``), ``mae_noise_latent`` and assignment
    accuracies (fractions): ``acc_img_to_noise`` / ``acc_noise_to_img`` (noise vs samples) and
    ``acc_img_to_latent`` / ``acc_latent_to_img`` (latents vs samples)."""
    from jtaba.metrics import assignment_accuracy, calc_angles, calc_distances, mae

    angles = calc_angles(noise, samples, latents)
    row = {k: angles[v] for k, v in ANGLE_KEYS.items()}
    row.update(calc_distances(noise, samples, latents, samples2))
    row["mae_noise_latent"] = mae(noise, latents)
    noise_acc, latent_acc = assignment_accuracy(noise, samples), assignment_accuracy(latents, samples)
    row.update(acc_img_to_noise=noise_acc["img_to_noise"], acc_noise_to_img=noise_acc["noise_to_img"],
               acc_img_to_latent=latent_acc["img_to_noise"], acc_latent_to_img=latent_acc["noise_to_img"])
    return row
