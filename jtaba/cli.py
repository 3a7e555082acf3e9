"""What every command line shares: kebab-case flags with their defaults in ``--help``, picking the model, the run
flags, one-line errors, a clean Ctrl-C, and a warning before work that would take long on a CPU."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
from typing import Callable

from jtaba import distributed, home
from jtaba.precision import PRECISIONS

# Network evaluations above which a CPU run is announced as long (the built-in model does ~150 per second on 2 cores).
SLOW_CPU_PASSES = 200_000


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written; every flag's default shown ("(default: X)" unless its help states it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        return text if "default" in text else super()._get_help_string(action)


def program_name(default: str, module: str | None = None) -> str:
    """The name ``usage:`` shows: the console script as invoked (``jtaba-triangles``), ``python -m MODULE`` when
    ``module`` runs as ``__main__`` under ``-m``, else ``default`` (e.g. ``python convert/adm.py``, or any call
    from Python)."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    invoked = invoked[:-4] if invoked.endswith(".exe") else invoked
    if invoked.startswith("jtaba-"):
        return invoked
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    running = spec.name.removesuffix(".__main__") if spec is not None else None  # `python -m pkg` runs pkg.__main__
    if module is not None and running == module:
        return f"python -m {module}"
    return default


def parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """``prog``: the ``python -m ...`` form; a console script shows its own name (``program_name``)."""
    return argparse.ArgumentParser(prog=program_name(prog), description=description, formatter_class=HelpFormatter)


def add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", metavar="NAME", default=home.DEFAULT,
                   help=f"'default' (the built-in model), a converted model in the model home ($JTABA_HOME/models/"
                        f"NAME, default ~/.cache/jtaba/models/NAME: {', '.join(home.CONVERT_COMMANDS)}) or a "
                        f"checkpoint path; a missing one names the convert command that makes it")
    g.add_argument("--ckpt", metavar="DIR", default=None, help="any jtaba checkpoint folder (same as --model=DIR)")


def model_ref(args: argparse.Namespace) -> home.ModelRef:
    return home.resolve(args.ckpt or args.model)


def load_model(args: argparse.Namespace):
    """(``jtaba.Model``, short tag for output folders) from ``--model`` / ``--ckpt``."""
    from jtaba import compilation_cache
    from jtaba.model import load

    if not getattr(args, "no_compilation_cache", False):
        compilation_cache.enable()
    ref = model_ref(args)
    return load(ref.path), ref.tag


