"""Beta schedules, both respacings, and the per-step coefficient tables the DDIM engine scans over.

Two families (``DiffusionConfig.kind``), as upstream ``guided_diffusion/respace.py`` and
``taba/ddim/schedulers.py``:

* ``adm`` (guided_diffusion): betas in float64 numpy; ``ddimN`` respacing picks the smallest stride giving exactly N
  timesteps; spaced alphas are rebuilt through betas in float64; coefficients are gathered in float64 and cast to
  float32 at use. Sampling step j evaluates spaced index k = T-1-j and moves a[k] -> a_prev[k]; inversion step i
  evaluates the *source* index i and moves a[i] -> a_next[i] (a_next[T-1] = 0).
* ``diffusers`` (DDIMScheduler / DDIMInverseScheduler): betas and alphas_cumprod in float32; ``leading`` /
  ``trailing`` / ``linspace`` spacing with ``steps_offset``; ``set_alpha_to_one`` sets the final (sampling) and
  initial (inversion) alpha. Inversion step i is labelled with its *target* timestep t_i and starts from level
  t_i - Δ.

Every DDIM step, whatever the family, is: eps = net(x, label); x0 = c_x·x − c_eps·eps; x0 = clip(x0);
[adm: eps = (c_x·x − x0)/c_eps]; x' = sqrt_a_dst·x0 + sqrt_1m_a_dst·eps. ``StepTable`` holds those per-step numbers.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from jtaba.diffusion import DiffusionConfig

# ---- beta schedules ------------------------------------------------------------------------------------------


def _cosine_alpha_bar(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def betas_for_alpha_bar(num_steps: int, alpha_bar=_cosine_alpha_bar, max_beta: float = 0.999) -> np.ndarray:
    """beta_i = min(1 - ᾱ((i+1)/n) / ᾱ(i/n), max_beta), float64 (guided_diffusion and diffusers share it)."""
    return np.array([min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
                     for i in range(num_steps)], dtype=np.float64)


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=float32)`` on CPU, bit for bit: a float32 step, a symmetric
    two-sided fill evaluated in double, rounded to float32."""
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float64(np.float32((end32 - start32) / np.float32(steps - 1)))
    idx = np.arange(steps)
    lo = np.float64(start32) + step * idx
    hi = np.float64(end32) - step * (steps - idx - 1)
    return np.where(idx < steps // 2, lo, hi).astype(np.float32)


def adm_betas(schedule: str, num_steps: int) -> np.ndarray:
    """guided_diffusion ``get_named_beta_schedule`` (float64)."""
    if schedule == "linear":
        scale = 1000 / num_steps
        return np.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=np.float64)
    if schedule == "cosine":
        return betas_for_alpha_bar(num_steps)
    raise ValueError(f"unknown guided-diffusion noise_schedule {schedule!r} (linear | cosine)")


def diffusers_betas(cfg: DiffusionConfig) -> np.ndarray:
    """diffusers DDIMScheduler betas (float32)."""
    n = cfg.num_train_timesteps
    if cfg.beta_schedule == "linear":
        return _torch_linspace_f32(cfg.beta_start, cfg.beta_end, n)
    if cfg.beta_schedule == "scaled_linear":
        return _torch_linspace_f32(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, n) ** 2
    if cfg.beta_schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(n).astype(np.float32)
    raise ValueError(f"unknown diffusers beta_schedule {cfg.beta_schedule!r}")


def alphas_cumprod(cfg: DiffusionConfig) -> np.ndarray:
    """Training-time ᾱ: float64 for adm; float32 for diffusers (torch's float32 cumprod accumulates in double)."""
    if cfg.kind == "adm":
        return np.cumprod(1.0 - adm_betas(cfg.beta_schedule, cfg.num_train_timesteps))
    alphas = np.float32(1.0) - diffusers_betas(cfg)
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


# ---- respacing ---------------------------------------------------------------------------------------------


