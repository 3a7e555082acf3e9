"""Training at tiny scale: a run crashed at step 3, then stopped by SIGTERM at step 3, then resumed ends
bit-identical to an uninterrupted run; EMA export; bf16 compute; the 2-device data-parallel step matches 1 device."""
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtaba
from jtaba.checkpoint import load_params, read_config
from jtaba.diffusion import DiffusionConfig
from jtaba.models import adm
from jtaba.sharding import data_mesh
from jtaba.train.export import ema_model, export_ema, saved_steps
from jtaba.train.loop import initial_state, train
from jtaba.train.presets import PRESETS
from jtaba.train.run_checkpoints import RunCheckpoints, write_run_config
from jtaba.train.step import make_train_step

TINY_FLAGS = dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1", attention_resolutions="1",
                  num_heads=1, learn_sigma=True, dropout=0.1, diffusion_steps=100, noise_schedule="cosine",
                  rescale_learned_sigmas=True, rescale_timesteps=True)
TINY = PRESETS["builtin"].replace(name="tiny", flags=TINY_FLAGS, batch_size=4, steps=4, lr=1e-3, ema_rate=0.9,
                                  save="every:2", keep=None, log_every=2)


class Crash(Exception):
    pass


def _assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b) and len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_interrupted_run_resumes_bit_identical(tmp_path):
    a = train(TINY, str(tmp_path / "a"), progress=False)

    def crash_at_3(step):
        if step == 3:
            raise Crash  # a hard kill: nothing is saved for step 3

    run_b = str(tmp_path / "b")
    with pytest.raises(Crash):
        train(TINY, run_b, on_step=crash_at_3, progress=False)
    assert RunCheckpoints(run_b).all_steps() == [0, 2]
    def sigterm_at_3(step):
        return os.kill(os.getpid(), signal.SIGTERM) if step == 3 else None
    train(TINY, run_b, on_step=sigterm_at_3, progress=False)  # preemption notice: stops with a checkpoint at 3
    assert RunCheckpoints(run_b).all_steps() == [0, 2, 3]
    b = train(TINY, run_b, progress=False)

    assert int(b.step) == 4
    _assert_trees_equal(a, b)  # params, EMA, optimizer state, step, rng
    init = initial_state(TINY, data_mesh())
    assert not np.allclose(a.params["out_2"]["kernel"], init.params["out_2"]["kernel"])  # it did train
    assert not np.allclose(a.ema_params["out_2"]["kernel"], a.params["out_2"]["kernel"])
    ra, rb = RunCheckpoints(str(tmp_path / "a")), RunCheckpoints(run_b)
    _, data_a = ra.restore(4, a)
    _, data_b = rb.restore(4, a)
    assert data_a == data_b == {"epoch": 0, "position": 16}
    logs = [json.loads(line) for line in open(os.path.join(run_b, "log.jsonl"))]
    assert [r["step"] for r in logs][-1] == 4 and all(np.isfinite(r["loss"]) for r in logs)

    # an unreadable newest checkpoint (files lost): named, moved aside, and the run resumes from the previous one
    import shutil

    run_c = str(tmp_path / "c")
    shutil.copytree(run_b, run_c)
    shutil.rmtree(os.path.join(run_c, "4"))
    for root, _, files in os.walk(os.path.join(run_c, "3", "state")):
        for f in files:
            if not f.startswith("_"):
                os.remove(os.path.join(root, f))
    c = train(TINY, run_c, progress=False)
    assert os.path.isdir(os.path.join(run_c, "unreadable-3")) and RunCheckpoints(run_c).all_steps() == [0, 2, 4]
    _assert_trees_equal(a, c)

    model_dir = str(tmp_path / "model")
    assert export_ema(run_b, model_dir) == 4
    cfg = read_config(model_dir)
    assert cfg["family"] == "adm" and cfg["diffusion"]["learned_sigma"] and cfg["model"]["out_channels"] == 6
    assert cfg["diffusion"]["num_train_timesteps"] == 100 and cfg["diffusion"]["rescale_timesteps"]
    _assert_trees_equal(load_params(model_dir), jax.device_get(b.ema_params))


