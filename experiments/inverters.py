"""Inversion methods beyond DDIM, measured with the paper's metrics (beyond the paper).

    python -m experiments.inverters                          # the built-in default model, N = 64, T = 20
    python -m experiments.inverters --model=adm32 --n=1024 --steps=50 --methods=ddim,edict,fixed-point:anderson=3

Samples N images from seed-indexed noise with DDIM (the standard run), then inverts the same images with every
method of --methods and reconstructs them with that method's sampler (``jtaba.inverters``: ddim, edict, bdia,
belm, fixed-point with its options, ddpm, npi; one ``jtaba.runs`` run per method, reused when finished, each
inverting the standard run's samples: the images are sampled once). Per method:
image reconstruction error (mean / max |x̂_0 − x_0|), noise recovery (mean |noise − latent|, correlation of latent
and noise), latent Gaussianity (KL to N(0, 1), the paper's KL(noise || latent), Shapiro-Wilk rejections at p 0.05),
the Tab. 2 pixel correlation of the latents, the Tab. 5 plain / non-plain |noise − latent|, network evaluations and
wall time per image. Writes inverters.json, inverters.csv (one row per method), inverters.png (the numbers as bars)
and inverters_latents.png (the first images, their noise and every method's latents side by side) into --out.

Tab. 12 protocol per method (columns present when the perception network(s) of --fid-protocol are converted, or
--inception / --vgg16 point at checkpoints; otherwise the report says how to get them): a second set B (seed
--seed-b, class-conditional models: A's labels, as ``experiments.interpolation``) is sampled once and inverted with
each method; every part of each method's inverted state (the latent, edict's y, bdia / belm's x_1, each of ddpm's T
noise maps; npi: its latent, the condition as its null condition) is SLERPed per sample between A[i] and B[i] with
the same α (--interpolation-alpha, Tab. 12: 0.5), as ``experiments.interpolation`` interpolates DDIM latents; the
interpolants are sampled back with the method (decoded for latent models) and scored by FID, precision and recall
(k = 3) against the reference set of ``experiments.interpolation`` (the same --reference: the paper's training
images with --reference=train, a folder of images or an NCHW .npy in [-1, 1]; default: --n-reference, default N,
model samples of --reference-seed) under --fid-protocol (pytorch-fid: Inception for all three; torch-fidelity:
Inception FID, VGG16 precision / recall). It costs one sampling of set B, and per method the inversion of set B and
one sampling pass of the interpolants.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional

import numpy as np

from experiments.interpolation import (
    FID_PROTOCOLS,
    add_reference_flags,
    image_name,
    reference_option,
    reference_set,
    reference_text,
    scoring_networks,
)
from jtaba import cli, io, plotting
from jtaba.analyses import inverters as analysis
from jtaba.analyses.interpolation import Scores, protocol_networks
from jtaba.runs import StandardOptions

PREVIEW = 4  # images in the latents figure


@dataclasses.dataclass(frozen=True)
class Options(StandardOptions):
    """The standard run's settings (small defaults: every method runs the whole set) and the compared methods
    (``name`` or ``name:option=value[:option=value...]``); ``timing_images``: images timed per method (0: no timing)."""
    n: int = 64
    steps: int = 20
    batch: int = 64
    methods: tuple = analysis.DEFAULT_METHODS
    timing_images: int = 8
    fid_protocol: str = "pytorch-fid"
    seed_b: int = 420
    interpolation_alpha: float = 0.5
    reference: Optional[str] = None
    reference_seed: int = 1
    n_reference: Optional[int] = None
    inception: Optional[str] = None  # a checkpoint folder or model-home name (default: the role's)
    vgg16: Optional[str] = None


def build_parser():
    p = cli.parser("python -m experiments.inverters", __doc__)
    cli.add_analysis_flags(p, Options)
    p.add_argument("--methods", default=",".join(analysis.DEFAULT_METHODS),
                   help="methods to compare, comma-separated: name or name:option=value[:option=value...], e.g. "
                        "'ddim,fixed-point:anderson=3:iterations=8'")
    p.add_argument("--timing-images", type=int, default=Options.timing_images,
                   help="images inverted and reconstructed once more per method to time it (0: no timing)")
    g = p.add_argument_group("Tab. 12 protocol per method (when its perception networks are converted)")
    g.add_argument("--fid-protocol", choices=FID_PROTOCOLS, default=Options.fid_protocol,
                   help="as experiments.interpolation: pytorch-fid (Inception for FID, precision, recall) or "
                        "torch-fidelity (the paper's: Inception FID, VGG16 precision / recall)")
    g.add_argument("--seed-b", type=int, default=Options.seed_b, help="seed of the second set B (upstream 420)")
    g.add_argument("--interpolation-alpha", type=float, default=Options.interpolation_alpha,
                   help="SLERP weight of B, applied per sample to every part of a method's inverted state (Tab. 12: "
                        "0.5)")
    add_reference_flags(g)
    g.add_argument("--inception", default=None, metavar="CKPT",
                   help="FID Inception checkpoint (folder or model-home name; default: the converted one)")
    g.add_argument("--vgg16", default=None, metavar="CKPT",
                   help="VGG16 checkpoint for --fid-protocol=torch-fidelity (default: the converted one)")
    return p


def parse_methods(text: str) -> tuple:
    """'ddim,fixed-point:anderson=3:iterations=8' -> the method texts, each checked."""
    out = tuple(m.strip() for m in str(text).split(",") if m.strip())
    if not out:
        raise ValueError("--methods names no method")
    for m in out:
        analysis.parse_method(m)
    return out


def options_from_args(args) -> Options:
    if args.method != "ddim" or args.method_options:
        raise ValueError("experiments.inverters compares the methods of --methods; --method does not apply")
    if args.timing_images < 0:
        raise ValueError(f"--timing-images must be >= 0, got {args.timing_images}")
    if not 0.0 <= args.interpolation_alpha <= 1.0:
        raise ValueError(f"--interpolation-alpha must be in [0, 1], got {args.interpolation_alpha}")
    base = cli.options_from_args(Options, args)
    return dataclasses.replace(base, methods=parse_methods(args.methods), reference=reference_option(args))


def out_parts(opts: Options) -> list[str]:
    parts = [] if opts.methods == analysis.DEFAULT_METHODS else [f"{len(opts.methods)}methods"]
    if (opts.fid_protocol, opts.seed_b, opts.interpolation_alpha) != (Options.fid_protocol, Options.seed_b,
                                                                      Options.interpolation_alpha):
        parts.append(f"{opts.fid_protocol}_seedb{opts.seed_b}_alpha{opts.interpolation_alpha:g}")
    if opts.reference:
        parts.append("ref-" + os.path.splitext(os.path.basename(opts.reference))[0])
    return parts


def network_names(opts: Options) -> dict:
    """{role: checkpoint} of the --inception / --vgg16 given."""
    return {role: getattr(opts, role) for role in protocol_networks(opts.fid_protocol) if getattr(opts, role)}


def network_passes(ws, opts: Options) -> int:
    """N x T network passes of the whole comparison (DDIM sampling of the images once, every method's inversion
    and reconstruction; scored: set B's sampling once, per method its inversion and the interpolants' sampling, and
    the reference set)."""
    from jtaba.metrics import networks

    served = protocol_networks(opts.fid_protocol)
    scoring = len(networks.missing(served, network_names(opts))) < len(served)
    total = 1 + (1 if scoring else 0)
    total += math.ceil((opts.n_reference or opts.n) / opts.n) if scoring and not opts.reference else 0
    for m in opts.methods:
        name, options = analysis.parse_method(m)
        method = analysis.Method.of(name, **dict(options))
        total += method.network_calls(1, True) + method.network_calls(1, False)
        if scoring:
            total += method.network_calls(1, True) + method.network_calls(1, False, True)
    return total


def _interpolation_setup(opts: Options):
    """(nets, the ``interpolation`` JSON head: its reference filled by ``compute``) when a network of --fid-protocol
    is there, else (None, the one-line note saying how to get the columns)."""
    from experiments.interpolation import NETWORK_NAMES

    nets, skipped, absent = scoring_networks(opts.fid_protocol, network_names(opts))
    if nets is None:
        commands = "; ".join(f"{NETWORK_NAMES[role]}: {command}" for role, command in absent.items())
        return None, (f"Interpolation FID / precision / recall per method (Tab. 12 protocol, "
                      f"{opts.fid_protocol}): convert {commands} (or give --{' / --'.join(absent)}) and rerun.")
    head = {"protocol": opts.fid_protocol, "alpha": opts.interpolation_alpha, "seed_b": opts.seed_b,
            "slerp": "per_sample", "reference": None, "skipped": skipped, "scores": {}, "runs_b": {}}
    return nets, head


def _method_run(ws, opts: Options, sources: dict, key: str, name: str, options, settings: dict):
    """Set ``key``'s ("a", or "b" with ``settings`` = set B's) run of method ``name``: DDIM's run is the set's
    standard one and its samples the set's images (``sources``); another method inverts those images (a
    sampling-only run draws them when DDIM is not compared)."""
    desc = f"{analysis.method_label(name, options)}{' set B' if key == 'b' else ''}"
    if name == "ddim":
        sources[key] = ws.run(opts.run_settings(**settings), desc)
        return sources[key]
    if key not in sources:
        sources[key] = ws.run(opts.run_settings(**{**settings, "inversion": False, "reconstruction": False}),
                              f"set {key.upper()} samples")
    images = {"samples": sources[key]["samples"]}
    return ws.run(opts.run_settings(**{**settings, **images, "method": name, "method_options": options}), desc)


def compute(ws, opts: Options) -> dict:
    """One run per method on the same DDIM samples; the table rows, the runs (for the latents figure) and the
    methods the model cannot run; with a perception network, each method's Tab. 12 scores (``interpolation``)."""
    from jtaba.inverters import check_model
    from jtaba.runs import with_schedule

    model = with_schedule(ws.model, opts.run_settings())  # --schedule-dtype, as the runs apply it
    nets, interpolation = _interpolation_setup(opts)
    reference = None  # its features, from the first run (a training / folder reference: read at its image size)
    class_cond = model.num_classes is not None and model.conditional
    rows, runs, skipped, sources = {}, {}, {}, {}
    methods = [analysis.parse_method(text) for text in opts.methods]
    # DDIM's run first: every other method inverts its samples (drawn once; without ddim, a sampling-only run)
    for name, options in sorted(methods, key=lambda m: m[0] != "ddim"):
        label = analysis.method_label(name, options)
        reason = check_model(analysis.Method.of(name, **dict(options)), ws.model.conditional)
        if reason:
            skipped[label] = reason
            continue
        run = _method_run(ws, opts, sources, "a", name, options, {})
        wall = None
        if opts.timing_images and opts.prompt_embeds is None:  # prompt-conditioned timing needs the run's prompts
            k = min(opts.timing_images, run.n)
            cond = np.asarray(run["conds"][:k]).astype(np.int32) if "conds" in run else None
            wall = analysis.wall_time_per_image(model, np.asarray(run["samples"][:k]), steps=opts.steps,
                                                name=name, options=options, cond=cond, guidance=opts.guidance,
                                                precision=opts.precision)
        rows[label] = analysis.method_row(run, name, options, wall)
        runs[label] = run.path
        if nets is not None:
            if reference is None:
                reference, interpolation["reference"] = reference_set(
                    ws, opts, run[image_name(run, "samples")].shape[-1], nets)
            labels = {"labels": run["conds"], "class_seed": None} if class_cond else {}  # B: A's labels
            run_b = _method_run(ws, opts, sources, "b", name, options, dict(
                seed=opts.seed_b, noise=None, samples=None, reconstruction=False, **labels))
            cond = run["conds"] if class_cond else opts.run_settings().prompt_embeds
            interpolation["scores"][label] = analysis.interpolation_scores(
                model, name, options, run, run_b, reference, nets, opts.fid_protocol, alpha=opts.interpolation_alpha,
                steps=opts.steps, batch=opts.batch, cond=cond, guidance=opts.guidance, precision=opts.precision,
                ldm=ws.tag == "ldm").to_json()
            interpolation["runs_b"][label] = run_b.path
    order = [analysis.method_label(name, options) for name, options in methods]
    table = analysis.InverterTable(tuple(rows[label] for label in order if label in rows), skipped)
    out = {"model": ws.tag, "n": opts.n, "steps": opts.steps, "seed": opts.seed, "precision": opts.precision,
           "runs": {label: runs[label] for label in order if label in runs}, **table.to_json()}
    if nets is None:
        return {**out, "interpolation": None, "interpolation_note": interpolation}
    if reference is None:  # no method ran: the reference described, not read
        interpolation["reference"] = reference_set(ws, opts, None, None)[1]
    return {**out, "interpolation": interpolation}


