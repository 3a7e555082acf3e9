"""``python -m experiments.variances``: the variances are recomputed from the run's noise / latents files with plain
numpy (``var(ddof=1)`` as torch's ``Tensor.var`` / ``std()**2`` upstream) and checked against metrics.json's
``latent_stats`` / ``noise_stats``."""
import csv
import json
import os

import matplotlib.image
import numpy as np
import pytest

from experiments import variances
from jtaba.analyses import variances as analysis
from tests.test_exp_triangles import BATCH, SHAPE, STEPS, save_tiny_checkpoint


def test_per_sample_variances_known_answer(monkeypatch):
    # sample i = s_i * (+1, -1, +1, -1, ...) over 2*3*4*4 = 96 elements: unbiased variance s_i^2 * 96 / 95
    scales = np.array([0.5, 1.0, 2.0, 3.0, 0.0])
    pattern = np.where(np.arange(96) % 2 == 0, 1.0, -1.0).reshape(2, 3, 4, 4)
    x = (scales[:, None, None, None, None] * pattern).astype(np.float32)
    monkeypatch.setattr(analysis, "BLOCK_ELEMENTS", 200)  # several row blocks
    np.testing.assert_allclose(analysis.per_sample_variances(x), scales ** 2 * 96 / 95, rtol=1e-12)
    row, v = analysis.variance_row(x)
    assert row.mean_per_sample == pytest.approx(v.mean(), rel=1e-12)
    assert row.global_variance == pytest.approx(np.var(x.astype(np.float64), ddof=1), rel=1e-12)
    assert (row.per_sample_min, row.per_sample_max) == (0.0, pytest.approx(9 * 96 / 95))


@pytest.mark.slow
def test_variances_end_to_end(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    args = ["--ckpt", ckpt, "--n", "32", "--steps", str(STEPS), "--seed", "7",
            "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "var")]
    out = variances.main(args + ["--batch", str(BATCH)])
    with open(os.path.join(out, "variances.json")) as f:
        res = json.load(f)
    run = res["run"]
    arrays = {k: np.load(os.path.join(run, f"{k}.npy")).astype(np.float64) for k in variances.ROWS}
    assert arrays["noise"].shape == (32, *SHAPE) and not np.allclose(arrays["latents"], arrays["noise"])
    for k, a in arrays.items():
        per = a.reshape(32, -1).var(axis=1, ddof=1)
        v = res["variance"][k]
        assert v["global"] == pytest.approx(a.var(ddof=1), rel=1e-12)
        assert v["mean_per_sample"] == pytest.approx(per.mean(), rel=1e-12)
        assert v["per_sample_sd"] == pytest.approx(per.std(ddof=1), rel=1e-10)
        np.testing.assert_allclose(res["per_sample_variance"][k], per, rtol=1e-12)
        counts, _ = np.histogram(per, bins=np.asarray(res["histogram"]["bin_edges"]))
        assert res["histogram"][k] == counts.tolist() and sum(counts) == 32
    edges = res["histogram"]["bin_edges"]
    assert len(edges) == analysis.HIST_BINS + 1
    assert edges[0] == pytest.approx(min(min(res["per_sample_variance"][k]) for k in variances.ROWS))
    with open(os.path.join(run, "metrics.json")) as f:  # parity: metrics.json std squared
        core = json.load(f)["metrics"]
    assert res["metrics_json"]["latent_variance"] == pytest.approx(core["latent_stats"]["std"] ** 2, rel=1e-12)
    assert res["variance"]["latents"]["global"] == pytest.approx(core["latent_stats"]["std"] ** 2, rel=1e-9)
    assert res["variance"]["noise"]["global"] == pytest.approx(core["noise_stats"]["std"] ** 2, rel=1e-9)
    assert res["ratio_latents_to_noise"]["global"] == pytest.approx(
        arrays["latents"].var(ddof=1) / arrays["noise"].var(ddof=1), rel=1e-12)

    with open(os.path.join(out, "variances.csv")) as f:
        rows = {r["row"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["noise", "latents"]
    for k in variances.ROWS:
        assert float(rows[k]["variance_global"]) == pytest.approx(res["variance"][k]["global"], rel=1e-12)
        assert float(rows[k]["variance_mean_per_sample"]) == pytest.approx(res["variance"][k]["mean_per_sample"],
                                                                           rel=1e-12)
        assert int(rows[k]["n"]) == 32 and int(rows[k]["steps"]) == STEPS
    assert f"{res['variance']['latents']['global']:.4f}" in variances.markdown(res)

    png = matplotlib.image.imread(os.path.join(out, "variances.png"))
    assert png.shape[0] > 300 and png.shape[1] > 800 and png[..., :3].std() > 0.05

    mtime = os.path.getmtime(os.path.join(run, "samples.npy"))
    variances.main(args + ["--batch", "8"])  # another batch size: the same run, reused
    assert os.path.getmtime(os.path.join(run, "samples.npy")) == mtime
    with open(os.path.join(out, "variances.json")) as f:
        assert json.load(f) == res