def seed_value(text: str) -> int:
    """A ``--seed`` value: an integer in [0, 2^63) (what JAX's PRNG keys take)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= seed < 2 ** 63:
        raise argparse.ArgumentTypeError(f"must be in [0, 2^63), got {text}")
    return seed


def add_run_flags(p: argparse.ArgumentParser, *, n: int | None, steps: int, batch: int, seed: int,
                  n_help: str = "number of samples N") -> None:
    """--n --steps --batch --seed --precision --runs-dir --no-reuse --no-compilation-cache."""
    p.add_argument("--n", type=int, default=n, help=n_help)
    p.add_argument("--steps", type=int, default=steps, help="DDIM steps T of sampling, inversion and reconstruction")
    p.add_argument("--batch", type=int, default=batch,
                   help="samples per batch over all devices (memory / speed only: results do not depend on it)")
    p.add_argument("--seed", type=seed_value, default=seed,
                   help="seed of the initial noise and of drawn class labels (sample i depends on (seed, i) only)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="float32: true fp32 (matmul precision highest: the original code's numbers on any device); "
                        "tf32: fast fp32 on GPUs; bfloat16: network compute in bfloat16")
    p.add_argument("--runs-dir", default="runs",
                   help="where sample / invert runs are stored (runs/<model>/sample_invert/<settings>) and looked "
                        "up: a finished run with the same model, inputs and settings is reused, not recomputed")
    p.add_argument("--no-reuse", action="store_true",
                   help="compute a fresh run even if a finished run with the same settings exists")
    p.add_argument("--no-compilation-cache", action="store_true",
                   help="do not keep compiled programs in $JTABA_HOME/compilation_cache (default ~/.cache/jtaba/"
                        "compilation_cache), where a rerun or the next command on the same shapes finds them")


def warn_if_slow(n: int, steps: int, passes: int, what: str = "this command") -> None:
    """Say on stderr when ``n`` x ``steps`` x ``passes`` network evaluations would take long on a CPU."""
    import jax

    total = n * steps * passes
    if jax.default_backend() == "cpu" and total > SLOW_CPU_PASSES:
        print(f"note: {what} runs {n:,} x {steps} x {passes} = {total:,} network evaluations on a CPU; this can take "
              f"long with a large model (lower --n / --steps for a quick look)", file=sys.stderr, flush=True)


def entry_point(main: Callable) -> Callable:
    """Wrap a command's ``main(argv)``: library errors become one-line exits (``JTABA_DEBUG=1`` shows the
    traceback), Ctrl-C ends with a resume note.

    Called with ``argv`` (from Python or a test) the wrapper returns what ``main`` returns (an analysis's output
    folder); from the command line (``argv`` None: a console script or ``python -m``) it returns None, because a
    console script hands the return value to ``sys.exit``: success exits 0, an error 1 (one line), a usage error 2
    and Ctrl-C 130."""

    @functools.wraps(main)
    def wrapped(argv=None):
        try:
            result = main(argv)
        except KeyboardInterrupt:
            print("\ninterrupted: finished chunks are kept; run the same command again to resume",
                  file=sys.stderr, flush=True)
            raise SystemExit(130) from None
        except (ValueError, OSError) as e:
            if os.environ.get("JTABA_DEBUG"):  # the whole traceback, for bug reports
                raise
            raise SystemExit(f"error: {e}") from None
        return None if argv is None else result

    return wrapped


STANDARD_N_HELP = ("number of samples N of the standard run (computed once and shared with the other analyses; "
                   "the paper used 10,240 and T = 100)")


def add_input_flags(p: argparse.ArgumentParser) -> None:
    """The run's inputs (``jtaba.runs.settings.INPUT_FIELDS``), spelled alike in ``sample_invert`` and every
    analysis: --noise --samples --labels --class-seed --noises-per-class --prompt-embeds --schedule-dtype
    --guidance. A run made with the same inputs (by content) is shared."""
    inp = p.add_argument_group("inputs (a run made with the same inputs, by content, is shared)")
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
                          "upstream conds.pt; the paper: 10)")
    inp.add_argument("--noises-per-class", type=int, default=1,
                     help="with --class-seed: consecutive samples sharing a drawn class (upstream noises_per_prompt; "
                          "the paper: 8)")
    inp.add_argument("--prompt-embeds", metavar="FILE.npy",
                     help="prompt embeddings (N, L, D) for text-conditioned models (IF), written by "
                          "`python convert/if.py --prompts FILE` into CKPT/prompts/")
    inp.add_argument("--schedule-dtype", choices=("float32", "float16"), default=None,
                     help="diffusers models: scheduler arithmetic in float16 as upstream DiT/IF ran it (default: "
                          "the checkpoint's, float32)")
    inp.add_argument("--guidance", type=float, default=1.0,
                     help="classifier-free guidance scale for sampling and inversion (1.0 = off, as in the paper)")


class _MethodOption(argparse.Action):
    """A method option flag: adds (``const``, value) to ``args.method_options``."""

    def __call__(self, parser, namespace, value, option_string=None):
        setattr(namespace, self.dest, tuple(sorted({**dict(getattr(namespace, self.dest)), self.const: value}.items())))


def add_method_flags(p: argparse.ArgumentParser) -> None:
    """--method and its options (``jtaba.inverters``: beyond the paper's DDIM), spelled alike in ``sample_invert``
    and every analysis."""
    from jtaba.inverters import METHODS

    g = p.add_argument_group("inversion method (beyond the paper, which inverts with DDIM; samples stay DDIM's)")
    g.add_argument("--method", choices=METHODS, default="ddim",
                   help="how latents are inverted and reconstructed: ddim (the paper), edict, bdia, belm, ddpm "
                        "(exact round trips), fixed-point, npi (conditional models)")
    for flag, name, kind, text in (("--edict-mix", "mix", float, "edict: mixing weight p (default 0.93)"),
                                   ("--bdia-gamma", "gamma", float, "bdia: gamma (default 1.0)"),
                                   ("--fixed-point-iterations", "iterations", int,
                                    "fixed-point: network calls per inversion step (default 5)"),
                                   ("--anderson-window", "anderson", int,
                                    "fixed-point: Anderson acceleration window m, AIDI (default 0: off)"),
                                   ("--renoise-average", "average", int,
                                    "fixed-point: mean noise of the last K iterations, ReNoise (default 0: off)"),
                                   ("--ddpm-seed", "seed", int, "ddpm: seed of the inversion's noise (default 0)")):
        g.add_argument(flag, type=kind, action=_MethodOption, dest="method_options", const=name, default=(),
                       metavar=name.upper(), help=text)


def add_analysis_flags(p: argparse.ArgumentParser, defaults, n_help: str = STANDARD_N_HELP) -> None:
    """The flags every analysis shares: the model, the run flags (defaults from the ``defaults`` options class, a
    ``jtaba.runs.StandardOptions``), the run's inputs, --out and the multi-process flags."""
    add_model_flags(p)
    add_run_flags(p, n=defaults.n, steps=defaults.steps, batch=defaults.batch, seed=defaults.seed, n_help=n_help)
    p.add_argument("--out", default=None,
                   help="folder for the tables and figures (default: <runs-dir>/<model>/<analysis>/<settings>)")
    add_input_flags(p)
    add_method_flags(p)
    p.add_argument("--paper", action="store_true",
                   help="the paper's settings for the model's family (jtaba.paper: N = 10,240, T = 100, seed 420, "
                        "guidance 1; DiT: class seed 10, 8 noises per class; the T lists of Tabs. 10-11, T = 50 for "
                        "Tabs. 7 and 9) where no flag sets them; the report names what differs from the paper's")
    add_distributed_flags(p)


def options_from_args(options_class, args: argparse.Namespace):
    """An options dataclass filled from the flags of the same names (``--null-sets`` -> ``null_sets``)."""
    return options_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(options_class)
                            if hasattr(args, f.name)})