def test_ema_model_is_the_checkpoints_ema_tree(tmp_path):
    """ema_model reads the EMA tree (not the params) of the chosen checkpoint into memory; export_ema writes it."""
    run = str(tmp_path / "run")
    write_run_config(run, TINY)
    init = initial_state(TINY, data_mesh())
    ckpts = RunCheckpoints(run)
    emas = {}
    for step in (0, 2):
        emas[step] = jax.device_get(jax.tree.map(lambda p, s=step: p + s + 1, init.params))  # EMA != params
        ckpts.save(init.replace(ema_params=emas[step], step=jnp.int32(step)), {"epoch": 0, "position": 4 * step})
    ckpts.close()
    assert saved_steps(run) == [0, 2]

    model, step = ema_model(run)
    assert step == 2 and isinstance(model, jtaba.Model)
    _assert_trees_equal(model.params, emas[2])
    _assert_trees_equal(ema_model(run, 0)[0].params, emas[0])
    assert model.family == "adm" and model.config == adm.Config.from_flags(TINY_FLAGS)
    assert model.diffusion == DiffusionConfig.from_adm_flags(TINY_FLAGS) and model.extras["step"] == 2
    assert model.extras["train"] == TINY.to_dict()

    out = str(tmp_path / "model")
    assert export_ema(run, out) == 2
    _assert_trees_equal(load_params(out), model.params)
    loaded = jtaba.load(out)
    assert (loaded.family, loaded.config, loaded.diffusion, loaded.extras) == \
        (model.family, model.config, model.diffusion, model.extras)

    missing = str(tmp_path / "not_a_run")
    for fn in (saved_steps, ema_model):
        with pytest.raises(ValueError, match="not a jtaba training run"):
            fn(missing)
    assert not os.path.exists(missing)
    with pytest.raises(ValueError, match=r"no checkpoint 1 .*\[0, 2\]"):
        ema_model(run, 1)


def _one_step(cfg, state=None):
    """One update on a fixed batch through the (cached) jitted step on all devices, from ``state`` or the initial
    state of ``cfg``."""
    mesh = data_mesh()
    x = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    return make_train_step(cfg, mesh)(initial_state(cfg, mesh) if state is None else state, x)


def _adam_mu(state):
    return np.asarray(state.opt_state[0].mu["out_2"]["kernel"])  # 0.1 * first gradient (only out_2 has one at init)


@pytest.mark.slow
def test_bf16_compute_keeps_fp32_master_weights():
    bf16 = TINY.replace(compute_dtype="bfloat16")  # the same params: start both from TINY's (the step donates it)
    (s32, _), (s16, _) = _one_step(TINY), _one_step(bf16, initial_state(TINY, data_mesh()))
    floats = [p for p in jax.tree.leaves((s16.params, s16.ema_params, s16.opt_state)) if p.dtype != jnp.int32]
    assert floats and all(p.dtype == jnp.float32 for p in floats)
    g32, g16 = _adam_mu(s32), _adam_mu(s16)
    rel = np.linalg.norm(g16 - g32) / np.linalg.norm(g32)
    assert 1e-5 < rel < 0.1, rel  # the torso really ran in bfloat16, and still gives nearly the same gradient


_TWO_DEVICES = """
import sys, jax, numpy as np
jax.config.update("jax_num_cpu_devices", 2)
sys.path.insert(0, {root!r})
from tests.test_train_resume import TINY
from jtaba.sharding import data_mesh, replicate
from jtaba.train.loop import abstract_state
from jtaba.train.step import make_train_step
mesh = data_mesh()
assert mesh.size == 2
init = np.load({init!r})
state = jax.tree.unflatten(jax.tree.structure(abstract_state(TINY, mesh)), [init[k] for k in sorted(init, key=int)])
x = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
state, terms = make_train_step(TINY, mesh)(replicate(state, mesh), x)
np.savez({out!r}, loss=terms["loss"], kernel=state.params["out_2"]["kernel"])
"""


@pytest.mark.slow
def test_data_parallel_step_matches_single_device(tmp_path):
    init, out = str(tmp_path / "init.npz"), str(tmp_path / "two.npz")
    np.savez(init, **{str(i): np.asarray(a) for i, a in enumerate(jax.tree.leaves(initial_state(TINY, data_mesh())))})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", _TWO_DEVICES.format(root=root, init=init, out=out)], check=True,
                   timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    two = np.load(out)
    state, terms = _one_step(TINY)
    np.testing.assert_allclose(two["loss"], terms["loss"], rtol=1e-5)
    np.testing.assert_allclose(two["kernel"], state.params["out_2"]["kernel"], atol=TINY.lr * 1e-2)
