"""What a sample -> invert -> reconstruct run computes: ``RunSettings`` (a frozen dataclass) and its identity.

Arrays are NCHW (as the upstream files); inputs given as arrays may be memory maps, and only their first ``n`` rows
are used. ``identity`` turns settings into the JSON dict that fingerprints a run (with the model's fingerprint):
every setting that changes the results, input arrays by content, never the batch size, device count or a path.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import numpy as np

from jtaba import precision as precision_lib
from jtaba.checks import check_forward, check_positive_int, check_replacements
from jtaba.diffusion import SCHEDULE_DTYPES
from jtaba.runs.fingerprint import array_digest

DEFAULT_N = 1024
SWAP_TYPES = ("eps", "xt")
SWAP_FILES = {"eps": "all_t_eps_samples", "xt": "all_t_samples"}
# What a finished run holds beyond its identity: a run with more of these serves a request for fewer.
OUTPUT_FLAGS = ("record", "inversion", "reconstruction")


@dataclasses.dataclass(frozen=True, eq=False)
class RunSettings:
    """One run. ``n`` samples (``None``: the rows of the first input array given, else 1024), ``steps`` DDIM
    steps T, ``seed`` of the per-index noise and drawn class labels, ``batch`` samples per step over all devices
    (memory / speed only).

    Inputs (``None``: drawn or sampled): ``noise`` (N, C, H, W) initial noise; ``samples`` (N, C, H, W) clean
    samples to invert instead of sampling; ``labels`` (N,) integer class labels; ``prompt_embeds`` (N, L, D)
    (text-conditioned models); ``class_seed`` / ``noises_per_class``: taba's DiT class-name sampling.

    ``forward_before`` K replaces the first K inversion steps by q(x_t | x_0) with noise from ``forward_seed``
    (its own stream) or ``forward_noise``, at level ``forward_level``. ``swap_from`` (a recorded ``Run``) replaces
    the first ``swap_before`` inversion steps' ``swap_type`` ("eps" | "xt") by that run's mirror steps; its
    samples, noise and labels are used unless given. ``guidance``: classifier-free guidance scale (1 = off).
    ``precision``: ``jtaba.precision`` name; ``schedule_dtype``: "float16" for upstream's half-precision diffusers
    scheduler arithmetic. ``record`` keeps every step (all_t_*); ``inversion`` / ``reconstruction`` switch the
    later stages. ``method`` (``jtaba.inverters.METHODS``) with ``method_options`` ((name, value) pairs) inverts and
    reconstructs with that method; the samples stay DDIM's, so every method inverts the same images."""
    n: Optional[int] = None
    steps: int = 100
    seed: int = 42
    batch: int = 64
    noise: Optional[Any] = None
    samples: Optional[Any] = None
    labels: Optional[Any] = None
    prompt_embeds: Optional[Any] = None
    class_seed: Optional[int] = None
    noises_per_class: int = 1
    guidance: float = 1.0
    record: bool = False
    inversion: bool = True
    reconstruction: bool = True
    forward_before: int = 0
    forward_seed: int = 42
    forward_noise: Optional[Any] = None
    forward_level: str = "exact"
    swap_from: Optional[Any] = None  # a finished, recorded jtaba.runs.Run
    swap_before: int = 0
    swap_type: str = "eps"
    precision: str = "float32"
    schedule_dtype: Optional[str] = None
    method: str = "ddim"
    method_options: tuple = ()

    def inverter(self):
        """The ``jtaba.inverters.Method`` of ``method`` and ``method_options``."""
        from jtaba.inverters import Method

        return Method.of(self.method, **dict(self.method_options))

    def sample_count(self) -> int:
        """N: ``n``, else the rows of the first input that fixes it (noise, the swap run, samples, labels, prompt
        embeddings, forward noise, in that order), else 1024."""
        if self.n is not None:
            return int(self.n)
        swap = None if self.swap_from is None else range(self.swap_from.n)
        for a in (self.noise, swap, self.samples, self.labels, self.prompt_embeds, self.forward_noise):
            if a is not None:
                return len(a)
        return DEFAULT_N

    def replace(self, **kw) -> "RunSettings":
        return dataclasses.replace(self, **kw)

    def check(self) -> None:
        """Refuse values that cannot run (model-independent checks, the rules shared with ``jtaba.api`` in
        ``jtaba.checks``; ``jtaba.runs.run`` adds the model's)."""
        check_positive_int("steps", self.steps)
        check_positive_int("batch", self.batch)
        if self.n is not None:
            check_positive_int("n", self.n)
        check_forward(self.forward_before, self.steps, self.forward_level)
        if self.swap_type not in SWAP_TYPES:
            raise ValueError(f"swap_type must be one of {SWAP_TYPES}, got {self.swap_type!r}")
        if self.swap_from is not None and self.swap_before <= 0:
            raise ValueError("swap_from needs swap_before > 0")
        if self.swap_from is None and self.swap_before:
            raise ValueError("swap_before needs swap_from (a recorded sampling run)")
        check_replacements(self.inverter().name, self.forward_before, self.swap_before)
        if self.forward_noise is not None and not self.forward_before:
            raise ValueError("forward_noise needs forward_before > 0")
        if self.labels is not None and self.class_seed is not None:
            raise ValueError("labels and class_seed cannot be combined")
        if self.reconstruction and not self.inversion:
            raise ValueError("reconstruction needs inversion (set reconstruction=False)")
        if self.schedule_dtype not in (None, *SCHEDULE_DTYPES):
            raise ValueError(f"schedule_dtype must be one of {', '.join(SCHEDULE_DTYPES)}, got {self.schedule_dtype!r}")
        precision_lib.check(self.precision)