INTERPOLATION_METRICS = tuple(f.name for f in dataclasses.fields(Scores))  # fid, precision, recall, f_score


def csv_rows(result: dict) -> list[dict]:
    """One row per method; with the Tab. 12 scores, interpolation_fid / _precision / _recall / _f_score."""
    out = []
    scores = (result.get("interpolation") or {}).get("scores")
    for r in result["rows"]:
        row = {k: v for k, v in r.items() if k not in ("options", "pixel_correlation")}
        pc = r["pixel_correlation"] or {}
        row.update(pixel_correlation_mean=pc.get("mean"), pixel_correlation_std=pc.get("std"))
        if scores is not None:
            row.update({f"interpolation_{m}": scores[r["label"]][m] for m in INTERPOLATION_METRICS})
        out.append(row)
    return out


PANELS = (("reconstruction_max_abs", "image reconstruction max |x̂0 − x0|", True),
          ("reconstruction_mae", "image reconstruction mean |x̂0 − x0|", True),
          ("noise_mae", "mean |noise − latent|", False),
          ("noise_correlation", "correlation(latent, noise)", False),
          ("kl_to_standard_normal", "KL(latent fit || N(0, 1))", True),
          ("shapiro_rejected", "Shapiro-Wilk rejected (share)", False),
          ("pixel_correlation", "Tab. 2 latent pixel correlation", False),
          ("nfe_invert", "network evaluations / image (invert)", False))


