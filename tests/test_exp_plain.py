"""``python -m experiments.plain`` (paper App. C, Tab. 5, Fig. 11) end to end on the tiny random ADM: the
masks (``find_plain_areas`` re-typed from upstream), MAE and std per area and the noise control row are
recomputed from the run's files with plain numpy and boolean indexing (the metric functions themselves are tested in
test_metrics_plain.py)."""
import csv
import json
import os

import matplotlib.image
import numpy as np
import pytest

from experiments import plain
from jtaba.runs import open_run
from tests.test_exp_approximation_error import oracle_plain_mask
from tests.test_exp_triangles import BATCH, SHAPE, STEPS, save_tiny_checkpoint


def test_example_indices():
    frac = np.array([0.1, 0.5, 0.0, 0.5, 0.3, 0.2, 0.9, 0.4, 0.0])
    # ranks by plain share, ties by index: 6 (0.9), 1, 3 (0.5), 7 (0.4), 4 (0.3), 5, 0, 2, 8; median rank 4
    assert plain.example_indices(frac, 3) == [6, 3, 4]  # ranks 0, 2, 4
    assert plain.example_indices(frac, 1) == [6]
    assert plain.example_indices(frac[:2], 4) == [1, 0]  # fewer samples than asked: all, most plain first


@pytest.mark.slow
def test_plain_end_to_end(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    n, thr = 32, 0.05
    argv = ["--ckpt", ckpt, "--n", str(n), "--steps", str(STEPS), "--batch", str(BATCH), "--seed", "7",
            "--threshold", str(thr), "--examples", "3", "--runs-dir", str(tmp_path / "runs"),
            "--out", str(tmp_path / "plain")]
    out = plain.main(argv)
    with open(os.path.join(out, "plain.json")) as f:
        res = json.load(f)
    run = open_run(res["run"])
    # the standard run shared by the analyses: reconstruction on, nothing recorded
    assert run.identity["reconstruction"] and not run.identity["record"] and run.n == n
    noise, samples, latents = (np.asarray(run[k], np.float64) for k in ("noise", "samples", "latents"))
    assert noise.shape == latents.shape == (n, *SHAPE) and not np.allclose(noise, latents)

    mask = oracle_plain_mask(samples, thr)
    assert 0 < mask.mean() < 1, "pick a seed / threshold whose tiny samples have both areas"
    m = np.broadcast_to(mask[:, None], noise.shape)
    err = np.abs(noise - latents)
    want = {"mae_plain": err[m].mean(), "mae_non_plain": err[~m].mean(),
            "std_plain": latents[m].std(ddof=1), "std_non_plain": latents[~m].std(ddof=1)}
    for k, v in want.items():
        assert res["latent"][k] == pytest.approx(v, rel=1e-9), k
    assert res["noise"]["std_plain"] == pytest.approx(noise[m].std(ddof=1), rel=1e-9)
    assert res["noise"]["std_non_plain"] == pytest.approx(noise[~m].std(ddof=1), rel=1e-9)
    per_sample = mask.reshape(n, -1).mean(axis=1)
    assert res["plain_fraction"] == pytest.approx(mask.mean())
    assert res["samples_with_plain"] == int((per_sample > 0).sum())
    assert res["per_sample_plain_fraction"]["max"] == pytest.approx(per_sample.max())
    assert res["examples"] == plain.example_indices(per_sample, 3) and len(res["examples"]) == 3
    assert res["examples"][0] == int(np.argmax(per_sample))
    assert res["example_plain_fraction"] == pytest.approx(per_sample[res["examples"]].tolist())

    with open(os.path.join(out, "plain.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["row"] for r in rows] == ["latent", "noise"]
    for k in plain.STAT_KEYS:
        assert float(rows[0][k]) == pytest.approx(res["latent"][k], rel=1e-12)
    assert rows[1]["mae_plain"] == "" and float(rows[1]["std_plain"]) == pytest.approx(res["noise"]["std_plain"])
    assert int(rows[0]["n"]) == n and int(rows[0]["steps"]) == STEPS
    md = plain.markdown(res)
    assert f"{res['latent']['mae_plain']:.3f}" in md and "noise (control)" in md

    png = matplotlib.image.imread(os.path.join(out, "plain.png"))
    assert png.shape[0] > 300 and png.shape[1] > 600 and png[..., :3].std() > 0.05

    # the same command again reuses the run and rewrites identical numbers
    mtime = os.path.getmtime(os.path.join(run.path, "samples.npy"))
    plain.main(argv)
    assert os.path.getmtime(os.path.join(run.path, "samples.npy")) == mtime
    with open(os.path.join(out, "plain.json")) as f:
        assert json.load(f) == res