def input_array(path: Optional[str], what: str) -> Optional[np.ndarray]:
    """The array of an input file (a ``.npy`` file, memory-mapped), or None for no path; ``what`` names the input
    (a flag) in the one-line ValueError for a missing or unreadable file."""
    if path is None:
        return None
    if not str(path).endswith(".npy") or not os.path.isfile(path):
        raise ValueError(f"{what}: {path} is not an existing .npy file")
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, EOFError, OSError) as e:  # a 0-byte file is an EOFError
        raise ValueError(f"{what}: {path} is not a readable .npy file ({str(e) or type(e).__name__})") from None


# The run inputs an analysis takes (StandardOptions fields): files by path, so options stay JSON; flags of the same
# names (cli.add_input_flags). ``INPUT_FILES`` maps each file field to its flag.
INPUT_FILES = {"noise": "--noise", "samples": "--samples", "labels": "--labels", "prompt_embeds": "--prompt-embeds"}
INPUT_FIELDS = (*INPUT_FILES, "class_seed", "noises_per_class", "guidance", "schedule_dtype", "method",
                "method_options")


@dataclasses.dataclass(frozen=True)
class StandardOptions:
    """What an analysis's options share: the standard sample -> invert -> reconstruct run it starts from (N, T,
    seed, batch, precision) and its inputs (``INPUT_FIELDS``, as ``RunSettings``' but with ``.npy`` paths for the
    arrays: options are written to JSON). Analyses subclass it with their own fields (and may change these
    defaults); analyses that ask for the same standard run share it, and share it with ``sample_invert`` given
    the same inputs."""
    n: int = 512
    steps: int = 50
    seed: int = 42
    batch: int = 128
    precision: str = "float32"
    _: dataclasses.KW_ONLY  # the inputs by name only: subclasses' own fields stay positional after precision
    noise: Optional[str] = None
    samples: Optional[str] = None
    labels: Optional[str] = None
    prompt_embeds: Optional[str] = None
    class_seed: Optional[int] = None
    noises_per_class: int = 1
    guidance: float = 1.0
    schedule_dtype: Optional[str] = None
    method: str = "ddim"  # the inversion method (jtaba.inverters) and its ((name, value), ...) options
    method_options: tuple = ()

    def run_settings(self, **overrides) -> RunSettings:
        """``RunSettings`` of the standard run (reconstruction on, nothing recorded) with this run's inputs (files
        read as memory maps), with ``overrides``. Every run an analysis makes goes through here, so extra runs carry
        the same conditioning."""
        base = dict(n=self.n, steps=self.steps, seed=self.seed, batch=self.batch, precision=self.precision,
                    class_seed=self.class_seed, noises_per_class=self.noises_per_class, guidance=self.guidance,
                    schedule_dtype=self.schedule_dtype, method=self.method,
                    method_options=tuple(map(tuple, self.method_options)))
        base.update({k: input_array(getattr(self, k), flag) for k, flag in INPUT_FILES.items() if k not in overrides})
        return RunSettings(**{**base, **overrides})


