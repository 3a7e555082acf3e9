"""Variance of the latents against the noise's (paper Sec. 3.3, Tab. 4; upstream has no script for it).

Both readings of "average variance of the latent encodings" (``jtaba.metrics.latent_variance``): the global variance
over all N*C*H*W elements and the mean over samples of each sample's variance over its C*H*W elements (unbiased
both), with the per-sample variances and a shared-bin histogram of them. Standard Gaussian noise has variance 1.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jtaba.analyses._result import Result
from jtaba.metrics import latent_variance

ROWS = ("noise", "latents")
HIST_BINS = 40
BLOCK_ELEMENTS = 1 << 22  # float64 elements read at a time for the per-sample variances


@dataclasses.dataclass(frozen=True)
class VarianceRow(Result):
    """One array's variances: global (all elements), mean per-sample, and the per-sample sd (None for one sample),
    min and max; in JSON the global one is "global"."""
    global_variance: float
    mean_per_sample: float
    per_sample_sd: float | None
    per_sample_min: float
    per_sample_max: float

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        return {"global": out.pop("global_variance"), **out}


@dataclasses.dataclass(frozen=True)
class VarianceTable(Result):
    """Tab. 4: ``variance`` per row of ``ROWS``, the latents / noise ratios ("global", "mean_per_sample"), the
    per-sample variances (N,) per row and their histogram over ``HIST_BINS`` shared bins ("bin_edges" and a
    count list per row)."""
    variance: dict[str, VarianceRow]
    ratio_latents_to_noise: dict[str, float]
    per_sample_variance: dict[str, np.ndarray]
    histogram: dict

    def to_json(self) -> dict:
        return {"variance": {k: v.to_json() for k, v in self.variance.items()},
                "ratio_latents_to_noise": dict(self.ratio_latents_to_noise),
                "per_sample_variance": {k: np.asarray(v).tolist() for k, v in self.per_sample_variance.items()},
                "histogram": self.histogram}


def per_sample_variances(x) -> np.ndarray:
    """(N,) unbiased variance of each sample over its C*H*W elements, float64, read in row blocks."""
    x = np.asarray(x)
    flat = x.reshape(x.shape[0], -1)
    per = max(1, BLOCK_ELEMENTS // max(1, flat.shape[1]))
    return np.concatenate([np.asarray(flat[s:s + per], np.float64).var(axis=1, ddof=1)
                           for s in range(0, flat.shape[0], per)])


def variance_row(x) -> tuple[VarianceRow, np.ndarray]:
    """(``VarianceRow``, per-sample variances (N,)) of an (N, C, H, W) array."""
    v = per_sample_variances(x)
    row = VarianceRow(latent_variance(x), latent_variance(x, per_sample=True),
                      float(v.std(ddof=1)) if v.size > 1 else None, float(v.min()), float(v.max()))
    return row, v


def variance_table(noise, latents) -> VarianceTable:
    """``VarianceTable`` of (N, C, H, W) noise and latents."""
    rows, per_sample = {}, {}
    for k, x in zip(ROWS, (noise, latents), strict=True):
        rows[k], per_sample[k] = variance_row(x)
    lo = min(v.min() for v in per_sample.values())
    hi = max(v.max() for v in per_sample.values())
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-12, HIST_BINS + 1)
    ratio = {"global": rows["latents"].global_variance / rows["noise"].global_variance,
             "mean_per_sample": rows["latents"].mean_per_sample / rows["noise"].mean_per_sample}
    histogram = {"bin_edges": edges.tolist(), **{k: np.histogram(per_sample[k], bins=edges)[0].tolist() for k in ROWS}}
    return VarianceTable(rows, ratio, per_sample, histogram)


def of_run(run) -> VarianceTable:
    """``variance_table`` of a finished ``jtaba.runs.Run``."""
    return variance_table(run["noise"], run["latents"])
