"""Sample → invert → reconstruct (reference §3.1), with forward-diffusion and ground-truth-swap inversion (§2.3, §2.4).

    python -m experiments.sample_invert --model=adm32 --n=10240 --steps=100 --batch=256 --seed=420 --out=runs/adm32

Writes the upstream file set into --out as .npy (NCHW float32; trajectories (T, N, C, H, W)): noise, samples,
latents, samples2 (+ all_t_* with --record; decoded_samples / decoded_samples2 for latent models; conds for
class-conditional models) and metrics.json = {"_params": {..., "cmd": argv}, "metrics": core_metrics(...)}.

Sample i's noise (and forward noise, and drawn class label) depends only on (seed, i): results do not depend on the
batch size, the device count or the process count, and no sample is dropped (N need not divide by anything). Each
finished batch is written atomically; re-running the same command resumes a killed run, and a different command on
the same --out is refused (see ``jtaba.store``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

from experiments import add_model_flags, model_dir

SWAP_FILES = {"eps": "all_t_eps_samples", "xt": "all_t_samples"}


def build_parser() -> argparse.ArgumentParser:
    from jtaba import distributed

    p = argparse.ArgumentParser(
        prog="python -m experiments.sample_invert", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    p.add_argument("--n", type=int, default=None,
                   help="number of samples N (default: the rows of --noise / --samples / the --swap-from run, "
                        "else 1024); with an input file, its first N rows are used")
    p.add_argument("--steps", type=int, default=100, help="DDIM steps T for sampling, inversion and reconstruction")
    p.add_argument("--batch", type=int, default=64,
                   help="samples per batch over all devices (does not change the results)")
    p.add_argument("--seed", type=int, default=42,
                   help="seed of the initial noise and of drawn class labels (per sample index)")
    p.add_argument("--out", default=None,
                   help="run directory (default runs/<model>/sample_invert/<settings>); rerun to resume")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="network compute dtype (params stay float32)")
    inp = p.add_argument_group("inputs")
    inp.add_argument("--noise", metavar="FILE.npy",
                     help="start from these noises (N, C, H, W) instead of drawing them from --seed (e.g. an "
                          "upstream noise.pt saved as .npy, for bitwise-identical starting points)")
    inp.add_argument("--samples", metavar="FILE.npy",
                     help="skip sampling and invert these clean samples (N, C, H, W) (upstream input_image_path); "
                          "the written noise is then --noise, or drawn from --seed (metrics vs noise are then "
                          "meaningless)")
    inp.add_argument("--labels", metavar="FILE.npy",
                     help="class labels (N,) int for class-conditional models (default: drawn uniformly per "
                          "sample from --seed, written as conds.npy)")
    inp.add_argument("--class-seed", type=int, default=None,
                     help="draw class labels as taba's DiT scripts do (cond_seed: Python random.choices over the "
                          "class names of the model's id2label, each repeated --noises-per-class times; reproduces "
                          "upstream conds.pt)")
    inp.add_argument("--noises-per-class", type=int, default=1,
                     help="with --class-seed: consecutive samples sharing a drawn class (upstream noises_per_prompt)")
    inp.add_argument("--prompt-embeds", metavar="FILE.npy",
                     help="prompt embeddings (N, L, D) for text-conditioned models (IF), written by "
                          "`python convert/if.py --prompts FILE` into CKPT/prompts/")
    inp.add_argument("--schedule-dtype", choices=("float32", "float16"), default=None,
                     help="diffusers models: scheduler arithmetic in float16 as upstream DiT/IF ran it (default: "
                          "the checkpoint's, float32)")
    inp.add_argument("--guidance", type=float, default=1.0,
                     help="classifier-free guidance scale for sampling and inversion (1.0 = off, as in the paper)")
    out = p.add_argument_group("outputs")
    out.add_argument("--record", action="store_true",
                     help="also write every step: all_t_samples, all_t_eps_samples, all_t_pred_xstart_samples and "
                          "the same for latents and samples2, as (T, N, C, H, W)")
    out.add_argument("--no-inversion", action="store_true", help="only sample (no latents, no samples2)")
    out.add_argument("--no-reconstruction", action="store_true", help="do not sample again from the latents")
    fwd = p.add_argument_group("forward-diffusion inversion (replace the first K inversion steps by q(x_t | x_0))")
    fwd.add_argument("--forward-before", type=int, default=0, metavar="K",
                     help="number of first inversion steps replaced by closed-form forward diffusion (0 = plain DDIM)")
    fwd.add_argument("--forward-seed", type=int, default=42,
                     help="seed of the forward-diffusion noise (its own stream, per sample index)")
    fwd.add_argument("--forward-noise", metavar="FILE.npy", help="forward-diffusion noise (N, C, H, W) to use instead")
    fwd.add_argument("--forward-level", choices=("exact", "upstream"), default="exact",
                     help="exact: the level K inversion steps reach; upstream: taba's diffusers-path level, one "
                          "step further (identical for ADM)")
    swp = p.add_argument_group("ground-truth swap (replace the first K inversion steps' eps or x_t)")
    swp.add_argument("--swap-from", metavar="DIR",
                     help="a sampling run made with --record and the same --steps: its samples are inverted (unless "
                          "--samples), its noise is the reference noise, its conds the labels; the engine picks "
                          "the mirror step of each inversion step")
    swp.add_argument("--swap-before", type=int, default=0, metavar="K", help="number of first inversion steps swapped")
    swp.add_argument("--swap-type", choices=("eps", "xt"), default="eps",
                     help="eps: swap the noise prediction; xt: swap the state after the step")
    distributed.add_flags(p)
    return p


@dataclasses.dataclass
class Inputs:
    """Per-run inputs as host arrays (memory maps for files), rows 0..N-1."""
    noise: np.ndarray | None  # None: drawn per index
    samples: np.ndarray | None  # None: sampled
    labels: np.ndarray | None  # None: drawn per index (class-conditional) or unconditional
    prompts: np.ndarray | None  # (N, L, D) prompt embeddings (text-conditioned models)
    forward_noise: np.ndarray | None
    swap: dict | None  # {"all_t_samples" | "all_t_eps_samples": (T, N, ...)}


def _load(path: str, what: str) -> np.ndarray:
    if not path.endswith(".npy") or not os.path.exists(path):
        raise SystemExit(f"{what}: {path} is not an existing .npy file")
    return np.load(path, mmap_mode="r")


def upstream_labels(args, model) -> np.ndarray:
    """taba's class-name sampling (reference §1.5) for --n samples."""
    from jtaba.class_labels import upstream_class_labels

    id2label = model.extras.get("id2label")
    if not id2label:
        raise SystemExit("--class-seed needs the model's id2label (saved by convert/dit.py from a hub checkpoint)")
    if args.n is None or args.n % args.noises_per_class:
        raise SystemExit("--class-seed needs --n, a multiple of --noises-per-class")
    return upstream_class_labels(id2label, args.class_seed, args.n // args.noises_per_class, args.noises_per_class)


def resolve_inputs(args, model) -> tuple[Inputs, int]:
    """Open every input file, check shapes, and fix N."""
    shape = model.sample_shape
    swap_dir = args.swap_from
    noise = _load(args.noise, "--noise") if args.noise else None
    samples = _load(args.samples, "--samples") if args.samples else None
    if args.labels and args.class_seed is not None:
        raise SystemExit("--labels and --class-seed cannot be combined")
    labels = _load(args.labels, "--labels") if args.labels else None
    labels = upstream_labels(args, model) if args.class_seed is not None else labels
    prompts = _load(args.prompt_embeds, "--prompt-embeds") if args.prompt_embeds else None
    swap = None
    if swap_dir:
        if args.swap_before <= 0:
            raise SystemExit("--swap-from needs --swap-before=K > 0")
        name = SWAP_FILES[args.swap_type]
        swap = {name: _load(os.path.join(swap_dir, name + ".npy"), "--swap-from (run it with --record)")}
        if swap[name].shape[0] != args.steps:
            raise SystemExit(f"--swap-from run recorded {swap[name].shape[0]} steps, "
                             f"this run uses --steps={args.steps}")
        samples = samples if samples is not None else _load(os.path.join(swap_dir, "samples.npy"), "--swap-from")
        noise = noise if noise is not None else _load(os.path.join(swap_dir, "noise.npy"), "--swap-from")
        if labels is None and os.path.exists(os.path.join(swap_dir, "conds.npy")):
            labels = _load(os.path.join(swap_dir, "conds.npy"), "--swap-from")
    elif args.swap_before:
        raise SystemExit("--swap-before needs --swap-from=DIR")
    if args.forward_before and swap:
        raise SystemExit("--forward-before and --swap-from cannot be combined")
    if args.forward_noise and not args.forward_before:
        raise SystemExit("--forward-noise needs --forward-before=K > 0")
    fwd = _load(args.forward_noise, "--forward-noise") if args.forward_noise else None
    given = [(n, a) for n, a in [("--noise", noise), ("--samples", samples), ("--labels", labels),
                                 ("--prompt-embeds", prompts), ("--forward-noise", fwd)] if a is not None]
    n = args.n if args.n is not None else (len(given[0][1]) if given else 1024)
    given += [("--swap-from", np.moveaxis(a, 1, 0)) for a in (swap or {}).values()]  # (N, T, C, H, W) view
    for flag, a in given:
        if len(a) < n:
            raise SystemExit(f"{flag} has {len(a)} samples, fewer than N={n}")
        if a.ndim > 1 and flag != "--prompt-embeds" and tuple(a.shape[-3:]) != tuple(shape):
            raise SystemExit(f"{flag} samples are {tuple(a.shape[-3:])}, the model's are {tuple(shape)} (NCHW)")
    if labels is not None and labels.ndim != 1:
        raise SystemExit(f"--labels must be (N,) class labels, got shape {labels.shape}")
    return Inputs(noise, samples, labels, prompts, fwd, swap), n


def run_params(args, ckpt: str, n: int) -> dict:
    """What determines the results (the store refuses to resume under other values)."""
    files = {k: os.path.abspath(v) if v else None for k, v in
             dict(noise=args.noise, samples=args.samples, labels=args.labels, forward_noise=args.forward_noise,
                  swap_from=args.swap_from).items()}
    return dict(ckpt=ckpt, n=n, steps=args.steps, seed=args.seed, dtype=args.dtype, guidance=args.guidance,
                class_seed=args.class_seed, noises_per_class=args.noises_per_class,
                schedule_dtype=args.schedule_dtype,
                record=args.record, inversion=not args.no_inversion,
                reconstruction=not (args.no_inversion or args.no_reconstruction),
                forward_before=args.forward_before, forward_seed=args.forward_seed if args.forward_before else None,
                forward_level=args.forward_level if args.forward_before else None,
                swap_before=args.swap_before, swap_type=args.swap_type if args.swap_from else None, **files)


def default_out(args, tag: str, n: int) -> str:
    name = f"seed{args.seed}_T{args.steps}_n{n}"
    if args.forward_before:
        name += f"_forward{args.forward_before}_fseed{args.forward_seed}_{args.forward_level}"
    if args.swap_from:
        name += f"_swap_{args.swap_type}{args.swap_before}"
    return os.path.join("runs", tag, "sample_invert", name)


def open_store(out: str, params: dict, n: int):
    """Process 0 opens the run directory; every process learns which samples are done (or that it was refused)."""
    import jax
    from jax.experimental import multihost_utils

    from jtaba import store

    st, status, error = None, np.zeros(n + 1, np.int8), None
    if jax.process_index() == 0:
        try:
            st = store.RunStore(out, params, n)
            status[0], status[1:] = 1, st.done_mask()
        except store.RunMismatch as e:
            error = e
    if jax.process_count() > 1:
        status = np.asarray(multihost_utils.broadcast_one_to_all(status))
    if not status[0]:
        raise SystemExit(str(error) if error else "process 0 refused the run directory")
    return st, status[1:].astype(bool)


def check_args(args, model, n: int) -> bool:
    """Refuse, before anything is written, what cannot run; returns whether the model takes class labels."""
    from jtaba import engine

    if n < 1 or args.batch < 1 or args.steps < 1:
        raise SystemExit("--n, --batch and --steps must be positive")
    if not 0 <= args.forward_before <= args.steps:
        raise SystemExit(f"--forward-before must be in [0, --steps={args.steps}]")
    if args.swap_from:
        try:
            engine.mirror_indices(model.diffusion, args.steps, args.swap_type, args.swap_before)
        except ValueError as e:
            raise SystemExit(f"--swap-before: {e}") from None
    class_cond = model.num_classes is not None and model.conditional
    text_cond = model.conditional and not class_cond
    if text_cond and not args.prompt_embeds:
        raise SystemExit(f"this {model.family} model is text-conditioned: pass --prompt-embeds FILE.npy (made by "
                         f"`python convert/if.py --prompts FILE`)")
    if args.prompt_embeds and not text_cond:
        raise SystemExit(f"--prompt-embeds given, but this {model.family} model is not text-conditioned")
    if (args.labels or args.class_seed is not None) and not class_cond:
        raise SystemExit(f"--labels / --class-seed given, but this {model.family} model is not class-conditional")
    if args.guidance != 1.0 and not model.conditional:
        raise SystemExit("--guidance needs a conditional model (classifier-free guidance)")
    if args.schedule_dtype and model.diffusion.kind != "diffusers":
        raise SystemExit("--schedule-dtype applies to diffusers models (ADM schedules are float64 → float32)")
    return class_cond



def batch_results(args, model, inputs: Inputs, put, start: int, stop: int, class_cond: bool) -> dict:
    """Samples [start, stop) on the mesh: {file name: (array, sample axis)} (batch padded; ``gather`` cuts it)."""
    import jtaba
    from jtaba import noise as noise_lib

    shape = tuple(model.sample_shape)
    idx = put(np.arange(start, stop, dtype=np.int32))
    z = (put(inputs.noise[start:stop]) if inputs.noise is not None
         else noise_lib.noise_for_indices(args.seed, idx, shape))
    res = {"noise": (z, 0)}
    cond = None
    if class_cond:
        cond = (put(inputs.labels[start:stop].astype(np.int32)) if inputs.labels is not None
                else noise_lib.labels_for_indices(args.seed, idx, model.num_classes))
        res["conds"] = (cond, 0)
    elif inputs.prompts is not None:
        cond = put(inputs.prompts[start:stop])
    kw = dict(steps=args.steps, cond=cond, guidance=args.guidance, record=args.record)

    def keep(suffix, traj):
        res[suffix] = (traj.x, 0)
        if args.record:
            res.update({f"all_t_{suffix}": (traj.xs, 1), f"all_t_eps_{suffix}": (traj.eps, 1),
                        f"all_t_pred_xstart_{suffix}": (traj.x0, 1)})

    if inputs.samples is not None:
        res["samples"] = (put(inputs.samples[start:stop]), 0)
    else:
        keep("samples", jtaba.sample(model, z, **kw))
    x = res["samples"][0]
    if not args.no_inversion:
        extra = {}
        if args.forward_before:
            fwd = (put(inputs.forward_noise[start:stop]) if inputs.forward_noise is not None
                   else noise_lib.noise_for_indices(args.forward_seed, idx, shape, "forward"))
            extra = dict(forward_before=args.forward_before, forward_noise=fwd, forward_level=args.forward_level)
        if inputs.swap:
            source = {k: put(v[:, start:stop], axis=1) for k, v in inputs.swap.items()}
            extra["swap"] = jtaba.Swap(args.swap_type, args.swap_before, source, noise=z)
        keep("latents", jtaba.invert(model, x, **kw, **extra))
        if not args.no_reconstruction:
            keep("samples2", jtaba.sample(model, res["latents"][0], **kw))
    if model.decoder is not None:
        res["decoded_samples"] = (jtaba.decode(model, x), 0)
        if "samples2" in res:
            res["decoded_samples2"] = (jtaba.decode(model, res["samples2"][0]), 0)
    return res


def run_batches(args, model, inputs: Inputs, n: int, st, done: np.ndarray, class_cond: bool) -> None:
    """Every pending batch: put inputs on the data mesh, compute, gather to the host, write a chunk (process 0)."""
    import jax
    from tqdm import tqdm

    from jtaba import sharding, store
    from jtaba.model import replicate

    mesh = sharding.data_mesh()
    model = replicate(model, sharding.replicated(mesh))
    size = sharding.padded_size(min(args.batch, n), mesh)  # every batch padded alike: one compilation

    def put(a, axis=0):
        a = np.asarray(a, np.float32) if a.dtype.kind == "f" else np.asarray(a)
        return sharding.put_batch(a, mesh, axis, size)

    main = jax.process_index() == 0
    bar = tqdm(total=n, initial=int(done.sum()), unit="sample", disable=not main, dynamic_ncols=True)
    for start, stop in store.pending_ranges(done, args.batch):
        res = batch_results(args, model, inputs, put, start, stop, class_cond)
        arrays = {}
        for name, (a, axis) in res.items():
            host = sharding.gather(a, stop - start, axis)
            arrays[name] = host.astype(np.int64) if name == "conds" else host.astype(np.float32, copy=False)
        if main:
            st.write(start, stop, arrays)
        bar.update(stop - start)
    bar.close()


def write_metrics(out: str, params: dict, argv: list[str], decoded: bool) -> None:
    """metrics.json from the finished files (memory-mapped), written atomically."""
    from jtaba.metrics.core import core_metrics

    def load(name):
        path = os.path.join(out, name + ".npy")
        return np.load(path, mmap_mode="r") if os.path.exists(path) else None

    metrics = {}
    if load("latents") is not None:
        prefix = "decoded_" if decoded else ""
        metrics = core_metrics(load("noise"), load("latents"), load(prefix + "samples"), load(prefix + "samples2"))
    tmp = os.path.join(out, "metrics.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"_params": {**params, "cmd": argv}, "metrics": metrics}, f, indent=1)
    os.replace(tmp, os.path.join(out, "metrics.json"))


def main(argv: list[str] | None = None) -> str:
    argv = list(sys.argv if argv is None else ["python -m experiments.sample_invert", *argv])
    args = build_parser().parse_args(argv[1:])
    from jtaba import distributed

    distributed.initialize_from_flags(args)
    import jtaba

    ckpt, tag = model_dir(args)
    model = jtaba.load(ckpt, dtype=args.dtype)
    if args.schedule_dtype and model.diffusion.kind == "diffusers":
        model = dataclasses.replace(model, diffusion=model.diffusion.replace(schedule_dtype=args.schedule_dtype))
    inputs, n = resolve_inputs(args, model)
    class_cond = check_args(args, model, n)
    out = os.path.abspath(args.out or default_out(args, tag, n))
    params = run_params(args, ckpt, n)
    st, done = open_store(out, params, n)
    if not done.all():
        run_batches(args, model, inputs, n, st, done, class_cond)
    if st is not None:
        st.finalize()
        if not os.path.exists(os.path.join(out, "metrics.json")):
            write_metrics(out, params, argv, model.decoder is not None)
        print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
