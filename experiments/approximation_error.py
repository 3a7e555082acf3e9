"""Inversion approximation error per step, plain vs non-plain areas (paper Sec. 3.4, App. D, Fig. 4,
Tab. 6).

    python -m experiments.approximation_error              # the built-in default model, quick settings
    python -m experiments.approximation_error --model=adm64 --n=1024 --steps=100 --batch=128

DDIM inversion step i needs the network output at the next, noisier level, and approximates it by the output at the
current state. This measures that approximation alone, step by step, against a recorded sampling run (the ground
truth; ``jtaba.runs`` with record=True, inversion off): every inversion step i starts from the ground-truth state
x_i of the sampling trajectory (teacher forcing: an x_t swap of the first steps, swap_type="xt", so that no error is
carried over from earlier steps), and

* ε error: the network output the inversion uses, ε_approx_i = ε(x_i, step i), against the output sampling used for
  the same move, ε_gt_i (ADM: ε_approx_i = ε'(x_i^gt, i), x_i^gt = all_t_samples[T−2−i] (the final sample for i = 0),
  ε_gt_i = all_t_eps_samples[T−2−i], i = 0..T−2 (the last ADM inversion step, to ᾱ = 0, has no sampling
  counterpart); diffusers models: ε(all_t_samples[T−1−i], target label of step i) against
  all_t_eps_samples[T−1−i], i = 0..T−1);
* x_t error: the state after the inversion step against the ground-truth state at that level (the next state of
  the sampling trajectory, the sampling run's noise after the last step).

Errors |approx − gt| are divided by the mean |·| of the ground truth at that step (the paper's L1 normalisation by
the model outputs of the step, Eq. 15 / 16; for x_t the ground-truth state) and averaged over the plain and the
non-plain positions of the final samples (``find_plain_areas``, --threshold; all channels and samples). Tab. 6: the
sums of those per-step values over the first --early-fraction of the T steps (10 %: 5 of 50) and over the rest.

Defaults N = 64, T = 50: the per-step error is a mean over N·H·W positions per area, stable already at N = 64 (the
paper does not fix N), and the run records every step ((T, N, C, H, W) arrays for sampling and inversion), so N
stays small; T = 50 is the T of the paper's swap experiments and of the other analyses here (10 % = 5 steps). Two
passes of N·T network evaluations (a recorded sampling run and the teacher-forced inversion, both reused when
finished), about a minute on 2 CPU cores with the built-in model. Writes approximation_error.json,
approximation_error.csv (Tab. 6: ε and x_t error sums per area over the first 10 %, the rest and all steps),
approximation_error_steps.csv (the per-step values of Fig. 4) and approximation_error.png (Fig. 4: normalised error
per inversion step, plain vs non-plain, ε and x_t) into --out.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from jtaba import cli, io, plotting
from jtaba.analyses import approximation_error as analysis
from jtaba.analyses.approximation_error import AREAS, QUANTITIES, measured_steps
from jtaba.runs import StandardOptions

QUANTITY_NAMES = {"eps": "ε", "xt": "x_t"}
AREA_NAMES = {"plain": "plain", "non_plain": "non-plain", "all": "all"}
INTERVALS = ("early", "rest", "total")


@dataclasses.dataclass(frozen=True)
class Options(StandardOptions):
    n: int = 64
    threshold: float = 0.025
    early_fraction: float = 0.1


def build_parser():
    p = cli.parser("python -m experiments.approximation_error", __doc__)
    cli.add_analysis_flags(p, Options,
                           n_help="number of samples N (every step of sampling and inversion is recorded: "
                                  "(T, N, C, H, W) arrays; the paper does not state its N)")
    p.add_argument("--threshold", type=float, default=Options.threshold,
                   help="plain-area threshold on the final samples' mean neighbour difference (paper App. C)")
    p.add_argument("--early-fraction", type=float, default=Options.early_fraction,
                   help="Tab. 6 splits the inversion steps into the first round(EARLY_FRACTION·T) (at least 1) and the "
                        "rest")
    return p


def options_from_args(args) -> Options:
    if not 0 < args.early_fraction < 1:
        raise ValueError(f"--early-fraction must be in (0, 1), got {args.early_fraction}")
    if not args.threshold > 0:
        raise ValueError(f"--threshold must be positive, got {args.threshold}")
    return Options(args.n, args.steps, args.seed, args.batch, args.precision, args.threshold, args.early_fraction)


def compute(ws, opts: Options) -> dict:
    """Record a sampling run and the teacher-forced inversion of its samples (or reuse them), then the errors."""
    diffusion = ws.model.diffusion
    s = measured_steps(diffusion.kind, opts.steps)
    truth_run = ws.run(opts.run_settings(record=True, inversion=False, reconstruction=False), "recorded sampling")
    # x_t swap of steps 0..s-2: step i (i >= 1) starts from the ground-truth state, step 0 from the final sample
    inv_run = ws.run(opts.run_settings(record=True, reconstruction=False, swap_from=truth_run, swap_before=s - 1,
                                       swap_type="xt"), "teacher-forced inversion")
    err = analysis.of_runs(diffusion, opts.steps, truth_run, inv_run, opts.threshold, opts.early_fraction)
    tables = err.to_json()
    return {"model": ws.tag, "n": opts.n, "steps": opts.steps, "seed": opts.seed, "precision": opts.precision,
            "threshold": opts.threshold, "early_fraction": opts.early_fraction, "early_steps": err.early_steps,
            "diffusion_kind": diffusion.kind, "measured_steps": s, "swap_before": s - 1,
            "sampling_run": truth_run.path, "inversion_run": inv_run.path, "plain_fraction": err.plain_fraction,
            "normalisation": "mean |ground truth| of the step (ε: the sampling run's model output; x_t: its state)",
            "step": list(range(s)), "per_step": tables["per_step"], "table": tables["table"]}


def interval_name(result: dict, interval: str) -> str:
    """Tab. 6's step intervals, with the 0-based inversion step indices of the figure."""
    k, s, t = result["early_steps"], result["measured_steps"], result["steps"]
    return {"early": f"first {k} of {t} steps ({k / t:.0%}), i = 0-{k - 1}", "rest": f"the rest, i = {k}-{s - 1}",
            "total": f"all {s} measured, i = 0-{s - 1}"}[interval]