INTERPOLATION_TITLES = {"fid": "FID", "precision": "precision", "recall": "recall", "f_score": "F-score"}


def _panels(result: dict) -> list[tuple]:
    """(title, values per method, log scale) of every panel: the measures, then the Tab. 12 scores when there."""
    rows = result["rows"]
    out = [(title, [(r[key] or {}).get("mean") if key == "pixel_correlation" else r[key] for r in rows], log)
           for key, title, log in PANELS]
    interpolation = result.get("interpolation")
    if interpolation:
        alpha = interpolation["alpha"]
        out += [(f"Tab. 12 interpolation {INTERPOLATION_TITLES[m]} (α = {alpha:g})",
                 [interpolation["scores"][r["label"]][m] for r in rows], False) for m in INTERPOLATION_METRICS]
    return out


def plot(result: dict, path: str) -> str:
    """inverters.png: one bar panel per measure, a bar per method (a third row: the Tab. 12 scores when there)."""
    rows = result["rows"]
    labels = [r["label"] for r in rows]
    panels = _panels(result)
    fig, axes = plotting.new_figure(len(panels) // 4, 4, size=(4.2, 3.4))
    for ax, (title, values, log) in zip(axes.ravel(), panels, strict=True):
        values = np.asarray([np.nan if v is None else v for v in values], np.float64)
        ax.bar(range(len(rows)), np.maximum(values, 1e-12) if log else values,
               color=[f"C{i}" for i in range(len(rows))])
        if log:
            ax.set_yscale("log")
        if np.isnan(values).all():  # a score whose network is not converted (the report names the command)
            ax.text(0.5, 0.5, "not scored", ha="center", va="center", transform=ax.transAxes, color="0.4")
            ax.set_yticks([])  # no value: no scale
        ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
    skipped = "; ".join(result["skipped"]) if result["skipped"] else ""
    fig.suptitle(plotting.run_title("inversion methods", result["model"], result["n"], result["steps"])
                 + (f" (not run: {skipped})" if skipped else ""), fontsize=10)
    return plotting.save(fig, path)


def _show(x: np.ndarray, scale: float) -> np.ndarray:
    """(C, H, W) -> (H, W, 3) in [0, 1]: the first three channels (or channel 0 as gray) from [-scale, scale]."""
    c = x[:3] if x.shape[0] >= 3 else np.repeat(x[:1], 3, axis=0)
    return np.clip((np.moveaxis(c, 0, -1) / scale + 1) / 2, 0, 1)


def plot_latents(result: dict, path: str) -> str:
    """inverters_latents.png: columns the image, its noise and each method's latent; rows the first images."""
    runs = result["runs"]
    if not runs:
        fig, axes = plotting.new_figure(1, 1)
        axes[0, 0].axis("off")
        axes[0, 0].set_title("no method ran", fontsize=9)
        return plotting.save(fig, path)
    first = next(iter(runs.values()))
    samples = np.load(os.path.join(first, "samples.npy"), mmap_mode="r")
    noise = np.load(os.path.join(first, "noise.npy"), mmap_mode="r")
    k = min(PREVIEW, len(samples))
    panels = [("image", samples, 1.0), ("noise", noise, 2.5)]
    panels += [(label, np.load(os.path.join(p, "latents.npy"), mmap_mode="r"), 2.5) for label, p in runs.items()]
    fig, axes = plotting.new_figure(k, len(panels), size=(1.5, 1.5))
    for col, (label, arrays, scale) in enumerate(panels):
        for row in range(k):
            ax = axes[row, col]
            ax.imshow(_show(np.asarray(arrays[row], np.float64), scale), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, col].set_title(label.replace(" (", "\n("), fontsize=7)
    axes[0, 0].set_ylabel("values in [-1, 1];\nnoise, latents\nin [-2.5, 2.5]", fontsize=6)
    return plotting.save(fig, path)


def markdown(result: dict) -> str:
    """The comparison as a markdown table."""
    head = ("| method | NFE inv + rec | s / image | recon. max-abs | recon. MAE | mean abs(noise − latent) | "
            "corr(latent, noise) | KL to N(0,1) | SW rejected | Tab. 2 corr. | Tab. 5 plain / non-plain |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in result["rows"]:
        pc = r["pixel_correlation"]
        wall = "-" if r["wall_s_per_image"] is None else f"{r['wall_s_per_image']:.3f}"
        lines.append(f"| {r['label']} | {r['nfe_invert']} + {r['nfe_reconstruct']} | {wall} | "
                     f"{r['reconstruction_max_abs']:.2e} | {r['reconstruction_mae']:.2e} | {r['noise_mae']:.3f} | "
                     f"{r['noise_correlation']:.3f} | {r['kl_to_standard_normal']:.4f} | "
                     f"{r['shapiro_rejected']:.2f} | {'-' if pc is None else format(pc['mean'], '.3f')} | "
                     f"{r['mae_plain']:.3f} / {r['mae_non_plain']:.3f} |")
    for label, why in result["skipped"].items():
        lines.append(f"\n{label}: not run ({why}).")
    interpolation = result.get("interpolation")
    if interpolation is None:
        note = result.get("interpolation_note")
        return "\n".join(lines + ([f"\n{note}"] if note else []))
    lines += ["", f"Tab. 12 protocol per method: every part of the inverted states of sets A (seed {result['seed']}) "
              f"and B (seed {interpolation['seed_b']}) SLERPed per sample at α = {interpolation['alpha']:g}, "
              f"sampled back with the method; {interpolation['protocol']} scores against "
              f"{reference_text(interpolation['reference'])}; – : not scored.", "",
              "| method | FID | Precision | Recall | F-score |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        s = interpolation["scores"][r["label"]]
        lines.append(f"| {r['label']} | " + " | ".join("–" if s[m] is None else format(s[m], ".4g")
                                                        for m in INTERPOLATION_METRICS) + " |")
    for metric, why in interpolation["skipped"].items():
        lines.append(f"\n{metric}: {why}")
    return "\n".join(lines)


def write_outputs(result: dict, out: str) -> dict:
    """inverters.json, inverters.csv, inverters.png and inverters_latents.png in ``out``."""
    io.write_json(os.path.join(out, "inverters.json"), result)
    io.write_csv(os.path.join(out, "inverters.csv"), csv_rows(result))
    plot(result, os.path.join(out, "inverters.png"))
    plot_latents(result, os.path.join(out, "inverters_latents.png"))
    return result


ANALYSIS = cli.Analysis(
    name="inverters", paper_ref="beyond the paper: inversion methods with Tab. 2 / Tab. 5 / Sec. 3.1 metrics",
    options_class=Options, build_parser=build_parser, compute=compute, write_outputs=write_outputs,
    markdown=markdown, options_from_args=options_from_args, out_parts=out_parts, network_passes=network_passes,
    own_sizes=("n", "steps", "batch"), sizes_note="every method inverts and reconstructs the whole set",
)
main = cli.analysis_main(ANALYSIS)


if __name__ == "__main__":
    main()
