"""``run``: sample -> invert -> reconstruct a model in memory, in chunks, atomically, resumably, sharded over every
device of every process (as upstream ``run_*_sampling.py``), writing the
upstream file set, the run manifest and metrics.json.

Sample i's noise, forward noise and drawn class label depend only on (seed, i): results do not depend on the batch
size, the device count or the process count (beyond float summation order), and no sample is dropped. Files
(NCHW float32 ``.npy``; trajectories (T, N, C, H, W)): noise, samples, latents, samples2, conds (class-conditional),
decoded_samples[2] (latent models), with ``record`` every step as all_t_{,eps_,pred_xstart_}{samples,latents,
samples2}; an inversion method other than DDIM adds what sampling needs back (``PAIRED_FILES``); metrics.json =
{"_params": identity (+ "cmd"), "metrics": core metrics, "nfe_per_image": network evaluations per image}.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from jtaba import checks, distributed, engine, io, sharding
from jtaba import noise as noise_lib
from jtaba.api import Swap, decode, invert, sample
from jtaba.inverters import PAIRED as PAIRED_METHODS
from jtaba.model import Model, replicate
from jtaba.runs.fingerprint import model_digest, settings_digest
from jtaba.runs.reader import METRICS, Run, RunNotFinished, find_run
from jtaba.runs.settings import SWAP_FILES, RunSettings, folder_name, identity
from jtaba.runs.store import SAME_RUN_WAIT_S, RunMismatch, RunStore, pending_ranges

# How far (absolute) outside [-1, 1] given samples of a pixel-space model may go before a warning.
DATA_RANGE_TOLERANCE = 0.5
# Run folders this process computed: ``reuse=False`` recomputes a finished run once per process, not on every call.
_COMPUTED: set = set()



@dataclasses.dataclass
class _Inputs:
    """Host arrays (memory maps for files), rows 0..N-1; None = drawn / sampled."""
    noise: Optional[np.ndarray]
    samples: Optional[np.ndarray]
    labels: Optional[np.ndarray]
    prompts: Optional[np.ndarray]
    forward_noise: Optional[np.ndarray]
    swap: Optional[dict]  # {"all_t_samples" | "all_t_eps_samples": (T, N, ...)}


# Files of what an inversion method returns beside the latent (jtaba.Trajectory.paired), by "is (T, N, ...)":
# edict's y / bdia's and belm's x_1, or ddpm's noise map of every step (sampling order).
PAIRED_FILES = {False: "latents_paired", True: "all_t_noise_maps"}


def _first_bad_row(a: np.ndarray, n: int, limit: Optional[float] = None) -> tuple[Optional[int], Optional[int]]:
    """(first row of ``a[:n]`` holding NaN / Inf, first row with a value beyond +-``limit``), None where none."""
    bad_row = far_row = None
    for start in range(0, n, 4096):
        block = np.asarray(a[start:min(n, start + 4096)]).reshape(min(n, start + 4096) - start, -1)
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            return start + int(np.argmax(bad)), far_row
        if limit is not None and far_row is None:
            far = (np.abs(block) > limit).any(axis=1)
            far_row = start + int(np.argmax(far)) if far.any() else None
    return bad_row, far_row


def _first_non_finite(arrays: dict, start: int) -> Optional[tuple[str, int]]:
    """(name, sample index) of the first non-finite value in a batch of outputs starting at sample ``start``."""
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            axis = 1 if name.startswith("all_t_") else 0
            rows = ~np.isfinite(np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)).all(axis=1)
            return name, start + int(np.argmax(rows))
    return None


def _inputs(model: Model, s: RunSettings, mfp: str) -> tuple[_Inputs, int]:
    """Resolve the input arrays (the swap source's included), fix N and check shapes, values and labels."""
    noise, samples, labels = s.noise, s.samples, s.labels
    swap = None
    if s.swap_from is not None:
        src: Run = s.swap_from
        if src.identity["model"] != mfp:
            raise ValueError(f"swap_from {src.path} was computed with another model (or schedule); a ground-truth "
                             f"swap needs the same one")
        if not src.identity.get("record"):
            raise ValueError(f"swap_from {src.path} was not recorded (run it with record=True / --record)")
        if src.steps != s.steps:
            raise ValueError(f"swap_from {src.path} recorded {src.steps} steps, this run uses steps={s.steps}")
        name = SWAP_FILES[s.swap_type]
        swap = {name: src[name]}
        samples = samples if samples is not None else src["samples"]
        noise = noise if noise is not None else src["noise"]
        if labels is None and "conds" in src:
            labels = src["conds"]
    if s.class_seed is not None:
        labels = _upstream_labels(model, s)
    arrays = {"noise": noise, "samples": samples, "labels": labels, "prompt_embeds": s.prompt_embeds,
              "forward_noise": s.forward_noise}
    given = [(k, a) for k, a in arrays.items() if a is not None]
    n = s.sample_count()
    if n < 1:
        empty = [k for k, a in given if len(a) == 0] or ["swap_from"]
        raise ValueError(f"{empty[0]} holds no samples (N = 0): nothing to run")
    shape = tuple(model.sample_shape)
    for k, a in given + [("swap_from", np.moveaxis(a, 1, 0)) for a in (swap or {}).values()]:
        if len(a) < n:
            raise ValueError(f"{k} has {len(a)} samples, fewer than n={n}")
        if k in ("noise", "samples", "forward_noise", "swap_from") and tuple(a.shape[1:][-3:]) != shape:
            raise ValueError(f"{k} samples are {tuple(a.shape[-3:])}, the model's are {shape} (NCHW)")
        if k != "labels" and k != "swap_from":
            if a.dtype.kind != "f":
                raise ValueError(f"{k} must be floating point, got {a.dtype}")
            pixels = k == "samples" and model.decoder is None  # latent models' samples have no fixed range
            bad, far = _first_bad_row(a, n, 1 + DATA_RANGE_TOLERANCE if pixels else None)
            if bad is not None:
                raise ValueError(f"{k} holds NaN or Inf in sample {bad}")
            if far is not None:
                print(f"jtaba: warning: samples go far outside the model's data range [-1, 1] (sample {far} reaches "
                      f"{float(np.abs(np.asarray(a[far])).max()):.3g}); are they images scaled to [-1, 1]? Inverting "
                      f"them as given", file=sys.stderr, flush=True)
    if labels is not None:
        labels = np.asarray(labels[:n])
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be (N,) integers, got {labels.dtype} {labels.shape}")
        k = model.num_classes or 0
        out = np.flatnonzero((labels < 0) | (labels >= k))
        if out.size:
            raise ValueError(f"label {labels[out[0]]} of sample {out[0]} is outside [0, {k})")
    return _Inputs(noise, samples, labels, s.prompt_embeds, s.forward_noise, swap), int(n)


def _upstream_labels(model: Model, s: RunSettings) -> np.ndarray:
    """taba's class-name sampling (upstream ``taba/models/dit/dit.py``)."""
    from jtaba.class_labels import upstream_class_labels

    id2label = model.extras.get("id2label")
    if not id2label:
        raise ValueError("class_seed needs the model's id2label (saved by convert/dit.py from a hub checkpoint)")
    if s.n is None or s.n % s.noises_per_class:
        raise ValueError("class_seed needs n, a multiple of noises_per_class")
    return upstream_class_labels(id2label, s.class_seed, s.n // s.noises_per_class, s.noises_per_class)


def _check_model(model: Model, s: RunSettings) -> bool:
    """Refuse settings this model cannot run; returns whether it takes class labels."""
    if s.swap_from is not None:
        engine.mirror_indices(model.diffusion, s.steps, s.swap_type, s.swap_before)
    checks.check_method(s.inverter(), model)
    class_cond = model.num_classes is not None and model.conditional
    labels = s.labels is not None or s.class_seed is not None or class_cond  # a class-conditional run draws them
    checks.check_conditioning(model, labels, s.prompt_embeds is not None, s.guidance != 1.0,
                              given_as="prompt_embeds (--prompt-embeds)")
    if s.schedule_dtype and model.diffusion.kind != "diffusers":
        raise ValueError("schedule_dtype applies to diffusers models (ADM schedules are float64 -> float32)")
    return class_cond


def _open_store(out: str, ident: dict, n: int, recompute: bool = False):
    """Every process checks that it computes the same run as process 0 (same fingerprint); then process 0 opens
    the run folder (waiting for another process computing the same run; ``recompute``: a finished run is computed
    again) and every process learns which samples are done."""
    fp = np.frombuffer(bytes.fromhex(settings_digest(ident)), np.uint8)
    if jax.process_count() > 1:  # before anything is written or sized by N: every process must run the same run
        fps = np.asarray(multihost_utils.process_allgather(fp)).reshape(jax.process_count(), -1)
        other = [i for i in range(len(fps)) if not np.array_equal(fps[i], fps[0])]
        if other:
            raise RunMismatch(f"processes {other} were given other settings, inputs or model than process 0 (run "
                              f"fingerprints differ); start every process with the same command")
    st, status, error = None, np.zeros(n + 1, np.uint8), None
    if jax.process_index() == 0:
        try:
            st = RunStore(out, ident, n, wait_s=SAME_RUN_WAIT_S, recompute=recompute)
            status[0], status[1:] = 1, st.done_mask()
        except RunMismatch as e:
            error = e
    if jax.process_count() > 1:
        status = np.asarray(multihost_utils.broadcast_one_to_all(status))
    if not status[0]:
        raise RunMismatch(str(error) if error else "process 0 refused the run folder")
    return st, status[1:].astype(bool)


def _batch(model: Model, s: RunSettings, inputs: _Inputs, put, start: int, stop: int, class_cond: bool) -> dict:
    """Samples [start, stop) on the mesh: {file name: (array, sample axis)} (padded; the caller cuts)."""
    shape = tuple(model.sample_shape)
    idx = put(np.arange(start, stop, dtype=np.int32))
    z = put(inputs.noise[start:stop]) if inputs.noise is not None else noise_lib.noise_for_indices(s.seed, idx, shape)
    res = {"noise": (z, 0)}
    cond = None
    if class_cond:
        cond = (put(inputs.labels[start:stop].astype(np.int32)) if inputs.labels is not None
                else noise_lib.labels_for_indices(s.seed, idx, model.num_classes))
        res["conds"] = (cond, 0)
    elif inputs.prompts is not None:
        cond = put(inputs.prompts[start:stop])
    kw = dict(steps=s.steps, cond=cond, guidance=s.guidance, record=s.record, precision=s.precision)

    def keep(suffix, traj):
        res[suffix] = (traj.x, 0)
        if s.record:
            res.update({f"all_t_{suffix}": (traj.xs, 1), f"all_t_eps_{suffix}": (traj.eps, 1),
                        f"all_t_pred_xstart_{suffix}": (traj.x0, 1)})

    if inputs.samples is not None:
        res["samples"] = (put(inputs.samples[start:stop]), 0)
    else:
        keep("samples", sample(model, z, **kw))
    x = res["samples"][0]
    if s.inversion:
        extra = {}
        if s.forward_before:
            fwd = (put(inputs.forward_noise[start:stop]) if inputs.forward_noise is not None
                   else noise_lib.noise_for_indices(s.forward_seed, idx, shape, "forward"))
            extra = dict(forward_before=s.forward_before, forward_noise=fwd, forward_level=s.forward_level)
        if inputs.swap:
            source = {k: put(v[:, start:stop], axis=1) for k, v in inputs.swap.items()}
            extra["swap"] = Swap(s.swap_type, s.swap_before, source, noise=z)
        inverted = invert(model, x, **kw, **extra, method=s.inverter(), indices=idx)
        keep("latents", inverted)
        if inverted.paired is not None:  # what sampling needs back: a second state or every step's noise map
            maps = inverted.paired.ndim == 5
            res[PAIRED_FILES[maps]] = (inverted.paired, 1 if maps else 0)
        if s.reconstruction:
            keep("samples2", sample(model, inverted, **kw))
    if model.decoder is not None:
        res["decoded_samples"] = (decode(model, x, s.precision), 0)
        if "samples2" in res:
            res["decoded_samples2"] = (decode(model, res["samples2"][0], s.precision), 0)
    return res


def _compute(model: Model, s: RunSettings, inputs: _Inputs, n: int, st, done, class_cond: bool,
             progress: bool, mesh, desc: str) -> None:
    from tqdm import tqdm

    model = replicate(model, sharding.replicated(mesh))
    size = sharding.padded_size(min(s.batch, n), mesh)  # every batch padded alike: one compilation

    def put(a, axis=0):
        a = np.asarray(a, np.float32) if a.dtype.kind == "f" else np.asarray(a)
        return sharding.put_batch(a, mesh, axis, size)

    main = jax.process_index() == 0
    bar = tqdm(total=n, initial=int(done.sum()), unit="sample", disable=not (main and progress),
               dynamic_ncols=True, desc=desc)
    for start, stop in pending_ranges(done, s.batch):
        res = _batch(model, s, inputs, put, start, stop, class_cond)
        arrays = {}
        for name, (a, axis) in res.items():
            host = sharding.gather(a, stop - start, axis)
            arrays[name] = host.astype(np.int64) if name == "conds" else host.astype(np.float32, copy=False)
        bad = _first_non_finite(arrays, start)
        if bad is not None:
            raise ValueError(f"the run's {bad[0]} is NaN or Inf at sample {bad[1]} (the model's output is not finite; "
                             f"its weights may hold NaN): stopped before writing samples [{start}, {stop})")
        if main:
            st.write(start, stop, arrays)
        bar.update(stop - start)
    bar.close()


def nfe_per_image(ident: dict) -> dict:
    """Network evaluations per image of each stage of the run with identity ``ident`` (a guided evaluation counts
    twice; given samples are not sampled; forward-replaced inversion steps run no network)."""
    from jtaba.inverters import DDIM, Method

    named = ident.get("method")
    method = Method.of(named["name"], **{k: v for k, v in named.items() if k != "name"}) if named else DDIM
    T, per = ident["steps"], 2 if ident["guidance"] != 1.0 else 1
    skipped = ident["forward"]["before"] if ident.get("forward") else 0
    return {"sample": 0 if ident.get("samples") else T * per,
            "invert": (method.network_calls(T, True) - skipped) * (1 if method.name == "npi" else per),
            "reconstruct": method.network_calls(T, False, method.name in PAIRED_METHODS) * per
            if ident.get("reconstruction") else 0}


def _write_metrics(run: Run, ident: dict, command: Optional[Sequence[str]], decoded: bool) -> None:
    from jtaba.metrics.core import core_metrics

    metrics = {}
    if "latents" in run:
        p = "decoded_" if decoded else ""
        metrics = core_metrics(run["noise"], run["latents"], run.get(p + "samples"), run.get(p + "samples2"))
    params = {**ident, **({"cmd": list(command)} if command is not None else {})}
    nfe = {"nfe_per_image": nfe_per_image(ident)} if ident.get("inversion") else {}  # beside the core metrics
    # the processes and devices it ran on: beside the identity, never in it (results do not depend on them)
    io.write_json(os.path.join(run.path, METRICS), {"_params": params, "metrics": metrics, **nfe,
                                                    "topology": distributed.topology()})


def _metrics_readable(path: str) -> bool:
    """Whether ``path`` holds valid JSON; a damaged one (truncated, not JSON) is named on stderr."""
    if not os.path.exists(path):
        return False
    try:
        io.read_json(path)
        return True
    except ValueError as e:
        print(f"jtaba: {e}; it is written again", file=sys.stderr, flush=True)
        return False


def plan(model: Model, settings: RunSettings) -> tuple[dict, int]:
    """(identity, N) of a run of ``model`` with ``settings``, after every check that needs no computation."""
    settings.check()
    model = with_schedule(model, settings)
    mfp = model_digest(model)
    _check_model(model, settings)
    _, n = _inputs(model, settings, mfp)
    return identity(settings, n, mfp), n


def with_schedule(model: Model, s: RunSettings) -> Model:
    """``model`` as runs with settings ``s`` compute with it: a diffusers model's schedule in ``s.schedule_dtype``."""
    if s.schedule_dtype and model.diffusion is not None and model.diffusion.kind == "diffusers":
        return dataclasses.replace(model, diffusion=model.diffusion.replace(schedule_dtype=s.schedule_dtype))
    return model


def run(model: Model, settings: RunSettings, out: Optional[str] = None, *, root: str = "runs",
        tag: Optional[str] = None, reuse: bool = True, command: Optional[Sequence[str]] = None,
        progress: bool = True, mesh: Optional[jax.sharding.Mesh] = None, desc: str = "sample/invert") -> Run:
    """Compute (or resume, or reuse) the run of ``model`` with ``settings``; returns the finished ``Run``.

    ``out``: the run folder (a folder holding another run is refused). Without it, a finished run under ``root``
    that serves these settings (same model and input fingerprints and settings, possibly recording more) is
    reused when ``reuse`` (without it, a finished run in the folder is computed again, once per process); otherwise
    the run goes to ``root/tag/sample_invert/<settings>_<fingerprint>`` (``tag`` default: the model's name, e.g.
    ``runs/adm32/...`` for ``jtaba.load("adm32")``), where
    an interrupted run of the same settings resumes. ``command`` (argv) is recorded in metrics.json; ``mesh``: a
    1-D data mesh (default: every device of every process); ``desc`` labels the progress bar."""
    settings.check()
    model = with_schedule(model, settings)
    mfp = model_digest(model)
    class_cond = _check_model(model, settings)
    inputs, n = _inputs(model, settings, mfp)
    ident = identity(settings, n, mfp)
    if out is None:
        found = find_run(root, ident) if reuse else None
        if found is not None and _metrics_readable(os.path.join(found.path, METRICS)):
            return found
        if found is not None:  # a damaged metrics.json: rewritten below, under the run's lock
            out, ident = found.path, found.identity
        else:
            name = folder_name(settings, n, settings_digest(ident))
            out = os.path.join(root, tag or model.name, "sample_invert", name)
    out = os.path.abspath(out)
    st, done = _open_store(out, ident, n, recompute=not reuse and out not in _COMPUTED)
    try:
        if not done.all():
            _compute(model, settings, inputs, n, st, done, class_cond, progress, mesh or sharding.data_mesh(), desc)
        if jax.process_index() == 0:
            st.finalize()
            result = Run(out, verify=False)  # the store verified or wrote its files
            if not _metrics_readable(os.path.join(out, METRICS)):
                _write_metrics(result, ident, command, model.decoder is not None)
        _COMPUTED.add(out)
    finally:
        if st is not None:
            st.close()
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("jtaba.runs.run finalized")
    try:
        return Run(out, verify=False)
    except RunNotFinished:  # another process's view of a folder that is not on a shared file system
        return None


@dataclasses.dataclass(frozen=True, eq=False)
class Workspace:
    """A model and where its runs live: what an analysis needs to get runs (computed, resumed or reused).
    ``label`` names the analysis in the progress bars ("triangles: run T=50")."""
    model: Model
    tag: str = ""  # the folder under ``root`` (default: the model's name)
    root: str = "runs"
    reuse: bool = True
    progress: bool = True
    label: str = "sample/invert"

    def __post_init__(self):
        if not self.tag:
            object.__setattr__(self, "tag", self.model.name)

    def run(self, settings: RunSettings, what: str = "run") -> Run:
        """The run of ``settings``; ``what`` says which of the analysis's runs it is, for the progress bar."""
        return run(self.model, settings, root=self.root, tag=self.tag, reuse=self.reuse, progress=self.progress,
                   desc=f"{self.label}: {what} T={settings.steps}")
