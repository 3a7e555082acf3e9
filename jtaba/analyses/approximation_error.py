"""The inversion approximation error per step, plain vs non-plain areas (paper Sec. 3.4, Eq. 5, Tab. 6, App. D,
Fig. 4).

From a recorded sampling run (the ground truth of every step) and the recorded teacher-forced (x_t-swapped)
inversion of its samples, per measured inversion step i: the ε the inversion computed against the sampling run's ε
at the mirrored step, and the state after step i against the sampling state there; mean absolute errors over the
plain / non-plain positions of the final samples, normalised by the step's mean |ground truth|, and their Tab. 6
sums over the first steps and the rest. ``experiments.approximation_error`` documents the step indices and makes the
two runs.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jtaba import engine
from jtaba.analyses._result import Result

QUANTITIES = ("eps", "xt")
AREAS = ("plain", "non_plain", "all")


@dataclasses.dataclass(frozen=True)
class StepErrors(Result):
    """One quantity's errors per measured inversion step, (S,) float64 each (``approximation_errors``): mean
    |approx − truth| over the plain, non-plain and all positions divided by ``scale``, the step's mean |truth|;
    the ``raw_`` means before dividing. An empty area is NaN."""
    plain: np.ndarray
    non_plain: np.ndarray
    all: np.ndarray
    scale: np.ndarray
    raw_plain: np.ndarray
    raw_non_plain: np.ndarray
    raw_all: np.ndarray

    def to_json(self) -> dict:
        return {k: v.tolist() for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class IntervalSums(Result):
    """Tab. 6 for one quantity and area: the per-step errors summed over the first ``early_steps`` steps, over the
    rest and over all, and early / total (NaN for a zero total)."""
    early: float
    rest: float
    total: float
    early_share: float


@dataclasses.dataclass(frozen=True)
class ApproximationErrors(Result):
    """Fig. 4 and Tab. 6: ``per_step`` and ``table`` by quantity (``QUANTITIES``), ``table`` then by area
    (``AREAS``), over the first ``early_steps`` steps; the share of plain positions in the final samples."""
    early_steps: int
    plain_fraction: float
    per_step: dict[str, StepErrors]
    table: dict[str, dict[str, IntervalSums]]

    def to_json(self) -> dict:
        return {"early_steps": self.early_steps, "plain_fraction": self.plain_fraction,
                "per_step": {q: e.to_json() for q, e in self.per_step.items()},
                "table": {q: {area: t.to_json() for area, t in by_area.items()} for q, by_area in self.table.items()}}


@dataclasses.dataclass(frozen=True)
class StepPair:
    """The approximated and the ground-truth values of one quantity: sequences of S (N, C, H, W) arrays, item i
    for inversion step i (lazy: read when indexed)."""
    approx: Sequence[np.ndarray]
    truth: Sequence[np.ndarray]


@dataclasses.dataclass(frozen=True)
class StepArrays:
    """What ``error_tables`` compares, per quantity: the ε the inversion used and the state after each step."""
    eps: StepPair
    xt: StepPair


def measured_steps(kind: str, steps: int) -> int:
    """How many inversion steps have a ground truth: T − 1 for ADM (its last step goes to ᾱ = 0), T otherwise."""
    s = steps - 1 if kind == "adm" else steps
    if s < 2:
        raise ValueError(f"the approximation error needs steps >= {3 if kind == 'adm' else 2} for a {kind} model "
                         f"(a teacher-forced step after the first), got {steps}")
    return s


class _Steps:
    """A lazy sequence of per-step (N, C, H, W) arrays: item i = fn(i) (computed when read)."""

    def __init__(self, count: int, fn):
        self.count, self.fn = count, fn

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.count:
            raise IndexError(i)
        return self.fn(i)


def step_arrays(diffusion, steps: int, truth_run, inv_run) -> StepArrays:
    """``StepArrays`` over the measured inversion steps i (see the module docstring for the indices;
    ``jtaba.engine.mirror_indices`` holds the convention). ``truth_run``: the recorded sampling run; ``inv_run``:
    the recorded teacher-forced (x_t-swapped) inversion of its samples, whose all_t_eps_latents[i] is the ε step i
    computed at the ground-truth state. The state after step i is rebuilt from the recorded x0 and ε of that step
    with the inversion's coefficients (x' = √ᾱ_dst·x0 + √(1−ᾱ_dst)·ε, float32 as the engine), because the swap
    records the ground truth in place of it."""
    s = measured_steps(diffusion.kind, steps)
    eps_j = engine.mirror_indices(diffusion, steps, "eps", s)
    xt_j = engine.mirror_indices(diffusion, steps, "xt", s)
    eps_gt, xs_gt, noise = truth_run["all_t_eps_samples"], truth_run["all_t_samples"], truth_run["noise"]
    eps_inv, x0_inv = inv_run["all_t_eps_latents"], inv_run["all_t_pred_xstart_latents"]
    table = engine.LoopSpec(network=None, diffusion=diffusion, steps=steps, invert=True).table()

    def x_after(i):
        a, b = np.float32(table.sqrt_a_dst[i]), np.float32(table.sqrt_1m_a_dst[i])
        return a * np.asarray(x0_inv[i], np.float32) + b * np.asarray(eps_inv[i], np.float32)

    return StepArrays(eps=StepPair(_Steps(s, lambda i: eps_inv[i]), _Steps(s, lambda i: eps_gt[eps_j[i]])),
                      xt=StepPair(_Steps(s, x_after), _Steps(s, lambda i: noise if xt_j[i] < 0 else xs_gt[xt_j[i]])))


def error_tables(arrays: StepArrays, mask, steps: int, early_fraction: float) -> ApproximationErrors:
    """``ApproximationErrors`` of ``arrays`` with the (N, H, W) plain mask (True = plain) of the final samples,
    T = ``steps`` splitting Tab. 6 after round(early_fraction·T) steps."""
    from jtaba.metrics import approximation_errors, early_rest_sums, early_steps

    n_early = early_steps(steps, early_fraction)
    per_step = {q: StepErrors(**approximation_errors(pair.approx, pair.truth, mask))
                for q, pair in zip(QUANTITIES, (arrays.eps, arrays.xt))}
    table = {q: {area: IntervalSums(**early_rest_sums(getattr(e, area), n_early)) for area in AREAS}
             for q, e in per_step.items()}
    return ApproximationErrors(n_early, float(np.mean(mask)), per_step, table)


def of_runs(diffusion, steps: int, truth_run, inv_run, threshold: float = 0.025,
            early_fraction: float = 0.1) -> ApproximationErrors:
    """``ApproximationErrors`` of a recorded sampling run and the recorded teacher-forced inversion of its samples
    (``step_arrays``), with plain masks of the final samples at ``threshold`` (App. C)."""
    from jtaba.metrics import find_plain_areas

    mask = find_plain_areas(truth_run["samples"], threshold)
    return error_tables(step_arrays(diffusion, steps, truth_run, inv_run), mask, steps, early_fraction)
