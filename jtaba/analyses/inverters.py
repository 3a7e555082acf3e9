"""Inversion methods beyond DDIM measured with the paper's metrics (beyond the paper; ``jtaba.inverters``): for
the same DDIM samples of the same noise, each method's latents against the noise that made the images.

Per method (one ``jtaba.runs`` run each, ``RunSettings.method``): image reconstruction error (mean and max |x̂_0 −
x_0|, decoded images for latent models), noise recovery (mean |noise − latent| and the mean over samples of the
Pearson correlation between a sample's latent and its noise), latent Gaussianity (KL of the Gaussian fitted to all
latent values to N(0, 1), the paper's KL(noise || latent), the share of samples Shapiro-Wilk rejects at p = 0.05,
Sec. 3.1), the Tab. 2 pixel correlation of the latents (patch 8, top 20), the Tab. 5 mean |noise − latent| over
plain and non-plain areas of the samples, the network evaluations per image and the wall time per image.

With a perception network converted, the Tab. 12 protocol per method (``interpolation_scores``): the inverted
states of two independent sets A and B, every part of the state (the latent, edict's y, bdia / belm's x_1, each of
ddpm's T noise maps) SLERPed per sample with the same α as ``jtaba.analyses.interpolation`` does DDIM latents,
sampled back with the method, and scored by FID / precision / recall against a reference set.

    from jtaba.analyses import inverters
    rows = [inverters.method_row(run, "edict", ()) for run in ...]   # a finished run per method
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from jtaba.analyses._result import Result
from jtaba.inverters import METHODS, OPTIONS, Method
from jtaba.metrics.core import CORRELATION_PATCH, CORRELATION_TOP_K
from jtaba.metrics.correlation import top_k_corr_in_patches
from jtaba.metrics.distribution import gaussian_kl, kl_div, mae, mean_std
from jtaba.metrics.normality import normality_counts, shapiro_p_values
from jtaba.metrics.plain import find_plain_areas, plain_stats

# The compared methods, "name" or "name:option=value[:option=value...]" (fixed-point three ways: plain, AIDI,
# ReNoise).
DEFAULT_METHODS = ("ddim", "edict", "bdia", "belm", "fixed-point", "fixed-point:anderson=3", "fixed-point:average=3",
                   "ddpm", "npi")


def parse_method(text: str) -> tuple[str, tuple]:
    """"fixed-point:anderson=3:iterations=8" -> ("fixed-point", (("anderson", 3), ("iterations", 8))) (values cast
    to the option's type, checked by ``jtaba.inverters.Method``)."""
    name, *parts = str(text).strip().split(":")
    if name not in METHODS:
        raise ValueError(f"method {name!r} is not one of {', '.join(METHODS)}")
    types = {f.name: f.type for f in dataclasses.fields(Method)}
    options = []
    for part in filter(None, (p.strip() for p in parts)):
        key, eq, value = part.partition("=")
        if not eq or key not in OPTIONS[name]:
            raise ValueError(f"method {text!r}: {part!r} is not one of {name}'s options "
                             f"({', '.join(OPTIONS[name]) or 'none'}) as option=value")
        try:
            options.append((key, float(value) if types[key] == "float" else int(value)))
        except ValueError:
            raise ValueError(f"method {text!r}: {key} must be a number, got {value!r}") from None
    Method.of(name, **dict(options))
    return name, tuple(sorted(options))


def method_label(name: str, options) -> str:
    """"fixed-point (anderson 3)": the name with the options given."""
    return name + (" (" + ", ".join(f"{k} {v:g}" for k, v in options) + ")" if options else "")


@dataclasses.dataclass(frozen=True)
class MethodRow(Result):
    """One method's row. ``noise_correlation``: mean over samples of the Pearson r of the flattened latent and
    noise; ``kl_to_standard_normal``: KL(N(mean, std²) || N(0, 1)) of all latent values; ``kl_div_noise_latent``:
    the paper's KL of the fitted noise and latent Gaussians; ``shapiro_rejected``: share of samples rejected;
    ``pixel_correlation``: Tab. 2 of the latents ({mean, std}; None for one sample); ``mae_plain`` /
    ``mae_non_plain``: Tab. 5; ``wall_s_per_image``: inversion + reconstruction, compilation excluded (None when
    not timed)."""
    method: str
    options: dict
    label: str
    nfe_invert: int
    nfe_reconstruct: int
    wall_s_per_image: Optional[float]
    reconstruction_mae: float
    reconstruction_max_abs: float
    noise_mae: float
    noise_correlation: float
    latent_mean: float
    latent_std: float
    kl_to_standard_normal: float
    kl_div_noise_latent: float
    shapiro_rejected: float
    pixel_correlation: Optional[dict]
    mae_plain: float
    mae_non_plain: float


def noise_correlation(noise, latents) -> float:
    """Mean over samples of the Pearson correlation between a sample's flattened latent and its noise (float64)."""
    a = np.asarray(noise, np.float64).reshape(len(noise), -1)
    b = np.asarray(latents, np.float64).reshape(len(latents), -1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    r = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return float(r.mean())


def method_row(run, name: str, options=(), wall_s_per_image: Optional[float] = None) -> MethodRow:
    """The row of a finished run (noise, samples, latents, samples2; decoded images when the run has them)."""
    noise, latents, samples = run["noise"], run["latents"], run["samples"]
    decoded = "decoded_samples2" in run
    images = run["decoded_samples"] if decoded else samples
    images2 = run["decoded_samples2"] if decoded else run["samples2"]
    mu, sd = mean_std(latents)
    plain = plain_stats(noise, latents, find_plain_areas(samples))
    nfe = run.nfe_per_image
    return MethodRow(
        method=name, options=dict(options), label=method_label(name, options),
        nfe_invert=int(nfe["invert"]), nfe_reconstruct=int(nfe["reconstruct"]),
        wall_s_per_image=wall_s_per_image,
        reconstruction_mae=mae(images2, images),
        reconstruction_max_abs=float(np.max(np.abs(np.asarray(images2, np.float64) - np.asarray(images)))),
        noise_mae=mae(noise, latents), noise_correlation=noise_correlation(noise, latents),
        latent_mean=mu, latent_std=sd, kl_to_standard_normal=float(gaussian_kl(mu, sd, 0.0, 1.0)),
        kl_div_noise_latent=kl_div(noise, latents),
        shapiro_rejected=float(normality_counts(shapiro_p_values(latents))["%_rej"]),
        pixel_correlation=(top_k_corr_in_patches(latents, patch_size=CORRELATION_PATCH, top_k=CORRELATION_TOP_K)
                           if len(latents) > 1 else None),
        mae_plain=plain["mae_plain"], mae_non_plain=plain["mae_non_plain"])


@dataclasses.dataclass(frozen=True)
class InverterTable(Result):
    """Every method's row on the same standard run; ``skipped``: {label: why the model cannot run it}."""
    rows: tuple[MethodRow, ...]
    skipped: dict


def wall_time_per_image(model, images, *, steps: int, name: str, options=(), cond=None, guidance: float = 1.0,
                        precision: str = "float32") -> float:
    """Seconds per image of inverting ``images`` (B, C, H, W) and sampling them back with a method, compilation
    excluded (a first pass compiles, the second is timed)."""
    import time

    import jax

    from jtaba.api import invert, sample

    kw = dict(steps=steps, cond=cond, guidance=guidance, precision=precision)

    def once():
        inverted = invert(model, images, method=name, **dict(options), **kw)
        return jax.block_until_ready(sample(model, inverted, **kw).x)

    once()
    start = time.perf_counter()
    once()
    return (time.perf_counter() - start) / len(images)


# ---- Tab. 12 protocol per method -------------------------------------------------------------------------------
def inverted_state(run) -> tuple:
    """(latents (N, C, H, W), paired or None) of a finished run: what its method's sampler takes back (edict's y or
    bdia / belm's x_1 (N, C, H, W), ddpm's noise maps (T, N, C, H, W); memory maps)."""
    from jtaba.runs.run import PAIRED_FILES

    paired = [run[name] for name in PAIRED_FILES.values() if name in run]
    return run["latents"], (paired[0] if paired else None)


def interpolate_state(a: tuple, b: tuple, alpha: float, start: int, stop: int, upstream: bool = False) -> tuple:
    """Rows [start, stop) of SLERP(A, B, α) of two ``inverted_state``s, every part with the same α and per sample
    (``jtaba.analyses.interpolation.interpolate``; noise maps per step and sample): (latents, paired or None)."""
    from jtaba.analyses.interpolation import interpolate

    rows = slice(start, stop)
    latents = interpolate(a[0][rows], b[0][rows], alpha, upstream)
    if a[1] is None:
        return latents, None
    if a[1].ndim == 5:  # (T, N, ...) noise maps
        return latents, np.stack([interpolate(pa[rows], pb[rows], alpha, upstream) for pa, pb in zip(a[1], b[1])])
    return latents, interpolate(a[1][rows], b[1][rows], alpha, upstream)


def interpolation_scores(model, name: str, options, run_a, run_b, reference: dict, nets: dict, protocol: str, *,
                         alpha: float, steps: int, batch: int, cond=None, guidance: float = 1.0,
                         precision: str = "float32", ldm: bool = False, upstream: bool = False, mesh=None):
    """Tab. 12's ``Scores`` of one method: its inverted states of sets A and B (runs of the method) interpolated at
    ``alpha`` (``interpolate_state``), sampled back with the method (``batch`` at a time on ``mesh``, default every
    device, padded as the runs pad theirs; decoded for latent models), their ``scoring_features`` scored against
    ``reference`` (the reference set's) under ``protocol``. ``cond``: (N, ...) labels or prompt embeddings of the
    pairs (None for unconditional models; npi: also the null condition, its source condition)."""
    from jtaba import sharding
    from jtaba.analyses.interpolation import scores, scoring_features
    from jtaba.api import Trajectory, decode, sample
    from jtaba.model import replicate

    method = Method.of(name, **dict(options))
    a, b = inverted_state(run_a), inverted_state(run_b)
    n = len(a[0])
    mesh = mesh or sharding.data_mesh()
    model = replicate(model, sharding.replicated(mesh))
    size = sharding.padded_size(min(batch, n), mesh)  # every batch padded alike, as the runs': one compilation

    def put(v, axis=0):
        v = np.asarray(v)
        return sharding.put_batch(v.astype(np.float32) if v.dtype.kind == "f" else v, mesh, axis, size)

    parts = []
    for start in range(0, n, size):
        stop = min(start + size, n)
        x, paired = interpolate_state(a, b, alpha, start, stop, upstream)
        c = None if cond is None else put(cond[start:stop])
        inverted = Trajectory(put(x), method=method, steps=steps,
                              paired=None if paired is None else put(paired, paired.ndim - 4),
                              null_cond=c if name == "npi" else None)
        images = sample(model, inverted, steps=steps, cond=c, guidance=guidance, precision=precision).x
        if model.decoder is not None:
            images = decode(model, images, precision)
        parts.append(scoring_features(sharding.gather(images, stop - start), nets, protocol, ldm=ldm))
    generated = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return scores(reference, generated, protocol)