def _no_parts(opts) -> tuple:
    return ()


def _three_passes(ws, opts) -> int:
    return 3


def _always_available(ws, opts) -> None:
    return None


def _one_step_count(opts) -> tuple[int, ...]:
    return (opts.steps,)


@dataclasses.dataclass(frozen=True)
class Analysis:
    """One analysis command, declared by its ``experiments`` module as ``ANALYSIS`` (its command is
    ``main = cli.analysis_main(ANALYSIS)``; ``experiments.reproduce`` runs a list of them).

    ``name``: the command's and the output folder's name; ``paper_ref``: what of the paper it reproduces;
    ``options_class``: its options (a ``jtaba.runs.StandardOptions``); ``build_parser()``: its flags;
    ``compute(ws, opts)`` -> result (a training analysis, ``training=True``: ``compute(opts, rows_folder)``, the rows
    folder from ``default_out(opts)``); ``write_outputs(result, out)``: JSON / CSV / PNG; ``markdown(result)``: its
    report.md section. Optional: ``options_from_args(args)`` (checks, parsing; default: the option fields from the
    flags of the same names), ``out_parts(opts)`` (output folder name parts for its own settings),
    ``network_passes(ws, opts)`` (N x T network passes, for the slow-CPU note), ``unavailable(ws, opts)`` (why the
    model cannot run it, else None), ``console(result)`` (the summary printed at the end; default: the markdown);
    ``step_counts(opts)``: the DDIM step counts T it runs (default: (opts.steps,)); ``own_sizes``: the run settings
    it keeps at its own defaults in ``reproduce`` (e.g. ("n", "steps")), with ``sizes_note`` saying why."""
    name: str
    paper_ref: str
    options_class: type
    build_parser: Callable
    compute: Callable
    write_outputs: Callable
    markdown: Callable
    options_from_args: Callable | None = None
    out_parts: Callable = _no_parts
    network_passes: Callable = _three_passes
    unavailable: Callable = _always_available
    console: Callable | None = None
    default_out: Callable | None = None
    training: bool = False
    step_counts: Callable = _one_step_count
    own_sizes: tuple[str, ...] = ()
    sizes_note: str = ""

    def options(self, args: argparse.Namespace):
        """The options of parsed flags: ``options_from_args`` or the fields of the same names, and the run's
        inputs (``with_inputs``)."""
        opts = self.options_from_args(args) if self.options_from_args is not None else \
            options_from_args(self.options_class, args)
        return opts if self.training else with_inputs(opts, args)

    def summary(self, result) -> str:
        """What the command prints at the end."""
        return (self.console or self.markdown)(result)


