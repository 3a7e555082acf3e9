"""The whole paper on one model: every analysis in dependency order, sharing runs, into one report folder.

    python -m experiments.reproduce                                    # built-in model, quick sizes (2 CPU cores)
    python -m experiments.reproduce --model=adm32 --n=10240 --steps=100 --batch=256 --swap-steps=50  # the paper's

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

Not in this report: App. G (training dynamics and feature alignment need a training run: ``python -m
experiments.training_dynamics --run=DIR``, ``python -m experiments.alignment --run=DIR``).
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import time

from jtaba import cli, io
from jtaba.runs import StandardOptions

# (module, paper reference, options it takes from the report's flags), in dependency order: the standard run
# first (triangles makes it), then the analyses that reuse it, then those with runs of their own.
STANDARD = tuple(f.name for f in dataclasses.fields(StandardOptions))
OWN_SIZES = ("seed", "batch", "precision")
ANALYSES = (
    ("triangles", "Tab. 3, Fig. 9 (§3.4)", STANDARD),
    ("correlations", "Tab. 2 (§3.2)", STANDARD),
    ("variances", "Tab. 4 (§3.6)", STANDARD),
    ("normality", "Fig. 2, §3.3", STANDARD),
    ("plain", "Tab. 5, Fig. 11, App. C (§3.7)", STANDARD),
    ("assignment", "Tab. 8, Fig. 12-13 (§3.11)", STANDARD),
    ("steps", "Tab. 10, Tab. 11", ("n", *OWN_SIZES)),
    ("swap", "Tab. 9 and the forward fix (§3.13)", OWN_SIZES),
    ("approximation_error", "Fig. 4, Tab. 6, App. D (§3.8)", ("steps", *OWN_SIZES)),
    ("trajectories", "Fig. 3 (§3.5)", ("steps", *OWN_SIZES)),
    ("interpolation", "Fig. 5, Tab. 12 (§3.9)", OWN_SIZES),
    ("diversity", "Fig. 6-7, Tab. 7, Tab. 13 (§3.10)", ("steps", *OWN_SIZES)),
)
NAMES = tuple(name for name, _, _ in ANALYSES)


def build_parser():
    p = cli.parser("python -m experiments.reproduce", __doc__)
    cli.add_analysis_flags(p, StandardOptions)
    p.add_argument("--only", default=None, metavar="A,B",
                   help=f"comma-separated analyses to run (default: all of {', '.join(NAMES)})")
    p.add_argument("--skip", default="", metavar="A,B", help="comma-separated analyses to leave out")
    p.add_argument("--swap-steps", type=int, default=None,
                   help="T of the swap table (default: the swap analysis's own, sized for a CPU; the paper's Tab. 9 "
                        "used T = 50)")
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
    given = {k: getattr(args, k) for k in takes if k in fields}
    if name == "swap" and args.swap_steps is not None:
        given["steps"] = args.swap_steps
    return module.Options(**given)


def figures(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.endswith(".png")) if os.path.isdir(folder) else []


@cli.entry_point
def main(argv: list[str] | None = None) -> str:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    names = chosen(args)
    ws = cli.workspace(args)
    out = cli.out_dir(args, ws.tag, "reproduce")
    cli.warn_if_slow(args.n, args.steps, 6, "reproduce")  # the standard run, and about as much again elsewhere
    refs = {name: (ref, takes) for name, ref, takes in ANALYSES}
    sections, summary = [], {"model": ws.tag, "settings": {k: getattr(args, k) for k in STANDARD}, "analyses": {}}
    for i, name in enumerate(names):
        ref, takes = refs[name]
        module = importlib.import_module(f"experiments.{name}")
        opts = options_for(name, module, args, takes)
        print(f"[{i + 1}/{len(names)}] {name} ({ref})", flush=True)
        reason = module.unavailable(ws, opts) if hasattr(module, "unavailable") else None
        if reason:
            print(f"  skipped: {reason}", flush=True)
            summary["analyses"][name] = {"reference": ref, "skipped": reason}
            sections.append(f"## {name} ({ref})\n\nSkipped:\n\n```\n{reason}\n```\n")
            continue
        start = time.time()
        result = module.compute(ws, opts)
        folder = os.path.join(out, name)
        module.write_outputs(result, folder)
        seconds = time.time() - start
        summary["analyses"][name] = {"reference": ref, "options": dataclasses.asdict(opts), "folder": folder,
                                     "seconds": round(seconds, 1)}
        pictures = "\n\n".join(f"![{name} {png}]({name}/{png})" for png in figures(folder))
        sections.append(f"## {name} ({ref})\n\n{module.markdown(result)}\n\n{pictures}\n\n"
                        f"<sub>options: {dataclasses.asdict(opts)}; {seconds:.0f} s; files: `{name}/`</sub>\n")
        io.write_json(os.path.join(out, "report.json"), summary)
    header = (f"# There and Back Again, reproduced on `{ws.tag}`\n\n"
              f"Standard run: N = {args.n}, T = {args.steps}, seed {args.seed}, precision {args.precision}. "
              f"Written by `{' '.join(['python -m experiments.reproduce', *(sys.argv[1:] if argv is None else argv)])}`"
              ".\n")
    with io.atomic_path(os.path.join(out, "report.md")) as tmp, open(tmp, "w") as f:
        f.write("\n".join([header, *sections]))
    total = sum(a.get("seconds", 0) for a in summary["analyses"].values())
    print(f"wrote {out}/report.md ({len(names)} analyses, {total / 60:.1f} min)")
    return out


if __name__ == "__main__":
    main()