def space_timesteps(num_timesteps: int, section_counts) -> list[int]:
    """guided_diffusion ``space_timesteps``: ``"ddimN"`` (smallest stride giving exactly N steps) or section counts
    (``"10,15,20"`` or a list) spread evenly over equal sections. Returns the sorted kept training timesteps."""
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        desired = int(section_counts[len("ddim"):])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == desired:
                return list(range(0, num_timesteps, stride))
        raise ValueError(f"cannot create exactly {desired} steps with an integer stride over {num_timesteps}")
    if isinstance(section_counts, str):
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, out = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide section of {size} steps into {count}")
        frac = 1 if count <= 1 else (size - 1) / (count - 1)
        cur, taken = 0.0, []
        for _ in range(count):
            taken.append(start + round(cur))
            cur += frac
        out += taken
        start += size
    return sorted(set(out))


def adm_spaced(cfg: DiffusionConfig, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(timestep_map (T,) int64, spaced ᾱ (T,) float64) exactly as ``SpacedDiffusion`` rebuilds them."""
    base = alphas_cumprod(cfg)
    use = set(space_timesteps(cfg.num_train_timesteps, f"ddim{steps}"))
    last, betas, tmap = 1.0, [], []
    for i, ac in enumerate(base):
        if i in use:
            betas.append(1 - ac / last)
            last = ac
            tmap.append(i)
    return np.array(tmap, dtype=np.int64), np.cumprod(1.0 - np.array(betas, dtype=np.float64))


def adm_labels(cfg: DiffusionConfig, timestep_map: np.ndarray) -> np.ndarray:
    """Value the network receives for each spaced index (float32; ×1000/num_train when ``rescale_timesteps``)."""
    t = timestep_map.astype(np.float32)
    if cfg.rescale_timesteps:
        t = t * np.float32(1000.0 / cfg.num_train_timesteps)
    return t


def diffusers_timesteps(cfg: DiffusionConfig, steps: int, inverse: bool) -> np.ndarray:
    """``set_timesteps`` of DDIMScheduler (descending) or DDIMInverseScheduler (ascending)."""
    n = cfg.num_train_timesteps
    if steps > n:
        raise ValueError(f"steps={steps} exceeds num_train_timesteps={n}")
    if cfg.timestep_spacing == "leading":
        ts = (np.arange(0, steps) * (n // steps)).round().astype(np.int64) + cfg.steps_offset
    elif cfg.timestep_spacing == "trailing":
        ts = np.round(np.arange(n, 0, -n / steps)[::-1]).astype(np.int64) - 1
    elif cfg.timestep_spacing == "linspace" and not inverse:
        ts = np.linspace(0, n - 1, steps).round().astype(np.int64)
    else:
        raise ValueError(f"timestep_spacing {cfg.timestep_spacing!r} is not supported for "
                         f"{'inversion' if inverse else 'sampling'}")
    return ts if inverse else ts[::-1].copy()


# ---- per-step tables ---------------------------------------------------------------------------------------


class StepTable(NamedTuple):
    """Per-step DDIM coefficients, each (T,) float32, in loop order (sampling: noisiest first; inversion: cleanest
    first). ``fwd_*`` (T+1,) hold the levels of the forward replacement: entry K = sqrt(ᾱ), sqrt(1−ᾱ) of the state
    that replaces the first K inversion steps."""
    label: np.ndarray
    c_x: np.ndarray
    c_eps: np.ndarray
    sqrt_a_dst: np.ndarray
    sqrt_1m_a_dst: np.ndarray
    fwd_sqrt_a: np.ndarray
    fwd_sqrt_1m_a: np.ndarray


def _table(label, a_src64, a_dst32, fwd) -> StepTable:
    """``a_src64``: source levels (float64 where the family has them), ``a_dst32``: float32 target levels,
    ``fwd``: (sqrt ᾱ, sqrt 1−ᾱ) of the forward-replacement levels, (T+1,) each."""
    a_src64 = np.asarray(a_src64, np.float64)
    a_dst32 = np.asarray(a_dst32, np.float32)
    return StepTable(
        label=np.asarray(label, np.float32),
        c_x=np.sqrt(1.0 / a_src64).astype(np.float32),
        c_eps=np.sqrt(1.0 / a_src64 - 1.0).astype(np.float32),
        sqrt_a_dst=np.sqrt(a_dst32),
        sqrt_1m_a_dst=np.sqrt(np.float32(1.0) - a_dst32),
        fwd_sqrt_a=fwd[0],
        fwd_sqrt_1m_a=fwd[1],
    )


def _fwd_f64(a64: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """guided_diffusion ``q_sample``: sqrt(ᾱ), sqrt(1−ᾱ) in float64, cast to float32."""
    return np.sqrt(a64).astype(np.float32), np.sqrt(1.0 - a64).astype(np.float32)


def _fwd_f32(a32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """diffusers ``forward_diffusion``: sqrt(ᾱ), sqrt(1−ᾱ) in float32 arithmetic."""
    a32 = np.asarray(a32, np.float32)
    return np.sqrt(a32), np.sqrt(np.float32(1.0) - a32)


class Tables(NamedTuple):
    sample: StepTable
    invert: StepTable  # fwd_* = the exact level convention
    invert_upstream: StepTable  # fwd_* = the upstream level convention (differs for diffusers models, paper Sec. 5)
    timesteps_sample: np.ndarray  # training timesteps of each sampling step (int64, for files and logs)
    timesteps_invert: np.ndarray


def step_tables(cfg: DiffusionConfig, steps: int) -> Tables:
    """Sampling and inversion tables for ``steps`` DDIM steps (upstream ``adm/ddim.py``, ``ddim/schedulers.py``)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    T = steps
    if cfg.kind == "adm":
        tmap, a = adm_spaced(cfg, T)
        label = adm_labels(cfg, tmap)
        a_prev = np.concatenate([[1.0], a[:-1]])
        a_next = np.concatenate([a[1:], [0.0]])
        k = np.arange(T)[::-1]
        # K replaced steps land at spaced index K (exact, upstream too); K = T lands at level 0 (pure noise)
        fwd = _fwd_f64(np.concatenate([a, [0.0]]))
        sample = _table(label[k], a[k], a_prev[k].astype(np.float32), fwd)
        invert = _table(label, a, a_next.astype(np.float32), fwd)
        return Tables(sample, invert, invert, tmap[k], tmap)

    ac = alphas_cumprod(cfg)  # float32
    n = cfg.num_train_timesteps
    edge = np.float32(1.0) if cfg.set_alpha_to_one else ac[0]
    delta = n // T
    ts = diffusers_timesteps(cfg, T, inverse=False)
    prev = ts - delta
    a_src = ac[ts]
    a_dst = np.where(prev >= 0, ac[np.clip(prev, 0, None)], edge)
    sample = _table(ts, a_src, a_dst, _fwd_f32(np.concatenate([a_src, [a_dst[-1]]])))  # fwd unused when sampling

    ti = diffusers_timesteps(cfg, T, inverse=True)
    src = np.minimum(ti - delta, n - 1)
    ai_src = np.where(src >= 0, ac[np.clip(src, 0, None)], edge)
    ai_dst = ac[ti]
    exact = np.concatenate([ai_src, [ai_dst[-1]]])  # K replaced steps: the level inversion step K starts from
    upstream = np.concatenate([ai_dst, [ac[n - 1]]])  # taba: timesteps_inv[K], K = T: training step n-1
    inv = _table(ti, ai_src, ai_dst, _fwd_f32(exact))
    inv_up = inv._replace(fwd_sqrt_a=_fwd_f32(upstream)[0], fwd_sqrt_1m_a=_fwd_f32(upstream)[1])
    return Tables(sample, inv, inv_up, ts, ti)
