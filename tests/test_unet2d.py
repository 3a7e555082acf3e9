"""jtaba.models.unet2d vs diffusers 0.42.1 UNet2DModel (tiny random configs, fp32), and the full-size LDM
CelebA-HQ structure (torch meta tensors, flax eval_shape: no weights allocated)."""
import jax
import numpy as np
import pytest
import torch
from diffusers import UNet2DModel

from convert.common import apply_rules, eval_shapes
from convert.diffusers_keys import diffusers_rules
from jtaba.models import unet2d
from tests.golden import report
from tests.test_diffusers_blocks import nchw, randomize, to_nhwc

# CompVis/ldm-celebahq-256 unet/config.json (hub snapshot 03978f2 as re-saved by diffusers 0.16).
LDM_CELEBAHQ_UNET = {
    "_class_name": "UNet2DModel", "_diffusers_version": "0.16.0.dev0", "act_fn": "silu", "add_attention": True,
    "attention_head_dim": 32, "block_out_channels": [224, 448, 672, 896], "center_input_sample": False,
    "class_embed_type": None, "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                                                   "AttnDownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 3, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "num_class_embeds": None,
    "out_channels": 3, "resnet_time_scale_shift": "default", "sample_size": 64, "time_embedding_type": "positional",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}

TINY = {
    "ldm_like": dict(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                     attention_head_dim=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                     up_block_types=("AttnUpBlock2D", "UpBlock2D")),
    "variants": dict(sample_size=8, block_out_channels=(8, 8, 16), layers_per_block=1, norm_num_groups=4,
                     attention_head_dim=None, down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                     up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"), downsample_type="resnet",
                     upsample_type="resnet", resnet_time_scale_shift="scale_shift", downsample_padding=0,
                     flip_sin_to_cos=False, freq_shift=1, mid_block_scale_factor=2.0, center_input_sample=True,
                     attn_norm_num_groups=2, norm_eps=1e-6, time_embedding_dim=24),
}


def tiny_pair(name, seed=0):
    tm = randomize(UNet2DModel(**TINY[name]), seed)
    cfg = unet2d.Config.from_diffusers(dict(tm.config))
    net = unet2d.Network(cfg)
    x = np.zeros((2, 8, 8, 3), np.float32)
    shapes = eval_shapes(lambda: net.init(jax.random.key(0), x, np.zeros(2, np.float32))["params"])
    params = apply_rules(tm.state_dict(), shapes, diffusers_rules(shapes))
    return tm, net, params


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_matches_diffusers(name):
    tm, net, params = tiny_pair(name)
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3), dtype=np.float32)
    t = np.array([0, 999], np.int64)
    got = jax.jit(net.apply)({"params": params}, x, t.astype(np.float32))
    with torch.no_grad():
        ref = to_nhwc(tm(nchw(x), torch.from_numpy(t)).sample)
    _, rel = report(f"UNet2DModel[{name}]", got, ref)
    assert rel < 1e-5


def test_config_roundtrip_and_rejects():
    cfg = unet2d.Config.from_diffusers(LDM_CELEBAHQ_UNET)
    assert cfg.block_out_channels == (224, 448, 672, 896) and cfg.attention_head_dim == 32
    assert unet2d.Config.from_dict(cfg.to_dict()) == cfg
    for bad in ({"time_embedding_type": "fourier"}, {"num_class_embeds": 10}, {"mid_block_type": "X"},
                {"down_block_types": ["SkipDownBlock2D"] * 4}, {"no_such_option": 1}):
        with pytest.raises(ValueError):
            unet2d.Config.from_diffusers({**LDM_CELEBAHQ_UNET, **bad})


def test_ldm_celebahq_structure():
    """Every key and shape of the full-size hub UNet (built on the meta device) maps onto the flax params."""
    with torch.device("meta"):
        tm = UNet2DModel(**{k: v for k, v in LDM_CELEBAHQ_UNET.items() if not k.startswith("_")})
    net = unet2d.Network(unet2d.Config.from_diffusers(LDM_CELEBAHQ_UNET))
    shapes = eval_shapes(lambda: net.init(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32),
                                          np.zeros(1, np.float32))["params"])
    rules = diffusers_rules(shapes)
    source = {k: tuple(v.shape) for k, v in tm.state_dict().items()}
    assert sorted(r.source for r in rules.values()) == sorted(source)
    for path, rule in rules.items():
        assert rule.transform(np.empty(source[rule.source], np.float32)).shape == shapes[path], rule.source
    assert sum(int(np.prod(s)) for s in shapes.values()) == sum(int(np.prod(s)) for s in source.values())
