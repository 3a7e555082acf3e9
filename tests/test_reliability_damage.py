"""Damaged files (issue "Integrity everywhere"): a finished run's final files carry sha256 checksums recorded while they
were written; reuse, ``open_run``, ``find_run``, ``--swap-from`` and ``--no-reuse`` verify them (cached against
size, mtime and inode), a damaged file is named and the run computed again (or refused where it is an input), and a
truncated metrics.json is rewritten."""
import importlib
import os
import shutil

import numpy as np
import pytest

import jtaba
from experiments import sample_invert
from jtaba import runs
from jtaba.runs import reader, store
from tests.test_sample_invert import tiny_adm

N, T = 2, 2


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_adm(tmp_path_factory.mktemp("ckpt") / "adm")


@pytest.fixture(scope="module")
def model(ckpt):
    return jtaba.load(ckpt)


@pytest.fixture(scope="module")
def finished(model, tmp_path_factory):
    """A finished recorded run (its folder is copied by each test)."""
    root = str(tmp_path_factory.mktemp("runs"))
    r = runs.run(model, settings(), root=root, tag="tiny", progress=False)
    return r.path


def settings():
    """Sampling only (one compiled loop: the damage checks do not depend on what was computed)."""
    return runs.RunSettings(n=N, steps=T, batch=2, inversion=False, reconstruction=False)


def _copy(finished, tmp_path):
    root = str(tmp_path / "runs")
    path = os.path.join(root, os.path.relpath(finished, os.path.dirname(os.path.dirname(os.path.dirname(finished)))))
    shutil.copytree(finished, path)
    return root, path


def _flip(path, offset=-1):
    with open(path, "r+b") as f:
        f.seek(offset, os.SEEK_END)
        b = f.read(1)
        f.seek(offset, os.SEEK_END)
        f.write(bytes([b[0] ^ 0x10]))


def test_a_flipped_bit_is_named_and_the_run_computed_again(model, finished, tmp_path, capsys):
    root, path = _copy(finished, tmp_path)
    good = np.load(os.path.join(path, "samples.npy"))
    _flip(os.path.join(path, "samples.npy"))  # same size: only the checksum tells
    with pytest.raises(reader.RunDamaged, match="samples.npy is damaged"):
        runs.open_run(path)
    r = runs.run(model, settings(), root=root, tag="tiny", progress=False)
    err = capsys.readouterr().err
    assert "samples.npy is damaged" in err and "computed again" in err
    assert r.path == path
    np.testing.assert_array_equal(r["samples"], good)
    runs.open_run(path)  # verified again
    assert runs.find_run(root, r.identity).path == path


def test_find_run_passes_over_a_damaged_run(finished, tmp_path, capsys):
    root, path = _copy(finished, tmp_path)
    ident = runs.open_run(path).identity
    _flip(os.path.join(path, "noise.npy"), offset=-5)
    assert runs.find_run(root, ident) is None
    assert "noise.npy is damaged" in capsys.readouterr().err


def test_swap_from_a_damaged_run_is_refused(ckpt, tmp_path):
    path = str(tmp_path / "recorded")  # a finished recorded run as the store leaves it (its values do not matter)
    st = store.RunStore(path, {"record": True, "steps": T}, N)
    st.write(0, N, {"samples": np.zeros((N, 3, 8, 8), np.float32),
                    "all_t_eps_samples": np.zeros((T, N, 3, 8, 8), np.float32)})
    st.finalize()
    _flip(os.path.join(path, "all_t_eps_samples.npy"))
    with pytest.raises(SystemExit) as e:
        sample_invert.main(["--ckpt", ckpt, "--n", str(N), "--steps", str(T), "--swap-from", path, "--swap-before",
                            "1", "--out", str(tmp_path / "swap")])
    assert str(e.value).startswith("error: ") and "all_t_eps_samples.npy is damaged" in str(e.value)
    assert not os.path.exists(tmp_path / "swap")


def test_no_reuse_computes_again_and_a_truncated_metrics_json_is_rewritten(model, finished, tmp_path, capsys,
                                                                            monkeypatch):
    run_module = importlib.import_module("jtaba.runs.run")

    root, path = _copy(finished, tmp_path)
    metrics = os.path.join(path, reader.METRICS)
    with open(metrics) as f:
        text = f.read()
    with open(metrics, "w") as f:
        f.write(text[:len(text) // 2])
    r = runs.run(model, settings(), root=root, tag="tiny", progress=False)  # reused: only metrics.json rewritten
    assert "metrics.json: not valid JSON" in capsys.readouterr().err
    assert r.metrics == reader.Run(finished).metrics
    before = os.stat(os.path.join(path, "samples.npy")).st_mtime_ns
    monkeypatch.setattr(run_module, "_COMPUTED", set())  # as a new process: this one computed nothing here
    r = runs.run(model, settings(), root=root, tag="tiny", progress=False, reuse=False)
    assert os.stat(os.path.join(path, "samples.npy")).st_mtime_ns != before  # written again
    np.testing.assert_array_equal(r["samples"], np.load(os.path.join(finished, "samples.npy")))


def test_verification_is_cached(finished, tmp_path, monkeypatch):
    _, path = _copy(finished, tmp_path)
    calls = []
    real = store.file_record
    monkeypatch.setattr(store, "file_record", lambda p: calls.append(p) or real(p))
    files = runs.open_run(path).files
    assert len(calls) == len(files)  # a new folder: each file hashed once ...
    runs.open_run(path)
    assert len(calls) == len(files)  # ... and not again while size, mtime and inode are unchanged
    _flip(os.path.join(path, "noise.npy"))
    with pytest.raises(reader.RunDamaged, match="noise.npy is damaged"):
        runs.open_run(path)


def _biggest_file(root):
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    return max(files, key=os.path.getsize)


def test_a_damaged_training_checkpoint_is_named_and_passed_over(tmp_path, monkeypatch, capsys):
    from jtaba.train import export, loop
    from jtaba.train.run_checkpoints import RunCheckpoints
    from tests.test_reliability_interruption import fake_training
    from tests.test_train_resume import TINY

    fake_training(monkeypatch)
    cfg = TINY.replace(steps=4, save="every:2", log_every=1)
    run = str(tmp_path / "run")
    loop.train(cfg, run, progress=False)
    damaged = _biggest_file(os.path.join(run, "4"))
    _flip(damaged)
    with pytest.raises(ValueError, match=f"checkpoint 4 of .* is damaged: {damaged} changed since it was saved"):
        export.ema_model(run, 4)
    model_dir = str(tmp_path / "model")
    with pytest.raises(SystemExit) as e:
        export.main(["--run", run, "--out", model_dir])
    assert str(e.value).startswith("error: checkpoint 4") and "\n" not in str(e.value)
    assert not os.path.exists(model_dir)
    os.makedirs(model_dir)
    open(os.path.join(model_dir, "config.json"), "w").close()
    with pytest.raises(SystemExit, match="is not empty .* --overwrite"):
        export.main(["--run", run, "--out", model_dir, "--step", "2"])
    # training falls back to the newest good checkpoint and trains the lost steps again
    loop.train(cfg.replace(steps=5), run, progress=False)
    err = capsys.readouterr().err
    assert "checkpoint 4 in" in err and "damaged" in err and len(err.strip().splitlines()) == 1, err
    assert RunCheckpoints(run).all_steps() == [0, 2, 4, 5] and os.path.isdir(os.path.join(run, "unreadable-4"))
