"""The one DDIM engine: sampling, inversion, ground-truth swap and forward-diffusion replacement as a single
``jax.lax.scan`` over a ``StepTable`` (see ``jtaba.schedules``). Arrays here are NHWC; the public API converts.
The other inversion methods (``jtaba.inverters``: a step rule, its carried state and a coefficient table each) run
in ``run_method``, one scan over their table with the same network evaluation (``predict_eps``).

A step (loop index i, table row r):
    eps   = network(x, r.label)[..., :C]          (classifier-free guidance when enabled: ``guide``)
    eps   = swap_eps[i]            if i < K_swap   (kind "eps")
    x0    = r.c_x·x − r.c_eps·eps ; clip / threshold it as the model declares (a swapped eps bypasses the ADM clip)
    eps   = (r.c_x·x − x0)/r.c_eps                 (adm only: eps re-derived from the clipped x0)
    x     = r.sqrt_a_dst·x0 + r.sqrt_1m_a_dst·eps
    x     = swap_xt[i]             if i < K_swap   (kind "xt")
Forward replacement (inversion only): x ← fwd_sqrt_a[K]·x + fwd_sqrt_1m_a[K]·noise, then steps i < K are skipped.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jtaba import inverters
from jtaba.diffusion import DiffusionConfig
from jtaba.inverters import DDIM, Method
from jtaba.schedules import StepTable, step_tables


class Record(NamedTuple):
    """Per-step states (T, B, H, W, C): ``xs`` = state after each step, ``eps`` = the noise used, ``x0`` = the
    (clipped) clean prediction. Forward-replaced steps record the replacement state, its noise and the input."""
    xs: jax.Array
    eps: jax.Array
    x0: jax.Array


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """Everything static about one compiled loop (hashable: the jit cache key)."""
    network: nn.Module
    diffusion: DiffusionConfig
    steps: int
    invert: bool
    record: bool = False
    guided: bool = False  # classifier-free guidance (scale is traced)
    swap_kind: Optional[str] = None  # None | "eps" | "xt"
    swap_before: int = 0
    forward: bool = False
    forward_level: str = "exact"  # "exact" | "upstream"
    method: Method = DDIM  # ddim / npi: ``run_loop``; the others: ``run_method`` (``jtaba.inverters``)
    paired: bool = False  # sampling from a paired latent (edict's y, bdia / belm's x_1, ddpm's noise maps)

    def table(self) -> StepTable:
        tables = step_tables(self.diffusion, self.steps)
        if not self.invert:
            return tables.sample
        return tables.invert_upstream if self.forward_level == "upstream" else tables.invert


def dynamic_threshold(x0: jax.Array, ratio: float, max_value: float) -> jax.Array:
    """Imagen / diffusers dynamic thresholding: per sample s = quantile(|x0|, ratio) clamped to [1, max_value];
    x0 ← clip(x0, −s, s)/s (computed in float32)."""
    flat = jnp.abs(x0.reshape(x0.shape[0], -1)).astype(jnp.float32)
    s = jnp.clip(jnp.quantile(flat, ratio, axis=1), 1.0, max_value)
    s = s.reshape((-1,) + (1,) * (x0.ndim - 1))
    return (jnp.clip(x0, -s, s) / s).astype(x0.dtype)


def treat_x0(x0: jax.Array, mode: str, cfg: DiffusionConfig) -> jax.Array:
    if mode == "clip":
        return jnp.clip(x0, -cfg.clip_range, cfg.clip_range)
    if mode == "threshold":
        return dynamic_threshold(x0, cfg.threshold_ratio, cfg.threshold_max)
    return x0


def guide(out_c: jax.Array, out_u: jax.Array, guidance, channels: int | None = None) -> jax.Array:
    """Classifier-free guidance ε_u + s·(ε_c − ε_u) of conditional / unconditional ε (..., C). ``channels`` k
    (``DiffusionConfig.guidance_channels``): only the first k channels are guided and the rest are ε_c
    (facebookresearch/DiT ``forward_with_cfg`` guides 3 of 4); None = every channel (diffusers)."""
    guided = out_u + guidance * (out_c - out_u)
    if channels is None or channels >= out_c.shape[-1]:
        return guided
    return jnp.concatenate([guided[..., :channels], out_c[..., channels:]], axis=-1)


def predict_eps(spec: LoopSpec, params, x, label, cond, null_cond, guidance) -> jax.Array:
    """Network ε at one label for a batch x (B, H, W, C); learned-σ channels dropped; CFG on ε when guided, on the
    channels the model's ``guidance_channels`` names (``guide``)."""
    channels = x.shape[-1]
    t = jnp.full((x.shape[0],), label, jnp.float32)
    if spec.guided:
        both = jnp.concatenate([cond, null_cond], axis=0)
        out = spec.network.apply({"params": params}, jnp.concatenate([x, x]), jnp.concatenate([t, t]), both)
        out_c, out_u = jnp.split(out[..., :channels], 2, axis=0)
        return guide(out_c, out_u, guidance, spec.diffusion.guidance_channels).astype(jnp.float32)
    out = spec.network.apply({"params": params}, x, t, cond)
    return out[..., :channels].astype(jnp.float32)


