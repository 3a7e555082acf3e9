"""The shipped default model (jtaba/assets/default): the builtin preset's architecture and diffusion, small, and
trained (it denoises procedural images far better than the identity guess)."""
import os

import jax
import jax.numpy as jnp
import numpy as np

import jtaba
from jtaba.data import ProceduralImages, to_model_range
from jtaba.diffusion import DiffusionConfig
from jtaba.models import adm
from jtaba.train import diffusion_loss as dl
from jtaba.train.presets import BUILTIN_FLAGS

DEFAULT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jtaba", "assets", "default")


def test_default_model_is_the_builtin_preset_and_denoises():
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(DEFAULT) for f in fs)
    assert size < 20e6
    m = jtaba.load(DEFAULT)
    assert m.family == "adm" and m.config == adm.Config.from_flags(BUILTIN_FLAGS)
    assert m.diffusion == DiffusionConfig.from_adm_flags(BUILTIN_FLAGS)
    unseen = ProceduralImages(16, length=10**6)  # training used indices < 50,000
    x0 = jnp.asarray(to_model_range(np.stack([unseen[i] for i in range(900_000, 900_032)])))
    s = dl.schedule_for(m.diffusion)
    t = jnp.full((32,), 2000, jnp.int32)
    noise = jax.random.normal(jax.random.PRNGKey(0), x0.shape)
    xt = dl.q_sample(s, x0, t, noise)
    out = m.network.apply({"params": m.params}, xt, dl.timestep_labels(t, 4000, True))
    mse = float(jnp.mean((out[..., :3] - noise) ** 2))
    identity_guess = float(jnp.mean((xt / s.sqrt_one_minus_alphas_cumprod[2000] - noise) ** 2))
    print("eps mse at t=2000", mse, "identity guess", identity_guess)
    assert mse < 0.08 < 0.3 < identity_guess
