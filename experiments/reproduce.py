"""The whole paper on one model and (App. G) its training runs: every analysis in dependency order, sharing runs,
into one report folder.

    python -m experiments.reproduce                                    # built-in model, quick sizes (2 CPU cores)
    python -m experiments.reproduce --model=adm32 --n=10240 --steps=100 --batch=256 --swap-steps=50 \\
        --train-run=runs/train/cifar10_s0 --train-run=runs/train/cifar10_s10 --train-run=runs/train/cifar10_s42
                                                                       # the paper's, App. G on three training seeds

Runs each analysis below with the same model, seed and precision; --n and --steps apply to the analyses on the
standard sample / invert / reconstruct run (computed once and shared); the analyses that record whole trajectories
take --steps but keep their own sample counts, steps keeps its T list (10, 20 and --steps) and swap its own N and T
(--swap-steps sets its T), see their --help. On the built-in model at the defaults: about 20 CPU-minutes.
Writes into --out: report.md (every table, with the paper reference, and the figures), one sub-folder per analysis
with its JSON, CSV and PNG files, and report.json (settings, timings, result paths). Rerunning reuses every
finished run.

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
import importlib
import os
import sys
import time

from jtaba import cli, io
from jtaba.distributed import is_main
from jtaba.runs import StandardOptions
from jtaba.runs.settings import INPUT_FIELDS

# (module, paper reference, options it takes from the report's flags), in dependency order: the standard run
# first (triangles makes it), then the analyses that reuse it, then those with runs of their own.
STANDARD = tuple(f.name for f in dataclasses.fields(StandardOptions))
OWN_SIZES = ("seed", "batch", "precision")
ANALYSES = (
    ("triangles", "Tab. 3, Fig. 9, App. B", STANDARD),
    ("correlations", "Tab. 2, Sec. 3.2", STANDARD),
    ("variances", "Tab. 4, Sec. 3.2", STANDARD),
    ("normality", "Fig. 2, Sec. 3.2", STANDARD),
    ("plain", "Tab. 5, Fig. 11, App. C", STANDARD),
    ("assignment", "Tab. 8, Fig. 12-13, App. E", STANDARD),
    ("steps", "Tab. 10, Tab. 11", ("n", *OWN_SIZES)),
    ("swap", "Tab. 9 and the forward fix, Sec. 5", OWN_SIZES),
    ("approximation_error", "Fig. 4, Tab. 6, App. D", ("steps", *OWN_SIZES)),
    ("trajectories", "Fig. 3, Sec. 3.3", ("steps", *OWN_SIZES)),
    ("interpolation", "Fig. 5, Tab. 12, Sec. 4.1", OWN_SIZES),
    ("diversity", "Fig. 6-7, Tab. 7, Tab. 13, Sec. 4.2", ("steps", *OWN_SIZES)),
)
# The training analyses (App. G), after the model analyses: ``compute(opts, rows_folder)`` on the --train-run
# folders instead of the model; besides these report flags they take --train-n, --train-select and the runs.
TRAINING_TAKES = ("steps", "batch", "precision", "runs_dir")
TRAINING_ANALYSES = (
    ("training_dynamics", "App. G.1, G.2, Fig. 14-15", TRAINING_TAKES),
    ("alignment", "App. G.3, Fig. 16-19", TRAINING_TAKES),
)
NAMES = tuple(name for name, _, _ in ANALYSES + TRAINING_ANALYSES)
TRAINING_NAMES = tuple(name for name, _, _ in TRAINING_ANALYSES)
APP_G_N = 2048  # App. G's N (upstream generate_noises(2048, 420)): --train-n's cap by default
NEEDS_TRAINING_RUN = ("needs a training run: train one with `python -m jtaba.train --preset=... --out=DIR` (README "
                      "\"Training ADMs from scratch\") and pass --train-run=DIR")


def build_parser():
    p = cli.parser("python -m experiments.reproduce", __doc__)
    cli.add_analysis_flags(p, StandardOptions)
    p.add_argument("--only", default=None, metavar="A,B",
                   help=f"comma-separated analyses to run (default: all of {', '.join(NAMES)})")
    p.add_argument("--skip", default="", metavar="A,B", help="comma-separated analyses to leave out")
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


def options_for(name: str, module, args, takes) -> object:
    """The analysis's own defaults, with the report's flags it takes."""
    fields = {f.name for f in dataclasses.fields(module.Options)}
    given = {k: getattr(args, k) for k in (*takes, *INPUT_FIELDS) if k in fields}  # every run with the inputs
    if name == "swap" and args.swap_steps is not None:
        given["steps"] = args.swap_steps
    return module.Options(**given)


def training_options(module, args, takes) -> object:
    """A training analysis's own defaults (App. G's noise seed 420), with the report's flags it takes, --train-n,
    --train-select and the training runs: the first --train-run for an analysis of one run (field ``run``), all of
    them for one over runs (field ``runs``)."""
    fields = {f.name for f in dataclasses.fields(module.Options)}
    runs = {"run": args.train_runs[0], "runs": tuple(args.train_runs)}
    given = {k: getattr(args, k) for k in takes if k in fields}
    given.update({k: v for k, v in runs.items() if k in fields})
    n = min(args.n, APP_G_N) if args.train_n is None else args.train_n
    return module.Options(**given, n=n, select=args.train_select)


def figures(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.endswith(".png")) if os.path.isdir(folder) else []


def section(name: str, ref: str, body: str, opts, seconds: float, folder: str) -> str:
    """An analysis's report.md section: its markdown tables, its figures, the options and the time."""
    pictures = "\n\n".join(f"![{name} {png}]({name}/{png})" for png in figures(folder))
    return (f"## {name} ({ref})\n\n{body}\n\n{pictures}\n\n"
            f"<sub>options: {dataclasses.asdict(opts)}; {seconds:.0f} s; files: `{name}/`</sub>\n")


