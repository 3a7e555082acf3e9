"""jtaba.analyses from Python, without experiments: the typed results on small arrays against numpy
re-computations, frozen, and their to_json() serialisable as the commands write it."""
import dataclasses
import json

import numpy as np
import pytest

from jtaba.analyses import (
    approximation_error,
    assignment,
    correlations,
    normality,
    plain,
    precision,
    triangles,
    variances,
)
from tests.test_exp_approximation_error import hand_case


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((24, 3, 8, 8)).astype(np.float32)
    samples = np.tanh(noise + rng.standard_normal(noise.shape).astype(np.float32))
    latents = (0.8 * noise + 0.1 * samples).astype(np.float32)
    return noise, samples, latents


def test_results_are_frozen_and_json(arrays):
    noise, samples, latents = arrays
    results = [triangles.triangle_stats(noise, samples, latents),
               correlations.correlation_table(noise, latents, samples, null_sets=2),
               variances.variance_table(noise, latents), plain.plain_table(noise, samples, latents, 0.5),
               normality.normality_table(noise, latents, limit=64),
               assignment.assignment_stats(noise, samples, latents, divs=2, top=3)]
    for r in results:
        assert dataclasses.is_dataclass(r)
        with pytest.raises(dataclasses.FrozenInstanceError):
            r.__setattr__(dataclasses.fields(r)[0].name, None)
        assert isinstance(json.loads(json.dumps(r.to_json())), dict)  # plain lists / dicts, as the JSON files


def test_values_against_numpy(arrays):
    noise, samples, latents = arrays
    flat = {k: np.asarray(a, np.float64).reshape(len(a), -1) for k, a in
            (("noise", noise), ("image", samples), ("latent", latents))}
    u, v = flat["noise"] - flat["latent"], flat["image"] - flat["latent"]
    cos = (u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))
    stats = triangles.triangle_stats(noise, samples, latents)
    assert stats.calc_angles["mean_cossim_latent"] == pytest.approx(np.degrees(np.arccos(cos.mean())), abs=1e-9)
    assert stats.mean_sample_angle["latent"] == pytest.approx(np.degrees(np.arccos(np.clip(cos, -1, 1))).mean())

    var = variances.variance_table(noise, latents)
    assert var.variance["latents"].global_variance == pytest.approx(flat["latent"].var(ddof=1), rel=1e-10)
    assert var.to_json()["variance"]["noise"]["global"] == pytest.approx(flat["noise"].var(ddof=1), rel=1e-10)
    assert var.ratio_latents_to_noise["global"] == pytest.approx(flat["latent"].var(ddof=1) /
                                                                 flat["noise"].var(ddof=1), rel=1e-10)

    table = correlations.correlation_table(noise, latents, samples, null_sets=2)
    x = flat["latent"].reshape(24, 3, 8, 8).reshape(24, -1)  # one 8x8 patch: all C*64 features
    r = np.abs(np.corrcoef(x, rowvar=False))[np.triu_indices(x.shape[1], 1)]
    assert table.correlation["latents"].mean == pytest.approx(np.sort(r)[-20:].mean(), rel=1e-9)
    assert table.null is not None and len(table.null.sets) == 2 and table.z_vs_null is not None

    acc = assignment.assignment_stats(noise, samples, latents, divs=2, top=3).accuracy.latent_to_image
    chunks = []
    for c in range(2):
        lat, img = flat["latent"][c * 12:(c + 1) * 12], flat["image"][c * 12:(c + 1) * 12]
        chunks.append(100 * (mse_matrix(lat, img).argmin(1) == np.arange(12)).mean())
    assert acc.per_div == pytest.approx(chunks)
    assert acc.mean == pytest.approx(np.mean(chunks)) and acc.std == pytest.approx(np.std(chunks, ddof=1))


def mse_matrix(x, y):
    """(len(x), len(y)) mean squared distances of flat float64 rows."""
    return ((x[:, None, :] - y[None, :, :]) ** 2).mean(-1)