def ddim_step(spec: LoopSpec, params, x, i, row: StepTable, cond, null_cond, guidance, gt=None):
    """One DDIM step (loop index i, table row ``row``) from state x (B, H, W, C). ``gt``: this step's ground truth
    when ``spec.swap_kind`` is set (used only while i < ``spec.swap_before``). Returns (x_next, eps, x0), float32."""
    cfg = spec.diffusion
    clip_mode = cfg.invert_clip if spec.invert else cfg.sample_clip
    low = jnp.float16 if (cfg.kind == "diffusers" and cfg.schedule_dtype == "float16") else jnp.float32
    eps = predict_eps(spec, params, x, row.label, cond, null_cond, guidance)
    swapped = (i < spec.swap_before) if spec.swap_kind is not None else jnp.bool_(False)
    if spec.swap_kind == "eps":
        eps = jnp.where(swapped, gt, eps)
    x, eps = x.astype(low), eps.astype(low)
    c = jax.tree.map(lambda v: v.astype(low), row)
    x0_raw = c.c_x * x - c.c_eps * eps
    x0 = treat_x0(x0_raw, clip_mode, cfg)
    if cfg.kind == "adm":  # ε re-derived from the clipped x0, except for a swapped ε, which also skips the clip
        rederived = (c.c_x * x - x0) / c.c_eps
        if spec.swap_kind == "eps":
            x0 = jnp.where(swapped, x0_raw, x0)
            rederived = jnp.where(swapped, eps, rederived)
        eps = rederived
    x_next = c.sqrt_a_dst * x0 + c.sqrt_1m_a_dst * eps
    x_next, eps, x0 = (v.astype(jnp.float32) for v in (x_next, eps, x0))
    if spec.swap_kind == "xt":
        x_next = jnp.where(swapped, gt, x_next)
    return x_next, eps, x0


def _loop(spec: LoopSpec, params, x, cond, null_cond, guidance, forward_before, forward_noise, swap_src):
    table = jax.tree.map(jnp.asarray, spec.table())
    x_clean = x
    if spec.forward:
        noised = table.fwd_sqrt_a[forward_before] * x + table.fwd_sqrt_1m_a[forward_before] * forward_noise
        x = jnp.where(forward_before > 0, noised, x)

    def step(x, inputs):
        i, row = inputs
        gt = None
        if spec.swap_kind is not None:
            gt = jax.lax.dynamic_index_in_dim(swap_src, jnp.minimum(i, spec.swap_before - 1), keepdims=False)
        out = ddim_step(spec, params, x, i, row, cond, null_cond, guidance, gt)
        return out[0], out

    def skip(x, inputs):  # a forward-replaced step: the state stays at the forward-diffused level
        return x, (x, forward_noise, x_clean)

    def body(x, inputs):
        if spec.forward:
            x, rec = jax.lax.cond(inputs[0] >= forward_before, step, skip, x, inputs)
        else:
            x, rec = step(x, inputs)
        return x, (rec if spec.record else None)

    rows = table._replace(fwd_sqrt_a=None, fwd_sqrt_1m_a=None)  # (T+1,) forward levels are not per-step
    x, rec = jax.lax.scan(body, x, (jnp.arange(spec.steps), rows))
    return x, (Record(*rec) if spec.record else None)


