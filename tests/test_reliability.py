"""What a demanding user does wrong, through the command line: each case ends in a one-line error naming the cause
(before any work) or in correct output, and nothing is lost (issue "nothing lost, nothing mixed")."""
import os
import re

import numpy as np
import pytest

from experiments import sample_invert
from tests.test_sample_invert import SHAPE, N, T, tiny_adm

BASE = ["--n", str(N), "--steps", str(T), "--batch", "2", "--no-reconstruction"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {"plain": tiny_adm(root / "plain"), "cond": tiny_adm(root / "cond", class_cond=True)}


def fails(argv, match, out=None):
    with pytest.raises(SystemExit) as e:
        sample_invert.main(argv)
    text = str(e.value)
    assert text.startswith("error: ") or "--" in text, text
    assert "\n" not in text.strip() or "convert" in text, text
    assert re.search(match, text), text
    if out is not None:
        assert not os.path.exists(out) or not os.listdir(out)


@pytest.mark.parametrize("labels, match", [
    (np.array([0, 1, 2, 1000, 3]), r"label 1000 of sample 3 is outside \[0, 1000\)"),
    (np.array([0, -1, 2, 3, 4]), r"label -1 of sample 1"),
    (np.array([0.0, 1.5, 2, 3, 4]), r"labels must be \(N,\) integers"),
])
def test_bad_class_labels_are_refused_with_the_index(ckpts, tmp_path, labels, match):
    path = str(tmp_path / "labels.npy")
    np.save(path, labels)
    out = str(tmp_path / "out")
    fails(["--ckpt", ckpts["cond"], *BASE, "--labels", path, "--out", out], match, out)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_noise_is_refused_with_the_index(ckpts, tmp_path, value):
    noise = np.random.default_rng(0).standard_normal((N, *SHAPE)).astype(np.float32)
    noise[3, 1, 2, 2] = value
    path = str(tmp_path / "noise.npy")
    np.save(path, noise)
    fails(["--ckpt", ckpts["plain"], *BASE, "--noise", path, "--out", str(tmp_path / "out")],
          "NaN or Inf in sample 3", str(tmp_path / "out"))


def test_bad_npy_files_and_out_paths(ckpts, tmp_path):
    truncated = str(tmp_path / "noise.npy")
    np.save(truncated, np.zeros((N, *SHAPE), np.float32))
    with open(truncated, "r+b") as f:
        f.truncate(200)
    fails(["--ckpt", ckpts["plain"], *BASE, "--noise", truncated], "not a readable .npy file")
    fails(["--ckpt", ckpts["plain"], *BASE, "--noise", str(tmp_path / "missing.npy")], "not an existing .npy")
    a_file = str(tmp_path / "a_file")
    open(a_file, "w").close()
    fails(["--ckpt", ckpts["plain"], *BASE, "--out", a_file], "is a file, not a run folder")
    fails(["--ckpt", str(tmp_path), *BASE], "not a jtaba checkpoint")


@pytest.mark.slow
def test_swap_from_a_run_of_another_model_is_refused(ckpts, tmp_path):
    src = str(tmp_path / "src")
    sample_invert.main(["--ckpt", ckpts["plain"], *BASE, "--record", "--no-inversion", "--out", src])
    other = tiny_adm(tmp_path / "other")  # the same random weights: scale one tensor to make another model
    import jax

    import jtaba
    from jtaba.checkpoint import read_config, save_checkpoint

    m = jtaba.load(other)
    leaves, tree = jax.tree.flatten(m.params)
    save_checkpoint(other, read_config(other), jax.tree.unflatten(tree, [leaves[0] * 2, *leaves[1:]]))
    fails(["--ckpt", other, *BASE, "--swap-from", src, "--swap-before", "1", "--out", str(tmp_path / "swap")],
          "computed with another model", str(tmp_path / "swap"))
    # the same model (moved / renamed checkpoint folder) is accepted: content, not paths
    moved = str(tmp_path / "moved")
    os.replace(ckpts["plain"], moved)
    try:
        out = sample_invert.main(["--ckpt", moved, *BASE, "--swap-from", src, "--swap-before", "1",
                                  "--out", str(tmp_path / "ok")])
        assert os.path.exists(os.path.join(out, "latents.npy"))
    finally:
        os.replace(moved, ckpts["plain"])


def test_a_missing_peer_process_ends_with_one_line_after_init_timeout(tmp_path):
    import subprocess
    import sys

    from tests.processes import free_port

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "experiments.sample_invert", "--n", "2", "--steps", "1",
                           "--coordinator", f"localhost:{free_port()}", "--num-processes", "2", "--process-id", "0",
                           "--init-timeout", "3", "--runs-dir", str(tmp_path)],
                          cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: process 0 of 2 could not join the run at")
    assert not os.listdir(tmp_path)


PEER = """
import argparse, os, sys, time
from jtaba import distributed
p = argparse.ArgumentParser()
distributed.add_flags(p)
args = p.parse_args(sys.argv[1:])
distributed.initialize_from_flags(args)
import jax
print("joined", jax.process_index(), jax.device_count(), flush=True)
print("a line before the peer dies", file=sys.stderr, flush=True)
if args.process_id == 1:
    os.kill(os.getpid(), 9)
time.sleep(60)
"""


def test_a_dead_peer_ends_the_others_with_one_line():
    import subprocess
    import sys

    from tests.processes import free_port

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", PEER, "--coordinator", f"localhost:{port}", "--num-processes",
                               "2", "--process-id", str(i), "--heartbeat-timeout", "2"],
                              cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    out, err = procs[0].communicate(timeout=60)
    procs[1].communicate(timeout=10)
    assert out.startswith("joined 0 2") and procs[1].returncode == -9
    assert procs[0].returncode != 0  # JAX still aborts the survivor: only what it prints changes
    assert err.splitlines() == ["a line before the peer dies",
                                "error: process 1 stopped sending heartbeats for --heartbeat-timeout=2 s (it died or "
                                "cannot be reached); this process ends too. Start every process again with the same "
                                "command: finished work is kept"], err


def test_the_stderr_filter_passes_everything_but_the_fatal_abort():
    import subprocess
    import sys

    from jtaba import distributed_stderr

    record = b"E1206 13:03:04.738212   29412 coordination_service_agent.cc:289] Polled an error\n"
    ordinary = b"progress 10%\rprogress 20%\rdone\nE: not a C++ log record\n"
    run = [sys.executable, "-I", "-S", distributed_stderr.__file__, "5"]
    # a C++ error record that does not end in the abort is written unchanged, and so is all other output
    assert subprocess.run(run, input=ordinary + record + b"more\n", capture_output=True).stdout == (
        ordinary + record + b"more\n")
    abort = (b"F1206 13:03:04.738439   29412 client.h:80] Terminating process because the JAX distributed service "
             b"detected fatal errors. absl::Status: UNAVAILABLE: The following tasks are unhealthy (stopped sending "
             b"heartbeats):\n2\n3\nThe tasks have crashed.\n*** Check failure stack trace: ***\n  @ 0x7f SetError()\n")
    out = subprocess.run(run, input=ordinary + record + abort, capture_output=True).stdout
    assert out == ordinary + (b"error: processes 2, 3 stopped sending heartbeats for --heartbeat-timeout=5 s (it died "
                              b"or cannot be reached); this process ends too. Start every process again with the "
                              b"same command: finished work is kept\n")
