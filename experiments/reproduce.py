"""The whole paper on one model and (App. G) its training runs: every analysis in dependency order, sharing runs,
into one report folder.

    python -m experiments.reproduce                                    # built-in model, quick sizes (2 CPU cores)
    python -m experiments.reproduce --model=adm32 --n=10240 --steps=100 --batch=256 --swap-steps=50 \\
        --train-run=runs/train/cifar10_s0 --train-run=runs/train/cifar10_s10 --train-run=runs/train/cifar10_s42
                                                                       # the paper's, App. G on three training seeds

Runs each analysis with the same model, seed, precision and run inputs; --n and --steps set the standard sample /
invert / reconstruct run (computed once and shared), except where an analysis keeps its own sizes (listed under
"Sizes" below; its report section says so and why). On the built-in model at the defaults: about 20 CPU-minutes.
Writes into --out: report.md (a summary of the sizes against the paper's, the device and the time, then every table
with its columns defined, the paper reference and the figures), one sub-folder per analysis with its JSON, CSV and
PNG files, and report.json (settings, timings, result paths); an analysis folder an earlier report left there and
this one did not write is removed (one stderr line names it). Rerunning reuses every finished run; the console
shows "[i/n] analysis" with an estimate of the time left, and each progress bar names its analysis and run.

An analysis that cannot run on the model (editing diversity needs a class- or text-conditional model) is listed as
skipped with the reason; metrics whose perception network is not converted yet (FID / precision / recall, LPIPS,
DreamSim, DINO, CLIP) are listed as skipped inside their analysis's section with the convert command, and the rest
of that analysis runs.

App. G runs after the model analyses, on training runs of ``python -m jtaba.train`` (README "Training ADMs from
scratch"; one --train-run per training seed), with the EMA weights of every saved checkpoint (--train-select picks
some) sampling App. G's fixed noise set (seed 420) with --steps, --batch, --precision and N = --train-n:
training_dynamics (G.1, G.2) analyses the first --train-run, as the paper's Fig. 14-15 show one run; alignment
(G.3) compares each run's checkpoints with its final one and averages over all the runs (the training seeds), reusing
training_dynamics' samples of the first. Their per-checkpoint rows are kept where their own commands keep them
(<runs-dir>/<training run>/training_dynamics/..., <runs-dir>/<run names>/alignment/...), so a rerun or
``python -m experiments.training_dynamics`` / ``alignment`` with the same settings resumes from them. Cost per
checkpoint: 4 N x T network passes for G.1 + G.2, and 1 for G.3 on each further run; on a CPU select a few
checkpoints. Without --train-run both are listed as skipped.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time

from experiments import (
    alignment,
    approximation_error,
    assignment,
    correlations,
    diversity,
    interpolation,
    inverters,
    normality,
    plain,
    steps,
    swap,
    training_dynamics,
    trajectories,
    triangles,
    variances,
)
from jtaba import cli, io
from jtaba.runs import StandardOptions
from jtaba.runs.settings import INPUT_FIELDS

# In dependency order: the standard run first (triangles makes it), then the analyses that reuse it, then those
# with runs of their own; the training analyses (App. G) last, on the --train-run folders instead of the model.
ANALYSES = tuple(m.ANALYSIS for m in (triangles, correlations, variances, normality, plain, assignment, steps, swap,
                                      approximation_error, trajectories, interpolation, diversity,
                                      inverters))  # beyond the paper: inversion methods with its metrics
TRAINING_ANALYSES = (training_dynamics.ANALYSIS, alignment.ANALYSIS)
BY_NAME = {a.name: a for a in ANALYSES + TRAINING_ANALYSES}
NAMES = tuple(BY_NAME)
TRAINING_NAMES = tuple(a.name for a in TRAINING_ANALYSES)
STANDARD = tuple(f.name for f in dataclasses.fields(StandardOptions))
# What the training analyses take from the report's flags; besides these, --train-n, --train-select and the runs.
TRAINING_TAKES = ("steps", "batch", "precision", "runs_dir")
APP_G_N = 2048  # App. G's N (upstream generate_noises(2048, 420)): --train-n's cap by default
NEEDS_TRAINING_RUN = ("needs a training run: train one with `python -m jtaba.train --preset=... --out=DIR` (README "
                      "\"Training ADMs from scratch\") and pass --train-run=DIR")
# The paper's runs (Sec. 3.1; upstream README and slurm scripts): ADM n_samples=10240, num_inference_steps=100,
# seed 420, float32 (upstream's DiT / IF / LDM pipelines ran in float16).
PAPER = {"n": "10,240", "steps": "100", "seed": "420 (ADM)", "precision": "float32 (ADM; DiT / IF in float16)"}


def own_sizes_help() -> str:
    """The sizes paragraph of --help, from the analyses' declarations."""
    import textwrap

    symbol = {"n": "N", "steps": "T"}
    lines = []
    for a in ANALYSES:
        if a.own_sizes:
            own = ", ".join(f"{symbol.get(k, k)} = {getattr(a.options_class, k)}" for k in a.own_sizes)
            lines += textwrap.wrap(f"{a.name}: its own {own} ({a.sizes_note})", 112, initial_indent="  ",
                                   subsequent_indent="    ")
    head = ("Sizes: --n and --steps set the standard run of every other analysis (steps runs T = 10, 20 and --steps); "
            "these keep their own:")
    return "\n".join([*textwrap.wrap(head, 116), *lines, ""])


