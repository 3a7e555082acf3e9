"""convert/adm.py: key accounting against the real ADM-32/64/256 layouts, error reporting, presets, CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from convert.adm import PRESETS, RELEASES, build_parser, convert, main
from convert.common import ConversionError, flatten
from jtaba.checkpoint import load_params, read_config
from jtaba.diffusion import DiffusionConfig
from jtaba.models.adm import Config
from tests.golden import golden_path, load_json, load_npz, recipe_state_dict, report
from tests.test_adm_model import forward, tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = ["adm32", "adm64", "adm256"]
TINY = ["adm32_tiny", "adm256_tiny", "adm_cond_tiny"]


def shape_only_state(rows) -> dict:
    """Source tensors with the manifest's shapes and zero-byte elements (numpy void dtype): the converter's
    transposes and shape checks run for real while nothing is allocated."""
    return {key: np.empty(shape, np.dtype([])) for key, shape, _dtype, _kind in rows}


@pytest.mark.parametrize("name", TINY)
def test_recipe_reproduces_golden_model_pt(name):
    """tests/golden.py's recipe regenerates the saved torch checkpoints bit-exactly (and in state_dict order)."""
    import torch

    cfg = load_json("adm", name, "config.json")
    saved = torch.load(golden_path("adm", name, "model.pt"), map_location="cpu", weights_only=True)
    recipe = recipe_state_dict(cfg["manifest"], cfg["weight_recipe"]["seed"], cfg["weight_recipe"]["embedding_scale"])
    assert list(saved) == list(recipe)
    for key, value in saved.items():
        np.testing.assert_array_equal(value.numpy(), recipe[key], err_msg=key)


@pytest.mark.parametrize("name", FULL)
def test_real_layouts_convert_exactly(name):
    """Every key of the real ADM-32/64/256 state dicts maps onto the Flax tree, none missing or left over."""
    m = load_json("adm", "manifests", f"{name}.json")
    config_dict, params = convert(shape_only_state(m["state_dict"]), m["flags"])
    leaves = flatten(params)
    assert len(leaves) == len(m["state_dict"])
    assert sum(int(np.prod(v.shape)) for v in leaves.values()) == m["num_params"]
    assert config_dict["family"] == "adm" and config_dict["diffusion"]["kind"] == "adm"
    assert "timestep_respacing" not in config_dict["extras"]["flags"]


@pytest.mark.parametrize("name", FULL)
def test_presets_are_the_upstream_flags(name):
    """Presets = golden manifest flags minus timestep_respacing; ADM-256 keeps upstream's use_fp16=True (the
    golden network was built in fp32, a dtype choice that does not change the layout)."""
    flags = dict(load_json("adm", "manifests", f"{name}.json")["flags"])
    del flags["timestep_respacing"]
    if name == "adm256":
        flags["use_fp16"] = True
    assert PRESETS[name] == flags
    assert RELEASES[name].startswith("https://openaipublic.blob.core.windows.net/diffusion/")


def test_diffusion_config_of_presets():
    d32 = DiffusionConfig.from_adm_flags(PRESETS["adm32"])
    assert (d32.beta_schedule, d32.num_train_timesteps, d32.rescale_timesteps, d32.learned_sigma) == \
        ("cosine", 4000, True, True)
    d256 = DiffusionConfig.from_adm_flags(PRESETS["adm256"])
    assert (d256.beta_schedule, d256.num_train_timesteps, d256.rescale_timesteps) == ("linear", 1000, False)


def test_errors_name_every_problem():
    m = load_json("adm", "manifests", "adm32.json")
    state = shape_only_state(m["state_dict"])
    del state["middle_block.1.qkv.bias"]
    state["middle_block.1.extra.weight"] = np.empty((3,), np.dtype([]))
    state["out.2.weight"] = np.empty((6, 128, 1, 1), np.dtype([]))
    with pytest.raises(ConversionError) as e:
        convert(state, m["flags"], source_name="bad.pt")
    msg = str(e.value)
    print(msg)
    assert "bad.pt" in msg
    assert "missing keys (1): middle_block.1.qkv.bias" in msg
    assert "unexpected keys (1): middle_block.1.extra.weight" in msg
    assert "wrong shapes (1)" in msg and "out.2.weight: (6, 128, 1, 1)" in msg


