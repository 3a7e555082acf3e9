"""jtaba.models.if_unet vs diffusers 0.42.1 ``UNet2DConditionModel`` with IF-I's block types and options (tiny
random configs built here), fp32 parity and bf16 sanity; the IF-I-XL config parses to the module defaults."""
import functools
import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from jtaba.models import if_unet
from tests.golden import report
from tests.test_diffusers_blocks import nchw, randomize

convert_if = importlib.import_module("convert.if")  # "if" is a keyword

TOL = 1e-5  # relative to max|ref|, fp32

# IF-I-XL-v1.0's unet/config.json (see the if_unet module docstring for where each value was verified).
IF_I_XL = {
    "_class_name": "UNet2DConditionModel", "act_fn": "gelu", "addition_embed_type": "text",
    "addition_embed_type_num_heads": 64, "addition_time_embed_dim": None, "attention_head_dim": 64,
    "block_out_channels": [704, 1408, 2112, 2816], "center_input_sample": False, "class_embed_type": None,
    "class_embeddings_concat": False, "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_dim": 2816,
    "cross_attention_norm": "group_norm",
    "down_block_types": ["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D",
                         "SimpleCrossAttnDownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "encoder_hid_dim": 4096,
    "encoder_hid_dim_type": "text_proj", "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 3,
    "layers_per_block": 3, "mid_block_only_cross_attention": None, "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_attention_heads": None, "num_class_embeds": None, "only_cross_attention": False, "out_channels": 6,
    "projection_class_embeddings_input_dim": None, "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "scale_shift", "sample_size": 64, "time_cond_proj_dim": None,
    "time_embedding_act_fn": None, "time_embedding_dim": None, "time_embedding_type": "positional",
    "timestep_post_act": None, "transformer_layers_per_block": 1,
    "up_block_types": ["SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                       "ResnetUpsampleBlock2D"],
    "upcast_attention": False, "use_linear_projection": False,
}

# IF-I's options at toy size (group norms of 8; the text GroupNorm keeps diffusers' fixed 32 groups).
IF_TINY = dict(
    sample_size=8, in_channels=3, out_channels=6, block_out_channels=(16, 32),
    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn", layers_per_block=2, attention_head_dim=8,
    cross_attention_dim=32, encoder_hid_dim=24, encoder_hid_dim_type="text_proj", addition_embed_type="text",
    addition_embed_type_num_heads=4, cross_attention_norm="group_norm", norm_num_groups=8, act_fn="gelu",
    resnet_time_scale_shift="scale_shift")

# The other switches of the subset: skip_time_act, output scale factors, only-cross attention, per-block head
# dims (the up blocks index them unreversed, as diffusers), no text projection, default time norm, silu.
VARIANT = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32, 48),
    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"),
    up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn", layers_per_block=1, attention_head_dim=(8, 16, 16),
    cross_attention_dim=32, addition_embed_type="text", addition_embed_type_num_heads=2, norm_num_groups=8,
    act_fn="silu", resnet_skip_time_act=True, resnet_out_scale_factor=1.5, mid_block_scale_factor=1.25,
    only_cross_attention=True, mid_block_only_cross_attention=False, flip_sin_to_cos=False, freq_shift=1)