def analysis_main(analysis: Analysis):
    """The ``main(argv=None)`` of ``analysis``: ``run_analysis`` (``run_training_analysis`` for a training
    analysis) with one-line errors and a clean Ctrl-C (``entry_point``)."""

    @entry_point
    def main(argv: list[str] | None = None) -> str:
        """Run the analysis; returns the output folder."""
        return (run_training_analysis if analysis.training else run_analysis)(analysis, argv)

    return main


def _print_written(out: str) -> None:
    print(f"wrote {out}/: {', '.join(sorted(f for f in os.listdir(out) if not f.startswith('.')))}")


def run_analysis(analysis: Analysis, argv=None) -> str:
    """An analysis command: flags -> options -> runs -> tables and figures; returns the output folder."""
    argv = sys.argv[1:] if argv is None else argv
    args = analysis.build_parser().parse_args(argv)
    initialize_distributed(args)  # before any other JAX call
    paper = apply_paper(args, argv)
    opts = paper_options(analysis.name, analysis.options(args), paper, argv)
    ws = dataclasses.replace(workspace(args), label=analysis.name)
    warn_if_slow(opts.n, opts.steps, analysis.network_passes(ws, opts), analysis.name)
    reason = analysis.unavailable(ws, opts)
    if reason:
        raise ValueError(reason)
    out = out_dir(args, ws.tag, analysis.name, *input_parts(opts), *analysis.out_parts(opts))
    result = analysis.compute(ws, opts)
    if not writes_outputs():
        return out
    analysis.write_outputs(result, out)
    print(analysis.summary(result))
    _print_written(out)
    return out


def writes_outputs() -> bool:
    """Whether this process writes an analysis's tables and figures: every process computes (the runs are
    collective), process 0 writes. (``experiments`` ask here: they do not import ``jtaba.distributed``.)"""
    return distributed.is_main()


def flag_given(argv, field: str) -> bool:
    """Whether the flag of options field ``field`` (``class_seed`` -> --class-seed) is on the command line."""
    flag = "--" + field.replace("_", "-")
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def apply_paper(args: argparse.Namespace, argv):
    """With --paper: the paper's run settings for the model's family (``jtaba.paper``) into ``args`` where no flag
    set them; returns the ``PaperSettings`` (None without --paper). The family is read from the checkpoint's
    config (no weights loaded)."""
    if not getattr(args, "paper", False):
        return None
    from jtaba import checkpoint, paper

    settings = paper.settings(checkpoint.read_config(model_ref(args).path)["family"])
    for k, v in settings.run.items():
        if hasattr(args, k) and not flag_given(argv, k):
            setattr(args, k, v)
    if settings.needs and getattr(args, "prompt_embeds", "") is None:
        raise ValueError(f"--paper on {settings.family} needs {settings.needs}")
    return settings


def paper_options(name: str, opts, paper, argv):
    """``opts`` with the paper's settings of analysis ``name`` (``PaperSettings.analyses``) where no flag set them."""
    if paper is None:
        return opts
    own = {k: v for k, v in paper.analyses.get(name, {}).items() if hasattr(opts, k) and not flag_given(argv, k)}
    return dataclasses.replace(opts, **own) if own else opts


def with_inputs(opts, args: argparse.Namespace):
    """``opts`` (a ``StandardOptions``) with the run's input flags (``add_input_flags``) it was built without."""
    import dataclasses

    from jtaba.runs.settings import INPUT_FIELDS

    given = {k: getattr(args, k) for k in INPUT_FIELDS if hasattr(args, k) and hasattr(opts, k)}
    return dataclasses.replace(opts, **given) if given else opts


