"""jtaba.analyses from Python, without experiments: the typed results on small arrays against numpy
re-computations, frozen, and their to_json() serialisable as the commands write it."""
import dataclasses
import json

import numpy as np
import pytest

from jtaba.analyses import assignment, correlations, normality, plain, triangles, variances


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

    acc = assignment.assignment_stats(noise, samples, latents, divs=2, top=3).accuracy["latent_to_image"]
    chunks = []
    for c in range(2):
        lat, img = flat["latent"][c * 12:(c + 1) * 12], flat["image"][c * 12:(c + 1) * 12]
        d = ((lat[:, None, :] - img[None, :, :]) ** 2).mean(-1)
        chunks.append(100 * (d.argmin(1) == np.arange(12)).mean())
    assert acc["mean"] == pytest.approx(np.mean(chunks)) and acc["std"] == pytest.approx(np.std(chunks, ddof=1))