def build_parser():
    p = cli.parser("python -m experiments.reproduce", f"{__doc__}\n{own_sizes_help()}")
    cli.add_analysis_flags(p, StandardOptions)
    p.add_argument("--only", default=None, metavar="A,B",
                   help=f"comma-separated analyses to run (default: all of {', '.join(NAMES)})")
    p.add_argument("--skip", default="", metavar="A,B", help="comma-separated analyses to leave out")
    p.add_argument("--prompts", default="prompts", metavar="NAME|FILE.npy",
                   help="text-conditioned models: diversity's prompt set (its --prompts: NAME in the model's prompts/ "
                        "folder, or a .npy file with its .json beside it)")
    p.add_argument("--sizes", choices=("own", "report"), default="own",
                   help="own: the analyses that keep their own sizes keep them (see Sizes above); report: every "
                        "analysis runs at --n and --steps with its shortest lists (steps: T = --steps; swap and "
                        "diversity: K = 1; interpolation: 3 alphas, K = 1): one quick pass over every table")
    p.add_argument("--swap-steps", type=int, default=None,
                   help="T of the swap table (default: the swap analysis's own, sized for a CPU; the paper's Tab. 9 "
                        "used T = 50)")
    p.add_argument("--train-run", dest="train_runs", action="append", default=[], metavar="DIR",
                   help="a training run folder of `python -m jtaba.train` for App. G; repeat it for each training "
                        "seed (the paper used three): training_dynamics analyses the first, alignment averages over "
                        "all (default: none, App. G is listed as skipped)")
    p.add_argument("--train-n", type=int, default=None,
                   help=f"N of the App. G analyses, per checkpoint (default: --n, at most {APP_G_N}, App. G's N; "
                        "alignment needs at least 11)")
    p.add_argument("--train-select", default=None, metavar="SPEC",
                   help="analyse only the saved checkpoints matching this schedule, items joined by '+': every:N, "
                        "at:S1,S2,..., paper_cifar10, paper_imagenet64 (default: every saved step; the final one is "
                        "always used as the reference)")
    return p


def chosen(args) -> list[str]:
    only = [a.strip() for a in args.only.split(",") if a.strip()] if args.only else list(NAMES)
    skip = [a.strip() for a in args.skip.split(",") if a.strip()]
    unknown = sorted(set(only + skip) - set(NAMES))
    if unknown:
        raise SystemExit(f"unknown analyses {unknown}; choose from {', '.join(NAMES)}")
    return [a for a in NAMES if a in only and a not in skip]


