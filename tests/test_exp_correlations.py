"""``python -m experiments.correlations``: every row is recomputed from the run's noise / latents / samples files with
upstream's ``get_top_k_corr_in_patches`` re-typed in numpy (standardise, corrcoef, strict upper triangle, top 20 per
patch, mean / unbiased std of all patches' values), the null row by re-drawing its Gaussian sets in the documented
order."""
import csv
import json
import os

import matplotlib.image
import numpy as np
import pytest

from experiments import correlations
from jtaba.analyses import correlations as analysis
from tests.test_exp_triangles import BATCH, SHAPE, STEPS, save_tiny_checkpoint


def upstream_top_k_corr_in_patches(x, patch_size=8, top_k=20):
    """taba/metrics/correlation.py::get_top_k_corr_in_patches in numpy (float64)."""
    x = np.asarray(x, np.float64)
    n, _, h, w = x.shape
    values = []
    for i in range(0, h, patch_size):
        for j in range(0, w, patch_size):
            p = x[:, :, i:i + patch_size, j:j + patch_size].reshape(n, -1)
            if p.shape[1] > 1:
                p = (p - p.mean(0, keepdims=True)) / (p.std(0, ddof=1, keepdims=True) + 1e-5)
                corr = np.corrcoef(p.T)
                r, c = np.triu_indices(p.shape[1], k=1)
                upper = np.abs(corr[r, c])
                values.append(np.sort(upper)[::-1][:min(top_k, upper.size)])
    v = np.concatenate(values)
    return {"mean": v.mean(), "std": v.std(ddof=1)}


def upstream_half(x):
    """upstream get_top_k_corr_in_patches (patch 8, top 20) on float16 torch tensors, as its Tab. 2 script ran it."""
    import torch

    from tests.test_metrics_correlation import _torch_top_k_corr_in_patches
    return _torch_top_k_corr_in_patches(torch.from_numpy(np.asarray(x).astype(np.float16)), 8, 20)


def oracle_null(shape, sets, seed, fp16=False):
    """Re-draw the null sets as documented (one generator, set after set, patches row-major) as whole arrays."""
    n, c, h, w = shape
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(sets):
        full = np.empty(shape)
        for i in range(0, h, 8):
            for j in range(0, w, 8):
                ph, pw = min(8, h - i), min(8, w - j)
                b = rng.standard_normal((n, c, ph, pw))
                full[:, :, i:i + ph, j:j + pw] = b.astype(np.float16) if fp16 else b
        out.append(upstream_half(full) if fp16 else upstream_top_k_corr_in_patches(full))
    return out


