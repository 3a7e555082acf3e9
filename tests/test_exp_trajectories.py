"""``python -m experiments.trajectories`` on a tiny random ADM checkpoint: the distance matrix, its scaling and the
closer-to-noise fractions are recomputed from the recorded run's files with upstream's
``get_interpolations_distances`` / ``min_max_scale`` / ``build_norm_df_closer`` loops re-typed in numpy."""
import csv
import json
import os

import matplotlib.image
import numpy as np
import pytest

from experiments import trajectories
from tests.test_exp_triangles import BATCH, SHAPE, STEPS, save_tiny_checkpoint


# ---- upstream re-typed (torch -> numpy, float64) ----
def linear_inter(l1, l2, a):
    return a * l1 + (1 - a) * l2


def get_interpolations_distances(all_t, noises, latents, alphas=25):
    n_samples, n_steps = noises.shape[0], all_t.shape[0]
    interpolations = np.stack([linear_inter(latents, noises, alpha) for alpha in np.linspace(0, 1, alphas)])
    distances = np.zeros((n_samples, n_steps, alphas))
    for i in range(n_steps):
        for j in range(alphas):
            for k in range(n_samples):
                distances[k, i, j] = np.linalg.norm((all_t[i][k] - interpolations[j][k]).ravel())
    return distances.mean(axis=0)


def min_max_scale(arr):
    lo, hi = arr.min(axis=1, keepdims=True), arr.max(axis=1, keepdims=True)
    return (arr - lo) / (hi - lo)


def closer_counts(noises, latents, states):
    """build_norm_df_closer's loop for one trajectory: per state, how many samples are closer to the noise."""
    out = np.zeros(len(states))
    for t in range(len(states)):
        for i in range(noises.shape[0]):
            dist_to_noise = np.linalg.norm((states[t, i] - noises[i]).ravel())
            dist_to_latent = np.linalg.norm((states[t, i] - latents[i]).ravel())
            if dist_to_noise < dist_to_latent:
                out[t] += 1
    return out


def test_closer_fraction_known_answer():
    """Points on a line between noise 0 and latent 1: strictly below 0.5 is closer to the noise; 0.5 ties go to
    the latent (upstream's else branch)."""
    from jtaba.metrics import closer_to_noise_fraction

    noise, latents = np.zeros((4, 1, 1, 2)), np.ones((4, 1, 1, 2))
    states = np.array([[0.1, 0.4, 0.5, 0.9], [0.0, 0.0, 0.0, 0.6]]).reshape(2, 4, 1, 1, 1) * np.ones((1, 1, 1, 1, 2))
    np.testing.assert_array_equal(closer_to_noise_fraction(states, noise, latents), [0.5, 0.75])


@pytest.mark.slow
def test_trajectories_end_to_end(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    n = 16
    argv = ["--ckpt", ckpt, "--n", str(n), "--steps", str(STEPS), "--batch", str(BATCH), "--seed", "7",
            "--runs-dir", str(tmp_path / "runs")]
    out = trajectories.main(argv + ["--out", str(tmp_path / "out")])
    with open(os.path.join(out, "trajectories.json")) as f:
        res = json.load(f)
    srun, irun = res["sampling_run"], res["inversion_run"]
    f = {k: np.load(os.path.join(srun, f"{k}.npy")).astype(np.float64) for k in ("noise", "samples", "all_t_samples")}
    f.update({k: np.load(os.path.join(irun, f"{k}.npy")).astype(np.float64) for k in ("latents", "all_t_latents")})
    assert f["all_t_samples"].shape == f["all_t_latents"].shape == (STEPS, n, *SHAPE)
    np.testing.assert_array_equal(f["all_t_samples"][-1], f["samples"])  # step T is x_0
    np.testing.assert_array_equal(f["all_t_latents"][-1], f["latents"])
    # the inversion run inverted the sampling run's samples; neither reconstructs
    np.testing.assert_array_equal(np.load(os.path.join(irun, "samples.npy")), f["samples"])
    np.testing.assert_array_equal(np.load(os.path.join(irun, "noise.npy")), f["noise"])
    assert not os.path.exists(os.path.join(srun, "latents.npy"))
    assert not os.path.exists(os.path.join(irun, "samples2.npy"))

    dist = get_interpolations_distances(f["all_t_samples"], f["noise"], f["latents"])
    np.testing.assert_allclose(res["distances"], dist, rtol=1e-9)
    np.testing.assert_allclose(res["scaled"], min_max_scale(dist), atol=1e-7)
    np.testing.assert_allclose(res["alphas"], np.linspace(0, 1, 25))
    assert res["nearest_alpha_index"] == dist.argmin(axis=1).tolist()
    assert len(set(res["nearest_alpha_index"])) > 1, "a case where the nearest point moves along the trajectory"

    sampling = closer_counts(f["noise"], f["latents"], f["all_t_samples"]) / n
    inversion = closer_counts(f["noise"], f["latents"], f["all_t_latents"]) / n
    np.testing.assert_array_equal(res["closer_to_noise_sampling"], sampling)
    np.testing.assert_array_equal(res["closer_to_noise_inversion_by_step"], inversion)
    # sampling step k is at noise level T - k: the inversion state after T - k steps (k = T: the image itself)
    levels = [closer_counts(f["noise"], f["latents"], f["all_t_latents"][STEPS - k - 1][None])[0] / n
              for k in range(1, STEPS)] + [closer_counts(f["noise"], f["latents"], f["samples"][None])[0] / n]
    np.testing.assert_array_equal(res["closer_to_noise_inversion_same_level"], levels)

    with open(os.path.join(out, "trajectories.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    assert [int(r["t"]) for r in rows] == list(range(STEPS - 1, -1, -1))
    for i, r in enumerate(rows):
        assert float(r["nearest_alpha"]) == pytest.approx(np.linspace(0, 1, 25)[dist[i].argmin()], abs=1e-12)
        assert float(r["distance_to_noise"]) == pytest.approx(dist[i, 0], rel=1e-9)
        assert float(r["distance_to_latent"]) == pytest.approx(dist[i, -1], rel=1e-9)
        assert float(r["distance_nearest"]) == pytest.approx(dist[i].min(), rel=1e-9)
        assert float(r["closer_to_noise_sampling"]) == pytest.approx(sampling[i], abs=1e-12)
        assert float(r["closer_to_noise_inversion"]) == pytest.approx(levels[i], abs=1e-12)
    assert trajectories.markdown(res).count("\n| ") == STEPS

    png = matplotlib.image.imread(os.path.join(out, "trajectories.png"))
    assert png.shape[0] > 300 and png.shape[1] > 1000 and png[..., :3].std() > 0.05  # drawn, not blank

    mtimes = [os.path.getmtime(os.path.join(r, name)) for r, name in ((srun, "samples.npy"), (irun, "latents.npy"))]
    trajectories.main(argv + ["--out", out])
    assert [os.path.getmtime(os.path.join(r, name)) for r, name in ((srun, "samples.npy"), (irun, "latents.npy"))] \
        == mtimes
    with open(os.path.join(out, "trajectories.json")) as fh:
        assert json.load(fh) == res
