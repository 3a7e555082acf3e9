"""``python -m experiments.training_dynamics`` on a tiny fake training run (three checkpoints saved through the
trainer's own ``RunCheckpoints`` / ``write_run_config``): one row per checkpoint and part, every value recomputed
from the written files with plain numpy, the EMA weights of the right step used, resume per checkpoint."""
import csv
import json
import os

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

import jtaba
from experiments import training_dynamics as td
from jtaba import sharding
from jtaba.checkpoint import save_checkpoint
from jtaba.model import replicate
from jtaba.noise import noise_for_indices
from jtaba.train.export import saved_steps
from jtaba.train.presets import TrainConfig, freeze_flags
from jtaba.train.run_checkpoints import RunCheckpoints, write_run_config
from jtaba.train.state import TrainState, make_optimizer
from tests.test_exp_triangles import (
    BATCH,
    SHAPE,
    STEPS,
    TINY_FLAGS,
    oracle_vertex_cosines,
    tiny_config_dict,
    tiny_params,
)

N = 16
SAVED = (0, 10)


def make_fake_run(run_dir) -> dict:
    """A training run directory with checkpoints at SAVED whose params and EMA params differ; returns
    {step: ema params}."""
    cfg = TrainConfig("tiny", freeze_flags(TINY_FLAGS), "procedural", batch_size=8, steps=SAVED[-1],
                      save="every:10")
    write_run_config(str(run_dir), cfg)
    ckpts = RunCheckpoints(str(run_dir))
    optimizer = make_optimizer(cfg.lr, cfg.weight_decay)
    emas = {}
    for i, step in enumerate(SAVED):
        params, emas[step] = tiny_params(100 + i), tiny_params(200 + i)
        state = TrainState(params=params, ema_params=emas[step], opt_state=optimizer.init(params),
                           step=jnp.asarray(step, jnp.int32), rng=jax.random.PRNGKey(0))
        ckpts.save(state, {"epoch": 0, "position": step})
    ckpts.close()
    return emas


def oracle_row(noise, samples, latents, samples2=None) -> dict:
    """Plain float64 numpy: mean-cosine angles, L2 distances, MAE, nearest-neighbour assignment both ways."""
    flat = lambda a: np.asarray(a, np.float64).reshape(len(a), -1)  # noqa: E731
    n, s, lat = flat(noise), flat(samples), flat(latents)
    cos = oracle_vertex_cosines(noise, samples, latents)
    row = {f"angle_{k}": np.degrees(np.arccos(c.mean())) for k, c in cos.items()}
    for key, (u, v) in {"img_lat": (s, lat), "img_noise": (s, n), "noise_lat": (n, lat)}.items():
        d = np.linalg.norm(u - v, axis=1)
        row[f"mean_l2_{key}"], row[f"std_l2_{key}"] = d.mean(), d.std(ddof=1)
    if samples2 is not None:
        row["mean_mse_img_img2"] = ((s - flat(samples2)) ** 2).mean(1).mean()
    row["mae_noise_latent"] = np.abs(n - lat).mean()
    for name, x in (("noise", n), ("latent", lat)):
        d = ((x[None, :, :] - s[:, None, :]) ** 2).mean(-1)  # d[i, j] = mse(x_j, sample_i)
        idx = np.arange(len(s))
        row[f"acc_img_to_{name}"] = np.mean(d.argmin(1) == idx)
        row[f"acc_{name}_to_img"] = np.mean(d.argmin(0) == idx)
    return row


def load_run(d):
    return {k: np.load(os.path.join(d, f"{k}.npy")) for k in ("noise", "samples", "latents", "samples2")
            if os.path.exists(os.path.join(d, f"{k}.npy"))}