def identity(s: RunSettings, n: int, model_fingerprint: str) -> dict:
    """The JSON dict that identifies a run of ``n`` samples (resolved) on a model with this fingerprint."""

    def digest(a):
        return None if a is None else array_digest(a, n)

    swap = None
    if s.swap_from is not None:
        swap = {"run": s.swap_from.fingerprint, "before": s.swap_before, "type": s.swap_type}
    forward = None
    if s.forward_before:
        forward = {"before": s.forward_before, "level": s.forward_level,
                   "noise": digest(s.forward_noise) if s.forward_noise is not None else f"seed:{s.forward_seed}"}
    return dict(
        model=model_fingerprint, n=int(n), steps=int(s.steps), seed=int(s.seed), noise=digest(s.noise),
        samples=digest(s.samples), labels=digest(s.labels), prompt_embeds=digest(s.prompt_embeds),
        class_seed=s.class_seed, noises_per_class=s.noises_per_class if s.class_seed is not None else None,
        guidance=float(s.guidance), forward=forward, swap=swap, precision=s.precision,
        schedule_dtype=s.schedule_dtype, record=bool(s.record), inversion=bool(s.inversion),
        reconstruction=bool(s.reconstruction and s.inversion),
        # DDIM runs keep the identity they always had; another method is named with its options
        **({"method": {"name": s.method, **s.inverter().options()}} if s.method != "ddim" else {}))


def serves(have: dict, want: dict) -> bool:
    """Whether a finished run with identity ``have`` holds everything a run with identity ``want`` would write
    (same identity except that it may have recorded / inverted / reconstructed more; an imported run's provenance,
    ``imported``, is no setting: ``jtaba.runs.import_run``)."""
    core = lambda d: {k: v for k, v in d.items() if k not in OUTPUT_FLAGS and k != "imported"}  # noqa: E731
    return core(have) == core(want) and all(have[k] or not want[k] for k in OUTPUT_FLAGS)


def method_part(method: str, options) -> str:
    """Folder-name part of an inversion method and its options given: "edict", "fixed-point-iterations10"."""
    return "-".join([method, *(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in sorted(options))])


def folder_name(s: RunSettings, n: int, fingerprint: str) -> str:
    """A readable folder name naming every setting that changes outputs, ending in the run fingerprint."""
    parts = [f"T{s.steps}", f"n{n}", f"seed{s.seed}"]
    given = [k for k in ("noise", "samples", "labels", "prompt_embeds") if getattr(s, k) is not None]
    parts += [f"{k.replace('_', '')}-given" for k in given]
    if s.class_seed is not None:
        parts.append(f"cseed{s.class_seed}x{s.noises_per_class}")
    if s.guidance != 1.0:
        parts.append(f"cfg{s.guidance:g}")
    if s.forward_before:
        noise = "given" if s.forward_noise is not None else f"s{s.forward_seed}"
        parts.append(f"fwd{s.forward_before}-{s.forward_level}-{noise}")
    if s.swap_from is not None:
        parts.append(f"swap-{s.swap_type}{s.swap_before}")
    if s.precision != "float32":
        parts.append(s.precision)
    if s.method != "ddim":
        parts.append(method_part(s.method, s.method_options))
    if s.schedule_dtype == "float16":
        parts.append("sched16")
    if s.record:
        parts.append("rec")
    if not s.inversion:
        parts.append("noinv")
    elif not s.reconstruction:
        parts.append("norecon")
    return "_".join(parts) + "_" + fingerprint[:10]
