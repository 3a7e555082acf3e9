"""Training state, optimizer and EMA (guided-diffusion ``TrainLoop``: AdamW, no lr annealing, EMA of params)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
    """params / ema_params: float32 nested dicts; step: int32 scalar (optimizer updates done);
    rng: uint32 (2,) base key, step k uses ``fold_in(rng, k)`` (so any step can be replayed after a resume)."""
    params: Any
    ema_params: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array


def make_optimizer(lr: float, weight_decay: float) -> optax.GradientTransformation:
    """torch.optim.AdamW defaults (betas 0.9/0.999, eps 1e-8), constant learning rate."""
    return optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)


def init_state(network: nn.Module, seed: int, optimizer: optax.GradientTransformation) -> TrainState:
    """Fresh parameters of ``network`` (its ``config`` gives image_size and in_channels) from ``seed``; the EMA
    starts as a copy of them."""
    init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
    c = network.config
    x = jnp.zeros((1, c.image_size, c.image_size, c.in_channels), jnp.float32)
    params = network.init({"params": init_key}, x, jnp.zeros((1,), jnp.float32))["params"]
    return TrainState(params=params, ema_params=jax.tree.map(jnp.array, params), opt_state=optimizer.init(params),
                      step=jnp.zeros((), jnp.int32), rng=train_key)


def ema_update(ema: Any, params: Any, rate: float) -> Any:
    """ema <- rate·ema + (1-rate)·params (guided_diffusion ``update_ema``)."""
    return jax.tree.map(lambda e, p: rate * e + (1 - rate) * p, ema, params)
