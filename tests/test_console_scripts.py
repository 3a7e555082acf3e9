"""The installed console scripts (``pip install -e .`` puts them beside the interpreter) exit 0 on success and
non-zero on failure, and ``usage:`` names the program as invoked (``tests/test_convert_sources.py``: the
``python convert/x.py`` and ``python -m convert.x`` forms)."""
import os
import subprocess
import sys

import pytest

from tests.test_sample_invert import tiny_adm

BIN = os.path.dirname(sys.executable)


def script(name: str) -> str:
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        pytest.skip(f"{name} is not installed beside {sys.executable} (pip install -e .)")
    return path


def run(*argv: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("JTABA_DEBUG", None)
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def test_help_names_the_console_script_and_exits_0():
    r = run(script("jtaba-triangles"), "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: jtaba-triangles "), r.stdout[:200]


def test_a_real_run_exits_0_and_a_failure_non_zero(tmp_path):
    ckpt = tiny_adm(tmp_path / "ckpt")
    common = ["--ckpt", ckpt, "--n", "2", "--batch", "2", "--runs-dir", str(tmp_path / "runs"),
              "--no-compilation-cache"]
    r = run(script("jtaba-sample-invert"), *common, "--steps", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.strip().splitlines()[-1].removeprefix("wrote ")
    assert os.path.isfile(os.path.join(out, "latents.npy")), r.stdout
    assert out not in r.stderr  # the output folder is not handed to sys.exit (which prints it and exits 1)

    r = run(script("jtaba-sample-invert"), *common, "--steps", "0")
    assert r.returncode == 1 and r.stderr.strip().startswith("error: "), (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
