"""The jitted, data-parallel training step.

The batch is sharded over a 1-D device mesh (axis ``"data"``), the state is replicated; XLA inserts the gradient
all-reduce. Randomness of step k (flips, timesteps, noise, dropout) comes from ``fold_in(state.rng, k)``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jtaba import precision
from jtaba.diffusion import DiffusionConfig
from jtaba.models import adm
from jtaba.sharding import batch_sharding, replicated
from jtaba.train import diffusion_loss as dl
from jtaba.train.presets import TrainConfig
from jtaba.train.state import TrainState, ema_update, make_optimizer


def network_for(cfg: TrainConfig) -> adm.Network:
    return adm.Network(adm.Config.from_flags(cfg.flags_dict), dtype=precision.compute_dtype(cfg.compute_dtype))


def random_flip(rng: jax.Array, x: jax.Array) -> jax.Array:
    """Mirror each NHWC image left-right with probability 1/2."""
    flip = jax.random.bernoulli(rng, 0.5, (x.shape[0], 1, 1, 1))
    return jnp.where(flip, x[:, :, ::-1, :], x)


def loss_and_update(cfg: TrainConfig, state: TrainState, x0: jax.Array) -> tuple[TrainState, dict]:
    """One AdamW update + EMA on batch x0 (B,H,W,C) in [-1, 1]; returns the new state and mean loss terms."""
    network, optimizer = network_for(cfg), make_optimizer(cfg.lr, cfg.weight_decay)
    flags = {**adm.FLAG_DEFAULTS, **cfg.flags_dict}
    schedule = dl.schedule_for(DiffusionConfig.from_adm_flags(flags))
    flip_key, loss_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
    if cfg.random_flip:
        x0 = random_flip(flip_key, x0)

    def loss_fn(params):
        def net(xt, labels):
            return network.apply({"params": params}, xt, labels, train=True, rngs={"dropout": dropout_key})

        return dl.training_loss(net, schedule, x0, loss_key, rescale_timesteps=bool(flags["rescale_timesteps"]),
                                rescale_learned_sigmas=bool(flags["rescale_learned_sigmas"]))

    (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u: p + u, state.params, updates)
    new = state.replace(params=params, ema_params=ema_update(state.ema_params, params, cfg.ema_rate),
                        opt_state=opt_state, step=state.step + 1)
    return new, terms


@functools.lru_cache(maxsize=8)
def make_train_step(cfg: TrainConfig, mesh: Mesh):
    """Jitted ``step(state, batch) -> (state, terms)``: state replicated, batch sharded on ``"data"``."""
    repl = replicated(mesh)
    return jax.jit(functools.partial(loss_and_update, cfg), in_shardings=(repl, batch_sharding(mesh)),
                   out_shardings=(repl, repl), donate_argnums=(0,))
