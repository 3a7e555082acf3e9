"""guided-diffusion training objective: eps prediction with learned-range variance ("hybrid" loss).

Formulas follow ``guided_diffusion/gaussian_diffusion.py`` (``training_losses`` with ``LossType.MSE`` /
``RESCALED_MSE``, ``ModelMeanType.EPSILON``, ``ModelVarType.LEARNED_RANGE``): per example

    loss = mean((eps - eps_hat)^2) + vb,   vb = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) in bits per dim
                                           (t = 0: discretized-Gaussian decoder NLL),

where the mean of p is built from a stop-gradient eps_hat (the VB term only trains the variance) and
vb is multiplied by ``num_timesteps / 1000`` when ``rescale_learned_sigmas``. Schedules are computed in float64
and gathered as float32, as upstream. All arrays NHWC; timesteps ``t`` are int32 indices in [0, num_timesteps).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jtaba.diffusion import DiffusionConfig
from jtaba.schedules import adm_betas


class Schedule(NamedTuple):
    """Per-timestep float32 coefficient tables, each of shape (num_timesteps,)."""
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    sqrt_recip_alphas_cumprod: jax.Array
    sqrt_recipm1_alphas_cumprod: jax.Array
    log_betas: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array

    @property
    def num_timesteps(self) -> int:
        return self.log_betas.shape[0]


def make_schedule(betas: np.ndarray) -> Schedule:
    """Coefficient tables of ``GaussianDiffusion.__init__`` (float64 math, stored as float32)."""
    betas = np.asarray(betas, dtype=np.float64)
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    tables = dict(
        sqrt_alphas_cumprod=np.sqrt(ac),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1),
        log_betas=np.log(betas),
        posterior_log_variance_clipped=np.log(np.append(post_var[1], post_var[1:])),
        posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    )
    return Schedule(**{k: jnp.asarray(v, jnp.float32) for k, v in tables.items()})


def schedule_for(diffusion: DiffusionConfig) -> Schedule:
    """Tables of the training schedule of an ADM (``kind="adm"``) diffusion."""
    if diffusion.kind != "adm":
        raise ValueError("training implements the guided-diffusion (kind='adm') objective only")
    return make_schedule(adm_betas(diffusion.beta_schedule, diffusion.num_train_timesteps))


def _gather(table: jax.Array, t: jax.Array) -> jax.Array:
    """table[t] broadcast to NHWC: (B,) -> (B,1,1,1)."""
    return table[t][:, None, None, None]


def timestep_labels(t: jax.Array, num_timesteps: int, rescale_timesteps: bool) -> jax.Array:
    """Network input for integer timesteps (ADM ``_WrappedModel``): t·1000/T as float32 when rescaling, else t."""
    t = t.astype(jnp.float32)
    return t * (1000.0 / num_timesteps) if rescale_timesteps else t


def sample_timesteps(rng: jax.Array, batch: int, num_timesteps: int) -> jax.Array:
    """Uniform sampler: (batch,) int32 in [0, num_timesteps); all importance weights are 1."""
    return jax.random.randint(rng, (batch,), 0, num_timesteps, dtype=jnp.int32)


def q_sample(s: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
    return _gather(s.sqrt_alphas_cumprod, t) * x0 + _gather(s.sqrt_one_minus_alphas_cumprod, t) * noise


def q_posterior_mean_variance(s: Schedule, x0: jax.Array, xt: jax.Array, t: jax.Array):
    """Mean and clipped log variance of q(x_{t-1} | x_t, x_0)."""
    mean = _gather(s.posterior_mean_coef1, t) * x0 + _gather(s.posterior_mean_coef2, t) * xt
    return mean, _gather(s.posterior_log_variance_clipped, t)


def learned_range_log_variance(s: Schedule, v: jax.Array, t: jax.Array) -> jax.Array:
    """LEARNED_RANGE: frac = (v+1)/2, log var = frac·log(beta_t) + (1-frac)·log(posterior variance, clipped)."""
    frac = (v + 1) / 2
    return frac * _gather(s.log_betas, t) + (1 - frac) * _gather(s.posterior_log_variance_clipped, t)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def _approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood (nats, elementwise) of 8-bit data x in [-1, 1] under a Gaussian discretized to bins of 2/255;
    the edge bins extend to ±infinity."""
    centered = x - means
    inv_stdv = jnp.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _mean_flat(x):
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def vb_terms_bpd(s: Schedule, x0, xt, t, eps, v):
    """Variational bound term per example (B,) in bits/dim for model outputs eps (mean) and v (variance), with
    ``clip_denoised=False`` as in training: KL for t > 0, decoder NLL for t == 0."""
    true_mean, true_logvar = q_posterior_mean_variance(s, x0, xt, t)
    pred_x0 = _gather(s.sqrt_recip_alphas_cumprod, t) * xt - _gather(s.sqrt_recipm1_alphas_cumprod, t) * eps
    model_mean, _ = q_posterior_mean_variance(s, pred_x0, xt, t)
    model_logvar = learned_range_log_variance(s, v, t)
    kl = _mean_flat(normal_kl(true_mean, true_logvar, model_mean, model_logvar)) / math.log(2.0)
    nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)) / math.log(2.0)
    return jnp.where(t == 0, nll, kl)


def hybrid_loss_terms(s: Schedule, model_out, x0, xt, t, noise, rescale_learned_sigmas: bool) -> dict:
    """Per-example (B,) terms {"mse", "vb", "loss"} from a learned-sigma network output (B,H,W,2C), NHWC."""
    eps, v = jnp.split(model_out, 2, axis=-1)
    vb = vb_terms_bpd(s, x0, xt, t, jax.lax.stop_gradient(eps), v)  # frozen_out: vb trains the variance only
    if rescale_learned_sigmas:
        vb = vb * (s.num_timesteps / 1000.0)
    mse = _mean_flat((noise - eps) ** 2)
    return {"mse": mse, "vb": vb, "loss": mse + vb}


def training_loss(net_fn: Callable, s: Schedule, x0, rng, *, rescale_timesteps: bool,
                  rescale_learned_sigmas: bool):
    """Mean loss over the batch and the batch means of its terms {"mse", "vb", "loss"}.

    ``net_fn(x_t, labels)`` -> (B,H,W,2C) (learned sigma: hybrid loss) or (B,H,W,C) (fixed variance: the loss is
    the eps MSE alone, vb = 0); x0 (B,H,W,C) in [-1, 1]; rng draws t (uniform) and the noise.
    """
    t_rng, n_rng = jax.random.split(rng)
    t = sample_timesteps(t_rng, x0.shape[0], s.num_timesteps)
    noise = jax.random.normal(n_rng, x0.shape, jnp.float32)
    xt = q_sample(s, x0, t, noise)
    out = net_fn(xt, timestep_labels(t, s.num_timesteps, rescale_timesteps)).astype(jnp.float32)
    if out.shape[-1] == 2 * x0.shape[-1]:
        terms = hybrid_loss_terms(s, out, x0, xt, t, noise, rescale_learned_sigmas)
    else:
        mse = _mean_flat((noise - out) ** 2)
        terms = {"mse": mse, "vb": jnp.zeros_like(mse), "loss": mse}
    terms = {k: jnp.mean(v) for k, v in terms.items()}
    return terms["loss"], terms
