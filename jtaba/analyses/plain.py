"""Plain vs non-plain image areas: how far the latents are from their noise there (paper Sec. 3.3, Tab. 5, App. C,
Fig. 11; upstream ``find_plain_areas``).

Plain masks come from the final samples in the diffusion space (pixels in [-1, 1]; VAE latents for latent models):
a position is plain when the mean of its absolute differences to the next row and the next column is below the
threshold in every channel. Over the plain and the non-plain positions (all channels and samples): the mean absolute
error between noise and latent and the std of the latent values, with the noise's own std there as a control.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jtaba.analyses._result import Result
from jtaba.metrics import find_plain_areas, masked_mean_std, plain_stats

STAT_KEYS = ("mae_plain", "mae_non_plain", "std_plain", "std_non_plain")
THRESHOLD = 0.025  # App. C, for images in [-1, 1]


@dataclasses.dataclass(frozen=True)
class PlainTable(Result):
    """Tab. 5: ``latent`` {mae_plain, mae_non_plain, std_plain, std_non_plain}, the ``noise`` control {std_plain,
    std_non_plain}, the share of plain positions, the number of samples with any, the per-sample share's summary
    {mean, median, min, max} and the per-sample shares (N,) themselves (not written to JSON)."""
    latent: dict[str, float]
    noise: dict[str, float]
    plain_fraction: float
    samples_with_plain: int
    per_sample_plain_fraction: dict[str, float]
    per_sample_fraction: np.ndarray = dataclasses.field(repr=False)

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del out["per_sample_fraction"]
        return out


def plain_table(noise, samples, latents, threshold: float = THRESHOLD) -> PlainTable:
    """``PlainTable`` of (N, C, H, W) noise, samples and latents; masks from the samples."""
    mask = find_plain_areas(samples, threshold)
    lat = plain_stats(noise, latents, mask)
    per_sample = mask.reshape(len(mask), -1).mean(axis=1)
    return PlainTable(
        latent={k: lat[k] for k in STAT_KEYS},
        noise={"std_plain": masked_mean_std(noise, mask)[1], "std_non_plain": masked_mean_std(noise, ~mask)[1]},
        plain_fraction=lat["plain_fraction"], samples_with_plain=int((per_sample > 0).sum()),
        per_sample_plain_fraction={"mean": float(per_sample.mean()), "median": float(np.median(per_sample)),
                                   "min": float(per_sample.min()), "max": float(per_sample.max())},
        per_sample_fraction=per_sample)


def of_run(run, threshold: float = THRESHOLD) -> PlainTable:
    """``plain_table`` of a finished ``jtaba.runs.Run``."""
    return plain_table(run["noise"], run["samples"], run["latents"], threshold)