def test_assignment_tables_against_numpy(arrays):
    noise, samples, _ = arrays
    weak = np.tanh(0.1 * noise + np.random.default_rng(1).standard_normal(noise.shape)).astype(np.float32)
    stats = assignment.assignment_stats(noise, weak, 0.9 * noise, divs=2, top=3)
    n_flat, s_flat = (np.asarray(a, np.float64).reshape(24, -1) for a in (noise, weak))
    counts = np.bincount(mse_matrix(n_flat, s_flat).argmin(1), minlength=24)
    var, mean_square = s_flat.var(1, ddof=1), (s_flat ** 2).mean(1)
    top = sorted(range(24), key=lambda i: (-counts[i], i))[:3]
    att = stats.attractors["noise"]
    assert att.index == top and att.count == counts[top].tolist() and att.items == 24
    assert att.distinct_nearest == (counts > 0).sum() < 24
    assert att.variance_rank == [int((var < var[i]).sum()) for i in top]
    assert att.origin_rank == [int((mean_square < mean_square[i]).sum()) for i in top]
    assert stats.lowest_variance.index == np.argsort(var)[:3].tolist()
    assert stats.lowest_variance.variance == pytest.approx(np.sort(var)[:3].tolist(), rel=1e-12)
    assert stats.median_variance == pytest.approx(np.median(var), rel=1e-12)

    d = mse_matrix(n_flat[:12], s_flat[:12])
    nearest = d.argmin(1)
    wrong = np.flatnonzero(nearest != np.arange(12))
    w = stats.wrong_noise_to_image
    assert w.wrong == len(wrong) > 3 and w.chunk == 12
    assert w.noise_index == wrong[:3].tolist() and w.assigned == nearest[wrong[:3]].tolist()
    assert w.mse_own == pytest.approx(d[wrong[:3], wrong[:3]].tolist(), rel=1e-12)
    assert w.mse_assigned == pytest.approx(d[wrong[:3], nearest[wrong[:3]]].tolist(), rel=1e-12)
    assert stats.to_json()["wrong_noise_to_image"]["noise_index"] == w.noise_index


def test_approximation_error_tables_hand_case():
    """The hand-worked case of tests/test_exp_approximation_error.py as ε; x_t exact (zero errors)."""
    approx, truth, mask = hand_case()
    pairs = approximation_error.StepArrays(eps=approximation_error.StepPair(list(approx), list(truth)),
                                           xt=approximation_error.StepPair(list(truth), list(truth)))
    err = approximation_error.error_tables(pairs, mask, steps=2, early_fraction=0.1)
    assert err.early_steps == 1 and err.plain_fraction == 0.5
    np.testing.assert_allclose(err.per_step["eps"].plain, [0.5, 0.25])
    np.testing.assert_allclose(err.per_step["eps"].non_plain, [0.25, 0.25])
    np.testing.assert_allclose(err.per_step["eps"].scale, [2.0, 4.0])
    np.testing.assert_allclose(err.per_step["xt"].all, [0.0, 0.0])
    assert err.table["eps"]["plain"] == approximation_error.IntervalSums(0.5, 0.25, 0.75, 2 / 3)
    assert err.table["eps"]["all"].total == pytest.approx(0.625)
    assert err.to_json()["per_step"]["eps"]["raw_non_plain"] == [0.5, 1.0]


def test_precision_rows_against_numpy(arrays):
    noise, samples, latents = arrays
    ref = {"noise": noise, "samples": samples, "latents": latents, "samples2": samples}
    moved = {**ref, "latents": latents + np.float32(0.01) * noise}
    table = precision.of_runs({"float32": ref, "bfloat16": moved})
    a, b = (np.asarray(x, np.float64).ravel() for x in (noise, moved["latents"]))
    kl = (np.log(b.std(ddof=1) / a.std(ddof=1)) + (a.var(ddof=1) + (a.mean() - b.mean()) ** 2) / (2 * b.var(ddof=1))
          - 0.5)  # upstream ``kl_div``, noise first
    row = table.rows[1]
    assert row.numbers.kl_noise_latent == pytest.approx(kl, rel=1e-9)
    assert row.delta.kl_noise_latent == pytest.approx(kl - table.rows[0].numbers.kl_noise_latent, rel=1e-12)
    assert row.max_abs["latents"].max == pytest.approx(np.abs(0.01 * noise.astype(np.float64)).max(), rel=1e-5)
    assert row.max_abs["samples"] == precision.MaxAbs(0.0, 0.0)
    flat = row.to_json()  # the flat precision.csv row
    assert flat["latents_max_abs_max"] == row.max_abs["latents"].max
    assert flat["delta_angle_latent"] == row.delta.angle_latent != 0
    assert list(flat)[:3] == ["precision", "samples_max_abs_mean", "samples_max_abs_max"]
