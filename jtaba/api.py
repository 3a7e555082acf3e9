"""The notebook API. Arrays are **NCHW float32** (as upstream files and PyTorch); pixel models work in [-1, 1].
Inputs may be jax arrays sharded over the batch axis; outputs keep the sharding."""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jtaba import engine
from jtaba import precision as precision_lib
from jtaba.noise import normal_per_index
from jtaba.model import Model


class Trajectory(NamedTuple):
    """``x`` (B, C, H, W) final state; when recorded, ``xs`` / ``eps`` / ``x0`` are (T, B, C, H, W): the state after
    each step, the ε used and the (clipped) x0 prediction; index 0 = first step of the loop (noisiest for sampling,
    cleanest for inversion)."""
    x: jax.Array
    xs: Optional[jax.Array] = None
    eps: Optional[jax.Array] = None
    x0: Optional[jax.Array] = None


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
    elif model.conditional:
        raise ValueError(f"this {model.family} model is conditional: pass cond (class labels or prompt embeddings)")
    null = model.null_cond(batch) if guided else None
    if guided and cond is None:
        raise ValueError("guidance != 1 needs a conditioning input cond")
    return cond, null, guided


def _spec(model: Model, steps: int, invert: bool, **kw) -> engine.LoopSpec:
    if model.diffusion is None:
        raise ValueError(f"{model.family} checkpoint has no diffusion config (is it a decoder?)")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    return engine.LoopSpec(network=model.network, diffusion=model.diffusion, steps=steps, invert=invert, **kw)


def _precise(model: Model, precision: Optional[str]) -> tuple[Model, str]:
    """The model computing at ``precision`` (default: "bfloat16" for a bfloat16 network, else "float32")."""
    p = precision or ("bfloat16" if model.network.dtype == jnp.bfloat16 else "float32")
    return precision_lib.with_precision(model, p), p


def _trajectory(x, rec) -> Trajectory:
    if rec is None:
        return Trajectory(_nchw(x))
    return Trajectory(_nchw(x), _nchw(rec.xs), _nchw(rec.eps), _nchw(rec.x0))


def sample(model: Model, noise, *, steps: int, cond=None, guidance=1.0, record: bool = False,
           precision: Optional[str] = None) -> Trajectory:
    """DDIM sampling (η = 0) from ``noise`` (B, C, H, W) with ``steps`` steps. ``cond``: class labels (B,) int or
    prompt embeddings (B, L, D); ``guidance`` ≠ 1 enables classifier-free guidance (traced: no recompile per value).
    ``precision``: "float32" (matmuls / convolutions at precision highest: a GPU gives a CPU's numbers), "tf32" or
    "bfloat16" (``jtaba.precision``); default: the model's compute dtype ("bfloat16" or "float32")."""
    _check(model, "noise", noise)
    model, precision = _precise(model, precision)
    cond, null, guided = _cond(model, cond, noise.shape[0], guidance)
    spec = _spec(model, steps, False, record=record, guided=guided)
    with precision_lib.scope(precision):
        x, rec = engine.run_loop(spec, model.params, _nhwc(noise), cond, null, guidance)
    return _trajectory(x, rec)


def invert(model: Model, x, *, steps: int, cond=None, guidance=1.0, record: bool = False, forward_before: int = 0,
           forward_noise=None, forward_key=None, forward_level: str = "exact",
           swap: Optional[Swap] = None, precision: Optional[str] = None) -> Trajectory:
    """DDIM inversion of clean samples ``x`` (B, C, H, W) to latents, in the model's convention (ADM: network at
    the source index, last step to ᾱ = 0; diffusers: network at the target label).

    ``forward_before=K`` replaces the first K steps with closed-form forward diffusion q(x_t | x_0) using
    ``forward_noise`` (like x) or noise drawn from ``forward_key`` per sample position (``jtaba.noise``, so a row's
    noise does not depend on the batch); ``forward_level`` "exact"
    (the level K inversion steps reach) or "upstream" (taba's diffusers-path level, one step further; same as exact
    for ADM). ``swap`` replaces the first K steps' ε or x_t with ground truth (see ``Swap``). ``precision`` as in
    ``sample``."""
    _check(model, "x", x)
    model, precision = _precise(model, precision)
    B, T = x.shape[0], steps
    if not isinstance(forward_before, (int, np.integer)) or not 0 <= forward_before <= T:
        raise ValueError(f"forward_before must be an int in [0, steps={T}], got {forward_before!r}")
    if forward_level not in ("exact", "upstream"):
        raise ValueError(f"forward_level must be 'exact' or 'upstream', got {forward_level!r}")
    forward = forward_before > 0
    if forward:
        if (forward_noise is None) == (forward_key is None):
            raise ValueError("forward_before > 0 needs exactly one of forward_noise or forward_key")
        if forward_noise is None:
            forward_noise = normal_per_index(forward_key, jnp.arange(B), tuple(x.shape[1:]))
        _check(model, "forward_noise", forward_noise, B)
        forward_noise = _nhwc(forward_noise)
    cond, null, guided = _cond(model, cond, B, guidance)
    swap_src, swap_kind, swap_before = None, None, 0
    if swap is not None and swap.before > 0:
        if forward:
            raise ValueError("swap and forward_before cannot be combined")
        swap_kind, swap_before = swap.kind, int(swap.before)
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
    return _trajectory(out, rec)


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