# --sizes=report: the shortest lists of the analyses that sweep (a quick pass over every table).
SHORTEST = {"steps": lambda args: {"steps_list": (args.steps,)}, "swap": lambda args: {"k_list": (1,)},
            "interpolation": lambda args: {"alphas": 3, "forward_before": (1,)},
            "diversity": lambda args: {"swap_steps": (1,), "forward_steps": (1,)}}


def options_for(analysis: cli.Analysis, args) -> object:
    """The analysis's own defaults, with the report's flags it takes (all run settings but its ``own_sizes``, all
    of them and ``SHORTEST`` with --sizes=report; --swap-steps for swap's T)."""
    fields = {f.name for f in dataclasses.fields(analysis.options_class)}
    report_sizes = args.sizes == "report"
    takes = [k for k in (*STANDARD, *INPUT_FIELDS) if report_sizes or k not in analysis.own_sizes]
    given = {k: getattr(args, k) for k in takes if k in fields}  # every run with the inputs
    if report_sizes and analysis.name in SHORTEST:
        given.update(SHORTEST[analysis.name](args))
    if analysis.name == "swap" and args.swap_steps is not None:
        given["steps"] = args.swap_steps
    if analysis.name == "diversity":
        given["prompts"] = diversity.prompt_file(args)
    opts = analysis.options_class(**given)
    if analysis.name == "swap" and args.swap_steps is not None:
        return opts
    return cli.paper_options(analysis.name, opts, getattr(args, "paper_settings", None), ())


def training_options(analysis: cli.Analysis, args) -> object:
    """A training analysis's own defaults (App. G's noise seed 420), with the report's flags it takes, --train-n,
    --train-select and the training runs: the first --train-run for an analysis of one run (field ``run``), all of
    them for one over runs (field ``runs``)."""
    fields = {f.name for f in dataclasses.fields(analysis.options_class)}
    runs = {"run": args.train_runs[0], "runs": tuple(args.train_runs)}
    given = {k: getattr(args, k) for k in TRAINING_TAKES if k in fields}
    given.update({k: v for k, v in runs.items() if k in fields})
    n = min(args.n, APP_G_N) if args.train_n is None else args.train_n
    return analysis.options_class(**given, n=n, select=args.train_select)


def figures(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.endswith(".png")) if os.path.isdir(folder) else []


def sizes_line(analysis: cli.Analysis, opts, args, passes: int) -> str:
    """The section's sizes: N and T(s), and why they differ from the report's."""
    ts = ", ".join(map(str, analysis.step_counts(opts)))
    if analysis.training:
        return f"N = {opts.n} per checkpoint (App. G's fixed noise set, seed {opts.seed}), T = {ts}."
    what = f"N = {opts.n}{' per T' if len(analysis.step_counts(opts)) > 1 else ''}, T = {ts}"
    own = [k for k in ("n", "steps") if getattr(opts, k) != getattr(args, k)]
    if analysis.name == "swap" and args.swap_steps is not None and "steps" in own:
        own.remove("steps")
    if not own:
        shared = " (the standard run, shared)" if len(analysis.step_counts(opts)) == 1 else ""
        return f"{what}{shared}."
    return (f"Ran at its own {what} (the report's: N = {args.n}, T = {args.steps}): {passes} network passes of "
            f"N x T; {analysis.sizes_note}.")


def options_text(opts) -> str:
    """The options beyond N and T (shown in the sizes line), unset inputs and empty lists (defaults derived from
    others, such as steps' T list)."""
    unset = {k for k in INPUT_FIELDS if getattr(opts, k, None) == getattr(StandardOptions, k, None)}
    return ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(opts).items()
                     if k not in {"n", "steps", *unset} and v != ())


def measured_space(model) -> str:
    """Where the analyses measure noise, samples and latents: the diffusion model's own space (the paper measures
    latent models on their latents, Sec. 3.1)."""
    if model.decoder is None:
        return "pixels"
    kind = {"vq": "VQ-VAE", "vae": "VAE"}.get(model.decoder.family, model.decoder.family)
    return f"{kind} latents ({' x '.join(map(str, model.sample_shape))})"


