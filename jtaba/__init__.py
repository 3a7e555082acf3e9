"""jtaba: DDIM sampling and inversion research toolkit in JAX/Flax.

    import jtaba
    m = jtaba.load(DIR)
    x = jtaba.sample(m, noise, steps=100).x                # noise (B, C, H, W) float32, NCHW
    z = jtaba.invert(m, x, steps=100, forward_before=3, forward_key=jax.random.key(0)).x
"""
from jtaba.api import Swap, Trajectory, decode, invert, sample
from jtaba.diffusion import DiffusionConfig
from jtaba.model import Model, load

__all__ = ["DiffusionConfig", "Model", "Swap", "Trajectory", "decode", "invert", "load", "sample"]
