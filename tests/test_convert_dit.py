"""convert/dit.py: key accounting on the full-size manifests (both layouts), error naming, and the command line
end to end (diffusers pipeline folder, facebook .pt + --vae, offline hub id)."""
import dataclasses
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from convert import dit as cdit
from convert.common import ConversionError, flatten
from jtaba import model as jmodel
from jtaba.models import dit
from tests.golden import golden_path, load_json, load_npz, recipe_state_dict, report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Zeros:
    """A stand-in tensor of the right shape for key accounting only: int8 zeros (1 byte per weight, not cast)."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def __array__(self, dtype=None, copy=None):
        return np.zeros(self.shape, np.int8)


def _manifest_state(rows, keep=None):
    return {key: (keep[key] if keep and key in keep else Zeros(shape)) for key, shape, _, _ in rows}


def _check_all_mapped(config, params):
    got = {p: v.shape for p, v in flatten(params).items()}
    assert got == cdit.target_shapes(config)


def test_dit_xl_2_facebook_manifest_maps():
    man = load_json("dit", "manifests", "dit_xl_2.json")
    state = _manifest_state(man["state_dict"], {"pos_embed": dit.pos_embed_table(1152, 16)[None]})
    kwargs = cdit.facebook_input_size(state, {})  # input_size read from pos_embed
    assert kwargs == {"input_size": 32}
    config, params = cdit.convert_facebook(state, kwargs)
    assert config == dit.Config.from_facebook(man["config"])
    _check_all_mapped(config, params)
    n = sum(int(np.prod(v.shape)) for v in flatten(params).values())
    assert n + 256 * 1152 == man["num_params"]  # + the pos_embed buffer


def test_dit_xl_2_diffusers_manifest_maps():
    man = load_json("dit", "manifests", "dit_xl_2_diffusers_transformer.json")
    config, params = cdit.convert_diffusers(_manifest_state(man["state_dict"]), man["config"])
    assert not config.block_embedders  # equal (zero) copies collapse to the shared embedder
    facebook = dit.Config.from_facebook(load_json("dit", "manifests", "dit_xl_2.json")["config"])
    assert config == dataclasses.replace(facebook, freq_shift=1, mlp_norm_eps=1e-5)
    _check_all_mapped(config, params)


@pytest.fixture(scope="module")
def tiny_state():
    cfg = load_json("dit", "dit_tiny", "config.json")
    keep = {"pos_embed": dit.pos_embed_table(64, 4)[None]}
    return cfg["config"], recipe_state_dict(cfg["manifest"], cfg["weight_recipe"]["seed"], keep=keep)


def test_errors_name_missing_unexpected_and_wrong_shape(tiny_state):
    kwargs, state = tiny_state
    bad = dict(state)
    del bad["blocks.1.mlp.fc2.bias"]
    bad["blocks.2.attn.qkv.weight"] = np.zeros((192, 64), np.float32)
    bad["final_layer.linear.weight"] = np.zeros((16, 64), np.float32)
    with pytest.raises(ConversionError) as e:
        cdit.convert_facebook(bad, kwargs, source_name="tiny.pt")
    msg = str(e.value)
    assert "tiny.pt" in msg
    assert "missing keys (1): blocks.1.mlp.fc2.bias" in msg
    assert "unexpected keys (1): blocks.2.attn.qkv.weight" in msg
    assert "final_layer.linear.weight: (16, 64)" in msg and "final_linear/kernel" in msg


def test_wrong_flags_are_caught_by_pos_embed(tiny_state):
    kwargs, state = tiny_state
    with pytest.raises(ConversionError, match="pos_embed"):
        cdit.convert_facebook(state, {**kwargs, "input_size": 16})


def test_diffusers_errors_name_keys():
    from convert.common import load_state_dict

    folder = golden_path("dit_pipeline_tiny", "transformer")
    with open(os.path.join(folder, "config.json")) as f:
        tcfg = json.load(f)
    state = dict(load_state_dict(folder))
    del state["proj_out_2.bias"]
    with pytest.raises(ConversionError, match=r"missing keys \(1\): proj_out_2.bias"):
        cdit.convert_diffusers(state, tcfg)
    with pytest.raises(ValueError, match="norm_type"):
        dit.Config.from_diffusers({**tcfg, "norm_type": "ada_norm_single"})


def test_cli_diffusers_pipeline_folder(tmp_path):
    """Pipeline folder -> DIR + DIR/decoder; the loaded model reproduces the golden pipeline's first sampling
    step eps (t = 900, labels [207, 360, 0, 999]) and its decoded samples."""
    out = tmp_path / "dit"
    cdit.main(["--src", golden_path("dit_pipeline_tiny"), "--out", str(out)])
    m = jmodel.load(str(out))
    assert m.family == "dit" and m.decoder.family == "vae" and m.decoder.config.scaling_factor == 0.18215
    d = m.diffusion
    assert (d.kind, d.beta_schedule, d.beta_start, d.beta_end, d.learned_sigma, d.sample_clip, d.set_alpha_to_one,
            d.steps_offset) == ("diffusers", "linear", 1e-4, 0.02, True, "none", True, 0)
    traj = load_npz("dit_pipeline_tiny", "trajectories.npz")
    x = jnp.asarray(traj["noise"].transpose(0, 2, 3, 1))
    t = jnp.full((4,), float(traj["timesteps_sampling"][0]))
    eps = m.network.apply({"params": m.params}, x, t, jnp.asarray(traj["class_labels"], jnp.int32))[..., :4]
    _, rel = report("cli dit (diffusers folder) step-0 eps", np.asarray(eps).transpose(0, 3, 1, 2),
                    traj["all_t_eps_samples"][0])
    assert rel < 1e-5
    z = jnp.asarray(traj["samples"].transpose(0, 2, 3, 1)) * (1.0 / m.decoder.config.scaling_factor)
    dec = m.decoder.network.apply({"params": m.decoder.params}, z, method="decode")
    err, _ = report("cli decoder vs decoded_samples", np.asarray(dec).transpose(0, 3, 1, 2), traj["decoded_samples"])
    assert err < 5e-5


def test_cli_facebook_pt_with_vae(tmp_path):
    out = tmp_path / "dit"
    cdit.main(["--src", golden_path("dit", "dit_tiny", "model.pt"), "--flags",
               golden_path("dit", "dit_tiny", "config.json"), "--vae", golden_path("dit_pipeline_tiny", "vae"),
               "--out", str(out)])
    m = jmodel.load(str(out))
    assert m.extras["layout"] == "facebook" and m.diffusion.learned_sigma and m.diffusion.beta_schedule == "linear"
    f = load_npz("dit", "dit_tiny", "forward.npz")
    got = m.network.apply({"params": m.params}, jnp.asarray(f["x"].transpose(0, 2, 3, 1)),
                          jnp.asarray(f["t"], jnp.float32), jnp.asarray(f["y"], jnp.int32))
    err, _ = report("cli dit (facebook .pt)", np.asarray(got).transpose(0, 3, 1, 2), f["out"])
    assert err < 5e-5


def _main_error(capsys, *args):
    with pytest.raises(SystemExit) as e:
        cdit.main(list(args))
    assert e.value.code == 2
    return capsys.readouterr().err


def test_cli_messages(tmp_path, capsys):
    pt, vae = golden_path("dit", "dit_tiny", "model.pt"), golden_path("dit_pipeline_tiny", "vae")
    # default XL/2 flags (input_size read from pos_embed) do not fit the tiny model
    assert "pos_embed" in _main_error(capsys, "--src", pt, "--vae", vae, "--out", str(tmp_path / "b"))
    assert "not allowed with argument --vae" in _main_error(capsys, "--src", pt, "--vae", vae, "--no-vae",
                                                             "--out", str(tmp_path / "c"))
    assert "invalid choice: 'glide'" in _main_error(capsys, "--src", pt, "--guidance", "glide", "--out",
                                                     str(tmp_path / "d"))


def test_cli_facebook_pt_without_vae(tmp_path, capsys):
    """No --vae for a facebook .pt: DIR only (no decoder/); sampling works on latents, decode says why not."""
    import jtaba

    out = tmp_path / "dit"
    cdit.main(["--src", golden_path("dit", "dit_tiny", "model.pt"), "--flags",
               golden_path("dit", "dit_tiny", "config.json"), "--out", str(out)])
    note = capsys.readouterr().out
    assert "without a decoder" in note and "--vae" in note
    assert sorted(os.listdir(out)) == ["config.json", "params"]
    m = jmodel.load(str(out))
    assert m.decoder is None and m.extras["latent"] and m.extras["decoder"] is None
    assert m.diffusion.guidance_channels is None and m.extras["guidance"] == "diffusers"
    z = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    lat = jtaba.sample(m, z, steps=2, cond=np.array([1, 2], np.int32)).x
    assert lat.shape == (2, 4, 8, 8) and bool(jnp.all(jnp.isfinite(lat)))
    with pytest.raises(ValueError, match="stores no decoder .*converted without a VAE"):
        jtaba.decode(m, lat)


def test_cli_no_vae_and_facebook_guidance(tmp_path):
    """--no-vae skips the pipeline's vae/; --guidance facebook stores guidance_channels 3 (default: absent =
    every channel, the config.json key left out)."""
    out = tmp_path / "dit"
    cdit.main(["--src", golden_path("dit_pipeline_tiny"), "--no-vae", "--guidance", "facebook", "--out", str(out)])
    assert not (out / "decoder").exists()
    m = jmodel.load(str(out))
    assert m.decoder is None and m.diffusion.guidance_channels == 3 and m.extras["guidance"] == "facebook"
    assert m.diffusion.learned_sigma
    cdit.main(["--src", golden_path("dit_pipeline_tiny"), "--out", str(tmp_path / "plain")])
    with open(tmp_path / "plain" / "config.json") as f:
        assert "guidance_channels" not in json.load(f)["diffusion"]
    assert jmodel.load(str(tmp_path / "plain")).decoder is not None


@pytest.mark.parametrize("flags,needle", [({"depth": "2"}, "depth must be int"),
                                          ({"learn_sigma": "true"}, "learn_sigma must be bool"),
                                          ({"hidden_size": 66, "num_heads": 4}, "hidden_size 66"),
                                          ({"class_dropout_prob": 1.0}, "class_dropout_prob"),
                                          ({"hidden": 64}, "unknown facebook DiT arguments")])
def test_bad_flags_refused_before_weights(tmp_path, capsys, flags, needle):
    """A bad --flags value is named before the .pt is read (this one is not even a checkpoint)."""
    fake = tmp_path / "fake.pt"
    fake.write_bytes(b"never read")
    flags_file = tmp_path / "flags.json"
    flags_file.write_text(json.dumps(flags))
    err = _main_error(capsys, "--src", str(fake), "--flags", str(flags_file), "--out", str(tmp_path / "o"))
    assert needle in err and "fake.pt" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("part,key,value", [("scheduler/scheduler_config.json", "beta_schedule", "lineer"),
                                            ("scheduler/scheduler_config.json", "prediction_type", "v_prediction"),
                                            ("transformer/config.json", "norm_type", "ada_norm_single"),
                                            ("vae/config.json", "act_fn", "selu")])
def test_bad_pipeline_configs_refused_before_weights(tmp_path, capsys, part, key, value):
    """A pipeline folder holding only its JSON files: a bad value is named before any weights are needed."""
    import shutil

    src = tmp_path / "src"
    root = golden_path("dit_pipeline_tiny")
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".json"):
                rel = os.path.relpath(os.path.join(dirpath, f), root)
                os.makedirs(src / os.path.dirname(rel), exist_ok=True)
                shutil.copy(os.path.join(dirpath, f), src / rel)
    path = src / part
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    err = _main_error(capsys, "--src", str(src), "--out", str(tmp_path / "o"))
    assert key in err and value in err, err
    assert not (tmp_path / "o").exists()


def test_cli_script_offline_hub_id(tmp_path):
    """``python convert/dit.py`` runs from the repo root; offline, a hub id fails with what to download."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "convert/dit.py", "--src", "facebook/DiT-XL-2-256", "--out",
                        str(tmp_path / "c")], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "hf download facebook/DiT-XL-2-256 --include" in r.stderr, r.stderr
    assert "huggingface_hub.snapshot_download('facebook/DiT-XL-2-256', allow_patterns=" in r.stderr, r.stderr
