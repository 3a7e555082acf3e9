"""How far tf32 and bfloat16 move the paper's quantities from true float32 (beyond the paper; ``jtaba.precision``):
per precision, the per-sample max |difference| of samples, latents and reconstructions from the float32 run's, and
the paper's numbers (Tab. 2 latent correlation, Tab. 9 KL, Tab. 3 mean angles, Tab. 8 accuracies) with their change.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jtaba.analyses._result import Result


@dataclasses.dataclass(frozen=True)
class PrecisionTable(Result):
    """``rows``: per precision {"precision", "<array>_max_abs_mean" / "_max_abs_max" for samples, latents,
    samples2, each paper number and its "delta_" from float32's}; ``per_sample``: {precision: {array: (N,) max
    |difference|}}."""
    rows: list
    per_sample: dict


def paper_numbers(run) -> dict:
    """The quantities whose change is reported, from one run's files."""
    from jtaba.metrics import assignment_accuracy, calc_angles, kl_div, top_k_corr_in_patches

    angles = calc_angles(run["noise"], run["samples"], run["latents"])
    noise_acc = assignment_accuracy(run["noise"], run["samples"])
    latent_acc = assignment_accuracy(run["latents"], run["samples"])
    return {"latent_correlation": top_k_corr_in_patches(run["latents"], 8, 20)["mean"],
            "kl_noise_latent": kl_div(run["noise"], run["latents"]),
            "angle_image": angles["mean_cossim_img"], "angle_noise": angles["mean_cossim_noise"],
            "angle_latent": angles["mean_cossim_latent"],
            "acc_noise_to_img": noise_acc["noise_to_img"], "acc_latent_to_img": latent_acc["noise_to_img"]}


def per_sample_max_abs(a, b) -> np.ndarray:
    """(N,) max |a - b| per sample, float64."""
    return np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).reshape(len(a), -1).max(axis=1)


def of_runs(runs: dict) -> PrecisionTable:
    """``PrecisionTable`` of finished standard runs by precision name (one of them "float32", the reference)."""
    ref = runs["float32"]
    numbers = {p: paper_numbers(r) for p, r in runs.items()}
    rows, per_sample = [], {}
    for p, r in runs.items():
        errs = {k: per_sample_max_abs(r[k], ref[k]) for k in ("samples", "latents", "samples2")}
        per_sample[p] = {k: v.tolist() for k, v in errs.items()}
        row = {"precision": p}
        for k, v in errs.items():
            row[f"{k}_max_abs_mean"], row[f"{k}_max_abs_max"] = float(v.mean()), float(v.max())
        row.update(numbers[p])
        row.update({f"delta_{k}": v - numbers["float32"][k] for k, v in numbers[p].items()})
        rows.append(row)
    return PrecisionTable(rows, per_sample)
