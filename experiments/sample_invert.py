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

from jtaba import checks, cli


def build_parser():
    p = cli.parser("python -m experiments.sample_invert", __doc__)
    cli.add_model_flags(p)
    cli.add_run_flags(p, n=None, steps=100, batch=64, seed=42,
                      n_help="number of samples N (default: the rows of --noise / --samples / the --swap-from run, "
                             "else 1024); with an input file, its first N rows are used")
    p.add_argument("--out", default=None,
                   help="run folder (default: <runs-dir>/<model>/sample_invert/<settings>_<fingerprint>); rerun to "
                        "resume; a folder holding another run is refused")
    cli.add_input_flags(p)
    cli.add_method_flags(p)
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
    fwd.add_argument("--forward-level", choices=checks.FORWARD_LEVELS, default="exact",
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


def settings_from_args(args):
    from jtaba import runs
    from jtaba.runs.settings import input_array as _array

    return runs.RunSettings(
        n=args.n, steps=args.steps, seed=args.seed, batch=args.batch, noise=_array(args.noise, "--noise"),
        samples=_array(args.samples, "--samples"), labels=_array(args.labels, "--labels"),
        prompt_embeds=_array(args.prompt_embeds, "--prompt-embeds"), class_seed=args.class_seed,
        noises_per_class=args.noises_per_class, guidance=args.guidance, record=args.record,
        inversion=not args.no_inversion, reconstruction=not (args.no_inversion or args.no_reconstruction),
        forward_before=args.forward_before, forward_seed=args.forward_seed,
        forward_noise=_array(args.forward_noise, "--forward-noise"), forward_level=args.forward_level,
        swap_from=runs.open_run(args.swap_from) if args.swap_from else None, swap_before=args.swap_before,
        swap_type=args.swap_type, precision=args.precision, schedule_dtype=args.schedule_dtype,
        method=args.method, method_options=args.method_options)


@cli.entry_point
def main(argv: list[str] | None = None) -> str:
    argv = list(sys.argv if argv is None else ["python -m experiments.sample_invert", *argv])
    args = build_parser().parse_args(argv[1:])
    cli.initialize_distributed(args)
    from jtaba import runs

    settings = settings_from_args(args)
    model, tag = cli.load_model(args)
    method = settings.inverter()  # the checks of --method and its options, before the model is loaded
    passes = 1 + (not args.no_inversion) * method.network_calls(1, True) + \
        (not (args.no_inversion or args.no_reconstruction)) * method.network_calls(1, False)
    cli.warn_if_slow(settings.sample_count(), args.steps, passes, "sample_invert")
    result = runs.run(model, settings, args.out, root=args.runs_dir, tag=tag, reuse=not args.no_reuse,
                      command=argv)
    if result is not None:
        print(f"wrote {result.path}")
        return result.path
    return os.path.abspath(args.out) if args.out else ""


if __name__ == "__main__":
    main()
