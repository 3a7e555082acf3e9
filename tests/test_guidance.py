"""Classifier-free guidance in the engine: ε = ε_u + s·(ε_c − ε_u) on the ε channels, null label from the model,
the scale traced (one compilation for every s ≠ 1), and s = 1 identical to no guidance."""
import jax
import jax.numpy as jnp
import numpy as np

import jtaba
from jtaba import engine
from jtaba.diffusion import DiffusionConfig
from jtaba.model import Model
from jtaba.models import dit
from tests.test_dit import tiny  # noqa: F401  (golden dit_tiny with recipe weights)

DDIM = dict(beta_schedule="linear", clip_sample=False, set_alpha_to_one=True)


def test_guided_step_matches_manual_combination(tiny):  # noqa: F811
    config, params = tiny
    params = jax.tree.map(jnp.asarray, params)
    model = Model("dit", config, dit.Network(config), params,
                  DiffusionConfig.from_diffusers_scheduler(DDIM, learned_sigma=True))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    y = np.array([207, 88], np.int32)
    spec = engine.LoopSpec(network=model.network, diffusion=model.diffusion, steps=10, invert=False, guided=True)
    xh = jnp.moveaxis(jnp.asarray(x), 1, -1)
    null = model.null_cond(2)
    np.testing.assert_array_equal(null, [1000, 1000])
    label = float(spec.table().label[0])
    out_c = model.network.apply({"params": params}, xh, jnp.full((2,), label), jnp.asarray(y))[..., :4]
    out_u = model.network.apply({"params": params}, xh, jnp.full((2,), label), null)[..., :4]
    for s in (0.0, 4.0):
        _, eps, _ = engine.run_step(spec, params, xh, 0, jnp.asarray(y), null, s)
        np.testing.assert_allclose(np.asarray(eps), np.asarray(out_u + s * (out_c - out_u)), atol=2e-5)
    assert engine.run_step._cache_size() >= 1
    before = engine.run_loop._cache_size()
    a = jtaba.sample(model, x, steps=4, cond=y, guidance=2.0).x
    b = jtaba.sample(model, x, steps=4, cond=y, guidance=7.5).x
    assert engine.run_loop._cache_size() == before + 1  # the scale is traced: no recompilation per value
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3
    plain = jtaba.sample(model, x, steps=4, cond=y).x
    one = jtaba.sample(model, x, steps=4, cond=y, guidance=jnp.float32(1.0)).x  # traced 1.0 takes the guided path
    np.testing.assert_allclose(np.asarray(one), np.asarray(plain), atol=1e-4 * float(jnp.max(jnp.abs(plain))))


def test_guidance_conventions_facebook_and_diffusers(tiny):  # noqa: F811
    """``guidance_channels``: None (diffusers' DiTPipeline) guides every ε channel; 3 (facebookresearch/DiT
    ``forward_with_cfg``) guides channels 0-2 and keeps channel 3 of the conditional prediction, unguided."""
    config, params = tiny
    params = jax.tree.map(jnp.asarray, params)
    rng = np.random.default_rng(1)
    xh = jnp.asarray(rng.standard_normal((2, 8, 8, 4)).astype(np.float32))
    y = jnp.asarray([207, 88], jnp.int32)
    null = dit.null_cond(config, 2)
    base = DiffusionConfig.from_diffusers_scheduler(DDIM, learned_sigma=True)
    net = dit.Network(config)
    direct = {}
    for s in (0.0, 4.0):
        for name, channels in (("diffusers", None), ("facebook", 3)):
            spec = engine.LoopSpec(network=net, diffusion=base.replace(guidance_channels=channels), steps=10,
                                   invert=False, guided=True)
            label = float(spec.table().label[0])
            out_c = np.asarray(net.apply({"params": params}, xh, jnp.full((2,), label), y))[..., :4]
            out_u = np.asarray(net.apply({"params": params}, xh, jnp.full((2,), label), null))[..., :4]
            want = out_u + s * (out_c - out_u)  # computed here in numpy, channel by channel
            if channels == 3:
                want[..., 3] = out_c[..., 3]
            _, eps, _ = engine.run_step(spec, params, xh, 0, y, null, s)
            np.testing.assert_allclose(np.asarray(eps), want, atol=2e-5, err_msg=f"{name} s={s}")
            direct[name, s] = np.asarray(eps)
    # the conventions agree on channels 0-2 and differ on channel 3 once s != 1
    np.testing.assert_allclose(direct["facebook", 4.0][..., :3], direct["diffusers", 4.0][..., :3], atol=1e-6)
    assert np.max(np.abs(direct["facebook", 4.0][..., 3] - direct["diffusers", 4.0][..., 3])) > 1e-3
    # the direct helper, and its bounds: k >= C is every channel
    a, b = jnp.ones((1, 2, 2, 4)), jnp.zeros((1, 2, 2, 4))
    np.testing.assert_array_equal(engine.guide(a, b, 2.0, 4), engine.guide(a, b, 2.0))
    np.testing.assert_array_equal(engine.guide(a, b, 2.0, 1)[0, 0, 0], [2.0, 1.0, 1.0, 1.0])
