"""L2 nearest assignment between noises, latents and samples (paper Sec. 4.3, Tab. 8, Tab. 11, Fig. 12-13, App. E;
upstream ``mse_classify_distances``, ``plot_most_attractive``).

The N pairs are split into ``divs`` consecutive chunks; within a chunk every item is assigned to the nearest item of
the other set (mean squared distance over C*H*W) and the accuracy is the share assigned to its own partner, mean ± sd
over chunks in percent, in four directions. Attractors: over all N items, the samples nearest to the most noises /
latents, with their ranks by pixel variance and by distance to the zero image (App. E.3).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jtaba.analyses._result import Result

# (table key, x set, direction of jtaba.metrics.assignment_accuracy_divs); y is always the samples.
DIRECTIONS = {"image_to_noise": ("noise", "img_to_noise"), "noise_to_image": ("noise", "noise_to_img"),
              "image_to_latent": ("latents", "img_to_noise"), "latent_to_image": ("latents", "noise_to_img")}


@dataclasses.dataclass(frozen=True)
class AssignmentStats(Result):
    """Tab. 8 and Fig. 12-13 of one set: ``accuracy`` {direction: {"mean", "std", "per_div"}} (percent);
    ``attractors`` {"noise" / "latent": {"index", "count", "variance_rank", "origin_rank", "distinct_nearest",
    "items"}}; ``lowest_variance`` {"index", "variance"}; the median sample variance; ``wrong_noise_to_image``
    (Fig. 12A: {"noise_index", "assigned", "mse_own", "mse_assigned", "wrong", "chunk"} of the first chunk)."""
    accuracy: dict
    attractors: dict
    lowest_variance: dict
    median_variance: float
    wrong_noise_to_image: dict


def accuracies(noise, samples, latents, divs: int) -> dict:
    """The four directions {key: {"mean", "std", "per_div"}} in percent (``assignment_accuracy_divs``)."""
    from jtaba.metrics import assignment_accuracy_divs

    sets = {"noise": noise, "latents": latents}
    by_x = {k: assignment_accuracy_divs(sets[k], samples, divs) for k in sets}
    return {key: by_x[x][direction] for key, (x, direction) in DIRECTIONS.items()}


def _ranks(values: np.ndarray) -> np.ndarray:
    """Rank of each value in ascending order (0 = smallest; ties by index)."""
    rank = np.empty(len(values), np.int64)
    rank[np.argsort(values, kind="stable")] = np.arange(len(values))
    return rank


def attractor_table(x, samples, top: int, ranks: dict) -> dict:
    """The ``top`` samples nearest to the most items of ``x``: indices, counts, their ranks in ``ranks``
    ({"variance_rank": (N,), "origin_rank": (N,)}); how many distinct samples are nearest to some x."""
    from jtaba.metrics import attractor_counts, most_attractive

    counts = attractor_counts(x, samples)
    idx = most_attractive(counts, top)
    return {"index": idx.tolist(), "count": counts[idx].tolist(), **{k: r[idx].tolist() for k, r in ranks.items()},
            "distinct_nearest": int((counts > 0).sum()), "items": len(counts)}


def wrong_assignments(noise, samples, chunk: int, top: int) -> dict:
    """Fig. 12A: the first ``top`` noises of the first chunk whose nearest sample (mean squared distance, within the
    chunk as the accuracies) is not their own: noise index, assigned sample index, MSE to their own and to the
    assigned sample, and how many of the chunk's noises are wrong."""
    from jtaba.metrics import nearest_indices

    x, y = np.asarray(samples[:chunk], np.float64), np.asarray(noise[:chunk], np.float64)
    assigned = nearest_indices(x, y)[0]  # nearest sample for each noise
    wrong = np.flatnonzero(assigned != np.arange(chunk))

    def mse(i, j):
        return float(np.mean(np.square(y[i] - x[j])))

    shown = wrong[:top]
    return {"noise_index": shown.tolist(), "assigned": assigned[shown].tolist(),
            "mse_own": [mse(i, i) for i in shown], "mse_assigned": [mse(i, assigned[i]) for i in shown],
            "wrong": int(len(wrong)), "chunk": chunk}


def assignment_stats(noise, samples, latents, divs: int = 8, top: int = 8) -> AssignmentStats:
    """``AssignmentStats`` of one set of (N, C, H, W) noise, samples and latents: accuracies over ``divs`` chunks,
    the ``top`` attractors and least variant samples, and up to ``top`` wrong assignments."""
    from jtaba.metrics import lowest_variance, sample_mean_squares, sample_variances

    var = sample_variances(samples)
    ranks = {"variance_rank": _ranks(var), "origin_rank": _ranks(sample_mean_squares(samples))}
    low_idx, low_var = lowest_variance(samples, top)
    return AssignmentStats(
        accuracy=accuracies(noise, samples, latents, divs),
        attractors={"noise": attractor_table(noise, samples, top, ranks),
                    "latent": attractor_table(latents, samples, top, ranks)},
        lowest_variance={"index": low_idx.tolist(), "variance": low_var.tolist()},
        median_variance=float(np.median(var)),
        wrong_noise_to_image=wrong_assignments(noise, samples, len(noise) // divs, top))
