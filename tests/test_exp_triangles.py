"""``python -m experiments.triangles`` end to end on a tiny random ADM checkpoint: every number in triangles.json /
triangles.csv is recomputed from the written noise / samples / latents files with plain numpy and the upstream
search loop re-typed here (the metric functions themselves are tested in test_metrics_triangles.py)."""
import csv
import functools
import json
import os

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from experiments import triangles
from jtaba.checkpoint import save_checkpoint
from jtaba.diffusion import DiffusionConfig
from jtaba.models import adm
from tests.perception import random_params

# Shared with test_exp_training_dynamics (same model config, T and padded batch: the loops compile once per session).
TINY_FLAGS = dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="4",
                  num_heads=2, learn_sigma=True, diffusion_steps=1000, noise_schedule="cosine",
                  rescale_timesteps=True, rescale_learned_sigmas=True)
STEPS, BATCH = 3, 16
SHAPE = (3, 8, 8)


def tiny_config_dict() -> dict:
    return {"family": "adm", "model": adm.Config.from_flags(TINY_FLAGS).to_dict(),
            "diffusion": DiffusionConfig.from_adm_flags(TINY_FLAGS).to_dict(), "extras": {"flags": TINY_FLAGS}}


@functools.lru_cache(maxsize=1)
def _tiny_shapes():
    config = adm.Config.from_flags(TINY_FLAGS)
    x = jnp.zeros((1, 8, 8, 3), jnp.float32)
    return jax.eval_shape(lambda: adm.Network(config).init(jax.random.key(0), x, jnp.zeros((1,)))["params"])


def tiny_params(seed: int) -> dict:
    """Random params with the structure of ``Network.init`` (shapes via eval_shape). Values are drawn here instead
    of taken from init, whose zero-initialised output layers would make eps identically 0."""
    return random_params(_tiny_shapes(), seed)


def save_tiny_checkpoint(directory, seed: int = 0) -> str:
    save_checkpoint(str(directory), tiny_config_dict(), tiny_params(seed))
    return str(directory)


# ---- independent numpy recomputation ----
def oracle_vertex_cosines(noise, samples, latents) -> dict:
    n, s, lat = (np.asarray(a, np.float64).reshape(len(a), -1) for a in (noise, samples, latents))

    def cos(u, v):
        return (u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))

    return {"image": cos(n - s, lat - s), "noise": cos(s - n, lat - n), "latent": cos(n - lat, s - lat)}


def oracle_triangle(angles: dict):
    """most_probable_triangle.py: histograms over bins range(1, 180), loops A (latent) outer, B (image) inner,
    C = 180 - A - B, strict '>'."""
    probs = {}
    for k, a in angles.items():
        h, _ = np.histogram(a, bins=range(1, 180))
        probs[k] = dict(zip(range(1, 179), h / h.sum()))
    best, best_p = None, 0.0
    for a in range(1, 179):
        for b in range(1, 179):
            c = 180 - a - b
            if c in probs["noise"]:
                p = probs["latent"][a] * probs["image"][b] * probs["noise"][c]
                if p > best_p:
                    best, best_p = (a, b, c), p
    return best, best_p, probs


