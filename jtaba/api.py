"""The notebook API. Arrays are **NCHW float32** (as upstream files and PyTorch); pixel models work in [-1, 1].
Inputs may be jax arrays sharded over the batch axis; outputs keep the sharding."""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from jtaba import checks, engine, inverters
from jtaba import precision as precision_lib
from jtaba.inverters import Method
from jtaba.model import Model
from jtaba.noise import normal_per_index


class Trajectory(NamedTuple):
    """``x`` (B, C, H, W) final state; when recorded, ``xs`` / ``eps`` / ``x0`` are (T, B, C, H, W): the state after
    each step, the ε used and the (clipped) x0 prediction; index 0 = first step of the loop (noisiest for sampling,
    cleanest for inversion).

    An inversion also says how to sample it back (``sample(model, inverted, steps=T)`` takes it as-is): ``method``
    (``jtaba.inverters.Method``), ``paired`` (edict's second state y or bdia / belm's x_1, (B, C, H, W); ddpm's noise
    maps, (T, B, C, H, W) in sampling order; else None), ``null_cond`` (npi: the source condition, the null
    condition of the reconstruction), ``steps``. ``nfe``: network evaluations per image of this call (a guided
    evaluation counts twice)."""
    x: jax.Array
    xs: Optional[jax.Array] = None
    eps: Optional[jax.Array] = None
    x0: Optional[jax.Array] = None
    method: Method = inverters.DDIM
    paired: Optional[jax.Array] = None
    null_cond: Optional[jax.Array] = None
    steps: Optional[int] = None
    nfe: int = 0


class Swap(NamedTuple):
    """Replace the first ``before`` inversion steps with ground truth from a recorded sampling run ``source``
    (a ``Trajectory`` from ``sample(..., record=True)`` or a dict with ``all_t_samples`` / ``all_t_eps_samples``
    (T, N, C, H, W)). ``kind`` "eps" swaps the noise prediction, "xt" the state. ``noise`` = that run's input noise,
    needed only when an xt swap reaches it."""
    kind: str
    before: int
    source: Any
    noise: Any = None


def _nhwc(x):
    return jnp.moveaxis(x, -3, -1)


def _nchw(x):
    return None if x is None else jnp.moveaxis(x, -1, -3)


def _check(model: Model, name: str, x, batch: Optional[int] = None):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if x.dtype != jnp.float32:
        raise TypeError(f"{name} must be float32, got {x.dtype} (cast with .astype(np.float32))")
    want = tuple(model.sample_shape)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
        raise ValueError(f"{name} must be (B, {', '.join(map(str, want))}) NCHW for this {model.family} model, "
                         f"got {tuple(x.shape)}")
    if batch is not None and x.shape[0] != batch:
        raise ValueError(f"{name} has batch {x.shape[0]}, expected {batch}")


def _cond(model: Model, cond, batch: int, guidance):
    guided = not (isinstance(guidance, (int, float)) and float(guidance) == 1.0)
    if cond is not None:
        cond = jnp.asarray(cond)
        if cond.shape[0] != batch:
            raise ValueError(f"cond has batch {cond.shape[0]}, expected {batch}")
        if jnp.issubdtype(cond.dtype, jnp.integer):
            cond = cond.astype(jnp.int32)
    labels = cond is not None and cond.ndim == 1  # class labels (B,); prompt embeddings are (B, L, D)
    checks.check_conditioning(model, labels, cond is not None and not labels, guided)
    null = model.null_cond(batch) if guided else None
    return cond, null, guided


def _spec(model: Model, steps: int, invert: bool, **kw) -> engine.LoopSpec:
    if model.diffusion is None:
        raise ValueError(f"{model.family} checkpoint has no diffusion config (is it a decoder?)")
    checks.check_positive_int("steps", steps)
    return engine.LoopSpec(network=model.network, diffusion=model.diffusion, steps=steps, invert=invert, **kw)


def _precise(model: Model, precision: Optional[str]) -> tuple[Model, str]:
    """The model computing at ``precision`` (default: "bfloat16" for a bfloat16 network, else "float32")."""
    p = precision or ("bfloat16" if model.network.dtype == jnp.bfloat16 else "float32")
    return precision_lib.with_precision(model, p), p


def _trajectory(x, rec, **kw) -> Trajectory:
    if rec is None:
        return Trajectory(_nchw(x), **kw)
    return Trajectory(_nchw(x), _nchw(rec.xs), _nchw(rec.eps), _nchw(rec.x0), **kw)


def _method(name, options: dict) -> Method:
    if isinstance(name, Method):
        if options:
            raise ValueError("pass method options either in the Method or as keywords, not both")
        return name
    return Method.of(name, **options)


