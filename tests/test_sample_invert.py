"""``python -m experiments.sample_invert`` on a tiny random ADM: files and values against the API, resume after a
kill, 8 devices and 2 processes against 1, forward / swap / class-conditional wiring, refusals.

The DDIM loop is not bitwise batch-invariant under XLA (fusion and vectorisation change with the array shapes and
the partitioning, and ADM's ε re-derivation divides by small coefficients), so runs with other batch / device /
process layouts are compared at ATOL; per-index noise is compared bitwise, and a resumed run byte for byte."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtaba
from experiments import sample_invert
from jtaba import noise as noise_lib
from jtaba import sharding
from jtaba.checkpoint import save_checkpoint
from jtaba.diffusion import DiffusionConfig
from jtaba.io import finite_json
from jtaba.metrics.core import core_metrics
from jtaba.model import replicate
from jtaba.models.adm import Config, Network
from jtaba.runs import store
from jtaba.schedules import adm_spaced
from tests import processes
from tests.processes import finish, free_port

N, T, SHAPE = 5, 3, (3, 8, 8)
ATOL = 2e-4  # measured: <= 5e-5 between layouts (all_t_pred_xstart_samples2, after 9 network calls)
RUN = ["--n", str(N), "--steps", str(T), "--batch", "2", "--record"]
NAMES = ["noise", "samples", "latents", "samples2"] + [f"all_t_{k}{s}" for s in ("samples", "latents", "samples2")
                                                       for k in ("", "eps_", "pred_xstart_")]


def tiny_adm(directory, class_cond=False):
    """A random ADM (32 channels, 8x8, learned sigma, cosine schedule) saved as a jtaba checkpoint; params drawn
    with numpy from the init shapes (no compilation)."""
    flags = dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="4",
                 num_heads=2, learn_sigma=True, diffusion_steps=1000, noise_schedule="cosine", class_cond=class_cond)
    config = Config.from_flags(flags)
    y = jnp.zeros((1,), jnp.int32) if class_cond else None
    shapes = jax.eval_shape(Network(config).init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)), y)
    rng = np.random.default_rng(0)

    def draw(path, s):
        name = path[-1].key
        if name == "scale":
            return (1 + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)
        if name == "bias":
            return (0.05 * rng.standard_normal(s.shape)).astype(np.float32)
        return (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(draw, shapes["params"])
    diffusion = DiffusionConfig.from_adm_flags(flags).to_dict()
    save_checkpoint(str(directory), {"family": "adm", "model": config.to_dict(), "diffusion": diffusion, "extras": {}},
                    params)
    return str(directory)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_adm(tmp_path_factory.mktemp("ckpt") / "adm")


@pytest.fixture(scope="module")
def ref(ckpt, tmp_path_factory):
    """The reference run: one process, one device, batches of 2 (5 = 2 + 2 + 1), recorded."""
    out = str(tmp_path_factory.mktemp("runs") / "ref")
    with jax.default_matmul_precision("highest"):  # as in the tests (conftest), so their runs hit the jit cache
        sample_invert.main(["--ckpt", ckpt, *RUN, "--out", out])
    return out


def on_mesh(model):
    """The model and a ``put`` placing host arrays as the script does (batches of 2 on this process's mesh), so
    the API checks below reuse the run's compiled loops."""
    mesh = sharding.data_mesh()
    size = sharding.padded_size(2, mesh)
    return replicate(model, sharding.replicated(mesh)), lambda a, axis=0: sharding.put_batch(
        np.asarray(a), mesh, axis, size)


def load(run, name):
    return np.load(os.path.join(run, name + ".npy"))


def same_files(run, ref, names=NAMES, atol=None):
    for name in names:
        got, want = load(run, name), load(ref, name)
        assert got.shape == want.shape and got.dtype == want.dtype == np.float32, name
        if atol is None:
            assert open(os.path.join(run, name + ".npy"), "rb").read() == \
                open(os.path.join(ref, name + ".npy"), "rb").read(), name
        else:
            np.testing.assert_allclose(got, want, atol=atol, rtol=0, err_msg=name)


def test_files_and_values_match_the_api(ckpt, ref):
    noise = load(ref, "noise")
    np.testing.assert_array_equal(noise, noise_lib.noise_for_run(42, N, SHAPE))
    for name in NAMES:
        assert load(ref, name).shape == ((T, N) if name.startswith("all_t_") else (N,)) + SHAPE, name
    model, put = on_mesh(jtaba.load(ckpt))
    for rows in (slice(0, 2), slice(4, 5)):  # the first and the last (padded) batch, chained from the files
        b = rows.stop - rows.start
        s = jtaba.sample(model, put(noise[rows]), steps=T, record=True)
        np.testing.assert_array_equal(load(ref, "samples")[rows], np.asarray(s.x)[:b])
        np.testing.assert_array_equal(load(ref, "all_t_eps_samples")[:, rows], np.asarray(s.eps)[:, :b])
        lat = jtaba.invert(model, put(load(ref, "samples")[rows]), steps=T, record=True)
        np.testing.assert_array_equal(load(ref, "latents")[rows], np.asarray(lat.x)[:b])
        rec = jtaba.sample(model, put(load(ref, "latents")[rows]), steps=T, record=True)
        np.testing.assert_array_equal(load(ref, "samples2")[rows], np.asarray(rec.x)[:b])
    for final, traj in [("samples", "all_t_samples"), ("latents", "all_t_latents"), ("samples2", "all_t_samples2")]:
        np.testing.assert_array_equal(load(ref, traj)[-1], load(ref, final))
    with open(os.path.join(ref, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["_params"]["cmd"][1:] == ["--ckpt", ckpt, *RUN, "--out", ref]
    assert metrics["_params"]["steps"] == T and metrics["_params"]["n"] == N
    want = core_metrics(noise, load(ref, "latents"), load(ref, "samples"), load(ref, "samples2"))
    np.testing.assert_equal(metrics["metrics"], finite_json(want))  # NaN (5 samples: no correlation) -> null
    assert sorted(os.listdir(ref)) == sorted([n + ".npy" for n in NAMES] + ["metrics.json", store.MANIFEST])


def test_killed_run_resumes_to_identical_files(ckpt, ref, tmp_path, monkeypatch):
    out = str(tmp_path / "killed")
    write, calls = store.RunStore.write, []

    def dying_write(self, start, stop, arrays):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after 2 of 3 chunks
        calls.append((start, stop))
        write(self, start, stop, arrays)

    monkeypatch.setattr(store.RunStore, "write", dying_write)
    with pytest.raises(SystemExit, match="130"):  # Ctrl-C: a clean exit, the finished chunks kept
        sample_invert.main(["--ckpt", ckpt, *RUN, "--out", out])
    assert calls == [(0, 2), (2, 4)] and not os.path.exists(os.path.join(out, "samples.npy"))
    monkeypatch.setattr(store.RunStore, "write", write)
    sample_invert.main(["--ckpt", ckpt, *RUN, "--out", out])
    same_files(out, ref)
    with pytest.raises(SystemExit, match="seed"):  # the same directory under other parameters is refused
        sample_invert.main(["--ckpt", ckpt, *RUN, "--seed", "1", "--out", out])


def spawn(args, devices):
    return processes.spawn(["-m", "experiments.sample_invert", *args], devices)


@pytest.mark.slow
def test_eight_devices_equal_one(ckpt, ref, tmp_path):
    out = str(tmp_path / "eight")
    finish([spawn(["--ckpt", ckpt, *RUN, "--batch", "3", "--out", out], devices=8)])  # 3 -> 8 rows, 1 per device
    same_files(out, ref, ["noise"])
    same_files(out, ref, atol=ATOL)


@pytest.mark.slow
def test_two_processes_equal_one(ckpt, ref, tmp_path):
    out, coord = str(tmp_path / "two"), f"localhost:{free_port()}"
    finish([spawn(["--ckpt", ckpt, *RUN, "--batch", "4", "--out", out, "--coordinator", coord,
                   "--num-processes", "2", "--process-id", str(pid)], devices=1) for pid in (0, 1)])
    same_files(out, ref, ["noise"])
    same_files(out, ref, atol=ATOL)
    assert os.path.exists(os.path.join(out, "metrics.json"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["eps", "xt"])
def test_swap_takes_the_mirror_steps_of_a_recorded_run(ckpt, ref, tmp_path, kind):
    out = str(tmp_path / kind)
    sample_invert.main(["--ckpt", ckpt, "--steps", str(T), "--batch", "2", "--record", "--no-reconstruction",
                        "--swap-from", ref, "--swap-type", kind, "--swap-before", "2", "--out", out])
    same_files(out, ref, ["noise", "samples"])  # the source run's noise and samples
    assert not os.path.exists(os.path.join(out, "samples2.npy"))
    if kind == "eps":  # ADM: inversion step i gets the eps of sampling step T-2-i (upstream ADM ddim.py)
        for i in range(2):
            np.testing.assert_array_equal(load(out, "all_t_eps_latents")[i], load(ref, "all_t_eps_samples")[T - 2 - i])
    else:  # the state after inversion step i is the sampling state T-3-i; step T-2 lands on the noise
        np.testing.assert_array_equal(load(out, "all_t_latents")[0], load(ref, "all_t_samples")[T - 3])
        np.testing.assert_array_equal(load(out, "all_t_latents")[1], load(ref, "noise"))
    model, put = on_mesh(jtaba.load(ckpt))
    src = {k: put(load(ref, k)[:, :2], axis=1) for k in ("all_t_samples", "all_t_eps_samples")}
    swap = jtaba.Swap(kind, 2, src, put(load(ref, "noise")[:2]))
    want = jtaba.invert(model, put(load(ref, "samples")[:2]), steps=T, record=True, swap=swap)
    np.testing.assert_array_equal(load(out, "latents")[:2], want.x)


@pytest.mark.slow
def test_class_conditional_forward_inversion(tmp_path):
    ckpt = tiny_adm(tmp_path / "cond", class_cond=True)
    out = str(tmp_path / "run")
    sample_invert.main(["--ckpt", ckpt, "--n", "3", "--steps", str(T), "--batch", "2", "--record",
                        "--no-reconstruction", "--forward-before", "1", "--forward-seed", "7", "--out", out])
    conds = load(out, "conds")
    assert conds.dtype == np.int64
    np.testing.assert_array_equal(conds, noise_lib.labels_for_indices(42, np.arange(3), 1000))
    model, put = on_mesh(jtaba.load(ckpt))
    s = jtaba.sample(model, put(load(out, "noise")[:2]), steps=T, cond=put(conds[:2].astype(np.int32)), record=True)
    np.testing.assert_array_equal(load(out, "samples")[:2], s.x)
    fwd = noise_lib.noise_for_run(7, 3, SHAPE, "forward")  # its own stream: not the initial noise
    assert np.abs(fwd - load(out, "noise")).min() > 0
    a = adm_spaced(model.diffusion, T)[1][1]  # K=1: the level one ADM inversion step reaches, exactly
    x = load(out, "samples")
    np.testing.assert_allclose(load(out, "all_t_latents")[0], np.sqrt(a) * x + np.sqrt(1 - a) * fwd, atol=1e-6)
    lat = jtaba.invert(model, put(x[2:]), steps=T, cond=put(conds[2:].astype(np.int32)), record=True,
                       forward_before=1, forward_noise=put(fwd[2:]))
    np.testing.assert_array_equal(load(out, "latents")[2:], np.asarray(lat.x)[:1])


def test_missing_named_model_names_the_convert_command(tmp_path, monkeypatch):
    monkeypatch.setenv("JTABA_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        sample_invert.main(["--model", "adm32", "--n", "2"])
    msg = str(e.value)
    assert "python convert/adm.py --model=adm32" in msg and os.path.join(str(tmp_path), "models", "adm32") in msg


def test_help_explains_every_flag(capsys):
    parser = sample_invert.build_parser()
    flags = [a for a in parser._actions if a.option_strings]
    assert all(a.help and len(a.help) > 15 for a in flags), [a.dest for a in flags if not a.help]
    with pytest.raises(SystemExit):
        sample_invert.main(["--help"])
    text = capsys.readouterr().out
    for flag in ["--model", "--ckpt", "--forward-before", "--swap-from", "--coordinator", "--no-reconstruction"]:
        assert flag in text


def test_impossible_runs_are_refused_before_writing(ckpt, ref, tmp_path):
    out, labels = str(tmp_path / "never"), str(tmp_path / "labels.npy")
    np.save(labels, np.zeros(N, np.int64))
    for extra, msg in [(["--swap-from", ref, "--swap-type", "xt", "--swap-before", str(T)], "swap_before"),
                       (["--forward-before", str(T + 1)], "forward_before"),
                       (["--labels", labels], "not class-conditional"),
                       (["--guidance", "3"], "conditional model")]:
        with pytest.raises(SystemExit, match=msg):
            sample_invert.main(["--ckpt", ckpt, "--steps", str(T), *extra, "--out", out])
    assert not os.path.exists(out)


@pytest.mark.slow
def test_processes_started_with_other_settings_refuse_before_writing(ckpt, tmp_path):
    out, coord = str(tmp_path / "mixed"), f"localhost:{free_port()}"
    procs = [spawn(["--ckpt", ckpt, *RUN, "--steps", str(steps), "--out", out, "--coordinator", coord,
                    "--num-processes", "2", "--process-id", str(pid), "--init-timeout", "60"], devices=1)
             for pid, steps in ((0, T), (1, T + 1))]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode != 0 and "processes [1] were given other settings" in log, log[-2000:]
    assert not os.path.exists(out)