@cli.entry_point
def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    cli.initialize_distributed(args)  # before any other JAX call
    names = chosen(args)
    from jtaba.train.export import run_name

    train_names = [run_name(r) for r in args.train_runs]
    if len(set(train_names)) != len(train_names):
        raise ValueError(f"the --train-run folders need distinct names (their rows and runs are kept by name): "
                         f"{train_names}")
    ws = cli.workspace(args)
    out = cli.out_dir(args, ws.tag, "reproduce", *cli.input_parts(args))
    writes = is_main()  # every process computes (the runs are collective); process 0 writes
    cli.warn_if_slow(args.n, args.steps, 6, "reproduce")  # the standard run, and about as much again elsewhere
    refs = {name: (ref, takes) for name, ref, takes in ANALYSES + TRAINING_ANALYSES}
    summary = {"model": ws.tag, "settings": {k: getattr(args, k) for k in STANDARD},
               "training_runs": [os.path.abspath(r) for r in args.train_runs], "analyses": {}}
    sections = []
    for i, name in enumerate(names):
        ref, takes = refs[name]
        module = importlib.import_module(f"experiments.{name}")
        training = name in TRAINING_NAMES
        print(f"[{i + 1}/{len(names)}] {name} ({ref})", flush=True)
        if training:
            opts = training_options(module, args, takes) if args.train_runs else None
            reason = None if args.train_runs else NEEDS_TRAINING_RUN
        else:
            opts = options_for(name, module, args, takes)
            reason = module.unavailable(ws, opts) if hasattr(module, "unavailable") else None
        if reason:
            print(f"  skipped: {reason}", flush=True)
            summary["analyses"][name] = {"reference": ref, "skipped": reason}
            sections.append(f"## {name} ({ref})\n\nSkipped:\n\n```\n{reason}\n```\n")
            if writes:
                io.write_json(os.path.join(out, "report.json"), summary)
            continue
        start = time.time()
        folder = os.path.join(out, name)
        entry = {"reference": ref, "options": dataclasses.asdict(opts), "folder": folder}
        if training:  # resumable rows kept where the analysis's own command keeps them
            entry["rows"] = os.path.abspath(module.default_out(opts))
            result = module.compute(opts, entry["rows"])
        else:
            result = module.compute(ws, opts)
        if writes:
            module.write_outputs(result, folder)
        seconds = time.time() - start
        summary["analyses"][name] = {**entry, "seconds": round(seconds, 1)}
        sections.append(section(name, ref, module.markdown(result), opts, seconds, folder))
        if writes:
            io.write_json(os.path.join(out, "report.json"), summary)
    if not writes:
        return out
    training_line = (f" App. G on the training runs {', '.join(f'`{n}`' for n in train_names)}."
                     if train_names else "")
    header = (f"# There and Back Again, reproduced on `{ws.tag}`\n\n"
              f"Standard run: N = {args.n}, T = {args.steps}, seed {args.seed}, precision {args.precision}."
              f"{training_line} Written by `{' '.join(['python -m experiments.reproduce', *argv])}`.\n")
    io.write_text(os.path.join(out, "report.md"), "\n".join([header, *sections]))
    total = sum(a.get("seconds", 0) for a in summary["analyses"].values())
    print(f"wrote {out}/report.md ({len(names)} analyses, {total / 60:.1f} min)")
    return out


if __name__ == "__main__":
    main()
