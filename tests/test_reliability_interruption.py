"""Interruptions (issue "Integrity everywhere"): a training step is logged once even when the run was killed right
after its log line; leftovers of killed processes (an atomic write's temporary file, a conversion's staging folder)
go at the next run; Ctrl-C in export and in a conversion ends with one line."""
import argparse
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from jtaba import io
from jtaba.sharding import replicated
from jtaba.train import export, loop
from jtaba.train.state import TrainState
from tests.test_train_resume import TINY


class Crash(Exception):
    pass


def fake_state(cfg, mesh):
    """A small TrainState in place of the network's (``initial_state``): no network is compiled."""
    p = {"w": jnp.arange(4, dtype=jnp.float32)}
    state = TrainState(params=p, ema_params={"w": p["w"] + 1}, opt_state={"mu": p["w"] * 0},
                       step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(cfg.seed))
    return jax.device_put(state, replicated(mesh))


def fake_training(monkeypatch, nan_at=None):
    """The loop's bookkeeping (checkpoints, log, resume, checks) over a counting step (loss 1/step, NaN at step
    ``nan_at``) and a small state, without compiling the network."""
    monkeypatch.setattr(loop, "initial_state", fake_state)
    monkeypatch.setattr(loop, "make_train_step", fake_step(nan_at))


def fake_step(nan_at=None):
    """A ``make_train_step`` whose step only counts (loss 1/step, NaN at step ``nan_at``)."""

    def make(cfg, mesh):
        def step(state, batch):
            k = int(state.step) + 1
            v = jnp.float32(float("nan") if k == nan_at else 1.0 / k)
            return state.replace(step=state.step + 1), {"loss": v, "mse": v, "vb": jnp.float32(0)}

        return step

    return make


def logged_steps(run):
    with open(os.path.join(run, loop.LOG_NAME)) as f:
        return [json.loads(line)["step"] for line in f]


def test_a_step_is_logged_once_after_a_kill(tmp_path, monkeypatch):
    fake_training(monkeypatch)
    cfg = TINY.replace(steps=4, save="every:2", log_every=1)
    run = str(tmp_path / "run")

    def crash_at_4(step):
        if step == 4:
            raise Crash  # killed after step 3's log line; the newest checkpoint is step 2

    with pytest.raises(Crash):
        loop.train(cfg, run, on_step=crash_at_4, progress=False)
    assert logged_steps(run) == [1, 2, 3]
    with open(os.path.join(run, loop.LOG_NAME), "a") as f:
        f.write('{"step": 4, "lo')  # a line cut by the kill
    loop.train(cfg, run, progress=False)  # resumes at 2: steps 3 and 4 again
    assert logged_steps(run) == [1, 2, 3, 4]


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_killed_writers_temporary_file_goes_at_the_next_write(tmp_path):
    report = str(tmp_path / "report.json")
    left = str(tmp_path / f"report.tmp-{_dead_pid()}.json")
    mine = str(tmp_path / f"report.tmp-{os.getppid()}.json")  # a live process's: kept
    for path in (left, mine):
        with open(path, "w") as f:
            f.write("{")
    io.write_json(report, {"a": 1})
    assert sorted(os.listdir(tmp_path)) == sorted(["report.json", os.path.basename(mine)])


def test_a_killed_conversions_staging_folder_goes_at_the_next_one(tmp_path, capsys):
    from convert.common import staged_output

    out = str(tmp_path / "model")
    left = f"{out}.converting-{_dead_pid()}"
    os.makedirs(os.path.join(left, "params"))
    args = argparse.Namespace(out=out, overwrite=False)
    with staged_output(args):
        os.makedirs(args.out)
        with open(os.path.join(args.out, "config.json"), "w") as f:
            f.write("{}")
    assert sorted(os.listdir(tmp_path)) == ["model"]
    assert f"removed {left}" in capsys.readouterr().err


def test_ctrl_c_in_a_conversion_keeps_the_old_output(tmp_path, capsys):
    from convert.common import staged_output

    out = str(tmp_path / "model")
    os.makedirs(out)
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write("old")
    args = argparse.Namespace(out=out, overwrite=True)
    with pytest.raises(SystemExit) as e, staged_output(args):
        raise KeyboardInterrupt
    assert e.value.code == 130 and "interrupted" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["model"] and open(os.path.join(out, "config.json")).read() == "old"


def test_ctrl_c_in_export_ends_with_one_line(tmp_path, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_ema", interrupted)
    with pytest.raises(SystemExit) as e:
        export.main(["--run", str(tmp_path), "--out", str(tmp_path / "model")])
    assert e.value.code == 130 and "run the same command again" in capsys.readouterr().err


def test_a_dead_peer_is_noticed_by_a_short_heartbeat_without_a_core_file(monkeypatch):
    import resource

    from jtaba import distributed

    calls, limits = [], []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(resource, "setrlimit", lambda what, value: limits.append((what, value)))
    monkeypatch.setattr(distributed.distributed_stderr, "install", lambda heartbeat_s: None)  # not pytest's stderr
    p = argparse.ArgumentParser()
    distributed.add_flags(p)
    args = p.parse_args(["--coordinator", "localhost:1", "--num-processes", "2", "--process-id", "1"])
    assert distributed.initialize_from_flags(args) == "flags"
    assert calls[0]["heartbeat_timeout_seconds"] == distributed.HEARTBEAT_S <= 10
    assert limits == [(resource.RLIMIT_CORE, (0, 0))]  # JAX aborts the survivors: no core dump
    args.heartbeat_timeout = 3
    distributed.initialize_from_flags(args)
    assert calls[1]["heartbeat_timeout_seconds"] == 3


def test_reproduce_removes_the_folders_of_an_earlier_reports_analyses(tmp_path, monkeypatch, capsys):
    """An earlier report wrote triangles/ and steps/; this one (App. G only, skipped without training runs) removes
    them and says so, keeping what is not an analysis's folder."""
    from experiments import reproduce
    from tests.test_exp_triangles import save_tiny_checkpoint

    monkeypatch.setenv("JTABA_HOME", str(tmp_path / "home"))
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "report"
    for name in ("triangles", "steps", "notes"):
        os.makedirs(out / name)
        (out / name / "x.json").write_text("{}")
    reproduce.main(["--ckpt", ckpt, "--n", "2", "--steps", "2", "--runs-dir", str(tmp_path / "runs"),
                    "--only", "training_dynamics,alignment", "--out", str(out)])
    assert sorted(os.listdir(out)) == ["notes", "report.json", "report.md"]
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("removed ")]
    assert err == [f"removed triangles/, steps/ from {out}: left by an earlier report, not in this one"]
