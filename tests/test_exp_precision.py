"""``python -m experiments.precision`` on the tiny ADM: each precision's run, per-sample errors against float32
recomputed with numpy from the run files, tf32 equal to float32 on a CPU, the metric changes recomputed."""
import csv
import json
import os

import matplotlib.image
import numpy as np
import pytest

from experiments import precision
from tests.test_exp_triangles import BATCH, STEPS, save_tiny_checkpoint


def kl(noise, latents):  # upstream ``kl_div``, re-typed
    a, b = np.asarray(noise, np.float64).ravel(), np.asarray(latents, np.float64).ravel()
    m1, s1, m2, s2 = a.mean(), a.std(ddof=1), b.mean(), b.std(ddof=1)
    return np.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5


@pytest.mark.slow
def test_precision_end_to_end(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    out = precision.main(["--ckpt", ckpt, "--n", "16", "--steps", str(STEPS), "--batch", str(BATCH),
                          "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "prec")])
    with open(os.path.join(out, "precision.json")) as f:
        res = json.load(f)
    load = lambda p, k: np.load(os.path.join(res["runs"][p], k + ".npy"))  # noqa: E731
    rows = {r["precision"]: r for r in res["rows"]}
    assert list(rows) == ["float32", "tf32", "bfloat16"]
    for p, row in rows.items():
        for k in ("samples", "latents", "samples2"):
            err = np.abs(load(p, k).astype(np.float64) - load("float32", k)).reshape(16, -1).max(1)
            assert row[f"{k}_max_abs_mean"] == pytest.approx(err.mean(), abs=1e-12)
            assert row[f"{k}_max_abs_max"] == pytest.approx(err.max(), abs=1e-12)
        assert row["kl_noise_latent"] == pytest.approx(kl(load(p, "noise"), load(p, "latents")), rel=1e-9)
        assert row["delta_kl_noise_latent"] == pytest.approx(row["kl_noise_latent"]
                                                             - rows["float32"]["kl_noise_latent"], abs=1e-15)
    assert rows["tf32"]["latents_max_abs_max"] == 0.0  # a CPU has no TF32: identical numbers
    assert rows["bfloat16"]["latents_max_abs_max"] > 1e-4
    np.testing.assert_array_equal(load("bfloat16", "noise"), load("float32", "noise"))
    with open(os.path.join(out, "precision.csv")) as f:
        table = list(csv.DictReader(f))
    assert [r["precision"] for r in table] == list(rows)
    assert float(table[2]["latents_max_abs_max"]) == pytest.approx(rows["bfloat16"]["latents_max_abs_max"])
    png = matplotlib.image.imread(os.path.join(out, "precision.png"))
    assert png[..., :3].std() > 0.05
