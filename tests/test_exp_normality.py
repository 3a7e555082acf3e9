"""Shapiro-Wilk normality (``jtaba.metrics.normality``) and ``python -m experiments.normality``: p-values against
``scipy.stats.shapiro`` called here on the same re-drawn indices, known answers (Gaussian accepted about 95 % of the
time when the subsample has no repeats, uniform and bimodal data rejected), the upstream with-replacement quirk,
QQ quantiles against ``np.quantile``, and the end-to-end command on the tiny model."""
import csv
import json
import os

import matplotlib.image
import numpy as np
import pytest
from scipy.stats import shapiro

from experiments import normality
from jtaba.metrics import normality_counts, qq_quantiles, shapiro_normality, shapiro_p_values
from tests.test_exp_triangles import BATCH, SHAPE, STEPS, save_tiny_checkpoint


def oracle_p_values(x, limit=5000, seed=0, replace=True):
    """upstream stat_test_normality's loop with numpy indices: one generator, samples in order."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    rng = np.random.default_rng(seed)
    m = min(x.shape[1], limit)
    out = []
    for row in x:
        if replace:
            idx = rng.integers(0, x.shape[1], m)
        else:
            idx = np.arange(m) if m == x.shape[1] else rng.choice(x.shape[1], m, replace=False)
        out.append(shapiro(row[idx]).pvalue)
    return np.array(out)


@pytest.mark.parametrize("replace", [True, False])
def test_p_values_match_scipy_on_the_same_indices(replace):
    x = np.random.default_rng(1).standard_normal((6, 3, 40, 50)).astype(np.float32)  # 6000 elements > limit
    np.testing.assert_allclose(shapiro_p_values(x, limit=5000, seed=4, replace=replace),
                               oracle_p_values(x, 5000, 4, replace), rtol=1e-12)
    small = x[:, :, :8, :8]  # 192 elements <= limit
    np.testing.assert_allclose(shapiro_p_values(small, seed=2, replace=replace),
                               oracle_p_values(small, 5000, 2, replace), rtol=1e-12)


def test_counts_follow_upstream_keys_and_strict_threshold():
    res = normality_counts([0.01, 0.05, 0.051, 0.9], p_value=0.05)
    assert res == {"n_rej": 2, "%_rej": 0.5, "n_acc": 2, "%_acc": 0.5}  # p > 0.05 accepted; fractions as upstream


def test_known_answers():
    rng = np.random.default_rng(0)
    gauss = rng.standard_normal((200, 20_000))  # 5000 distinct of 20,000 elements
    assert 0.88 <= shapiro_normality(gauss, seed=1, replace=False)["%_acc"] <= 0.99
    small = rng.standard_normal((200, 768))  # the built-in model's C*H*W
    assert 0.88 <= shapiro_normality(small, seed=1, replace=False)["%_acc"] <= 0.99
    # upstream's draw with replacement repeats ~37 % of the values: Gaussian data is rejected far too often
    assert shapiro_normality(small, seed=1)["%_acc"] < 0.75
    uniform = rng.uniform(-1, 1, (50, 20_000))
    assert shapiro_normality(uniform, seed=1)["n_rej"] == 50
    bimodal = rng.choice([-3.0, 3.0], (50, 20_000)) + 0.5 * rng.standard_normal((50, 20_000))
    assert shapiro_normality(bimodal, seed=1, replace=False)["%_rej"] == 1.0


def test_qq_quantiles():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((10, 3, 8, 8)), 2.0 + 0.5 * rng.standard_normal((10, 3, 8, 8))
    qq = qq_quantiles(a, b, points=100)
    probs = np.concatenate([[0.0], (np.arange(1, 101) - 0.5) / 100, [1.0]])
    np.testing.assert_allclose(qq["probabilities"], probs)
    np.testing.assert_allclose(qq["x"], np.quantile(a.ravel(), probs), rtol=1e-12)
    np.testing.assert_allclose(qq["y"], np.quantile(b.ravel(), probs), rtol=1e-12)
    assert (qq["x"][0], qq["x"][-1]) == (a.min(), a.max())
    assert qq["line_slope"] == pytest.approx(b.std()) and qq["line_intercept"] == pytest.approx(b.mean())
    sub = qq_quantiles(a, b, points=100, limit=500, seed=1)  # subsampled: seeded, close to the full quantiles
    assert sub["x"].tolist() == qq_quantiles(a, b, points=100, limit=500, seed=1)["x"].tolist()
    assert np.abs(sub["y"][1:-1] - qq["y"][1:-1]).max() < 0.3


def test_display_images():
    rng = np.random.default_rng(0)
    rgb = rng.standard_normal((2, 3, 5, 4))
    img = normality.display_images(rgb)
    want = rgb.transpose(0, 2, 3, 1)
    want = (want - want.min(axis=(1, 2, 3), keepdims=True)) / np.ptp(want, axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(img, want, rtol=1e-12)
    four = rng.standard_normal((3, 4, 6, 6))  # PCA over channels (DiT / LDM latents)
    pca = normality.display_images(four)
    assert pca.shape == (3, 6, 6, 3) and pca.min() == 0.0 and pca.max() == 1.0
    assert normality.display_images(rng.standard_normal((1, 1, 4, 4))).shape == (1, 4, 4, 3)


@pytest.mark.slow
def test_normality_end_to_end(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    common = ["--ckpt", ckpt, "--n", "32", "--steps", str(STEPS), "--batch", str(BATCH), "--seed", "7",
              "--runs-dir", str(tmp_path / "runs"), "--index-seed", "3", "--show", "4"]
    out = normality.main(common + ["--out", str(tmp_path / "norm")])
    with open(os.path.join(out, "normality.json")) as f:
        res = json.load(f)
    run = res["run"]
    arrays = {k: np.load(os.path.join(run, f"{k}.npy")) for k in normality.ROWS}
    assert arrays["noise"].shape == (32, *SHAPE) and not np.allclose(arrays["latents"], arrays["noise"])
    numel = int(np.prod(SHAPE))
    assert res["tested_elements"] == numel and res["with_replacement"] and res["shown"] == [0, 1, 2, 3]
    for k, a in arrays.items():
        p = oracle_p_values(a, 5000, 3)
        np.testing.assert_allclose(res["p_values"][k], p, rtol=1e-10)
        n_acc = int((p > 0.05).sum())
        assert res["shapiro"][k] == {"n_rej": 32 - n_acc, "%_rej": (32 - n_acc) / 32, "n_acc": n_acc,
                                     "%_acc": n_acc / 32}
        assert res["p_value_histogram"][k] == np.histogram(p, bins=np.linspace(0, 1, 21))[0].tolist()
    probs = np.asarray(res["qq"]["probabilities"])
    np.testing.assert_allclose(res["qq"]["x"], np.quantile(arrays["noise"].astype(np.float64), probs), rtol=1e-12)
    np.testing.assert_allclose(res["qq"]["y"], np.quantile(arrays["latents"].astype(np.float64), probs), rtol=1e-12)

    with open(os.path.join(out, "normality.csv")) as f:
        rows = {r["row"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["latents", "noise"]
    for k in normality.ROWS:
        assert int(rows[k]["n_rej"]) == res["shapiro"][k]["n_rej"]
        assert int(rows[k]["n_acc"]) == res["shapiro"][k]["n_acc"]
        assert float(rows[k]["%_acc"]) == pytest.approx(100 * res["shapiro"][k]["%_acc"], rel=1e-12)
    assert "(control)" in normality.markdown(res)

    for name, min_w in (("normality.png", 800), ("normality_latents.png", 500)):
        png = matplotlib.image.imread(os.path.join(out, name))
        assert png.shape[0] > 300 and png.shape[1] > min_w and png[..., :3].std() > 0.05

    mtime = os.path.getmtime(os.path.join(run, "samples.npy"))
    normality.main(common + ["--out", out])
    assert os.path.getmtime(os.path.join(run, "samples.npy")) == mtime
    with open(os.path.join(out, "normality.json")) as f:
        assert json.load(f) == res

    # --without-replacement on the same run: all 192 elements of each sample are tested
    out2 = normality.main(common + ["--without-replacement", "--out", str(tmp_path / "norm2")])
    with open(os.path.join(out2, "normality.json")) as f:
        res2 = json.load(f)
    assert not res2["with_replacement"] and res2["run"] == run
    for k, a in arrays.items():
        want = [shapiro(row.astype(np.float64).ravel()).pvalue for row in a]
        np.testing.assert_allclose(res2["p_values"][k], want, rtol=1e-10)


def test_default_out_folder_names_non_default_settings():
    p = normality.build_parser()
    assert normality.out_parts(normality.options_from_args(p.parse_args([]))) == []
    opts = normality.options_from_args(p.parse_args(["--limit", "100", "--p-value", "0.01", "--index-seed", "2",
                                                     "--show", "3", "--without-replacement"]))
    assert normality.out_parts(opts) == ["limit100", "p0.01", "iseed2", "show3", "norepl"]
    with pytest.raises(SystemExit, match="--limit must be at least 3"):
        normality.main(["--limit", "2"])
