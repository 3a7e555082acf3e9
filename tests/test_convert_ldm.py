"""convert/ldm.py on a tiny diffusers LDM pipeline folder (UNet2DModel with the hub's deprecated attention names in
a .bin, VQModel as safetensors, DDIMScheduler) written into tmp_path; no network (HF_HUB_OFFLINE=1)."""
import os

import jax
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UNet2DModel, VQModel

from convert import ldm
from convert.common import ConversionError, load_state_dict
from jtaba.checkpoint import load_params, read_config
from jtaba.diffusion import DiffusionConfig
from jtaba.models import unet2d, vq
from tests.golden import report
from tests.test_diffusers_blocks import nchw, randomize, to_nhwc
from tests.test_unet2d import TINY

TINY_VQ = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=3,
               num_vq_embeddings=16, down_block_types=("DownEncoderBlock2D",) * 2,
               up_block_types=("UpDecoderBlock2D",) * 2)
LDM_SCHEDULER = dict(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear", clip_sample=False,
                     num_train_timesteps=1000)
DEPRECATED = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _deprecated_names(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        for new, old in DEPRECATED.items():
            k = k.replace(f".{new}.", f".{old}.")
        out[k] = v
    return out


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm_pipeline")
    unet = randomize(UNet2DModel(**TINY["ldm_like"]), seed=1)
    unet.save_pretrained(root / "unet", safe_serialization=False)
    old = _deprecated_names(unet.state_dict())  # as the 2022 hub weights store them
    assert any(".proj_attn." in k for k in old)
    torch.save(old, root / "unet" / "diffusion_pytorch_model.bin")
    randomize(VQModel(**TINY_VQ), seed=2).save_pretrained(root / "vqvae")
    DDIMScheduler(**LDM_SCHEDULER).save_pretrained(root / "scheduler")
    return root


def test_convert_pipeline(pipeline, tmp_path):
    out = tmp_path / "ldm"
    ldm.main(["--src", str(pipeline), "--out", str(out)])

    cfg = read_config(str(out))
    assert cfg["family"] == "unet2d"
    diffusion = DiffusionConfig.from_dict(cfg["diffusion"])
    assert (diffusion.kind, diffusion.beta_schedule, diffusion.beta_start, diffusion.beta_end) == (
        "diffusers", "scaled_linear", 0.0015, 0.0195)
    assert (diffusion.sample_clip, diffusion.invert_clip, diffusion.learned_sigma) == ("none", "none", False)
    assert diffusion.set_alpha_to_one and diffusion.steps_offset == 0

    net = unet2d.Network(unet2d.Config.from_dict(cfg["model"]))
    params = load_params(str(out))
    ref_unet = UNet2DModel.from_pretrained(pipeline / "unet").eval()  # diffusers renames the old keys itself
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3), dtype=np.float32)
    t = np.array([10, 990], np.int64)
    with torch.no_grad():
        ref = to_nhwc(ref_unet(nchw(x), torch.from_numpy(t)).sample)
    _, rel = report("convert/ldm unet", jax.jit(net.apply)({"params": params}, x, t.astype(np.float32)), ref)
    assert rel < 1e-5

    dcfg = read_config(str(out / "decoder"))
    assert dcfg["family"] == "vq"
    vq_config = vq.Config.from_dict(dcfg["model"])
    vq_params = load_params(str(out / "decoder"))
    ref_vq = VQModel.from_pretrained(pipeline / "vqvae").eval()
    z = np.random.default_rng(1).standard_normal((2, 4, 4, 3), dtype=np.float32)
    with torch.no_grad():
        ref = to_nhwc(ref_vq.decode(nchw(z)).sample)
    got = jax.jit(lambda p, z: vq.Network(vq_config).apply({"params": p}, z, method="decode"))(vq_params, z)
    _, rel = report("convert/ldm vq decode", got, ref)
    assert rel < 1e-5


def test_key_accounting(pipeline):
    state = dict(load_state_dict(str(pipeline / "unet" / "diffusion_pytorch_model.bin")))
    config = UNet2DModel.load_config(pipeline / "unet")
    ldm.convert_unet(state, config)  # the untouched state converts

    broken = dict(state)
    del broken["mid_block.attentions.0.query.weight"]
    broken["mid_block.extra.weight"] = torch.zeros(3)
    broken["conv_in.weight"] = torch.zeros(8, 3, 5, 5)
    with pytest.raises(ConversionError) as e:
        ldm.convert_unet(broken, config)
    msg = str(e.value)
    assert "missing keys (1): mid_block.attentions.0.to_q.weight" in msg
    assert "unexpected keys (1): mid_block.extra.weight" in msg
    assert "conv_in.weight: (8, 3, 5, 5)" in msg


def test_hub_id_offline_says_what_to_download(tmp_path, capsys):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(SystemExit):
        ldm.main(["--src", ldm.HUB_ID, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert f"hf download {ldm.HUB_ID}" in err and "--include 'unet/*'" in err
    assert "--src ldm-celebahq-256" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("key,value", [("beta_schedule", "scaled_linaer"), ("timestep_spacing", "lead"),
                                       ("prediction_type", "v_prediction")])
def test_bad_scheduler_value_refused_before_weights(pipeline, tmp_path, capsys, key, value):
    """A bad scheduler value is named before any weights are read: here the weights are absent altogether."""
    import json
    import shutil

    src = tmp_path / "src"
    for sub in ("unet", "vqvae", "scheduler"):
        (src / sub).mkdir(parents=True)
        for f in os.listdir(pipeline / sub):
            if f.endswith(".json"):
                shutil.copy(pipeline / sub / f, src / sub / f)
    path = src / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    with pytest.raises(SystemExit):
        ldm.main(["--src", str(src), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert key in err and repr(value) in err and "scheduler_config.json" in err, err
    assert not (tmp_path / "out").exists()