def correlated(n, c, h, w, seed=0):
    """Gaussian data with strong pixel correlations (a shared per-sample field plus noise)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 1, h, w))
    return (base + 0.3 * rng.standard_normal((n, c, h, w))).astype(np.float32)


@pytest.mark.parametrize("fp16", [False, True])
def test_array_correlation_matches_upstream_with_border_patches(fp16):
    x = correlated(40, 3, 12, 12)  # patches 8x8, 8x4, 4x8, 4x4
    got = analysis.array_correlation(x, fp16=fp16)
    want = upstream_half(x) if fp16 else upstream_top_k_corr_in_patches(x)
    # float16: per-patch float16 mean / std pooled in float64, upstream's one float16 mean / std of all values
    np.testing.assert_allclose([got.mean, got.std], [want["mean"], want["std"]], rtol=2e-3 if fp16 else 1e-10)
    assert got.mean > 0.9  # the shared field makes channels almost perfectly correlated


def test_null_row_redrawn_and_gaussian_noise_inside_it():
    shape = (64, 3, 16, 16)
    null = analysis.null_correlation(shape, sets=4, seed=3)
    want = oracle_null(shape, 4, 3)
    for got, w in zip(null.sets, want):
        np.testing.assert_allclose([got.mean, got.std], [w["mean"], w["std"]], rtol=1e-10)
    means = np.array([w["mean"] for w in want])
    assert null.mean == pytest.approx(means.mean(), rel=1e-10)
    assert null.mean_sd == pytest.approx(means.std(ddof=1), rel=1e-8)
    assert null.std == pytest.approx(np.mean([w["std"] for w in want]), rel=1e-10)
    # known answer: an independent Gaussian set lies within a few null sds; correlated data far above
    gauss = analysis.array_correlation(np.random.default_rng(99).standard_normal(shape))
    assert abs(gauss.mean - null.mean) < 5 * null.mean_sd
    assert analysis.array_correlation(correlated(*shape)).mean > null.mean + 20 * null.mean_sd
    single = analysis.null_correlation(shape, sets=1, seed=3)
    assert single.mean_sd is None and single.sets[0] == null.sets[0]


@pytest.mark.slow
def test_correlations_end_to_end(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    common = ["--ckpt", ckpt, "--n", "32", "--steps", str(STEPS), "--batch", str(BATCH), "--seed", "7",
              "--runs-dir", str(tmp_path / "runs"), "--null-sets", "3", "--null-seed", "5"]
    out = correlations.main(common + ["--out", str(tmp_path / "corr")])
    with open(os.path.join(out, "correlations.json")) as f:
        res = json.load(f)
    run = res["run"]
    arrays = {k: np.load(os.path.join(run, f"{k}.npy")) for k in correlations.ROWS}
    assert arrays["noise"].shape == (32, *SHAPE) and not np.allclose(arrays["latents"], arrays["noise"])
    for k, a in arrays.items():
        want = upstream_top_k_corr_in_patches(a)
        np.testing.assert_allclose([res["correlation"][k]["mean"], res["correlation"][k]["std"]],
                                   [want["mean"], want["std"]], rtol=1e-10)
    with open(os.path.join(run, "metrics.json")) as f:  # the latents row is metrics.json's correlation
        core = json.load(f)["metrics"]["correlation"]
    assert res["correlation"]["latents"]["mean"] == pytest.approx(core["mean"], rel=1e-10)
    null = oracle_null((32, *SHAPE), 3, 5)
    means = np.array([w["mean"] for w in null])
    assert res["null"]["mean"] == pytest.approx(means.mean(), rel=1e-10)
    assert res["null"]["mean_sd"] == pytest.approx(means.std(ddof=1), rel=1e-8)
    for k in correlations.ROWS:
        assert res["z_vs_null"][k] == pytest.approx((res["correlation"][k]["mean"] - means.mean()) / means.std(ddof=1),
                                                    rel=1e-6)
    assert (res["n"], res["steps"], res["seed"], res["top_k"], res["patch_size"]) == (32, STEPS, 7, 20, 8)

    with open(os.path.join(out, "correlations.csv")) as f:
        rows = {r["row"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["noise", "latents", "samples", "null"]
    for k in correlations.ROWS:
        assert float(rows[k]["mean"]) == pytest.approx(res["correlation"][k]["mean"], rel=1e-12)
        assert float(rows[k]["std"]) == pytest.approx(res["correlation"][k]["std"], rel=1e-12)
    assert float(rows["null"]["mean"]) == pytest.approx(res["null"]["mean"], rel=1e-12)
    assert float(rows["null"]["mean_sd_over_null_sets"]) == pytest.approx(res["null"]["mean_sd"], rel=1e-12)
    assert "null" in correlations.markdown(res)

    png = matplotlib.image.imread(os.path.join(out, "correlations.png"))
    assert png.shape[0] > 300 and png.shape[1] > 500 and png[..., :3].std() > 0.05

    # rerun: the finished run is reused (not resampled), the numbers are identical
    mtime = os.path.getmtime(os.path.join(run, "samples.npy"))
    correlations.main(common + ["--out", out])
    assert os.path.getmtime(os.path.join(run, "samples.npy")) == mtime
    with open(os.path.join(out, "correlations.json")) as f:
        assert json.load(f) == res

    # --upstream-fp16 on the same run: every input (null sets too) in float16, coefficients in float16 arithmetic
    out16 = correlations.main(common + ["--upstream-fp16", "--out", str(tmp_path / "corr16")])
    assert os.path.getmtime(os.path.join(run, "samples.npy")) == mtime
    with open(os.path.join(out16, "correlations.json")) as f:
        res16 = json.load(f)
    assert res16["upstream_fp16"] and res16["run"] == run
    for k, a in arrays.items():
        want = upstream_half(a)
        assert res16["correlation"][k]["mean"] == pytest.approx(want["mean"], rel=2e-3)
    null16 = oracle_null((32, *SHAPE), 3, 5, fp16=True)
    assert res16["null"]["mean"] == pytest.approx(np.mean([w["mean"] for w in null16]), rel=2e-3)


def test_default_out_folder_names_non_default_settings():
    p = correlations.build_parser()
    assert correlations.out_parts(correlations.options_from_args(p.parse_args([]))) == []
    opts = correlations.options_from_args(p.parse_args(["--null-sets", "2", "--null-seed", "1", "--upstream-fp16"]))
    assert correlations.out_parts(opts) == ["null2", "nullseed1", "fp16"]
    assert opts == correlations.Options(null_sets=2, null_seed=1, upstream_fp16=True)
