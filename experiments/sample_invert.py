"""Sample -> invert -> reconstruct (paper Sec. 3.1), with forward-diffusion and ground-truth-swap inversion (Sec. 5).

    python -m experiments.sample_invert --model=adm32 --n=10240 --steps=100 --batch=256 --seed=420 --record

Writes the upstream file set as .npy (NCHW float32; trajectories (T, N, C, H, W)): noise, samples, latents,
samples2 (+ all_t_* with --record; decoded_samples[2] for latent models; conds for class-conditional models), the
run manifest and metrics.json = {"_params": {identity..., "cmd": argv}, "metrics": core metrics}. The work is done
by ``jtaba.runs.run``: per-index noise (results do not depend on batch size, device or process count), chunks
written atomically, a killed run resumes with the same command, and a finished run with the same model, inputs
and settings is reused instead of recomputed.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from jtaba import cli


def build_parser():
    p = cli.parser("python -m experiments.sample_invert", __doc__)
    cli.add_model_flags(p)
    cli.add_run_flags(p, n=None, steps=100, batch=64, seed=42,
                      n_help="number of samples N (default: the rows of --noise / --samples / the --swap-from run, "
                             "else 1024); with an input file, its first N rows are used")
    p.add_argument("--out", default=None,
                   help="run folder (default: <runs-dir>/<model>/sample_invert/<settings>_<fingerprint>); rerun to "
                        "resume; a folder holding another run is refused")
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
                     help="a finished sampling run made with --record, the same model and --steps: its samples are "
                          "inverted (unless --samples), its noise is the reference noise, its conds the labels; the "
                          "engine picks the mirror step of each inversion step")
    swp.add_argument("--swap-before", type=int, default=0, metavar="K", help="number of first inversion steps swapped")
    swp.add_argument("--swap-type", choices=("eps", "xt"), default="eps",
                     help="eps: swap the noise prediction; xt: swap the state after the step")
    cli.add_distributed_flags(p)
    return p


def _array(path: str | None, flag: str):
    if path is None:
        return None
    if not path.endswith(".npy") or not os.path.isfile(path):
        raise SystemExit(f"{flag}: {path} is not an existing .npy file")
    try:
        return np.load(path, mmap_mode="r")
    except ValueError as e:
        raise SystemExit(f"{flag}: {path} is not a readable .npy file ({e})") from None


def settings_from_args(args):
    from jtaba import runs

    return runs.RunSettings(
        n=args.n, steps=args.steps, seed=args.seed, batch=args.batch, noise=_array(args.noise, "--noise"),
        samples=_array(args.samples, "--samples"), labels=_array(args.labels, "--labels"),
        prompt_embeds=_array(args.prompt_embeds, "--prompt-embeds"), class_seed=args.class_seed,
        noises_per_class=args.noises_per_class, guidance=args.guidance, record=args.record,
        inversion=not args.no_inversion, reconstruction=not (args.no_inversion or args.no_reconstruction),
        forward_before=args.forward_before, forward_seed=args.forward_seed,
        forward_noise=_array(args.forward_noise, "--forward-noise"), forward_level=args.forward_level,
        swap_from=runs.open_run(args.swap_from) if args.swap_from else None, swap_before=args.swap_before,
        swap_type=args.swap_type, precision=args.precision, schedule_dtype=args.schedule_dtype)


@cli.entry_point
def main(argv: list[str] | None = None) -> str:
    argv = list(sys.argv if argv is None else ["python -m experiments.sample_invert", *argv])
    args = build_parser().parse_args(argv[1:])
    cli.initialize_distributed(args)
    from jtaba import runs

    model, tag = cli.load_model(args)
    settings = settings_from_args(args)
    passes = 1 + (not args.no_inversion) + (not (args.no_inversion or args.no_reconstruction))
    cli.warn_if_slow(settings.sample_count(), args.steps, passes, "sample_invert")
    result = runs.run(model, settings, args.out, root=args.runs_dir, tag=tag, reuse=not args.no_reuse,
                      command=argv)
    if result is not None:
        print(f"wrote {result.path}")
        return result.path
    return os.path.abspath(args.out) if args.out else ""


if __name__ == "__main__":
    main()
