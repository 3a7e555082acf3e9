"""How far tf32 and bfloat16 move the paper's quantities from true float32 (beyond the paper; ``jtaba.precision``):
per precision, the per-sample max |difference| of samples, latents and reconstructions from the float32 run's, and
the paper's numbers (Tab. 2 latent correlation, Tab. 9 KL, Tab. 3 mean angles, Tab. 8 accuracies) with their change.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jtaba.analyses._result import Result

ARRAYS = ("samples", "latents", "samples2")  # compared with float32's, per sample


@dataclasses.dataclass(frozen=True)
class PaperNumbers(Result):
    """The paper's quantities of one run: Tab. 2 latent patch correlation (mean of the top 20 in 8x8 patches),
    Tab. 9 KL(noise || latents), Tab. 3 angles at the image, noise and latent vertices (degrees, acos of the mean
    cosine), Tab. 8 top-1 accuracies noise -> image and latent -> image (fractions, all N at once)."""
    latent_correlation: float
    kl_noise_latent: float
    angle_image: float
    angle_noise: float
    angle_latent: float
    acc_noise_to_img: float
    acc_latent_to_img: float

    def minus(self, other: PaperNumbers) -> PaperNumbers:
        """Each quantity minus ``other``'s."""
        return PaperNumbers(**{f.name: getattr(self, f.name) - getattr(other, f.name)
                               for f in dataclasses.fields(self)})


@dataclasses.dataclass(frozen=True)
class MaxAbs(Result):
    """One array's per-sample max |difference| from float32's: the mean and the max over samples."""
    mean: float
    max: float


@dataclasses.dataclass(frozen=True)
class PrecisionRow(Result):
    """One precision: ``max_abs`` by array of ``ARRAYS``, its ``PaperNumbers`` and their change from float32's. JSON
    (one flat CSV row): "precision", "<array>_max_abs_mean" / "_max_abs_max", each number and its "delta_"."""
    precision: str
    max_abs: dict[str, MaxAbs]
    numbers: PaperNumbers
    delta: PaperNumbers

    def to_json(self) -> dict:
        row = {"precision": self.precision}
        for k, m in self.max_abs.items():
            row[f"{k}_max_abs_mean"], row[f"{k}_max_abs_max"] = m.mean, m.max
        return {**row, **self.numbers.to_json(), **{f"delta_{k}": v for k, v in self.delta.to_json().items()}}


@dataclasses.dataclass(frozen=True)
class PrecisionTable(Result):
    """``rows``: one per precision, float32's first; ``per_sample``: {precision: {array: (N,) max |difference|}}."""
    rows: list[PrecisionRow]
    per_sample: dict[str, dict[str, list[float]]]

    def to_json(self) -> dict:
        return {"rows": [r.to_json() for r in self.rows], "per_sample": self.per_sample}


def paper_numbers(run) -> PaperNumbers:
    """``PaperNumbers`` of one run's files."""
    from jtaba.metrics import assignment_accuracy, calc_angles, kl_div, top_k_corr_in_patches

    angles = calc_angles(run["noise"], run["samples"], run["latents"])
    return PaperNumbers(latent_correlation=top_k_corr_in_patches(run["latents"], 8, 20)["mean"],
                        kl_noise_latent=kl_div(run["noise"], run["latents"]),
                        angle_image=angles["mean_cossim_img"], angle_noise=angles["mean_cossim_noise"],
                        angle_latent=angles["mean_cossim_latent"],
                        acc_noise_to_img=assignment_accuracy(run["noise"], run["samples"])["noise_to_img"],
                        acc_latent_to_img=assignment_accuracy(run["latents"], run["samples"])["noise_to_img"])


def per_sample_max_abs(a, b) -> np.ndarray:
    """(N,) max |a - b| per sample, float64."""
    return np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).reshape(len(a), -1).max(axis=1)


def of_runs(runs: dict) -> PrecisionTable:
    """``PrecisionTable`` of finished standard runs by precision name (one of them "float32", the reference)."""
    ref = runs["float32"]
    numbers = {p: paper_numbers(r) for p, r in runs.items()}
    rows, per_sample = [], {}
    for p, r in runs.items():
        errs = {k: per_sample_max_abs(r[k], ref[k]) for k in ARRAYS}
        per_sample[p] = {k: v.tolist() for k, v in errs.items()}
        rows.append(PrecisionRow(p, {k: MaxAbs(float(v.mean()), float(v.max())) for k, v in errs.items()},
                                 numbers[p], numbers[p].minus(numbers["float32"])))
    return PrecisionTable(rows, per_sample)
