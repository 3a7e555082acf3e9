"""``python -m experiments.approximation_error`` (paper Fig. 4, Tab. 6, App. D): the metric on a case
worked by hand, the ground-truth index convention on fake recorded runs (both step conventions), and end to end on
the tiny random ADM, where every per-step error is recomputed here with ``jtaba.engine.run_step`` from the
ground-truth states of the recorded sampling run (indices re-typed from upstream) and plain numpy."""
import csv
import json
import os

import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

import jtaba
from experiments import approximation_error as ae
from jtaba import engine
from jtaba.analyses.approximation_error import step_arrays
from jtaba.diffusion import DiffusionConfig
from jtaba.metrics import approximation_errors, early_rest_sums, early_steps
from jtaba.runs import open_run
from tests.test_exp_triangles import BATCH, SHAPE, STEPS, save_tiny_checkpoint


# ---- the metric on a case with a known answer ----
def hand_case():
    """S = 2 steps, N = 1, C = 2, H = 1, W = 2; position x = 0 plain, x = 1 not.
    Step 0: truth [[1, 3], [-2, 2]] (mean |.| 2), errors [[0.5, 1], [1.5, 0]]: plain (0.5 + 1.5) / 2 = 1,
    non-plain (1 + 0) / 2 = 0.5, all 0.75 -> normalised 0.5, 0.25, 0.375.
    Step 1: truth all 4 (mean 4), errors [[2, 0], [0, 2]]: plain 1, non-plain 1 -> 0.25, 0.25."""
    truth = np.array([[[[[1.0, 3.0]], [[-2.0, 2.0]]]], [[[[4.0, 4.0]], [[4.0, 4.0]]]]])  # (2, 1, 2, 1, 2)
    err = np.array([[[[[0.5, 1.0]], [[1.5, 0.0]]]], [[[[2.0, 0.0]], [[0.0, 2.0]]]]])
    sign = np.array([1.0, -1.0]).reshape(2, 1, 1, 1, 1)
    mask = np.array([[[True, False]]])
    return truth + sign * err, truth, mask


def test_metric_known_answer():
    approx, truth, mask = hand_case()
    e = approximation_errors(approx, truth, mask)
    np.testing.assert_allclose(e["scale"], [2.0, 4.0])
    np.testing.assert_allclose(e["raw_plain"], [1.0, 1.0])
    np.testing.assert_allclose(e["raw_non_plain"], [0.5, 1.0])
    np.testing.assert_allclose(e["plain"], [0.5, 0.25])
    np.testing.assert_allclose(e["non_plain"], [0.25, 0.25])
    np.testing.assert_allclose(e["all"], [0.375, 0.25])
    # another reference halves the normalised values; per-step sequences (memory maps, lazily built) give the same
    e2 = approximation_errors(list(approx), list(truth), mask, reference=2 * truth)
    np.testing.assert_allclose(e2["plain"], [0.25, 0.125])
    np.testing.assert_allclose(e2["raw_all"], e["raw_all"])
    # no plain position: NaN there, the rest unchanged
    e3 = approximation_errors(approx, truth, np.zeros_like(mask))
    assert np.isnan(e3["plain"]).all()
    np.testing.assert_allclose(e3["non_plain"], e["all"])
    t = early_rest_sums(e["plain"], 1)
    assert t == pytest.approx({"early": 0.5, "rest": 0.25, "total": 0.75, "early_share": 2 / 3})
    assert (early_steps(50), early_steps(100), early_steps(3), early_steps(50, 0.2)) == (5, 10, 1, 10)
    with pytest.raises(ValueError):
        approximation_errors(approx, truth[:1], mask)
    with pytest.raises(ValueError):
        approximation_errors(approx, truth, mask[:, :, :1])