def tiny_torch(kw: dict, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return randomize(UNet2DConditionModel(**kw), seed)


def inputs(cfg: if_unet.Config, batch: int = 2, size: int = 8, length: int = 7, seed: int = 0):
    rng = np.random.RandomState(seed)
    x = rng.randn(batch, size, size, cfg.in_channels).astype(np.float32)
    cond = rng.randn(batch, length, cfg.cond_dim).astype(np.float32)
    t = np.array([3.0, 777.0, 999.0, 0.0][:batch], np.float32)
    return x, t, cond


def torch_forward(model: UNet2DConditionModel, x, t, cond) -> np.ndarray:
    with torch.no_grad():
        out = model(nchw(x), torch.from_numpy(t).long(), torch.from_numpy(cond)).sample
    return out.numpy().transpose(0, 2, 3, 1)


@functools.lru_cache(maxsize=None)
def jitted_apply(cfg: if_unet.Config, dtype=jnp.float32):
    """One compiled forward per (config, dtype), shared by the tests of this and the converter's test file."""
    net = if_unet.Network(cfg, dtype=dtype)
    return jax.jit(lambda p, *a: net.apply({"params": p}, *a))


def jax_forward(cfg, params, x, t, cond, dtype=jnp.float32) -> np.ndarray:
    return np.asarray(jitted_apply(cfg, dtype)(params, x, t, cond))


@pytest.mark.parametrize("kw", [IF_TINY, VARIANT], ids=["if_tiny", "variant"])
def test_parity_fp32(kw):
    model = tiny_torch(kw)
    cfg, params = convert_if.convert_unet(model.state_dict(), dict(model.config))
    x, t, cond = inputs(cfg)
    ref = torch_forward(model, x, t, cond)
    got = jax_forward(cfg, params, x, t, cond)
    assert got.dtype == np.float32 and got.shape == ref.shape
    _, rel = report(f"if_unet {kw['in_channels']}->{kw['out_channels']} ch", got, ref)
    assert rel < TOL


def test_bf16_compute_tracks_fp32():
    """bf16 compute (params fp32, norms and softmax fp32) stays near the fp32 result and returns float32."""
    model = tiny_torch(IF_TINY, seed=1)
    cfg, params = convert_if.convert_unet(model.state_dict(), dict(model.config))
    x, t, cond = inputs(cfg, seed=1)
    ref = torch_forward(model, x, t, cond)
    got = jax_forward(cfg, params, x, t, cond, jnp.bfloat16)
    assert got.dtype == np.float32 and np.all(np.isfinite(got))
    _, rel = report("if_unet bf16 vs torch fp32", got, ref)
    assert rel < 5e-2


def test_if_i_xl_config_is_the_default():
    cfg = if_unet.Config.from_diffusers(IF_I_XL)
    assert cfg == if_unet.Config()
    assert cfg.time_embed_dim == 2816 and cfg.cond_dim == 4096
    assert if_unet.Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# Every other option the forward reads, at toy size: per-block only_cross_attention (reversed for the up blocks),
# a None head dim (one head; up block 0 reads entry 0 unreversed), per-block layers, the prompt LayerNorm (blocks as
# wide as the prompt), time_embedding_act_fn, timestep_post_act, center_input_sample, a UNetRes-prefixed name, an
# (H, W) sample_size, a time_embedding_dim, and the options diffusers ignores for these blocks set off default.
OPTIONS = dict(
    sample_size=(8, 8), in_channels=3, out_channels=6, block_out_channels=(16, 32, 32),
    down_block_types=("UNetResResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"),
    up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn", layers_per_block=(1, 2, 1), attention_head_dim=(None, 8, 16),
    cross_attention_dim=32, encoder_hid_dim=24, encoder_hid_dim_type="text_proj", addition_embed_type="text",
    addition_embed_type_num_heads=4, cross_attention_norm="layer_norm", norm_num_groups=8, act_fn="gelu",
    resnet_time_scale_shift="scale_shift", time_embedding_act_fn="silu", timestep_post_act="mish",
    center_input_sample=True, only_cross_attention=(False, True, False), time_embedding_dim=48,
    upcast_attention=True, dual_cross_attention=True, use_linear_projection=True, downsample_padding=0,
    transformer_layers_per_block=2, addition_time_embed_dim=7, projection_class_embeddings_input_dim=9)


def test_every_diffusers_option_is_sorted():
    """IMPLEMENTED, INERT and REFUSED partition UNet2DConditionModel.__init__'s arguments exactly (a diffusers
    release adding an option fails here until it is sorted)."""
    import inspect

    names = set(inspect.signature(UNet2DConditionModel.__init__).parameters) - {"self"}
    groups = [set(if_unet.IMPLEMENTED), set(if_unet.INERT), set(if_unet.REFUSED)]
    assert set.union(*groups) == names, (sorted(names - set.union(*groups)), sorted(set.union(*groups) - names))
    assert sum(map(len, groups)) == len(names)  # disjoint


def test_options_parity_fp32():
    model = tiny_torch(OPTIONS, seed=3)
    cfg, params = convert_if.convert_unet(model.state_dict(), dict(model.config))
    assert cfg.only_cross_attention == (False, True, False) and cfg.attention_head_dim == (None, 8, 16)
    assert (cfg.time_embedding_act_fn, cfg.timestep_post_act, cfg.center_input_sample) == ("silu", "mish", True)
    assert cfg.down_block_types[0] == "ResnetDownsampleBlock2D" and if_unet.sample_shape(cfg) == (3, 8, 8)
    assert if_unet.Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    x, t, cond = inputs(cfg, seed=3)
    ref = torch_forward(model, x, t, cond)
    _, rel = report("if_unet, every other option", jax_forward(cfg, params, x, t, cond), ref)
    assert rel < TOL
    # each option moves the output (so the parity above checks it): switch one off on the torch side
    for key, off in (("time_embedding_act_fn", None), ("timestep_post_act", None), ("center_input_sample", False)):
        other = tiny_torch({**OPTIONS, key: off}, seed=3)
        assert np.max(np.abs(torch_forward(other, x, t, cond) - ref)) > 1e-4 * np.max(np.abs(ref)), key


def test_new_fields_stay_out_of_old_json():
    """Fields added later are left out of config.json at their defaults (older checkpoints' configs and run
    fingerprints unchanged), and read back as defaults."""
    d = if_unet.Config().to_dict()
    assert not {"time_embedding_act_fn", "timestep_post_act", "center_input_sample"} & set(d)
    assert if_unet.Config.from_dict(d) == if_unet.Config()
    assert if_unet.Config(time_embedding_act_fn="silu").to_dict()["time_embedding_act_fn"] == "silu"


@pytest.mark.parametrize("key,value", [
    ("class_embed_type", "timestep"), ("num_class_embeds", 10), ("class_embeddings_concat", True),
    ("time_cond_proj_dim", 32), ("num_attention_heads", 8), ("attention_type", "gated"),
    ("encoder_hid_dim_type", "image_proj"), ("addition_embed_type", "text_time"), ("time_embedding_type", "fourier"),
    ("resnet_time_scale_shift", "spatial"), ("cross_attention_norm", "batch_norm"), ("norm_num_groups", None),
    ("act_fn", "tanh"), ("time_embedding_act_fn", "tanh"), ("timestep_post_act", "softplus"),
    ("mid_block_type", "UNetMidBlock2DCrossAttn"), ("cross_attention_dim", [2816, 2816, 1408, 1408])])
def test_unsupported_options_are_named(key, value):
    with pytest.raises(ValueError) as e:
        if_unet.Config.from_diffusers({**IF_I_XL, key: value})
    assert f"{key}={value!r}" in str(e.value), str(e.value)


def test_config_level_refusals():
    with pytest.raises(ValueError, match="layer_norm"):  # prompt LayerNorm where blocks are not as wide
        if_unet.Config.from_diffusers({**IF_I_XL, "cross_attention_norm": "layer_norm"})
    with pytest.raises(ValueError, match="attention_head_dim"):  # diffusers cannot build the mid block either
        if_unet.Config.from_diffusers({**IF_I_XL, "attention_head_dim": [64, 64, 64, None]})


def test_unsupported_block_type():
    with pytest.raises(ValueError, match="CrossAttnDownBlock2D"):
        if_unet.Config.from_diffusers({**IF_I_XL, "down_block_types": ["CrossAttnDownBlock2D"] * 4})


def test_cond_shape_checked():
    cfg = if_unet.Config.from_diffusers(dict(UNet2DConditionModel(**IF_TINY).config))
    x, t, cond = inputs(cfg)
    net = if_unet.Network(cfg)
    with pytest.raises(ValueError, match="cond"):
        jax.eval_shape(lambda: net.init(jax.random.key(0), x, t, cond[..., :5]))
    with pytest.raises(ValueError, match="cond"):
        jax.eval_shape(lambda: net.init(jax.random.key(0), x, t, None))
