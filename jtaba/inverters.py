"""Inversion methods beyond DDIM, as data for the one scan engine (``jtaba.engine.run_method``): each method is its
step rule (sampling and inversion as a pair), the state it carries and one coefficient table (``MethodTable``).

Levels (sampling order, k = 0 noisiest): sampling step k evaluates the network at the label of the DDIM sampling
step k (the model's own schedule: ADM spaced indices, diffusers timesteps) on a state at level ᾱ_k and moves it to
ᾱ_{k+1} (ᾱ_T = the clean end: 1, or diffusers' final alpha). Every inversion step k mirrors sampling step k (same
label, same two levels), so an exact method's inversion is the algebraic inverse of its own sampler. Arrays are
NHWC; x0 is never clipped (clipping is not invertible; the reference implementations run diffusers schedulers with
``clip_sample=False``), so on an ADM model these samplers skip ADM's clip and ε re-derivation (DDIM keeps both).
A diffusers model with ``schedule_dtype="float16"`` (upstream's half-precision scheduler) gets its coefficients and
step arithmetic in float16 and float32 outputs, as DDIM's ``jtaba.engine.ddim_step`` (``step_dtype``).

* ``edict`` (Wallace et al. 2023, salesforce/EDICT ``coupled_stablediffusion``): states (x, y); sampling step k
  updates one with ε of the other (the order alternating per step, upstream's ``leapfrog_steps``), then mixes
  x ← p·x + (1−p)·y, y ← p·y + (1−p)·x (p = ``mix``); inversion undoes the mixing and both updates in reverse.
  Two network calls per step.
* ``bdia`` (Zhang et al. 2024, guoqiang-zhang-x/BDIA ``BDIA_stablediffusion``) and ``belm`` (O-BELM, Wang et al.
  2024, zituitui/BELM ``samplers/BELM.py``): x_{k+1} = a_k·x_{k−1} + b_k·x_k + c_k·ε(x_k), one call per step; step 0
  is DDIM. The latent is the pair (x_0, x_1): sampling from it runs steps 1..T−1, inversion inverts each step for
  x_{k−1} after one DDIM inversion step from the image (ε at the image, the label of sampling step T−1).
* ``fixed-point``: each inversion step solves x = (x_{k+1} − B_k·ε(x))/A_k, the inverse of the DDIM sampling step,
  with ``iterations`` network calls: plain iteration, Anderson acceleration with window ``anderson`` (AIDI, Pan
  et al. 2023) or the mean ε of the last ``average`` iterations (ReNoise, garibida/ReNoise-Inversion
  ``inversion_step``); reconstruction is DDIM sampling on the same levels.
* ``ddpm`` (edit-friendly DDPM inversion, Huberman-Spiegelglas et al. 2024, inbarhub/DDPM_inversion
  ``inversion_forward_process``): η = 1; x_k = sqrt(ᾱ_k)·x0 + sqrt(1−ᾱ_k)·n_k drawn independently per step, and
  the noise map z_k = (x_{k+1} − μ_k(x_k))/σ_k of every step; the latent is x_0 with the T maps.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jtaba.diffusion import DiffusionConfig
from jtaba.schedules import adm_spaced, alphas_cumprod, diffusers_timesteps, step_tables

METHODS = ("ddim", "edict", "bdia", "belm", "fixed-point", "ddpm", "npi")
PAIRED = ("edict", "bdia", "belm")  # the latent comes with a second state (B, C, H, W)
NOISE_MAPS = ("ddpm",)  # the latent comes with T noise maps (T, B, C, H, W)
DDPM_STREAM = 17  # fold_in id of the ddpm inversion's noise stream
EXACT = ("edict", "bdia", "belm", "ddpm")  # sample -> invert -> sample returns the image to float precision
# Each method's options with their defaults (the fields of ``Method`` it reads).
OPTIONS = {"ddim": (), "npi": (), "edict": ("mix",), "bdia": ("gamma",), "belm": (),
           "fixed-point": ("iterations", "anderson", "average"), "ddpm": ("seed",)}


@dataclasses.dataclass(frozen=True)
class Method:
    """An inversion method and its options (hashable: part of the compiled loop's key). ``mix``: EDICT's p;
    ``gamma``: BDIA's γ; ``iterations``: network calls per fixed-point step; ``anderson``: Anderson window m (0 =
    plain iteration); ``average``: ReNoise's mean ε over the last ``average`` iterations (0 = off); ``seed``: the
    ddpm inversion's noise draws (per sample index and step)."""
    name: str = "ddim"
    mix: float = 0.93
    gamma: float = 1.0  # guoqiang-zhang-x/BDIA BDIA_stablediffusion's; γ < 1 amplifies inversion by 1/γ a step
    iterations: int = 5
    anderson: int = 0
    average: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.name not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.name!r}")
        if not 0.5 < self.mix <= 1.0:  # p <= 0.5 makes the mixing layer singular or sign-flipping
            raise ValueError(f"edict mix p must be in (0.5, 1], got {self.mix!r}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"bdia gamma must be in (0, 1], got {self.gamma!r}")
        for name, low in (("iterations", 1), ("anderson", 0), ("average", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ValueError(f"fixed-point {name} must be an int >= {low}, got {v!r}")
        if self.anderson and self.average:
            raise ValueError("fixed-point: choose Anderson acceleration (anderson) or ReNoise averaging (average)")
        if self.average > self.iterations:
            raise ValueError(f"fixed-point average={self.average} exceeds iterations={self.iterations}")

    @classmethod
    def of(cls, name: str, **options) -> "Method":
        """The method ``name`` with ``options`` (only its own: another method's option is refused)."""
        if name not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {name!r}")
        other = sorted(set(options) - set(OPTIONS[name]))
        if other:
            raise ValueError(f"method {name!r} takes no option {', '.join(other)} (its options: "
                             f"{', '.join(OPTIONS[name]) or 'none'})")
        return cls(name, **options)

    def options(self) -> dict:
        """This method's own options (what identifies it besides its name)."""
        return {k: getattr(self, k) for k in OPTIONS[self.name]}

    def network_calls(self, steps: int, invert: bool, paired: bool = False) -> int:
        """ε evaluations per image of one loop (a guided one counts once; ``paired``: sampling from a pair)."""
        if self.name == "edict":
            return 2 * steps
        if self.name in ("bdia", "belm"):
            return steps - 1 if (paired and not invert) else steps
        if self.name == "fixed-point" and invert:
            return self.iterations * steps
        return steps


DDIM = Method()


class MethodTable(NamedTuple):
    """Per-step coefficients (T,) float32 in sampling order (row k: level ᾱ_k -> ᾱ_{k+1}).
    ``label``: the network's label; ``ddim_x`` / ``ddim_eps``: the DDIM step x' = ddim_x·x + ddim_eps·ε;
    ``prev`` / ``cur`` / ``eps``: the two-state step x_{k+1} = prev·x_{k−1} + cur·x_k + eps·ε (bdia / belm; row 0 is
    DDIM, prev 0); ``ddpm_eps`` / ``ddpm_noise``: x' = ddim_x·x + ddpm_eps·ε + ddpm_noise·z (η = 1);
    ``x0_x`` / ``x0_eps``: x0 = x0_x·x − x0_eps·ε; ``sqrt_a`` / ``sqrt_1m_a``: sqrt ᾱ_k, sqrt(1−ᾱ_k)."""
    label: np.ndarray
    ddim_x: np.ndarray
    ddim_eps: np.ndarray
    prev: np.ndarray
    cur: np.ndarray
    eps: np.ndarray
    ddpm_eps: np.ndarray
    ddpm_noise: np.ndarray
    x0_x: np.ndarray
    x0_eps: np.ndarray
    sqrt_a: np.ndarray
    sqrt_1m_a: np.ndarray


def levels(cfg: DiffusionConfig, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels (T,) float32, ᾱ (T+1,) float64) in sampling order: the source level of every DDIM sampling step
    and the final level. diffusers: ᾱ_{k+1} is the next step's source level (with trailing spacing and T not
    dividing the training steps DDIM's own target is one timestep off it; these methods need one chain)."""
    tables = step_tables(cfg, steps)
    if cfg.kind == "adm":
        a = adm_spaced(cfg, steps)[1]
        return tables.sample.label, np.concatenate([a[::-1], [1.0]])
    ac = alphas_cumprod(cfg).astype(np.float64)
    ts = diffusers_timesteps(cfg, steps, inverse=False)
    last = ts[-1] - cfg.num_train_timesteps // steps
    final = ac[last] if last >= 0 else (1.0 if cfg.set_alpha_to_one else ac[0])
    return tables.sample.label, np.concatenate([ac[ts], [final]])


def step_dtype(cfg: DiffusionConfig):
    """The dtype of the step arithmetic: float16 on a diffusers model with ``schedule_dtype="float16"`` (upstream's
    half-precision scheduler, as ``jtaba.engine.ddim_step``), else float32."""
    return np.float16 if (cfg.kind == "diffusers" and cfg.schedule_dtype == "float16") else np.float32


def method_table(cfg: DiffusionConfig, steps: int, method: Method) -> MethodTable:
    """The coefficient table of ``method`` on this schedule (computed in float64, stored float32; the coefficients
    then rounded to ``step_dtype``, the labels kept float32)."""
    label, abar = levels(cfg, steps)
    sa, s1 = np.sqrt(abar), np.sqrt(1.0 - abar)
    k = np.arange(steps)
    ddim_x = sa[k + 1] / sa[k]
    ddim_eps = s1[k + 1] - s1[k] * ddim_x
    prev, cur, eps = np.zeros(steps), ddim_x.copy(), ddim_eps.copy()
    j = k[1:]  # two-state steps 1..T-1: p = level j-1, t = level j, s = level j+1
    if method.name == "bdia":  # x_{j+1} = γ·x_{j−1} + DDIM_{t→s}(x_j) − γ·DDIM_{t→p}(x_j), one ε
        back_x = sa[j - 1] / sa[j]
        back_eps = s1[j - 1] - s1[j] * back_x
        g = method.gamma
        prev[1:], cur[1:], eps[1:] = g, ddim_x[1:] - g * back_x, ddim_eps[1:] - g * back_eps
    elif method.name == "belm":  # O-BELM (zituitui/BELM samplers/BELM.py rev_forward)
        lam = s1 / sa  # σ/α at every level
        d1, d2, d3 = lam[j] - lam[j - 1], lam[j + 1] - lam[j], lam[j + 1] - lam[j - 1]
        eps[1:] = d2 * d3 * sa[j + 1] / d1
        prev[1:] = (d2 / d1) ** 2 * (sa[j + 1] / sa[j - 1])
        cur[1:] = (d1 - d2) * d3 / d1 ** 2 * (sa[j + 1] / sa[j])
    var = (1.0 - abar[k + 1]) / (1.0 - abar[k]) * (1.0 - abar[k] / abar[k + 1])  # DDPM posterior σ_k², η = 1
    ddpm_eps = np.sqrt(np.maximum(1.0 - abar[k + 1] - var, 0.0)) - sa[k + 1] * s1[k] / sa[k]
    ddpm_noise = np.where(var > 0, np.sqrt(np.maximum(var, 0.0)), 1.0)  # σ = 0 (to ᾱ = 1): the residual itself
    dtype = step_dtype(cfg)

    def low(v):  # float32 first, as ddim_step rounds its float32 table
        return np.asarray(v, np.float32).astype(dtype)

    return MethodTable(np.asarray(label, np.float32), low(ddim_x), low(ddim_eps), low(prev), low(cur), low(eps),
                       low(ddpm_eps), low(ddpm_noise), low(1.0 / sa[k]), low(s1[k] / sa[k]), low(sa[k]), low(s1[k]))


# ---- step rules ------------------------------------------------------------------------------------------------
# ``eps_fn(x, label)`` is the network ε (guided when the loop is); each rule returns (carry, (state, ε, x0)), the
# ddpm inversion (carry, (state, ε, x0, noise map)). Carries and outputs are float32; the arithmetic runs in the
# table's dtype (``step_dtype``: float16 for a float16 schedule, as ``jtaba.engine.ddim_step``), the network sees
# float32 states. Anderson's least squares and ReNoise's mean ε stay float32 (mixing weights, not step arithmetic).

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


def _low(row, *xs):
    """``xs`` in the step arithmetic's dtype."""
    return tuple(x.astype(row.ddim_x.dtype) for x in xs)


def _f32(*xs):
    return tuple(x.astype(jnp.float32) for x in xs)


def _eps(eps_fn: EpsFn, row, x):
    """ε at state x (the network on float32), in the step arithmetic's dtype."""
    return eps_fn(x.astype(jnp.float32), row.label).astype(row.ddim_x.dtype)


def _x0(row, x, e):
    x, e = _low(row, x, e)
    return (row.x0_x * x - row.x0_eps * e).astype(jnp.float32)


def edict_sample(eps_fn: EpsFn, mix: float, k, row, carry):
    """EDICT sampling step k: leapfrog order (x first on even k), then the mixing layer."""
    x, y = _low(row, *carry)
    even = k % 2 == 0
    u, v = jnp.where(even, x, y), jnp.where(even, y, x)
    u = row.ddim_x * u + row.ddim_eps * _eps(eps_fn, row, v)
    e = _eps(eps_fn, row, u)
    v = row.ddim_x * v + row.ddim_eps * e
    x, y = jnp.where(even, u, v), jnp.where(even, v, u)
    x = mix * x + (1 - mix) * y
    y = mix * y + (1 - mix) * x
    return _f32(x, y), (*_f32(x, e), _x0(row, u, e))


def edict_invert(eps_fn: EpsFn, mix: float, k, row, carry):
    """Inverse of ``edict_sample`` step k: undo the mixing (y first), then the second update, then the first."""
    x, y = _low(row, *carry)
    y = (y - (1 - mix) * x) / mix
    x = (x - (1 - mix) * y) / mix
    even = k % 2 == 0
    u, v = jnp.where(even, x, y), jnp.where(even, y, x)
    e = _eps(eps_fn, row, u)
    v = (v - row.ddim_eps * e) / row.ddim_x
    u = (u - row.ddim_eps * _eps(eps_fn, row, v)) / row.ddim_x
    x, y = jnp.where(even, u, v), jnp.where(even, v, u)
    return _f32(x, y), (*_f32(x, e), _x0(row, u, e))


def two_state_sample(eps_fn: EpsFn, k, row, carry):
    """bdia / belm sampling step k from (x_{k−1}, x_k) (row 0: DDIM, prev = 0)."""
    p, x = _low(row, *carry)
    e = _eps(eps_fn, row, x)
    new = row.prev * p + row.cur * x + row.eps * e
    return _f32(x, new), (*_f32(new, e), _x0(row, x, e))


def two_state_invert(eps_fn: EpsFn, k, row, carry, first):
    """Inverse of sampling step k from (x_{k+1}, x_k) -> (x_k, x_{k−1}); ``first`` (k = T−1, the carry is
    (image, image)): one DDIM inversion step instead, ε at the image (upstream's non-exact start)."""
    u, x = _low(row, *carry)
    e = _eps(eps_fn, row, x)
    multistep = (u - row.cur * x - row.eps * e) / jnp.where(first, 1.0, row.prev)
    ddim = (u - row.ddim_eps * e) / row.ddim_x
    new = jnp.where(first, ddim, multistep)
    return _f32(x, new), (*_f32(new, e), _x0(row, x, e))


def ddim_sample(eps_fn: EpsFn, k, row, x):
    """Unclipped DDIM sampling step on the method levels (fixed-point's reconstruction)."""
    (x,) = _low(row, x)
    e = _eps(eps_fn, row, x)
    new = row.ddim_x * x + row.ddim_eps * e
    return new.astype(jnp.float32), (*_f32(new, e), _x0(row, x, e))


def _anderson_mix(fs, gs, valid):
    """Anderson (type II) mixing: Σ α_i·g_i with α minimising |Σ α_i·f_i| subject to Σ α_i = 1, per sample.
    fs, gs (m, B, ...) residuals and images of the window, ``valid`` (m,) bool."""
    m, b = fs.shape[:2]
    f = fs.reshape(m, b, -1)
    gram = jnp.einsum("ibd,jbd->bij", f, f)
    both = valid[:, None] & valid[None, :]
    eye = jnp.eye(m, dtype=bool)
    scale = jnp.max(jnp.where(eye & both, gram, 0.0), axis=(1, 2), keepdims=True)
    gram = jnp.where(both, gram, 0.0) + jnp.where(eye & ~both, 1.0, 0.0) + 1e-6 * scale * eye
    a = jnp.linalg.solve(gram, jnp.broadcast_to(valid.astype(gram.dtype), (b, m))[..., None])[..., 0]
    alpha = a / jnp.sum(a, axis=1, keepdims=True)
    return jnp.einsum("bi,ib...->b...", alpha, gs)


def fixed_point_invert(eps_fn: EpsFn, method: Method, k, row, target):
    """Inversion step k: x with DDIM_k(x) = ``target`` by ``method.iterations`` evaluations of
    g(x) = (target − ddim_eps·ε(x))/ddim_x from x = target (the first one is diffusers' DDIM inversion step).
    ReNoise: the last ``average`` ε averaged, one more g without a call (upstream averages a chosen range of
    iterations; the last ones here). Anderson: window m over (x, g(x)) pairs."""
    (low_target,) = _low(row, target)

    def g(e):  # e float32
        (e,) = _low(row, e)
        return ((low_target - row.ddim_eps * e) / row.ddim_x).astype(jnp.float32)

    n, m = method.iterations, method.anderson

    def plain(i, state):
        x, _, mean = state
        e = eps_fn(x, row.label)
        w = jnp.clip(i - (n - method.average) + 1, 0, None).astype(e.dtype)  # 1, 2, .. over the last ones
        mean = jnp.where(w > 0, mean + (e - mean) / jnp.maximum(w, 1.0), mean)
        return g(e), e, mean

    if not m:
        zeros = jnp.zeros_like(target)
        x, e, mean = jax.lax.fori_loop(0, n, plain, (target, zeros, zeros))
        if method.average:
            x, e = g(mean), mean
        return x, (x, e, _x0(row, x, e))

    def accelerated(i, state):
        x, _, fs, gs = state
        e = eps_fn(x, row.label)
        gx = g(e)
        fs, gs = fs.at[i % m].set(gx - x), gs.at[i % m].set(gx)
        return _anderson_mix(fs, gs, jnp.arange(m) <= i), e, fs, gs

    buf = jnp.zeros((m,) + target.shape, target.dtype)
    x, e, _, _ = jax.lax.fori_loop(0, n, accelerated, (target, jnp.zeros_like(target), buf, buf))
    return x, (x, e, _x0(row, x, e))


def ddpm_sample(eps_fn: EpsFn, k, row, x, z):
    """DDPM sampling step (η = 1) with the given noise map z."""
    x, z = _low(row, x, z)
    e = _eps(eps_fn, row, x)
    new = row.ddim_x * x + row.ddpm_eps * e + row.ddpm_noise * z
    return new.astype(jnp.float32), (*_f32(new, e), _x0(row, x, e))


def ddpm_invert(eps_fn: EpsFn, k, row, x, target):
    """Edit-friendly inversion step k: the noise map that takes x (level k) to ``target`` (level k+1), and the state
    it reaches (upstream's "correction to avoid error accumulation"). Deviation: upstream zeroes the map of the last
    step (σ = 0 when the final ᾱ is 1), so its reconstruction ends on the x0 prediction; here a step with σ = 0
    keeps its residual as the map (``MethodTable.ddpm_noise`` = 1 there), so the round trip is exact."""
    x, target = _low(row, x, target)
    e = _eps(eps_fn, row, x)
    mean = row.ddim_x * x + row.ddpm_eps * e
    z = (target - mean) / row.ddpm_noise
    new = mean + row.ddpm_noise * z
    return new.astype(jnp.float32), (*_f32(new, e), _x0(row, x, e), z.astype(jnp.float32))


def ddpm_draws(seed: int, indices: jax.Array, shape: tuple, steps: int) -> jax.Array:
    """(T, B, *shape) standard normal n_k of the ddpm inversion, row b from (seed, indices[b], k) only (a stream of
    its own: ``jtaba.noise`` streams use ids 0-2)."""
    from jtaba.noise import normal_per_index

    key = jax.random.fold_in(jax.random.key(seed), DDPM_STREAM)
    return jax.vmap(lambda k: normal_per_index(jax.random.fold_in(key, k), indices, shape))(jnp.arange(steps))


def check_model(method: Method, conditional: bool) -> Optional[str]:
    """None, or the one-line reason this method cannot run on a model."""
    if method.name == "npi" and not conditional:
        return ("npi (negative-prompt inversion) needs a conditional model: the source condition becomes the null "
                "condition at reconstruction")
    return None