def input_parts(opts) -> list[str]:
    """Out-folder name parts for the run inputs that differ from drawing everything from --seed (the same words
    as the run folders': noise-given, cseed10x8, cfg2, sched16, ...)."""
    parts = [f"{k.replace('_', '')}-given" for k in ("noise", "samples", "labels", "prompt_embeds")
             if getattr(opts, k, None) is not None]
    if getattr(opts, "class_seed", None) is not None:
        parts.append(f"cseed{opts.class_seed}x{opts.noises_per_class}")
    if getattr(opts, "guidance", 1.0) != 1.0:
        parts.append(f"cfg{opts.guidance:g}")
    if getattr(opts, "schedule_dtype", None) == "float16":
        parts.append("sched16")
    if getattr(opts, "method", "ddim") != "ddim":
        from jtaba.runs.settings import method_part

        parts.append(method_part(opts.method, opts.method_options))
    return parts


def run_training_analysis(analysis: Analysis, argv=None) -> str:
    """An analysis over training runs (``experiments.training_dynamics``, ``experiments.alignment``): flags ->
    options -> ``compute(opts, out)`` (out: --out or ``default_out(opts)``) -> outputs; returns the output folder."""
    args = analysis.build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    opts = analysis.options(args)
    out = os.path.abspath(args.out or analysis.default_out(opts))
    result = analysis.compute(opts, out)
    analysis.write_outputs(result, out)
    print(analysis.summary(result))
    _print_written(out)
    return out


def workspace(args: argparse.Namespace):
    """The ``jtaba.runs.Workspace`` of ``--model`` / ``--ckpt``, ``--runs-dir`` and ``--no-reuse``."""
    from jtaba.runs import Workspace

    model, tag = load_model(args)
    return Workspace(model, tag, args.runs_dir, not args.no_reuse)


def parse_step_counts(text: str, flag: str, *, allow_none: bool = False) -> tuple:
    """A K-list flag: "5, 1,2" -> (1, 2, 5) (positive ints, sorted, duplicates dropped); with ``allow_none``,
    "" or "none" -> (). ValueError naming ``flag`` otherwise (K = 0, plain DDIM, is never listed: the analyses
    always include it)."""
    if allow_none and str(text).strip().lower() in ("", "none"):
        return ()
    try:
        ks = sorted({int(k) for k in str(text).split(",") if k.strip()})
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers{' or none' if allow_none else ''}, got "
                         f"{text!r}") from None
    if not ks or ks[0] < 1:
        raise ValueError(f"{flag} needs positive step counts (K = 0, plain DDIM, is always included), got {text!r}")
    return tuple(ks)


def changed_parts(opts, named) -> list[str]:
    """Out-folder name parts ``fmt.format(value)`` for the options in ``named`` ((field, fmt), ...) whose value
    differs from the options class's default."""
    default = type(opts)()
    return [fmt.format(getattr(opts, k)) for k, fmt in named if getattr(opts, k) != getattr(default, k)]


def out_dir(args: argparse.Namespace, tag: str, analysis: str, *parts: str) -> str:
    """``--out``, or ``<runs-dir>/<model>/<analysis>/T<T>_n<N>_seed<S>[_<parts>][_<precision>]``."""
    if args.out:
        return os.path.abspath(args.out)
    return os.path.abspath(os.path.join(args.runs_dir, tag, analysis, settings_name(args, *parts)))


def settings_name(settings, *parts: str) -> str:
    """``T<T>_n<N>_seed<S>[_<parts>][_<precision>]`` of anything with steps / n / seed / precision (flags or
    options): the folder name of an analysis's outputs."""
    name = [f"T{settings.steps}", f"n{settings.n}", f"seed{settings.seed}", *parts]
    if settings.precision != "float32":
        name.append(settings.precision)
    return "_".join(name)


def add_distributed_flags(p: argparse.ArgumentParser) -> None:
    """--coordinator --num-processes --process-id (``jtaba.distributed``)."""
    distributed.add_flags(p)


def initialize_distributed(args: argparse.Namespace) -> None:
    """Join a multi-process run when ``--coordinator`` was given or ``--distributed=auto`` detects a cluster (before
    any other JAX call)."""
    distributed.initialize_from_flags(args)
