"""Inversion approximation error per step, plain vs non-plain (paper App. D, Eq. 15-17, Fig. 4,
Tab. 6).

Step i of a DDIM inversion approximates the network output it needs (the one sampling computed at the next, noisier
level) by the output at the current state. Given, per inversion step i, that approximation and the ground truth
(arrays (S, N, C, H, W): ε or the state x_t after the step), the error e_i = |approx_i − truth_i| element-wise is
divided by the L1 norm (mean |·|) of a reference at step i (default: the ground truth itself, i.e. the model outputs
of the sampling run) and averaged over the plain / non-plain positions of the (N, H, W) masks from the final samples
(``jtaba.metrics.find_plain_areas``), all channels and samples (Eq. 15 / 16). Tab. 6 sums those per-step values over
the first 10 % of the inversion steps and over the rest (Eq. 17).

Float64 arithmetic; one step (N, C, H, W) is read at a time, in row blocks, so memory maps of any size work.
"""
from __future__ import annotations

import numpy as np

from jtaba.metrics._chunks import row_blocks

AREAS = ("plain", "non_plain", "all")


def approximation_errors(approx, truth, mask, reference=None) -> dict:
    """Per-step normalised approximation errors.

    ``approx``, ``truth``: per inversion step i the approximated and the ground-truth values, as (S, N, C, H, W)
    arrays or sequences of S (N, C, H, W) arrays (memory maps are read one step at a time); ``mask`` (N, H, W) bool,
    True = plain; ``reference`` (like ``truth``, default ``truth``): the values whose mean |·| at step i normalises
    step i. Returns float64 arrays of shape (S,): "plain", "non_plain", "all" = mean over those positions (all
    channels and samples) of |approx_i − truth_i| / scale_i; "scale" = mean |reference_i|; "raw_plain",
    "raw_non_plain", "raw_all" = the same means before dividing. An empty area gives NaN."""
    reference = truth if reference is None else reference
    s = len(truth)
    if len(approx) != s or len(reference) != s:
        raise ValueError(f"step counts differ: approx {len(approx)}, truth {s}, reference {len(reference)}")
    mask = np.asarray(mask, bool)
    raw = {k: np.full(s, np.nan) for k in AREAS}
    scale = np.zeros(s)
    for i in range(s):
        a, t, r = np.asarray(approx[i]), np.asarray(truth[i]), np.asarray(reference[i])
        if t.ndim != 4 or a.shape != t.shape or r.shape != t.shape:
            raise ValueError(f"step {i}: expected (N, C, H, W) arrays of one shape, got approx {a.shape}, truth "
                             f"{t.shape}, reference {r.shape}")
        if mask.shape != (t.shape[0],) + t.shape[2:]:
            raise ValueError(f"mask {mask.shape} does not match (N, H, W) of {t.shape}")
        c = t.shape[1]
        counts = {"plain": int(mask.sum()) * c, "all": mask.size * c}
        counts["non_plain"] = counts["all"] - counts["plain"]
        sums = dict.fromkeys(AREAS, 0.0)
        ref_sum = 0.0
        for sl in row_blocks(t.shape[0], t[0].size):
            err = np.abs(np.asarray(a[sl], np.float64) - np.asarray(t[sl], np.float64))
            sums["plain"] += err[np.broadcast_to(mask[sl][:, None], err.shape)].sum()
            sums["all"] += err.sum()
            ref_sum += np.abs(np.asarray(r[sl], np.float64)).sum()
        sums["non_plain"] = sums["all"] - sums["plain"]
        scale[i] = ref_sum / counts["all"]
        for k in AREAS:
            if counts[k]:
                raw[k][i] = sums[k] / counts[k]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {k: raw[k] / scale for k in AREAS}
    out["scale"] = scale
    out.update({f"raw_{k}": raw[k] for k in AREAS})
    return out


def early_steps(steps: int, fraction: float = 0.1) -> int:
    """How many inversion steps "the first ``fraction`` of the steps" are for T = ``steps``: round(fraction·T),
    at least 1 (T = 50 -> 5, T = 100 -> 10)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    return max(1, round(fraction * steps))


def early_rest_sums(per_step, n_early: int) -> dict:
    """Tab. 6 / Eq. 17 for one area: {"early": sum of the first ``n_early`` per-step values, "rest": sum of the
    others, "total", "early_share": early / total}."""
    v = np.asarray(per_step, np.float64)
    if not 0 < n_early <= v.size:
        raise ValueError(f"n_early must be in [1, {v.size}], got {n_early}")
    early, rest = float(v[:n_early].sum()), float(v[n_early:].sum())
    total = early + rest
    return {"early": early, "rest": rest, "total": total, "early_share": early / total if total else float("nan")}