def _sample_method(model: Model, noise, steps: int, cond, guidance, record: bool, precision: str,
                   method: Method) -> Trajectory:
    """Sampling with a method other than ddim from an array or an inversion (``Trajectory``)."""
    inverted = noise if isinstance(noise, Trajectory) else None
    x = noise.x if inverted is not None else noise
    _check(model, "noise", x)
    paired = inverted.paired if inverted is not None else None
    if method.name == "ddpm" and paired is None:
        raise ValueError("ddpm sampling needs the noise maps of a ddpm inversion: pass what invert(...) returned")
    if paired is not None and method.name == "ddpm" and paired.shape[0] != steps:
        raise ValueError(f"the ddpm inversion holds {paired.shape[0]} noise maps, sampling asked for steps={steps}")
    cond, null, guided = _cond(model, cond, x.shape[0], guidance)
    spec = _spec(model, steps, False, record=record, guided=guided, method=method, paired=paired is not None)
    with precision_lib.scope(precision):
        out, _, rec = engine.run_method(spec, model.params, _nhwc(x), None if paired is None else _nhwc(paired),
                                        cond, null, guidance)
    nfe = method.network_calls(steps, False, paired is not None) * (2 if guided else 1)
    return _trajectory(out, rec, method=method, steps=steps, nfe=nfe)


def sample(model: Model, noise, *, steps: int, cond=None, guidance=1.0, record: bool = False,
           precision: Optional[str] = None, method=None, **method_options) -> Trajectory:
    """DDIM sampling (η = 0) from ``noise`` (B, C, H, W) with ``steps`` steps. ``cond``: class labels (B,) int or
    prompt embeddings (B, L, D); ``guidance`` ≠ 1 enables classifier-free guidance (traced: no recompile per value).
    ``precision``: "float32" (matmuls / convolutions at precision highest: a GPU gives a CPU's numbers), "tf32" or
    "bfloat16" (``jtaba.precision``); default: the model's compute dtype ("bfloat16" or "float32").

    ``noise`` may be what ``invert`` returned (a ``Trajectory``): its method, paired state or noise maps and (npi)
    null condition are used, so ``sample(model, invert(model, x, steps=T, method=M), steps=T)`` reconstructs x.
    ``method`` (a name of ``jtaba.inverters.METHODS`` or a ``Method``) with its ``method_options`` samples with that
    method's sampler (edict from (z, z), bdia / belm from z with a first DDIM step; ddpm needs noise maps)."""
    inverted = noise if isinstance(noise, Trajectory) else None
    if method is None:
        method = inverted.method if inverted is not None else inverters.DDIM
    method = _method(method, method_options)
    if inverted is not None:
        if inverted.method != method:
            raise ValueError(f"this latent was inverted with {inverted.method.name} {inverted.method.options()}, "
                             f"sampling asked for {method.name} {method.options()}")
        if inverted.steps is not None and inverted.steps != steps and method.name != "ddim":
            raise ValueError(f"this latent was inverted with steps={inverted.steps}, sampling asked for {steps}")
    model, precision = _precise(model, precision)
    if method.name not in ("ddim", "npi"):
        return _sample_method(model, noise, steps, cond, guidance, record, precision, method)
    x = inverted.x if inverted is not None else noise
    _check(model, "noise", x)
    checks.check_method(method, model)
    cond, null, guided = _cond(model, cond, x.shape[0], guidance)
    if method.name == "npi" and guided:
        if inverted is None or inverted.null_cond is None:
            raise ValueError("npi sampling takes what invert(..., method='npi') returned (its source condition "
                             "is the null condition)")
        null = inverted.null_cond
    spec = _spec(model, steps, False, record=record, guided=guided)
    with precision_lib.scope(precision):
        out, rec = engine.run_loop(spec, model.params, _nhwc(x), cond, null, guidance)
    return _trajectory(out, rec, method=method, steps=steps, nfe=steps * (2 if guided else 1))


def _invert_method(model: Model, x, steps: int, cond, guidance, record: bool, precision: str, method: Method,
                   indices) -> Trajectory:
    """Inversion with a method other than ddim / npi (``jtaba.inverters``)."""
    B = x.shape[0]
    cond, null, guided = _cond(model, cond, B, guidance)
    draws = None
    if method.name == "ddpm":
        idx = jnp.arange(B, dtype=jnp.int32) if indices is None else jnp.asarray(indices, jnp.int32)
        draws = _nhwc(inverters.ddpm_draws(method.seed, idx, tuple(x.shape[1:]), steps))
    spec = _spec(model, steps, True, record=record, guided=guided, method=method)
    with precision_lib.scope(precision):
        out, paired, rec = engine.run_method(spec, model.params, _nhwc(x), None, cond, null, guidance, draws)
    nfe = method.network_calls(steps, True) * (2 if guided else 1)
    return _trajectory(out, rec, method=method, paired=_nchw(paired), steps=steps, nfe=nfe)


