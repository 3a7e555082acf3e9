"""The authors' arrays as a run: upstream's output files (luk-st/taba ``run_*_sampling.py``: noise, samples, latents,
samples2, conds, ``all_t_*``, decoded samples) written into a jtaba run folder, fingerprinted with the model and
those arrays, so every analysis and ``--swap-from`` work on them.

    from jtaba import runs
    run = runs.import_run(jtaba.load("adm64"), "upstream_dir", "runs/adm64/imported", steps=100)

The run's identity is the one jtaba would give the same run computed from the given noise (and conds / prompt
embeddings): an analysis asked for that run (``--noise RUN/noise.npy`` with the same N, T and seed, and for DiT
``--labels RUN/conds.npy``, for IF ``--prompt-embeds``) finds the imported one instead of computing it. The identity
also says ``imported``: the files and the digests of the computed arrays (samples, latents, ...), which a request
never names. Arrays are NCHW as upstream writes them, stored as float32 (DiT / IF wrote float16).
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from jtaba.runs.fingerprint import array_digest
from jtaba.runs.reader import METRICS, Run
from jtaba.runs.settings import RunSettings
from jtaba.runs.store import RunStore

# upstream name -> run file name (LDM writes samples_decoded / samples2_decoded, DiT decoded_samples[2])
RENAMED = {"samples_decoded": "decoded_samples", "samples2_decoded": "decoded_samples2"}
REQUIRED = ("noise", "samples")
STATES = ("noise", "samples", "latents", "samples2")
DECODED = ("decoded_samples", "decoded_samples2")
RECORDED = tuple(f"all_t_{kind}{what}" for what in ("samples", "latents", "samples2")
                 for kind in ("", "eps_", "pred_xstart_"))
KNOWN = (*STATES, "conds", *DECODED, *RECORDED)
IMPORT_CHUNK = 1024  # samples per chunk written (the all_t_* files of a paper run do not fit in memory at once)


def read_folder(folder: str) -> dict[str, np.ndarray]:
    """The ``.npy`` files of ``folder`` by name (memory maps), upstream names mapped to run names (``RENAMED``);
    files that are no run array are left out."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such folder")
    arrays = {}
    for f in sorted(os.listdir(folder)):
        name = RENAMED.get(f[:-4], f[:-4])
        if f.endswith(".npy") and name in KNOWN:
            arrays[name] = np.load(os.path.join(folder, f), mmap_mode="r")
    return arrays


def check_arrays(model, arrays: Mapping[str, np.ndarray], steps: int | None) -> tuple[int, int]:
    """(N, T) of upstream arrays for ``model``; ValueError naming a missing file, a wrong shape or arrays of
    another model in one line."""
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise ValueError(f"{' and '.join(f'{k}.pt / {k}.npy' for k in missing)} missing (a sampling run's files: "
                         f"{', '.join(REQUIRED)}, optionally latents, samples2, conds, all_t_*)")
    shape, n = tuple(model.sample_shape), len(arrays["noise"])
    for k in STATES:
        a = arrays.get(k)
        if a is None:
            continue
        if a.ndim != 4 or tuple(a.shape[1:]) != shape:
            raise ValueError(f"{k} is {tuple(a.shape)}: arrays of another model (this {model.family} model's samples "
                             f"are (N, {', '.join(map(str, shape))}))")
        if len(a) != n:
            raise ValueError(f"{k} holds {len(a)} samples, noise {n}")
    recorded = [k for k in RECORDED if k in arrays]
    for k in recorded:
        a = arrays[k]
        if a.ndim != 5 or tuple(a.shape[2:]) != shape or a.shape[1] != n:
            raise ValueError(f"{k} is {tuple(a.shape)}, expected (T, {n}, {', '.join(map(str, shape))})")
    ts = {arrays[k].shape[0] for k in recorded}
    if len(ts) > 1:
        raise ValueError(f"the all_t_* files hold different step counts {sorted(ts)}")
    if ts and steps is not None and steps not in ts:
        raise ValueError(f"steps={steps}, but the all_t_* files hold {ts.pop()} steps")
    t = steps if steps is not None else (ts.pop() if ts else None)
    if t is None:
        raise ValueError("the step count T is needed (no all_t_* files tell it): give steps")
    for k in DECODED:
        if k in arrays and len(arrays[k]) != n:
            raise ValueError(f"{k} holds {len(arrays[k])} samples, noise {n}")
    if "conds" in arrays and (arrays["conds"].ndim != 1 or len(arrays["conds"]) != n):
        raise ValueError(f"conds is {tuple(arrays['conds'].shape)}, expected ({n},) class labels")
    return n, int(t)


def import_run(model, source: str | Mapping[str, np.ndarray], out: str, *, steps: int | None = None,
               seed: int = 42, prompt_embeds: np.ndarray | None = None, schedule_dtype: str | None = None,
               command=None) -> Run:
    """Write upstream's arrays (``source``: a folder of ``.npy`` files, or the arrays by name) for ``model`` into
    the run folder ``out``; returns the finished ``Run``. ``steps``: T (default: from the all_t_* files);
    ``seed``: the seed recorded in the identity (analyses asked with the same seed find the run); ``prompt_embeds``
    (N, L, D): the prompts of a text-conditioned model's run; ``command`` (argv): recorded in metrics.json."""
    from jtaba.runs.run import _write_metrics, plan

    arrays = read_folder(source) if isinstance(source, str) else dict(source)
    n, t = check_arrays(model, arrays, steps)
    class_cond = model.num_classes is not None and model.conditional
    if "conds" in arrays and not class_cond:
        raise ValueError(f"conds given: arrays of another model (this {model.family} model takes no class labels)")
    if class_cond and "conds" not in arrays:
        raise ValueError(f"conds.pt / conds.npy missing: this {model.family} model is class-conditional")
    labels = np.asarray(arrays["conds"]).astype(np.int64) if class_cond else None
    states = {k: np.asarray(arrays[k], np.float32) for k in STATES if k in arrays}
    settings = RunSettings(n=n, steps=t, seed=seed, noise=states["noise"], labels=labels,
                           prompt_embeds=None if prompt_embeds is None else np.asarray(prompt_embeds, np.float32),
                           schedule_dtype=schedule_dtype, record=any(k in arrays for k in RECORDED),
                           inversion="latents" in arrays, reconstruction="samples2" in arrays)
    ident, _ = plan(model, settings)  # the model's checks: conditioning, shapes, label range, finite noise
    ident["imported"] = {"files": sorted(arrays),  # by content: the same arrays from another folder are this run
                         **{k: array_digest(states[k]) for k in ("samples", "latents", "samples2") if k in states}}
    store = RunStore(out, ident, n)
    try:
        for start in range(0, n, IMPORT_CHUNK) if not store.complete else ():
            stop = min(n, start + IMPORT_CHUNK)
            chunk = {k: np.asarray(a[:, start:stop] if k.startswith("all_t_") else a[start:stop], np.float32)
                     for k, a in arrays.items() if k != "conds"}
            store.write(start, stop, {**chunk, **({"conds": labels[start:stop]} if labels is not None else {})})
        store.finalize()
    finally:
        store.close()
    run = Run(out)
    if not os.path.exists(os.path.join(run.path, METRICS)):
        _write_metrics(run, ident, command, any(k in arrays for k in DECODED))
    return run