def csv_rows(result: dict) -> list[dict]:
    """Tab. 6: per interval (first 10 %, rest, all) and area the summed normalised ε and x_t errors, with each
    interval's share of the area's total."""
    head = {"model": result["model"], "n": result["n"], "steps": result["steps"], "seed": result["seed"],
            "threshold": result["threshold"]}
    rows = []
    for interval in INTERVALS:
        for area in ("plain", "non_plain"):
            row = {**head, "area": AREA_NAMES[area], "interval": interval_name(result, interval)}
            for q in QUANTITIES:
                t = result["table"][q][area]
                row[f"{q}_error"] = t[interval]
                row[f"{q}_share"] = t[interval] / t["total"] if t["total"] else None
            rows.append(row)
    return rows


def step_rows(result: dict) -> list[dict]:
    """Fig. 4's data: per inversion step the normalised errors per area and the normalising mean |ground truth|."""
    rows = []
    for i in result["step"]:
        row = {"step": i}
        for q in QUANTITIES:
            ps = result["per_step"][q]
            row.update({f"{q}_{a}": ps[a][i] for a in AREAS})
            row[f"{q}_scale"] = ps["scale"][i]
        rows.append(row)
    return rows


def plot(result: dict, path: str) -> str:
    """approximation_error.png (Fig. 4): per quantity the normalised error per inversion step for plain and
    non-plain positions (log scale: the first steps' errors are an order of magnitude above the rest), the first
    10 % of the steps shaded, Tab. 6's sums in the legend."""
    fig, axes = plotting.new_figure(1, 2, size=(5.6, 4.2))
    steps = np.asarray(result["step"])
    k = result["early_steps"]
    styles = {"plain": {"color": "tab:orange", "ls": "-", "marker": "o"},
              "non_plain": {"color": "tab:blue", "ls": "--", "marker": "s", "mfc": "none"}}
    for ax, q in zip(axes[0], QUANTITIES):
        ax.axvspan(-0.5, k - 0.5, color="0.9", zorder=0, label=f"first {k} steps ({result['early_fraction']:.0%})")
        for area, st in styles.items():
            t = result["table"][q][area]
            ax.plot(steps, np.asarray(result["per_step"][q][area], dtype=float), ms=4, lw=1.3, **st,
                    label=f"{AREA_NAMES[area]}: sum {t['early']:.3g} (first) + {t['rest']:.3g} (rest)")
        ax.set_xlabel("inversion step i (0 = from the clean sample)")
        ax.set_ylabel(f"|{QUANTITY_NAMES[q]} approx − gt| / mean |gt|  (log scale)")
        ax.set_xlim(-0.5, steps[-1] + 0.5)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(plotting.run_title(f"{QUANTITY_NAMES[q]} approximation error per inversion step",
                                        result["model"], result["n"], result["steps"])
                     + f" ({result['plain_fraction']:.0%} plain)", fontsize=10)
    return plotting.save(fig, path)