def invert(model: Model, x, *, steps: int, cond=None, guidance=1.0, record: bool = False, forward_before: int = 0,
           forward_noise=None, forward_key=None, forward_level: str = "exact",
           swap: Optional[Swap] = None, precision: Optional[str] = None, method="ddim", indices=None,
           **method_options) -> Trajectory:
    """DDIM inversion of clean samples ``x`` (B, C, H, W) to latents, in the model's convention (ADM: network at
    the source index, last step to ᾱ = 0; diffusers: network at the target label).

    ``method`` (``jtaba.inverters.METHODS``, or a ``Method``) with its ``method_options`` (edict: mix; bdia: gamma;
    fixed-point: iterations, anderson, average; ddpm: seed) inverts with that method; the result is what
    ``sample(model, result, steps=T)`` takes back. npi inverts with the condition alone (w = 1, whatever
    ``guidance``) and keeps it as the reconstruction's null condition (conditional models only). ``indices`` (B,)
    int: the sample positions of the rows (ddpm draws its per-step noise from (seed, index, step); default 0..B−1).
    Forward replacement and swaps are DDIM's (and npi's) only.

    ``forward_before=K`` replaces the first K steps with closed-form forward diffusion q(x_t | x_0) using
    ``forward_noise`` (like x) or noise drawn from ``forward_key`` per sample position (``jtaba.noise``, so a row's
    noise does not depend on the batch); ``forward_level`` "exact"
    (the level K inversion steps reach) or "upstream" (taba's diffusers-path level, one step further; same as exact
    for ADM). ``swap`` replaces the first K steps' ε or x_t with ground truth (see ``Swap``). ``precision`` as in
    ``sample``."""
    _check(model, "x", x)
    method = _method(method, method_options)
    model, precision = _precise(model, precision)
    checks.check_method(method, model)
    checks.check_forward(forward_before, steps, forward_level)
    swap_before = int(swap.before) if swap is not None and swap.before > 0 else 0
    checks.check_replacements(method.name, forward_before, swap_before)
    if method.name not in checks.REPLACEABLE_METHODS:
        return _invert_method(model, x, steps, cond, guidance, record, precision, method, indices)
    if method.name == "npi":
        guidance = 1.0
    B, T = x.shape[0], steps
    forward = forward_before > 0
    if forward:
        if (forward_noise is None) == (forward_key is None):
            raise ValueError("forward_before > 0 needs exactly one of forward_noise or forward_key")
        if forward_noise is None:
            forward_noise = normal_per_index(forward_key, jnp.arange(B), tuple(x.shape[1:]))
        _check(model, "forward_noise", forward_noise, B)
        forward_noise = _nhwc(forward_noise)
    cond, null, guided = _cond(model, cond, B, guidance)
    swap_src, swap_kind = None, (swap.kind if swap_before else None)
    if swap_before:
        src = swap.source
        if isinstance(src, Trajectory):
            xs, eps = src.xs, src.eps
        else:
            xs, eps = src.get("all_t_samples"), src.get("all_t_eps_samples")
        swap_src = engine.gather_swap_source(model.diffusion, T, swap_kind, swap_before, xs, eps, swap.noise)
        if tuple(swap_src.shape[1:]) != tuple(x.shape):
            raise ValueError(f"swap source steps are {tuple(swap_src.shape[1:])}, x is {tuple(x.shape)}")
        swap_src = _nhwc(jnp.asarray(swap_src, jnp.float32))
    spec = _spec(model, steps, True, record=record, guided=guided, swap_kind=swap_kind, swap_before=swap_before,
                 forward=forward, forward_level=forward_level)
    with precision_lib.scope(precision):
        out, rec = engine.run_loop(spec, model.params, _nhwc(x), cond, null, guidance, forward_before,
                                   forward_noise, swap_src)
    return _trajectory(out, rec, method=method, null_cond=cond if method.name == "npi" else None, steps=T,
                       nfe=(T - forward_before) * (2 if guided else 1))


def decode(model: Model, z, precision: Optional[str] = None) -> jax.Array:
    """Decode diffusion-space latents (B, C, h, w) of a latent model to images (B, 3, H, W) (not clamped):
    ``decoder.decode(z · (1/scaling_factor))`` (VQ models re-quantize; scaling 1). ``precision`` as in ``sample``."""
    if model.decoder is None:
        if model.extras.get("latent") or model.family == "dit":
            raise ValueError(f"this {model.family} model works on latents but its checkpoint stores no decoder (no "
                             f"decoder/ folder: it was converted without a VAE). Sampling and inversion work; to "
                             f"decode, convert it again with a VAE (convert/dit.py --vae ...), or decode the "
                             f"latents with that VAE yourself")
        raise ValueError(f"this {model.family} model works in pixel space: there is nothing to decode")
    model, precision = _precise(model, precision)
    dec = model.decoder
    scale = float(getattr(dec.config, "scaling_factor", 1.0))
    with precision_lib.scope(precision):
        images = _decode_fn(dec.network)(dec.params, _nhwc(z) * (1.0 / scale))
    return _nchw(images)


_DECODERS: dict = {}


def _decode_fn(network):
    if network not in _DECODERS:
        _DECODERS[network] = jax.jit(lambda p, z: network.apply({"params": p}, z, method="decode"))
    return _DECODERS[network]