def paper_line(ws, args) -> str:
    """Which settings this report used against the paper's for the model's family (``jtaba.paper``)."""
    from jtaba import paper

    try:
        settings = paper.settings(ws.model.family)
    except ValueError as e:
        return str(e)
    used = {k: getattr(args, k) for k in settings.run}
    differ = paper.differences(used, settings)
    given = "with --paper" if args.paper else "without --paper"
    return (f"Paper settings for {settings.family} ({given}): "
            + (f"differs in {', '.join(differ)}." if differ else "the standard run uses them all.")
            + (f" Needs {settings.needs}." if settings.needs and args.prompt_embeds is None else ""))


def section(analysis: cli.Analysis, body: str, sizes: str, opts, seconds: float, folder: str) -> str:
    """An analysis's report.md section: the sizes, its markdown tables, its figures, the options and the time."""
    name = analysis.name
    pictures = "\n\n".join(f"![{name} {png}]({name}/{png})" for png in figures(folder))
    return (f"## {name} ({analysis.paper_ref})\n\n{sizes}\n\n{body}\n\n{pictures}\n\n"
            f"<sub>options: {options_text(opts)}; {seconds:.0f} s; files: `{name}/`</sub>\n")


def device_text() -> str:
    import jax

    d = jax.devices()[0]
    count = f"{jax.device_count()} x " if jax.device_count() > 1 else ""
    return f"{count}{d.device_kind} ({d.platform})"


def summary_block(ws, args, argv, entries: dict, total: float, train_names: list[str]) -> str:
    """report.md's head: model, sizes against the paper's, precision, device, time, analyses run and skipped."""
    run = [n for n, e in entries.items() if "skipped" not in e]
    skipped = [f"{n} ({'no training run' if e['skipped'] == NEEDS_TRAINING_RUN else 'model cannot run it'})"
               for n, e in entries.items() if "skipped" in e]
    family = getattr(ws.model, "family", "?")
    rows = [("model", f"`{ws.tag}` ({family})", "ADM-32 / 64 / 256, LDM, DiT, IF (Sec. 3.1)"),
            ("N (samples of the standard run)", f"{args.n:,}", PAPER["n"]),
            ("T (DDIM steps of sampling and inversion)", str(args.steps), PAPER["steps"]),
            ("seed of the noise", str(args.seed), PAPER["seed"]),
            ("precision", args.precision, PAPER["precision"])]
    table = ["| | this report | the paper |", "|---|---|---|", *(f"| {a} | {b} | {c} |" for a, b, c in rows)]
    training = f" App. G on the training runs {', '.join(f'`{n}`' for n in train_names)}." if train_names else ""
    ran = f"Analyses run ({len(run)}): {', '.join(run)}."
    if skipped:
        ran += f" Skipped ({len(skipped)}): {', '.join(skipped)}."
    command = " ".join(["python -m experiments.reproduce", *argv])
    note = (f"Sections that ran at other sizes say so and why; every table's columns are defined under it. Written "
            f"by `{command}`.")
    return "\n".join([f"# There and Back Again, reproduced on `{ws.tag}`", "", *table, "",
                      f"Device: {device_text()}. Total time: {total / 60:.1f} min. {ran}{training}", "", note, ""])


def left_text(done: int, elapsed: float, left: int) -> str:
    """", ~M min left" at the pace so far (the mean time of the ``done`` analyses, for the ``left`` to run)."""
    if done == 0 or left == 0:
        return ""
    minutes = elapsed / done * left / 60
    return f", ~{minutes:.0f} min left" if minutes >= 1 else ", <1 min left"


def remove_earlier_analyses(out: str, written: list[str]) -> None:
    """Remove the folders an earlier report in ``out`` left for analyses this one did not write (fewer --only, a
    skipped one), so the folder holds what report.md describes; other files and folders are kept."""
    left = [n for n in NAMES if n not in written and os.path.isdir(os.path.join(out, n))]
    for name in left:
        shutil.rmtree(os.path.join(out, name))
    if left:
        print(f"removed {', '.join(f'{n}/' for n in left)} from {out}: left by an earlier report, not in this one",
              file=sys.stderr, flush=True)


