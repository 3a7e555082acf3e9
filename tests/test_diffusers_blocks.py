"""jtaba.models.diffusers_blocks vs the diffusers 0.42.1 torch modules, tiny random weights, fp32.

Params come through ``convert.diffusers_keys`` with strict key accounting, so a missing or extra param in a flax
block fails here too."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention as TAttention
from diffusers.models.downsampling import Downsample2D as TDownsample2D
from diffusers.models.embeddings import TimestepEmbedding as TTimestepEmbedding
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.resnet import ResnetBlock2D as TResnetBlock2D
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D as TUNetMidBlock2D
from diffusers.models.upsampling import Upsample2D as TUpsample2D

from convert.common import apply_rules, eval_shapes
from convert.diffusers_keys import diffusers_rules, rename_deprecated_attention
from jtaba.models import diffusers_blocks as db
from tests.golden import report

TOL = 1e-5  # relative to max|ref|


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (norm weights near 1, biases nonzero) so no param can go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            z = torch.randn(p.shape, generator=g)
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * z)
            elif p.ndim == 1:
                p.copy_(0.1 * z)
            else:
                p.copy_(z / np.sqrt(np.prod(p.shape[1:])))
    return module.eval()


def flax_params(module, tmodule, *args):
    shapes = eval_shapes(lambda: module.init(jax.random.key(0), *args).get("params", {}))
    return apply_rules(tmodule.state_dict(), shapes, diffusers_rules(shapes))


def apply(module, params, *args, **static):
    """Jitted ``module.apply`` (one compile instead of op-by-op dispatch); ``static`` kwargs are closed over."""
    return jax.jit(lambda p, *a: module.apply({"params": p}, *a, **static))(params, *args)


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def to_nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def check(name, got, ref, tol=TOL):
    _, rel = report(name, got, ref)
    assert rel < tol, f"{name}: relative error {rel:.2e}"


RESNET_CASES = {
    "default_shortcut": dict(in_channels=8, out_channels=16, temb_channels=12, groups=4, eps=1e-6),
    "scale_shift_skip_act": dict(in_channels=16, out_channels=16, temb_channels=12, groups=4, groups_out=8,
                                 eps=1e-5, time_embedding_norm="scale_shift", skip_time_act=True,
                                 output_scale_factor=2.0, non_linearity="gelu"),
    "no_temb_mish": dict(in_channels=8, out_channels=8, temb_channels=None, groups=2, non_linearity="mish"),
    "shortcut_no_bias": dict(in_channels=8, out_channels=8, temb_channels=12, groups=4, use_in_shortcut=True,
                             conv_shortcut_bias=False, conv_2d_out_channels=12),
    "up": dict(in_channels=8, out_channels=8, temb_channels=12, groups=4, up=True,
               time_embedding_norm="scale_shift"),
    "down": dict(in_channels=8, out_channels=16, temb_channels=12, groups=4, down=True),
}


@pytest.mark.parametrize("case", sorted(RESNET_CASES))
def test_resnet_block(case):
    kw = dict(RESNET_CASES[case])
    tm = randomize(TResnetBlock2D(**kw))
    fkw = {k: v for k, v in kw.items() if k not in ("in_channels", "temb_channels")}
    fm = db.ResnetBlock2D(**fkw)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 6, kw["in_channels"]), dtype=np.float32)
    temb = None if kw["temb_channels"] is None else rng.standard_normal((2, 12), dtype=np.float32)
    params = flax_params(fm, tm, x, temb)
    got = apply(fm, params, x, temb)
    with torch.no_grad():
        ref = tm(nchw(x), None if temb is None else torch.from_numpy(temb))
    check(f"ResnetBlock2D[{case}]", got, to_nhwc(ref))


@pytest.mark.parametrize("use_conv,padding", [(True, 1), (True, 0), (False, 1)])
def test_downsample(use_conv, padding):
    tm = randomize(TDownsample2D(6, use_conv=use_conv, out_channels=6 if not use_conv else 10, padding=padding,
                                 name="op"))
    fm = db.Downsample2D(None if not use_conv else 10, use_conv=use_conv, padding=padding)
    x = np.random.default_rng(2).standard_normal((2, 9, 8, 6), dtype=np.float32)
    params = flax_params(fm, tm, x)
    with torch.no_grad():
        ref = to_nhwc(tm(nchw(x)))
    check(f"Downsample2D[conv={use_conv},pad={padding}]", apply(fm, params, x), ref)


@pytest.mark.parametrize("use_conv,output_size", [(True, None), (False, None), (True, (11, 9))])
def test_upsample(use_conv, output_size):
    tm = randomize(TUpsample2D(6, use_conv=use_conv, out_channels=10 if use_conv else None))
    fm = db.Upsample2D(10 if use_conv else None, use_conv=use_conv)
    x = np.random.default_rng(3).standard_normal((2, 5, 4, 6), dtype=np.float32)
    params = flax_params(fm, tm, x)
    with torch.no_grad():
        ref = to_nhwc(tm(nchw(x), output_size=output_size))
    check(f"Upsample2D[conv={use_conv},size={output_size}]", apply(fm, params, x, output_size=output_size), ref)


@pytest.mark.parametrize("dim,flip,shift,scale", [(32, True, 0, 1), (32, False, 1, 1), (17, True, 1, 1000)])
def test_timestep_embedding(dim, flip, shift, scale):
    t = np.array([0, 1, 10, 250, 981, 999], np.int64)
    ref = get_timestep_embedding(torch.from_numpy(t), dim, flip, shift, scale=scale).numpy()
    got = db.timestep_embedding(jnp.asarray(t, jnp.float32), dim, flip, shift, scale=scale)
    err, _ = report(f"timestep_embedding[{dim},{flip},{shift},{scale}]", got, ref)
    assert err < 1e-6  # same float32 frequencies as torch; sin/cos differ by rounding only


@pytest.mark.parametrize("act,post,out_dim", [("silu", None, None), ("gelu", "mish", 24)])
def test_timestep_mlp(act, post, out_dim):
    tm = randomize(TTimestepEmbedding(16, 32, act_fn=act, out_dim=out_dim, post_act_fn=post))
    fm = db.TimestepEmbedding(32, act_fn=act, out_dim=out_dim, post_act_fn=post)
    x = np.random.default_rng(4).standard_normal((3, 16), dtype=np.float32)
    params = flax_params(fm, tm, x)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    check(f"TimestepEmbedding[{act},{post}]", apply(fm, params, x), ref)


@pytest.mark.parametrize("groups,heads,rescale,residual", [(4, 2, 1.0, True), (None, 1, 2.0, True),
                                                           (2, 4, 1.0, False)])
def test_attention(groups, heads, rescale, residual):
    c, dim_head = 16, 16 // heads
    tm = randomize(TAttention(c, heads=heads, dim_head=dim_head, rescale_output_factor=rescale, eps=1e-6,
                              norm_num_groups=groups, residual_connection=residual, bias=True, upcast_softmax=True,
                              _from_deprecated_attn_block=True))
    fm = db.Attention(dim_head=dim_head, heads=heads, norm_num_groups=groups, eps=1e-6,
                      residual_connection=residual, rescale_output_factor=rescale)
    x = np.random.default_rng(5).standard_normal((2, 6, 5, c), dtype=np.float32)
    params = flax_params(fm, tm, x)
    with torch.no_grad():
        ref = to_nhwc(tm(nchw(x)))
    check(f"Attention[g={groups},h={heads},r={rescale}]", apply(fm, params, x), ref)


def test_deprecated_attention_names():
    state = {"mid.attentions.0.query.weight": 1, "mid.attentions.0.proj_attn.bias": 2, "a.key.weight": 3,
             "a.key_proj.weight": 4}
    assert rename_deprecated_attention(state) == {"mid.attentions.0.to_q.weight": 1,
                                                  "mid.attentions.0.to_out.0.bias": 2, "a.to_k.weight": 3,
                                                  "a.key_proj.weight": 4}


@pytest.mark.parametrize("temb,shift", [(True, "default"), (False, "default"), (True, "scale_shift")])
def test_mid_block(temb, shift):
    c = 16
    tm = randomize(TUNetMidBlock2D(c, 12 if temb else None, resnet_eps=1e-6, resnet_groups=4,
                                   resnet_time_scale_shift=shift, attention_head_dim=8, output_scale_factor=1.5))
    fm = db.UNetMidBlock2D(db.ResnetArgs(eps=1e-6, groups=4, time_embedding_norm=shift, output_scale_factor=1.5),
                           attention_head_dim=8)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 4, 4, c), dtype=np.float32)
    e = rng.standard_normal((2, 12), dtype=np.float32) if temb else None
    params = flax_params(fm, tm, x, e)
    with torch.no_grad():
        ref = to_nhwc(tm(nchw(x), None if e is None else torch.from_numpy(e)))
    check(f"UNetMidBlock2D[temb={temb},{shift}]", apply(fm, params, x, e), ref)