@pytest.mark.slow
def test_triangles_end_to_end(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    runs_dir = str(tmp_path / "runs")
    argv = ["--ckpt", ckpt, "--n", "32", "--steps", str(STEPS), "--seed", "7", "--runs-dir", runs_dir]
    out = triangles.main([*argv, "--batch", str(BATCH), "--out", str(tmp_path / "tri")])
    with open(os.path.join(out, "triangles.json")) as f:
        run = json.load(f)["run"]
    assert run.startswith(runs_dir)
    noise, samples, latents = (np.load(os.path.join(run, f"{k}.npy")) for k in ("noise", "samples", "latents"))
    assert noise.shape == samples.shape == latents.shape == (32, *SHAPE)
    assert not np.allclose(samples, noise) and not np.allclose(latents, noise)
    with open(os.path.join(out, "triangles.json")) as f:
        res = json.load(f)

    cosines = oracle_vertex_cosines(noise, samples, latents)
    angles = {k: np.degrees(np.arccos(np.clip(c, -1, 1))) for k, c in cosines.items()}
    for k, key in triangles.CALC_ANGLE_KEYS.items():
        np.testing.assert_allclose(res["calc_angles"][key], np.degrees(np.arccos(cosines[k].mean())), atol=1e-9)
        np.testing.assert_allclose(res["mean_sample_angle"][k], angles[k].mean(), atol=1e-9)

    flat = {k: np.asarray(a, np.float64).reshape(32, -1) for k, a in
            (("noise", noise), ("image", samples), ("latent", latents))}
    for (u, v), key in triangles.SIDES.items():
        d = np.linalg.norm(flat[u] - flat[v], axis=1)
        np.testing.assert_allclose(res["calc_distances"][f"mean_l2_{key}"], d.mean(), rtol=1e-12)
        np.testing.assert_allclose(res["calc_distances"][f"std_l2_{key}"], d.std(ddof=1), rtol=1e-9)

    best, best_p, probs = oracle_triangle(angles)
    assert best is not None, "pick a seed whose tiny run has a triangle"
    tri = res["most_probable_triangle"]
    assert (tri["latent"], tri["image"], tri["noise"]) == best and sum(best) == 180
    np.testing.assert_allclose(tri["probability"], best_p, rtol=1e-12)
    assert res["histograms"]["bin_left_edges"] == list(range(1, 179))
    for k in triangles.VERTICES:
        np.testing.assert_allclose(res["histograms"][k], [probs[k][e] for e in range(1, 179)], atol=1e-15)

    with open(os.path.join(out, "triangles.csv")) as f:
        (row,) = list(csv.DictReader(f))
    assert [int(row[f"triangle_angle_{k}"]) for k in ("latent", "image", "noise")] == list(best)
    assert float(row["mean_angle_noise"]) == pytest.approx(res["calc_angles"]["mean_cossim_noise"], rel=1e-12)
    assert int(row["n"]) == 32 and int(row["steps"]) == STEPS

    png = matplotlib.image.imread(os.path.join(out, "triangles.png"))
    assert png.shape[0] > 200 and png.shape[1] > 800 and png[..., :3].std() > 0.05  # drawn, not blank

    # the same settings again (another batch size) reuse the finished run (no resampling): identical numbers
    mtime = os.path.getmtime(os.path.join(run, "samples.npy"))
    triangles.main([*argv, "--batch", "8", "--out", out])
    assert os.path.getmtime(os.path.join(run, "samples.npy")) == mtime
    with open(os.path.join(out, "triangles.json")) as f:
        assert json.load(f) == res


def test_missing_named_model_names_convert_command(tmp_path, monkeypatch):
    monkeypatch.setenv("JTABA_HOME", str(tmp_path))
    with pytest.raises(SystemExit, match=r"python convert/adm.py --model=adm32 .*--out"):
        triangles.main(["--model=adm32"])


def test_triangle_vertices_to_scale():
    from jtaba.plotting import triangle_vertices

    pts = triangle_vertices(30.0, 100.0, 50.0, noise_latent=2.0)

    def angle_at(p, q, r):
        u, v = q - p, r - p
        return np.degrees(np.arccos(u @ v / np.linalg.norm(u) / np.linalg.norm(v)))

    assert angle_at(pts["noise"], pts["image"], pts["latent"]) == pytest.approx(30.0)
    assert angle_at(pts["image"], pts["noise"], pts["latent"]) == pytest.approx(100.0)
    assert angle_at(pts["latent"], pts["noise"], pts["image"]) == pytest.approx(50.0)
    assert np.linalg.norm(pts["latent"] - pts["noise"]) == pytest.approx(2.0)


def test_upstream_fp16_flag_selects_float16_angles_and_names_the_folder():
    from jtaba import cli

    p = triangles.build_parser()
    assert triangles.out_parts(triangles.Options()) == []
    opts = cli.options_from_args(triangles.Options, p.parse_args(["--upstream-fp16"]))
    assert opts.upstream_fp16 and triangles.out_parts(opts) == ["fp16"]