@cli.entry_point
def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    cli.initialize_distributed(args)  # before any other JAX call
    args.paper_settings = cli.apply_paper(args, argv)
    names = chosen(args)
    from jtaba.train.export import run_name

    train_names = [run_name(r) for r in args.train_runs]
    if len(set(train_names)) != len(train_names):
        raise ValueError(f"the --train-run folders need distinct names (their rows and runs are kept by name): "
                         f"{train_names}")
    ws = cli.workspace(args)
    out = cli.out_dir(args, ws.tag, "reproduce", *cli.input_parts(args))
    writes = cli.writes_outputs()
    cli.warn_if_slow(args.n, args.steps, 6, "reproduce")  # the standard run, and about as much again elsewhere
    summary = {"model": ws.tag, "settings": {k: getattr(args, k) for k in STANDARD},
               "training_runs": [os.path.abspath(r) for r in args.train_runs], "analyses": {}}
    plan = []  # (analysis, options or None, reason to skip or None)
    for name in names:
        analysis = BY_NAME[name]
        if analysis.training:
            opts = training_options(analysis, args) if args.train_runs else None
            reason = None if args.train_runs else NEEDS_TRAINING_RUN
        else:
            opts = options_for(analysis, args)
            reason = analysis.unavailable(ws, opts)
        plan.append((analysis, opts, reason))
    sections, started, done = [], time.time(), 0
    for i, (analysis, opts, reason) in enumerate(plan):
        name, ref = analysis.name, analysis.paper_ref
        left = left_text(done, time.time() - started, sum(r is None for *_, r in plan[i:]))
        print(f"[{i + 1}/{len(plan)}] {name} ({ref}){left}", flush=True)
        if reason:
            print(f"  skipped: {reason}", flush=True)
            summary["analyses"][name] = {"reference": ref, "skipped": reason}
            sections.append(f"## {name} ({ref})\n\nSkipped:\n\n```\n{reason}\n```\n")
            if writes:
                io.write_json(os.path.join(out, "report.json"), summary)
            continue
        start = time.time()
        folder = os.path.join(out, name)
        entry = {"reference": ref, "options": dataclasses.asdict(opts), "folder": folder,
                 "space": "training runs' pixels" if analysis.training else measured_space(ws.model)}
        label = f"[{i + 1}/{len(plan)}] {name}"
        if analysis.training:  # resumable rows kept where the analysis's own command keeps them
            entry["rows"] = os.path.abspath(analysis.default_out(opts))
            result = analysis.compute(opts, entry["rows"])
        else:
            result = analysis.compute(dataclasses.replace(ws, label=label), opts)
        if writes:
            analysis.write_outputs(result, folder)
        seconds = time.time() - start
        done += 1
        summary["analyses"][name] = {**entry, "seconds": round(seconds, 1)}
        passes = 0 if analysis.training else analysis.network_passes(ws, opts)
        sizes = f"{sizes_line(analysis, opts, args, passes)} Measured in {entry['space']}."
        sections.append(section(analysis, analysis.markdown(result), sizes, opts,
                                seconds, folder))
        if writes:
            io.write_json(os.path.join(out, "report.json"), summary)
    if not writes:
        return out
    total = time.time() - started
    summary["seconds"] = round(total, 1)
    io.write_json(os.path.join(out, "report.json"), summary)
    head = f"{summary_block(ws, args, argv, summary['analyses'], total, train_names)}\n{paper_line(ws, args)}\n"
    io.write_text(os.path.join(out, "report.md"), "\n".join([head, *sections]))
    remove_earlier_analyses(out, [n for n, e in summary["analyses"].items() if "skipped" not in e])
    print(f"wrote {out}/report.md ({len(names)} analyses, {total / 60:.1f} min)")
    return out


if __name__ == "__main__":
    main()