@functools.partial(jax.jit, static_argnums=0)
def run_loop(spec: LoopSpec, params, x, cond=None, null_cond=None, guidance=1.0, forward_before=0,
             forward_noise=None, swap_src=None):
    """Compiled DDIM loop. x (B, H, W, C) float32; cond / null_cond per the network (or None); ``guidance`` traced
    (only used when ``spec.guided``); ``forward_before`` traced int in [0, T]; ``forward_noise`` like x;
    ``swap_src`` (K, B, H, W, C) ground truth for the first K = ``spec.swap_before`` inversion steps.
    Returns (x_final, Record or None)."""
    guidance = jnp.asarray(guidance, jnp.float32)
    forward_before = jnp.asarray(forward_before, jnp.int32)
    return _loop(spec, params, x, cond, null_cond, guidance, forward_before, forward_noise, swap_src)


@functools.partial(jax.jit, static_argnums=0)
def run_step(spec: LoopSpec, params, x, index, cond=None, null_cond=None, guidance=1.0):
    """Only step ``index`` (traced) of the loop, from state x: teacher forcing and per-step approximation errors.
    Returns (x_next, eps, x0)."""
    row = jax.tree.map(lambda v: jnp.asarray(v)[index], spec.table()._replace(fwd_sqrt_a=None, fwd_sqrt_1m_a=None))
    return ddim_step(spec, params, x, index, row, cond, null_cond, jnp.asarray(guidance, jnp.float32))


def _method_loop(spec: LoopSpec, params, x, paired, cond, null_cond, guidance, draws):
    name, T = spec.method.name, spec.steps
    table = jax.tree.map(jnp.asarray, inverters.method_table(spec.diffusion, T, spec.method))

    def eps_fn(state, label):
        return predict_eps(spec, params, state, label, cond, null_cond, guidance)

    order = jnp.arange(T)
    if spec.invert and name != "ddpm":
        order = order[::-1]  # inversion step k mirrors sampling step k
    if name in ("bdia", "belm") and spec.invert:  # a DDIM step from the image, then steps T-1 .. 1 inverted
        order = jnp.concatenate([order[:1], order[:-1]])
    if name in ("bdia", "belm") and spec.paired and not spec.invert:
        order = order[1:]  # the pair (x_0, x_1) replaces the DDIM step 0
    carry, extra = x, None  # extra: a per-step scan input besides k
    if name == "edict":
        carry = (x, paired if spec.paired and not spec.invert else x)
        rule = functools.partial(inverters.edict_invert if spec.invert else inverters.edict_sample, eps_fn,
                                 spec.method.mix)
    elif name in ("bdia", "belm") and spec.invert:
        carry, extra = (x, x), jnp.arange(T) == 0
        rule = functools.partial(inverters.two_state_invert, eps_fn)
    elif name in ("bdia", "belm"):
        carry = (x, paired) if spec.paired else (x, x)
        rule = functools.partial(inverters.two_state_sample, eps_fn)
    elif name == "fixed-point":
        rule = functools.partial(inverters.fixed_point_invert if spec.invert else inverters.ddim_sample, eps_fn,
                                 *((spec.method,) if spec.invert else ()))
    elif spec.invert:  # ddpm: x_k = sqrt(ᾱ_k)·x0 + sqrt(1−ᾱ_k)·n_k, the image itself at the clean end
        level = lambda v: v.reshape((T,) + (1,) * x.ndim)  # noqa: E731
        noisy = level(table.sqrt_a) * x + level(table.sqrt_1m_a) * draws
        carry, extra = noisy[0], jnp.concatenate([noisy[1:], x[None]])
        rule = functools.partial(inverters.ddpm_invert, eps_fn)
    else:
        carry, extra = x, paired
        rule = functools.partial(inverters.ddpm_sample, eps_fn)
    keep_maps = name == "ddpm" and spec.invert

    def body(c, inputs):
        k, more = inputs
        row = jax.tree.map(lambda v: v[k], table)
        c, rec = rule(k, row, c) if extra is None else rule(k, row, c, more)
        return c, (rec[:3] if spec.record else None, rec[3] if keep_maps else None)

    start = carry
    carry, (rec, maps) = jax.lax.scan(body, carry, (order, order if extra is None else extra))
    if name == "edict":
        out, pair = carry
    elif name in ("bdia", "belm"):  # inverted: (x_1, x_0), the latent x_0; sampled: (x_{T-1}, x_T)
        out, pair = carry[1], (carry[0] if spec.invert else None)
    elif name == "ddpm" and spec.invert:
        out, pair = start, maps  # the latent x_0 and the noise map of every step (sampling order)
    else:
        out, pair = carry, None
    return out, pair, (Record(*rec) if spec.record else None)