# ---- the index convention on fake recorded runs ----
def fake_runs(T: int, n: int = 2):
    """A 'recorded sampling run' whose every array says where it came from: all_t_samples[j] = 100 + j,
    all_t_eps_samples[j] = 200 + j, noise = -1; an 'inversion run' with eps[i] = 300 + i, x0[i] = 400 + i."""
    def full(v):
        return np.full((n, *SHAPE), v, np.float32)

    truth = {"all_t_samples": np.stack([full(100 + j) for j in range(T)]),
             "all_t_eps_samples": np.stack([full(200 + j) for j in range(T)]), "noise": full(-1.0)}
    inv = {"all_t_eps_latents": np.stack([full(300 + i) for i in range(T)]),
           "all_t_pred_xstart_latents": np.stack([full(400 + i) for i in range(T)])}
    return truth, inv


@pytest.mark.parametrize("kind", ["adm", "diffusers"])
def test_ground_truth_indices(kind):
    T = 6
    if kind == "adm":
        diffusion = DiffusionConfig(kind="adm", beta_schedule="cosine", num_train_timesteps=1000,
                                    sample_clip="clip", invert_clip="clip")
    else:
        diffusion = DiffusionConfig(kind="diffusers", beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                                    steps_offset=1)
    truth, inv = fake_runs(T)
    arrays = step_arrays(diffusion, T, truth, inv)
    S = len(arrays.eps.approx)
    # upstream ddim.py / invert_swap: ADM eps gt = all_t_eps_samples[T-2-i], state after step i = all_t_samples[T-3-i]
    # (the noise after step T-2), i < T-1; diffusers: eps gt [T-1-i], state after step i [T-2-i], i < T
    shift = 1 if kind == "adm" else 0
    assert S == T - shift
    for i in range(S):
        assert float(arrays.eps.approx[i][0, 0, 0, 0]) == 300 + i
        assert float(arrays.eps.truth[i][0, 0, 0, 0]) == 200 + (T - 1 - shift - i)
        want_x = -1.0 if i == S - 1 else 100 + (T - 2 - shift - i)
        assert float(arrays.xt.truth[i][0, 0, 0, 0]) == want_x
    if kind == "diffusers":  # state after inversion step i at the target level t_i = iΔ + offset: √ᾱ·x0 + √(1−ᾱ)·ε
        betas = np.linspace(0.0001, 0.02, 1000, dtype=np.float64)
        abar = np.cumprod(1 - betas)
        for i in range(S):
            a = abar[i * (1000 // T) + 1]
            want = np.sqrt(a) * (400 + i) + np.sqrt(1 - a) * (300 + i)
            np.testing.assert_allclose(arrays.xt.approx[i], want, rtol=1e-5)


def test_too_few_steps():
    with pytest.raises(ValueError, match="steps >= 3"):
        ae.measured_steps("adm", 2)
    assert ae.measured_steps("adm", 3) == 2 and ae.measured_steps("diffusers", 2) == 2


# ---- end to end on the tiny random ADM ----
def oracle_plain_mask(images, threshold):
    """Upstream find_plain_areas, re-typed."""
    x = np.asarray(images, np.float64)
    dh, dw = np.zeros_like(x), np.zeros_like(x)
    dh[:, :, :-1] = np.abs(x[:, :, 1:] - x[:, :, :-1])
    dw[:, :, :, :-1] = np.abs(x[:, :, :, 1:] - x[:, :, :, :-1])
    return ((dh + dw) / 2 < threshold).all(axis=1)


def oracle_steps(ckpt, truth, T):
    """Per ADM inversion step i = 0..T-2: (ε the step computes from the ground-truth state, ε gt, state after the
    step, gt state), with ``run_step`` on x_i^gt = all_t_samples[T-2-i] (the final sample for i = 0)."""
    model = jtaba.load(ckpt)
    spec = engine.LoopSpec(network=model.network, diffusion=model.diffusion, steps=T, invert=True)
    xs, eps, noise, samples = (np.asarray(truth[k]) for k in ("all_t_samples", "all_t_eps_samples", "noise",
                                                                 "samples"))
    out = []
    for i in range(T - 1):
        x_in = samples if i == 0 else xs[T - 2 - i]
        x_next, e, _ = engine.run_step(spec, model.params, jnp.moveaxis(jnp.asarray(x_in), 1, -1), i)
        x_gt = xs[T - 3 - i] if i <= T - 3 else noise
        out.append((np.moveaxis(np.asarray(e), -1, 1), eps[T - 2 - i], np.moveaxis(np.asarray(x_next), -1, 1), x_gt))
    return out


@pytest.mark.slow
def test_approximation_error_end_to_end(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    n, thr = 24, 0.05
    argv = ["--ckpt", ckpt, "--n", str(n), "--steps", str(STEPS), "--batch", str(BATCH), "--seed", "3",
            "--threshold", str(thr), "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "ae")]
    out = ae.main(argv)
    with open(os.path.join(out, "approximation_error.json")) as f:
        res = json.load(f)
    truth, inv = open_run(res["sampling_run"]), open_run(res["inversion_run"])
    assert truth.identity["record"] and not truth.identity["inversion"]
    assert inv.identity["swap"]["type"] == "xt" and inv.identity["swap"]["before"] == STEPS - 2
    assert res["measured_steps"] == STEPS - 1 and res["early_steps"] == 1 and res["step"] == list(range(STEPS - 1))

    mask = oracle_plain_mask(truth["samples"], thr)
    assert 0 < mask.mean() < 1, "pick a seed / threshold whose tiny samples have both areas"
    assert res["plain_fraction"] == pytest.approx(mask.mean())
    m = np.broadcast_to(mask[:, None], (n, *SHAPE))
    steps = oracle_steps(ckpt, truth, STEPS)
    for i, (e_ap, e_gt, x_ap, x_gt) in enumerate(steps):
        # the recorded teacher-forced inversion computed exactly this step's ε
        np.testing.assert_allclose(inv["all_t_eps_latents"][i], e_ap, rtol=1e-5, atol=1e-5)
        for q, (ap, gt) in {"eps": (e_ap, e_gt), "xt": (x_ap, x_gt)}.items():
            err = np.abs(ap.astype(np.float64) - gt)
            scale = np.abs(gt.astype(np.float64)).mean()
            ps = res["per_step"][q]
            assert ps["scale"][i] == pytest.approx(scale, rel=1e-9)
            assert ps["plain"][i] == pytest.approx(err[m].mean() / scale, rel=1e-4, abs=1e-7)
            assert ps["non_plain"][i] == pytest.approx(err[~m].mean() / scale, rel=1e-4, abs=1e-7)
            assert ps["all"][i] == pytest.approx(err.mean() / scale, rel=1e-4, abs=1e-7)
    assert np.mean(steps[0][0] != steps[0][1]) > 0.5  # the approximation error is not trivially zero
    for q in ae.QUANTITIES:
        for area in ae.AREAS:
            v, t = res["per_step"][q][area], res["table"][q][area]
            assert t["early"] == pytest.approx(v[0]) and t["rest"] == pytest.approx(sum(v[1:]))
            assert t["early_share"] == pytest.approx(v[0] / sum(v))

    with open(os.path.join(out, "approximation_error.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and [r["area"] for r in rows[:2]] == ["plain", "non-plain"]
    for r, (interval, area) in zip(rows, [(iv, a) for iv in ae.INTERVALS for a in ("plain", "non_plain")]):
        for q in ae.QUANTITIES:
            assert float(r[f"{q}_error"]) == pytest.approx(res["table"][q][area][interval], rel=1e-12)
    with open(os.path.join(out, "approximation_error_steps.csv")) as f:
        srows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in srows] == res["step"]
    assert float(srows[1]["xt_non_plain"]) == pytest.approx(res["per_step"]["xt"]["non_plain"][1], rel=1e-12)
    md = ae.markdown(res)
    assert f"{res['table']['eps']['plain']['early']:.3f}" in md

    png = matplotlib.image.imread(os.path.join(out, "approximation_error.png"))
    assert png.shape[0] > 300 and png.shape[1] > 800 and png[..., :3].std() > 0.05

    # the same command again reuses both runs and rewrites identical numbers
    mtimes = [os.path.getmtime(os.path.join(r.path, f)) for r, f in ((truth, "samples.npy"), (inv, "latents.npy"))]
    ae.main(argv)
    assert [os.path.getmtime(os.path.join(r.path, f))
            for r, f in ((truth, "samples.npy"), (inv, "latents.npy"))] == mtimes
    with open(os.path.join(out, "approximation_error.json")) as f:
        assert json.load(f) == res
