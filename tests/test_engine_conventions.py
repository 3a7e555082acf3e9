"""The engine's diffusers conventions against diffusers' own schedulers on an analytic network, for the settings
the golden DiT files do not cover: IF (thresholding while sampling, clamp while inverting, learned σ), clip_sample
and set_alpha_to_one=False, trailing spacing. Each of the T steps is checked with teacher forcing."""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from jtaba import engine
from jtaba.diffusion import DiffusionConfig


class Analytic(nn.Module):
    """out = [0.8·x + 0.3·sin(t/100), 0.1·x]: ε depends on x and the label; the last C channels mimic learned σ."""
    config: object = None

    @nn.compact
    def __call__(self, x, t, cond=None):
        eps = 0.8 * x + 0.3 * jnp.sin(t / 100.0)[:, None, None, None]
        return jnp.concatenate([eps, 0.1 * x], axis=-1)


def torch_eps(x, t):
    return 0.8 * x + 0.3 * torch.sin(torch.tensor(float(t)) / 100.0)


IF = dict(beta_schedule="squaredcos_cap_v2", clip_sample=True, thresholding=True, dynamic_thresholding_ratio=0.95,
          sample_max_value=1.5)
CONFIGS = [IF, dict(beta_schedule="linear", clip_sample=True, set_alpha_to_one=False),
           dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing",
                clip_sample=False, set_alpha_to_one=False)]


@pytest.mark.parametrize("kw", CONFIGS)
def test_teacher_forced_steps_match_diffusers(kw):
    T = 10
    fwd, inv_kw = DDIMScheduler(**kw), dict(kw)
    inv_kw.pop("thresholding", None)  # DDIMInverseScheduler has no thresholding: IF inverts with clamp only
    inv_kw.pop("dynamic_thresholding_ratio", None)
    inv_kw.pop("sample_max_value", None)
    inv = DDIMInverseScheduler(**inv_kw)
    fwd.set_timesteps(T)
    inv.set_timesteps(T)
    cfg = DiffusionConfig.from_diffusers_scheduler(dict(fwd.config), learned_sigma=True)
    x0 = np.random.default_rng(1).uniform(-1.4, 1.4, (3, 2, 4, 4)).astype(np.float32)  # NCHW, reaches thresholds
    for invert, sched in ((False, fwd), (True, inv)):
        spec = engine.LoopSpec(network=Analytic(), diffusion=cfg, steps=T, invert=invert)
        x = torch.from_numpy(x0 * (1.0 if invert else 3.0))
        for i, t in enumerate(sched.timesteps):
            ref = sched.step(torch_eps(x, t), t, x)
            got, eps, pred = engine.run_step(spec, {}, jnp.moveaxis(jnp.asarray(x.numpy()), 1, -1), i)
            scale = max(1.0, float(x.abs().max()))
            np.testing.assert_allclose(np.moveaxis(np.asarray(got), -1, 1), ref.prev_sample.numpy(),
                                       atol=3e-6 * scale * float(spec.table().c_x[i]), err_msg=f"step {i}")
            np.testing.assert_allclose(np.moveaxis(np.asarray(pred), -1, 1), ref.pred_original_sample.numpy(),
                                       atol=3e-6 * scale * float(spec.table().c_x[i]))
            x = ref.prev_sample


def test_if_thresholds_sampling_and_clamps_inversion():
    cfg = DiffusionConfig.from_diffusers_scheduler(dict(DDIMScheduler(**IF).config), learned_sigma=True)
    assert (cfg.sample_clip, cfg.invert_clip, cfg.threshold_ratio, cfg.threshold_max) == ("threshold", "clip", 0.95,
                                                                                         1.5)
    x = jnp.asarray(np.random.default_rng(0).uniform(-3, 3, (2, 4, 4, 3)).astype(np.float32))
    ref = DDIMScheduler(**IF)._threshold_sample(torch.from_numpy(np.moveaxis(np.asarray(x), -1, 1).copy()))
    np.testing.assert_allclose(np.moveaxis(np.asarray(engine.dynamic_threshold(x, 0.95, 1.5)), -1, 1), ref.numpy(),
                               atol=1e-6)
