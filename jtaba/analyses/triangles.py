"""The most probable noise-image-latent triangle and the mean angles and distances (paper Sec. 3.3, Tab. 3,
App. B, Tab. 10, Fig. 9; upstream ``most_probable_triangle.py``, ``calc_angles``, ``calc_distances``).

Vertices: "image" x_0 (the sample), "noise" x_T, "latent" x̂_T (its DDIM inversion); per sample i the three arrays'
rows i, flattened to C*H*W values, form one triangle. Float64 throughout (``jtaba.metrics.triangles``).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jtaba.analyses._result import Result
from jtaba.metrics.triangles import (
    ANGLE_BIN_EDGES,
    angle_histogram,
    calc_angles,
    calc_distances,
    most_probable_triangle,
    vertex_angles,
)

VERTICES = ("image", "noise", "latent")  # paper column order (Tab. 3)
RUN_ARRAYS = ("noise", "samples", "latents")


@dataclasses.dataclass(frozen=True)
class MostProbableTriangle(Result):
    """Integer angles (degrees, 1-degree bin left edges) at the three vertices, summing to 180, and the joint
    probability of the three bins."""
    latent: int
    image: int
    noise: int
    probability: float


@dataclasses.dataclass(frozen=True)
class TriangleStats(Result):
    """Tab. 3 of one set of triangles.

    ``histograms``: {"bin_left_edges": 1..178, "image" / "noise" / "latent": 178 bin probabilities} (None when no
    angle falls in [1, 179]); ``most_probable_triangle``: None when no triangle has a positive joint probability
    (e.g. very small N; the reason in ``most_probable_triangle_error``); ``mean_sample_angle``: the mean per-sample
    angle per vertex (degrees); ``calc_angles``: upstream's acos of the mean cosine per vertex (``mean_cossim_img``,
    ``_noise``, ``_latent``, with the meaningless ``std_cossim_*`` kept for parity); ``calc_distances``: mean and
    unbiased std over samples of the L2 sides (``mean_l2_img_lat``, ``img_noise``, ``noise_lat``; ``std_l2_*``)."""
    most_probable_triangle: MostProbableTriangle | None
    histograms: dict | None
    mean_sample_angle: dict
    calc_angles: dict
    calc_distances: dict
    most_probable_triangle_error: str | None = None

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        if self.most_probable_triangle_error is None:  # the key is only written when there is no triangle
            del out["most_probable_triangle_error"]
        return out


def _histograms(hists: dict) -> dict:
    return {"bin_left_edges": ANGLE_BIN_EDGES[:-1].tolist(), **{k: np.asarray(hists[k]).tolist() for k in VERTICES}}


def triangle_stats(noise, samples, latents, arithmetic: str = "float64") -> TriangleStats:
    """``TriangleStats`` of (N, C, H, W) noise, samples and latents (arrays or memory maps); ``arithmetic``
    "float16": the per-sample angles and the most probable triangle as upstream computed them for DiT / IF
    (``jtaba.metrics.triangles.vertex_angles``)."""
    angle_l, angle_s, angle_n = vertex_angles(noise, samples, latents, arithmetic)
    per_sample = {"latent": angle_l, "image": angle_s, "noise": angle_n}
    triangle, histograms, error = None, None, None
    try:
        t = most_probable_triangle(noise, samples, latents, arithmetic)
        triangle = MostProbableTriangle(t.angle_l, t.angle_s, t.angle_n, t.probability)
        histograms = _histograms({"latent": t.hist_l, "image": t.hist_s, "noise": t.hist_n})
    except ValueError as e:
        error = str(e)
        try:  # the histograms alone, when only the search found nothing
            histograms = _histograms({k: angle_histogram(v) for k, v in per_sample.items()})
        except ValueError:
            pass
    return TriangleStats(
        most_probable_triangle=triangle, histograms=histograms,
        mean_sample_angle={k: float(np.nanmean(per_sample[k])) for k in VERTICES},
        calc_angles=calc_angles(noise, samples, latents), calc_distances=calc_distances(noise, samples, latents),
        most_probable_triangle_error=error)


def of_run(run, arithmetic: str = "float64") -> TriangleStats:
    """``triangle_stats`` of a finished ``jtaba.runs.Run`` (its noise, samples and latents)."""
    return triangle_stats(*(run[k] for k in RUN_ARRAYS), arithmetic)