def test_unknown_flag_is_rejected():
    with pytest.raises(ConversionError, match="num_channel"):
        convert({}, {"num_channel": 64})


def test_help_explains_flags_and_sources():
    text = build_parser().format_help()
    for needle in ("--model", "--flags", "--src", "--out", "cifar10_uncond_50M_500K.pt",
                   "imagenet64_uncond_100M_1500K.pt", "256x256_diffusion_uncond.pt", "openaipublic"):
        assert needle in text


def test_cli_roundtrip(tmp_path):
    """--flags with a golden config.json and its real model.pt -> a checkpoint whose forward matches golden."""
    name = "adm_cond_tiny"
    out_dir = str(tmp_path / "ckpt")
    main(["--flags", golden_path("adm", name, "config.json"), "--src", golden_path("adm", name, "model.pt"),
          "--out", out_dir])
    config_dict = read_config(out_dir)
    assert config_dict["family"] == "adm"
    assert config_dict["diffusion"]["num_train_timesteps"] == 2000
    _, reference_params = tiny_model(name)
    params = load_params(out_dir)
    f = load_npz("adm", name, "forward.npz")
    out = forward(Config.from_dict(config_dict["model"]), params, f["x"], f["t"], f["y"])
    err, _ = report(f"adm/{name} via CLI checkpoint", out, f["out"])
    assert err < 5e-5
    assert set(flatten(params)) == set(flatten(reference_params))

    # a second conversion into the same --out is refused before any weights are read, and kept intact
    argv = ["--flags", golden_path("adm", name, "config.json"), "--src", str(tmp_path / "missing.pt"), "--out", out_dir]
    with pytest.raises(SystemExit):
        main(argv)
    assert read_config(out_dir) == config_dict
    # with --overwrite a failing conversion still leaves the old checkpoint whole (staged, renamed at the end)
    with pytest.raises(SystemExit):
        main([*argv, "--overwrite"])
    assert read_config(out_dir) == config_dict and os.listdir(tmp_path) == ["ckpt"]
    with open(os.path.join(out_dir, "stale.txt"), "w") as f:
        f.write("left by an older conversion")
    main([*argv[:3], golden_path("adm", name, "model.pt"), *argv[4:], "--overwrite"])
    assert not os.path.exists(os.path.join(out_dir, "stale.txt")) and read_config(out_dir) == config_dict


def test_cli_bad_file_exits_with_message(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = subprocess.run([sys.executable, "convert/adm.py", "--model=adm32", "--src", str(bad),
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "error:" in proc.stderr and "bad.pt" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag,value,needle", [
    ("noise_schedule", "cosin", "noise_schedule"), ("diffusion_steps", 0, "diffusion_steps"),
    ("learn_sigma", "true", "learn_sigma"), ("num_channels", "128", "num_channels"),
    ("attention_resolutions", "16,x", "attention_resolutions"), ("dropout", 1.5, "dropout"),
    ("predict_xstart", True, "predict_xstart"), ("num_head_channels", 0, "num_head_channels"),
    ("num_channels", 48, "do not build")])
def test_bad_flag_values_are_refused_before_reading_weights(tmp_path, capsys, flag, value, needle):
    """A misspelt schedule (or any bad value) is named at conversion time, before the weights are read (--src
    does not even exist here), and nothing is written."""
    flags_file = tmp_path / "flags.json"
    flags_file.write_text(json.dumps({**PRESETS["adm32"], flag: value}))
    with pytest.raises(SystemExit):
        main(["--flags", str(flags_file), "--src", str(tmp_path / "never_read.pt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert needle in err and "never_read" not in err, err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match=needle):
        convert({}, {**PRESETS["adm32"], flag: value})
