"""What the converters say when a source cannot be had (no network: ``HF_HUB_OFFLINE=1`` throughout): the hub
download commands of the current huggingface_hub (``hf download`` and ``snapshot_download``), the ``convert`` extra
when a module of it is missing, "no such file" for a mistyped local path; and both ways of running a converter."""
import importlib.util
import os
import subprocess
import sys

import pytest

from convert import common
from convert import dit as convert_dit
from convert import ldm as convert_ldm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _exit_message(capsys, fn, *args) -> str:
    with pytest.raises(SystemExit) as e:
        fn(*args)
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


def test_offline_hub_id_gives_the_hf_command_and_the_python_one_liner(offline, capsys, tmp_path):
    err = _exit_message(capsys, convert_ldm.main, ["--src", convert_ldm.HUB_ID, "--out", str(tmp_path / "o")])
    assert f"cannot fetch '{convert_ldm.HUB_ID}' from the Hugging Face hub" in err
    include = " ".join(f"--include '{p}'" for p in convert_ldm.PATTERNS)
    assert f"\n  hf download {convert_ldm.HUB_ID} {include} --local-dir ldm-celebahq-256\n" in err, err
    one_liner = (f"import huggingface_hub; huggingface_hub.snapshot_download('{convert_ldm.HUB_ID}', "
                 f"allow_patterns={convert_ldm.PATTERNS!r}, local_dir='ldm-celebahq-256')")
    assert one_liner in err and "--src ldm-celebahq-256" in err
    assert "huggingface-cli" not in err  # gone from the huggingface_hub the project installs
    assert not (tmp_path / "o").exists()


def test_hub_message_lists_plain_files_as_arguments():
    msg = common.hub_message("org/model", ("config.json", "model.safetensors"))
    assert "hf download org/model config.json model.safetensors --local-dir model\n" in msg
    assert "allow_patterns=['config.json', 'model.safetensors'], local_dir='model'" in msg


@pytest.mark.parametrize("missing", ["huggingface_hub", "torch"])
def test_a_missing_convert_extra_says_which_extra(monkeypatch, capsys, tmp_path, missing):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    if missing == "huggingface_hub":
        err = _exit_message(capsys, convert_ldm.main, ["--src", convert_ldm.HUB_ID, "--out", str(tmp_path / "o")])
    else:
        (tmp_path / "model.pt").write_bytes(b"")
        err = _exit_message(capsys, common.load_state_dict, str(tmp_path / "model.pt"))
    assert f"{missing} not installed" in err and 'pip install -e ".[convert]"' in err, err
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in err
    assert "Hugging Face hub" not in err  # not blamed on the network


@pytest.mark.parametrize("src", ["/x/nonexistent.pt", "./nope", "~/nope/dit", "DiT-XL-2-256.pt", "a/b/c"])
def test_a_mistyped_local_path_is_no_such_file(offline, capsys, tmp_path, src):
    err = _exit_message(capsys, convert_dit.main, ["--src", src, "--out", str(tmp_path / "o")])
    assert err.strip() == f"error: --src {src}: no such file or folder", err
    assert not (tmp_path / "o").exists()


def test_local_or_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    for src in ("facebook/DiT-XL-2-256", "CompVis/ldm-celebahq-256", "openai/clip-vit-base-patch32"):
        assert not common.looks_local(src), src
    for src in ("/abs", "./rel", "../up", "~/home", "a/b/c", "w.safetensors", "w.CKPT", "mine/model"):
        assert common.looks_local(src), src


@pytest.mark.parametrize("argv, usage", [(["convert/adm.py"], "usage: python convert/adm.py "),
                                         (["-m", "convert.adm"], "usage: python -m convert.adm ")])
def test_run_as_a_script_or_a_module(tmp_path, argv, usage):
    """Both forms from any folder, without the converters touching sys.path (the package is installed)."""
    argv = [os.path.join(REPO, argv[0]) if argv[0].endswith(".py") else argv[0], *argv[1:]]
    r = subprocess.run([sys.executable, *argv, "--help"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith(usage), (r.stdout[:300], r.stderr[-2000:])