@pytest.mark.slow
def test_training_dynamics_end_to_end(tmp_path):
    run = tmp_path / "train_run"
    emas = make_fake_run(run)
    assert saved_steps(str(run)) == list(SAVED)

    argv = ["--run", str(run), "--n", str(N), "--steps", str(STEPS), "--batch", str(BATCH),
            "--out", str(tmp_path / "td"), "--runs-dir", str(tmp_path / "runs")]
    out = td.main(argv)
    with open(os.path.join(out, "training_dynamics.json")) as f:
        res = json.load(f)
    assert res["final_step"] == SAVED[-1] and res["settings"]["seed"] == 420
    assert [r["step"] for r in res["g2"]] == [r["step"] for r in res["g1"]] == list(SAVED)

    # Direct computations below place their inputs on the data mesh as the runner does (same jit cache entries).
    mesh = sharding.data_mesh()
    noise = np.asarray(noise_for_indices(420, sharding.put_batch(np.arange(N, dtype=np.int32), mesh), SHAPE))
    runs = {part: {r["step"]: r["run"] for r in res[part]} for part in ("g2", "g1")}
    final = load_run(runs["g2"][SAVED[-1]])
    for part in ("g2", "g1"):
        for row in res[part]:
            files = load_run(row["run"])
            np.testing.assert_array_equal(files["noise"], noise)
            if part == "g1":  # G.1 inverts the final model's samples
                np.testing.assert_array_equal(files["samples"], final["samples"])
            want = oracle_row(files["noise"], files["samples"], files["latents"], files.get("samples2"))
            assert set(row) == set(want) | {"step", "run"}
            for k, v in want.items():
                np.testing.assert_allclose(row[k], v, rtol=1e-9, atol=1e-12, err_msg=f"{part} {row['step']} {k}")
    g2 = {r["step"]: r for r in res["g2"]}
    assert g2[0]["angle_noise"] != g2[10]["angle_noise"]  # the checkpoints differ
    for k, v in res["g1"][-1].items():  # G.1 with the final model is G.2 of the final model
        if k not in ("mean_mse_img_img2", "run"):
            assert v == pytest.approx(g2[SAVED[-1]][k], rel=1e-12)

    # checkpoint 0's runs used the EMA weights of step 0: sample / invert with them directly
    save_checkpoint(str(tmp_path / "ema0"), tiny_config_dict(), emas[0])
    model = replicate(jtaba.load(str(tmp_path / "ema0")), sharding.replicated(mesh))
    first = load_run(runs["g2"][0])
    np.testing.assert_allclose(np.asarray(jtaba.sample(model, sharding.put_batch(noise, mesh), steps=STEPS).x),
                               first["samples"], atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(jtaba.invert(model, sharding.put_batch(final["samples"], mesh), steps=STEPS).x),
        load_run(runs["g1"][0])["latents"], atol=1e-5)

    for part, cols in (("g2", 16), ("g1", 15)):
        with open(os.path.join(out, f"training_dynamics_{part}.csv")) as f:
            rows = list(csv.DictReader(f))
        assert [int(r["step"]) for r in rows] == list(SAVED) and len(rows[0]) == cols
        assert float(rows[0]["acc_img_to_noise"]) == res[part][0]["acc_img_to_noise"]
        png = matplotlib.image.imread(os.path.join(out, f"{part}.png"))
        assert png.shape[1] > 800 and png[..., :3].std() > 0.05
    # Figs. 17-19: each checkpoint's samples of the first noises, kept beside the rows
    for step, path in runs["g2"].items():
        np.testing.assert_array_equal(np.load(td.generations_path(out, step)), load_run(path)["samples"][:8])
    png = matplotlib.image.imread(os.path.join(out, "generations.png"))
    assert png.shape[0] > 200 and png.shape[1] > 800 and png[..., :3].std() > 0.05

    # resume: only the missing row is recomputed, from the finished run files, with identical values
    row_path = os.path.join(out, td.ROWS_DIR, "g1", f"{0:09d}.json")
    kept = os.path.getmtime(os.path.join(out, td.ROWS_DIR, "g2", f"{0:09d}.json"))
    os.remove(row_path)
    td.main(argv)
    with open(row_path) as f:
        assert json.load(f) == res["g1"][0]
    assert os.path.getmtime(os.path.join(out, td.ROWS_DIR, "g2", f"{0:09d}.json")) == kept
    with pytest.raises(SystemExit, match="other settings"):
        td.main(argv[:2] + ["--n", "8"] + argv[4:])
