"""Spatial relations of noise, samples and latents over training time (paper App. G.1, G.2, Fig. 14-15; upstream
OLD ``trainsteps`` scripts): the statistics of one checkpoint's noise / samples / latents as a table row.
``experiments.training_dynamics`` samples and inverts with every saved checkpoint and keeps the rows resumable.
"""
from __future__ import annotations

import dataclasses

from jtaba.analyses._result import Result

ANGLE_KEYS = {"angle_image": "mean_cossim_img", "angle_noise": "mean_cossim_noise",
              "angle_latent": "mean_cossim_latent"}


@dataclasses.dataclass(frozen=True)
class CheckpointStats(Result):
    """One checkpoint's table row from (N, C, H, W) noise / samples / latents: the triangle's vertex angles
    (degrees, acos of the mean cosine), the L2 distances' mean and unbiased std over samples (``mean_mse_img_img2``:
    the mean per-sample MSE of samples vs reconstructions, None without ``samples2``; ``to_json`` then leaves it
    out), ``mae_noise_latent`` and the assignment accuracies (fractions): noise vs samples (``acc_img_to_noise`` /
    ``acc_noise_to_img``) and latents vs samples (``acc_img_to_latent`` / ``acc_latent_to_img``)."""
    angle_image: float
    angle_noise: float
    angle_latent: float
    mean_l2_img_lat: float
    mean_l2_img_noise: float
    mean_l2_noise_lat: float
    std_l2_img_lat: float
    std_l2_img_noise: float
    std_l2_noise_lat: float
    mean_mse_img_img2: float | None
    mae_noise_latent: float
    acc_img_to_noise: float
    acc_noise_to_img: float
    acc_img_to_latent: float
    acc_latent_to_img: float

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        if self.mean_mse_img_img2 is None:
            del out["mean_mse_img_img2"]
        return out


def checkpoint_stats(noise, samples, latents, samples2=None) -> CheckpointStats:
    """``CheckpointStats`` of one checkpoint's (N, C, H, W) arrays (``samples2``: its reconstructions, optional)."""
    from jtaba.metrics import assignment_accuracy, calc_angles, calc_distances, mae

    angles = calc_angles(noise, samples, latents)
    distances = calc_distances(noise, samples, latents, samples2)
    noise_acc, latent_acc = assignment_accuracy(noise, samples), assignment_accuracy(latents, samples)
    return CheckpointStats(**{k: angles[v] for k, v in ANGLE_KEYS.items()},
                           **{k: v for k, v in distances.items() if k != "mean_mse_img_img2"},
                           mean_mse_img_img2=distances.get("mean_mse_img_img2"),
                           mae_noise_latent=mae(noise, latents),
                           acc_img_to_noise=noise_acc["img_to_noise"], acc_noise_to_img=noise_acc["noise_to_img"],
                           acc_img_to_latent=latent_acc["img_to_noise"], acc_latent_to_img=latent_acc["noise_to_img"])