def _f(v) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.3f}"


def report(result: dict) -> str:
    """Human-readable summary printed at the end."""
    lines = [(f"inversion approximation error of {result['n']} samples, T={result['steps']} ({result['model']}), "
              f"{result['measured_steps']} steps measured, {result['plain_fraction']:.1%} plain positions:"),
             f"  {'':10s} {'area':10s} " + " ".join(f"{interval_name(result, iv):>32s}" for iv in INTERVALS)]
    for q in QUANTITIES:
        for area in ("plain", "non_plain"):
            t = result["table"][q][area]
            lines.append(f"  {QUANTITY_NAMES[q] + ' error':10s} {AREA_NAMES[area]:10s} "
                         + " ".join(f"{_f(t[iv]):>32s}" for iv in INTERVALS))
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The paper's Tab. 6 column for this model (ε error sums; x_t error sums beside them) as a markdown table."""
    head = "| Pixel area | Diffusion steps | ε error | x_t error |\n|---|---|---|---|"
    rows = []
    for interval in INTERVALS:
        for area in ("plain", "non_plain"):
            e, x = (result["table"][q][area][interval] for q in QUANTITIES)
            rows.append(f"| {AREA_NAMES[area]} | {interval_name(result, interval)} | {_f(e)} | {_f(x)} |")
    note = (f"Sums over inversion steps of the per-step error divided by the step's mean |ground truth|, averaged "
            f"over plain / non-plain positions ({result['plain_fraction']:.1%} plain, threshold "
            f"{result['threshold']:g}); N = {result['n']}, T = {result['steps']}.")
    return "\n".join([head, *rows, "", note])


def write_outputs(result: dict, out: str) -> dict:
    """approximation_error.json, approximation_error.csv, approximation_error_steps.csv and
    approximation_error.png in ``out``."""
    io.write_json(os.path.join(out, "approximation_error.json"), result)
    io.write_csv(os.path.join(out, "approximation_error.csv"), csv_rows(result))
    io.write_csv(os.path.join(out, "approximation_error_steps.csv"), step_rows(result))
    plot(result, os.path.join(out, "approximation_error.png"))
    return result


def out_parts(opts: Options) -> tuple:
    return f"thr{opts.threshold:g}", f"early{opts.early_fraction:g}"


def unavailable(ws, opts: Options) -> str | None:
    """Why the model cannot run it at these steps (no teacher-forced step after the first), else None:
    ``experiments.reproduce`` lists it as skipped."""
    try:
        measured_steps(ws.model.diffusion.kind, opts.steps)
    except ValueError as e:
        return str(e)
    return None


def network_passes(ws, opts: Options) -> int:
    """Sampling (recorded) and the teacher-forced inversion."""
    return 2


ANALYSIS = cli.Analysis(
    name="approximation_error", paper_ref="Sec. 3.4, Tab. 6, App. D, Fig. 4", options_class=Options,
    build_parser=build_parser, compute=compute, write_outputs=write_outputs, markdown=markdown,
    options_from_args=options_from_args, out_parts=out_parts, network_passes=network_passes, console=report,
    unavailable=unavailable, own_sizes=("n",),
    sizes_note="every step of sampling and of the teacher-forced inversion is recorded (N x T states each)",
)
main = cli.analysis_main(ANALYSIS)


if __name__ == "__main__":
    main()
