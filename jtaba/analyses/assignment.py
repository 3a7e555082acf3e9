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
class Accuracy(Result):
    """One direction's accuracy in percent: mean and unbiased sd over the chunks (NaN for one chunk) and the
    accuracy of each chunk (``divs`` values)."""
    mean: float
    std: float
    per_div: list[float]


@dataclasses.dataclass(frozen=True)
class Accuracies(Result):
    """Tab. 8 / Tab. 11 row: the four directions of ``DIRECTIONS`` (x -> y: the share of x whose nearest y is its
    own partner)."""
    image_to_noise: Accuracy
    noise_to_image: Accuracy
    image_to_latent: Accuracy
    latent_to_image: Accuracy


@dataclasses.dataclass(frozen=True)
class AttractorTable(Result):
    """Fig. 12B-C / 13 for one set x: the sample indices nearest to the most items of x (most first, ties by index),
    how many items each is nearest to, their ranks (0 = lowest) by pixel variance and by mean square (distance to
    the zero image); how many distinct samples are nearest to some item, of ``items`` items."""
    index: list[int]
    count: list[int]
    variance_rank: list[int]
    origin_rank: list[int]
    distinct_nearest: int
    items: int


@dataclasses.dataclass(frozen=True)
class LowestVariance(Result):
    """The least variant samples (indices, lowest first) and their unbiased pixel variances."""
    index: list[int]
    variance: list[float]


@dataclasses.dataclass(frozen=True)
class WrongAssignments(Result):
    """Fig. 12A: the first shown noises of the first chunk (``chunk`` pairs) whose nearest sample is not their own:
    noise index, assigned sample index, mean squared distance to their own and to the assigned sample; ``wrong``:
    how many of the chunk's noises are wrongly assigned (all of them, not only those shown)."""
    noise_index: list[int]
    assigned: list[int]
    mse_own: list[float]
    mse_assigned: list[float]
    wrong: int
    chunk: int


@dataclasses.dataclass(frozen=True)
class AssignmentStats(Result):
    """Tab. 8 and Fig. 12-13 of one set: the accuracies, the attractors of the noises and of the latents ({"noise",
    "latent"}), the least variant samples, the median sample variance and Fig. 12A's wrong noise -> image
    assignments."""
    accuracy: Accuracies
    attractors: dict[str, AttractorTable]
    lowest_variance: LowestVariance
    median_variance: float
    wrong_noise_to_image: WrongAssignments


def accuracies(noise, samples, latents, divs: int) -> Accuracies:
    """The four directions' accuracies over ``divs`` chunks (``assignment_accuracy_divs``)."""
    from jtaba.metrics import assignment_accuracy_divs

    sets = {"noise": noise, "latents": latents}
    by_x = {k: assignment_accuracy_divs(sets[k], samples, divs) for k in sets}
    return Accuracies(**{key: Accuracy(**by_x[x][direction]) for key, (x, direction) in DIRECTIONS.items()})


def _ranks(values: np.ndarray) -> np.ndarray:
    """Rank of each value in ascending order (0 = smallest; ties by index)."""
    rank = np.empty(len(values), np.int64)
    rank[np.argsort(values, kind="stable")] = np.arange(len(values))
    return rank


def attractor_table(x, samples, top: int, variance_rank: np.ndarray, origin_rank: np.ndarray) -> AttractorTable:
    """The ``top`` samples nearest to the most items of ``x`` (over all N at once), with their ranks from the (N,)
    ``variance_rank`` and ``origin_rank`` of the samples."""
    from jtaba.metrics import attractor_counts, most_attractive

    counts = attractor_counts(x, samples)
    idx = most_attractive(counts, top)
    return AttractorTable(index=idx.tolist(), count=counts[idx].tolist(), variance_rank=variance_rank[idx].tolist(),
                          origin_rank=origin_rank[idx].tolist(), distinct_nearest=int((counts > 0).sum()),
                          items=len(counts))


def wrong_assignments(noise, samples, chunk: int, top: int) -> WrongAssignments:
    """Fig. 12A: up to ``top`` wrongly assigned noises of the first ``chunk`` pairs (nearest sample by mean squared
    distance, within the chunk as the accuracies)."""
    from jtaba.metrics import nearest_indices

    x, y = np.asarray(samples[:chunk], np.float64), np.asarray(noise[:chunk], np.float64)
    assigned = nearest_indices(x, y)[0]  # nearest sample for each noise
    wrong = np.flatnonzero(assigned != np.arange(chunk))

    def mse(i, j):
        return float(np.mean(np.square(y[i] - x[j])))

    shown = wrong[:top]
    return WrongAssignments(noise_index=shown.tolist(), assigned=assigned[shown].tolist(),
                            mse_own=[mse(i, i) for i in shown], mse_assigned=[mse(i, assigned[i]) for i in shown],
                            wrong=int(len(wrong)), chunk=chunk)


def assignment_stats(noise, samples, latents, divs: int = 8, top: int = 8) -> AssignmentStats:
    """``AssignmentStats`` of one set of (N, C, H, W) noise, samples and latents: accuracies over ``divs`` chunks,
    the ``top`` attractors and least variant samples, and up to ``top`` wrong assignments."""
    from jtaba.metrics import lowest_variance, sample_mean_squares, sample_variances

    var = sample_variances(samples)
    variance_rank, origin_rank = _ranks(var), _ranks(sample_mean_squares(samples))
    low_idx, low_var = lowest_variance(samples, top)
    return AssignmentStats(
        accuracy=accuracies(noise, samples, latents, divs),
        attractors={"noise": attractor_table(noise, samples, top, variance_rank, origin_rank),
                    "latent": attractor_table(latents, samples, top, variance_rank, origin_rank)},
        lowest_variance=LowestVariance(index=low_idx.tolist(), variance=low_var.tolist()),
        median_variance=float(np.median(var)),
        wrong_noise_to_image=wrong_assignments(noise, samples, len(noise) // divs, top))