@functools.partial(jax.jit, static_argnums=0)
def run_method(spec: LoopSpec, params, x, paired=None, cond=None, null_cond=None, guidance=1.0, draws=None):
    """Compiled loop of ``spec.method`` (not ddim / npi: ``run_loop``), the same scan over its coefficient table
    (``jtaba.inverters``). x (B, H, W, C); ``paired``: the second state (B, H, W, C) of edict / bdia / belm or the
    ddpm noise maps (T, B, H, W, C) when sampling from an inversion (``spec.paired``); ``draws`` (T, B, H, W, C)
    the ddpm inversion's noise. Returns (x_final, paired_out or None, Record or None); inverting, paired_out is what
    sampling takes back (edict: y; bdia / belm: x_1 beside the latent x_0; ddpm: the maps)."""
    guidance = jnp.asarray(guidance, jnp.float32)
    return _method_loop(spec, params, x, paired, cond, null_cond, guidance, draws)


def mirror_indices(diffusion: DiffusionConfig, steps: int, kind: str, before: int) -> np.ndarray:
    """Sampling-record index j (into all_t_* of a recorded sampling run, j = 0 noisiest) that gives the ground
    truth for inversion step i = 0..before-1 (the golden guided_diffusion and taba pipeline runs; upstream
    ``taba/models/adm/ddim.py`` and the ``invert_swap`` scripts):
    adm: eps ← j = T−2−i, xt ← j = T−3−i; diffusers: eps ← j = T−1−i, xt ← j = T−2−i.
    j = −1 stands for the sampling run's input noise (the state after the last mirrored inversion step)."""
    T = steps
    shift = 1 if diffusion.kind == "adm" else 0
    i = np.arange(before)
    j = (T - 1 - shift - i) if kind == "eps" else (T - 2 - shift - i)
    lowest = 0 if kind == "eps" else -1
    if before < 0 or before > T or (before and j[-1] < lowest):
        limit = T - shift - (1 if kind == "eps" else 0)
        raise ValueError(f"swap_before={before} out of range for a {kind} swap with T={T} steps on a "
                         f"{diffusion.kind} model: the mirror of inversion step i exists for i < {limit}")
    return j


def gather_swap_source(diffusion: DiffusionConfig, steps: int, kind: str, before: int,
                       all_t_samples: Any, all_t_eps_samples: Any, noise: Any) -> np.ndarray:
    """Stack the ground truth (K, ...) for the first ``before`` inversion steps from a recorded sampling run
    (arrays in the run's layout, (T, N, ...) trajectories)."""
    if kind not in ("eps", "xt"):
        raise ValueError(f"swap kind must be 'eps' or 'xt', got {kind!r}")
    src = all_t_eps_samples if kind == "eps" else all_t_samples
    if src is None:
        raise ValueError(f"a {kind} swap needs the recorded sampling run's "
                         f"{'all_t_eps_samples' if kind == 'eps' else 'all_t_samples'}")
    if src.shape[0] != steps:
        raise ValueError(f"swap source has {src.shape[0]} recorded steps but the inversion uses steps={steps}")
    idx = mirror_indices(diffusion, steps, kind, before)
    parts = [noise if j < 0 else src[j] for j in idx]
    if any(p is None for p in parts):
        raise ValueError("this xt swap reaches the sampling run's input noise: pass the run's noise too")
    xp = jnp if isinstance(src, jax.Array) else np
    return xp.stack([xp.asarray(p) for p in parts])
