"""Are the latents Gaussian? Shapiro-Wilk per latent, QQ plot against the noise, and the latents shown as images
(upstream ``stat_test_normality`` / ``plt_qq``; paper Sec. 3.2 and Fig. 2).

    python -m experiments.normality                        # the built-in default model, quick settings
    python -m experiments.normality --model=adm32 --n=10240 --steps=100 --batch=256

Samples N images from seed-indexed noise and inverts them with DDIM (the standard run that the analyses share,
``jtaba.runs``: batched, resumable, reused when finished), then:

- Shapiro-Wilk on every latent x̂_T (``jtaba.metrics.shapiro_normality``): min(C*H*W, --limit) of its elements drawn
  with replacement (numpy ``default_rng(--index-seed)``; upstream used torch's global generator), accepted as normal
  when p > --p-value; n_rej, %_rej, n_acc, %_acc. The same test, with the same indices, on the noise x_T is the
  control row. Read the latents against it: upstream's draw with replacement repeats values, and Shapiro-Wilk
  rejects tied samples well above the nominal rate, so even Gaussian noise is rejected about half the time when
  C*H*W <= 5000 (ADM-32, the built-in 16x16 model) and about a fifth of the time at 64x64.
  ``--without-replacement`` tests distinct elements (all of them when C*H*W <= --limit): calibrated, noise is then
  accepted about (1 - p-value) of the time.
- QQ data (``jtaba.metrics.qq_quantiles``): quantiles of all latent elements against those of all noise elements
  (statsmodels ``qqplot_2samples(noise, latent, line="s")`` as upstream; the "s" line y = mean + std * x is where
  a Gaussian with the latents' mean and std would lie).
- The Fig. 2 view: for the first --show samples, the image x_0 (decoded for latent models), its noise x_T, its latent
  x̂_T and latent - noise, each min-max normalised per image as upstream ``grid_tensors``; arrays with other than 3
  channels are shown through a 3-component PCA over channels (upstream ``pca_latent``, as for DiT), 1 channel in
  grey.

Writes normality.json (counts, per-sample p-values, QQ quantiles), normality.csv (rows latents / noise; columns
n_rej, %_rej, n_acc, %_acc with % in percent), normality.png (QQ plot and p-value histograms) and
normality_latents.png (the Fig. 2 grid, read from the run folder) into --out. The default --out folder names each
analysis setting that differs from its default.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from jtaba import cli, io, plotting
from jtaba.analyses import normality as analysis
from jtaba.runs import StandardOptions

ROWS = analysis.ROWS
COLOURS = {"noise": plotting.VERTEX_COLORS["noise"], "latents": plotting.VERTEX_COLORS["latent"]}
LABELS = {"noise": r"noise $x_T$", "latents": r"latent $\hat{x}_T$"}


@dataclasses.dataclass(frozen=True)
class Options(StandardOptions):
    limit: int = 5000
    p_value: float = 0.05
    index_seed: int = 0
    replace: bool = True
    show: int = 6


def build_parser():
    p = cli.parser("python -m experiments.normality", __doc__)
    cli.add_analysis_flags(p, Options,
                           n_help="number of samples N (the standard run: computed once and shared with the "
                                  "other analyses; the paper used 10,240 and T = 100)")
    p.add_argument("--limit", type=int, default=Options.limit,
                   help="elements per sample given to Shapiro-Wilk: min(C*H*W, limit) drawn with replacement "
                        "(upstream 5000, the largest size scipy's p-value is accurate for)")
    p.add_argument("--p-value", type=float, default=Options.p_value,
                   help="a sample is accepted as normal when its Shapiro-Wilk p-value is above this")
    p.add_argument("--index-seed", type=int, default=Options.index_seed,
                   help="seed of the numpy generator drawing the tested element indices (the same indices for "
                        "latents and noise)")
    p.add_argument("--without-replacement", dest="replace", action="store_false",
                   help="test distinct elements (all of them when C*H*W <= --limit) instead of upstream's draw with "
                        "replacement, whose repeated values make Shapiro-Wilk reject even Gaussian noise")
    p.add_argument("--show", type=int, default=Options.show,
                   help="samples shown in normality_latents.png (the first ones of the run)")
    return p


def options_from_args(args) -> Options:
    if args.limit < 3:
        raise ValueError(f"--limit must be at least 3 (Shapiro-Wilk), got {args.limit}")
    if not 0 < args.p_value < 1:
        raise ValueError(f"--p-value must be in (0, 1), got {args.p_value}")
    if args.show < 0:
        raise ValueError(f"--show must be >= 0, got {args.show}")
    return cli.options_from_args(Options, args)


def compute(ws, opts: Options) -> dict:
    """Sample and invert (or reuse the standard run), then Shapiro-Wilk for latents and noise and the QQ data."""
    run = ws.run(opts.run_settings())
    table = analysis.of_run(run, limit=opts.limit, p_value=opts.p_value, index_seed=opts.index_seed,
                            replace=opts.replace).to_json()
    return {"model": ws.tag, "n": opts.n, "steps": opts.steps, "seed": opts.seed, "precision": opts.precision,
            "run": run.path, "limit": opts.limit, "tested_elements": table.pop("tested_elements"),
            "p_value": opts.p_value, "index_seed": opts.index_seed, "with_replacement": opts.replace, **table,
            "shown": list(range(min(opts.show, opts.n)))}


def csv_rows(result: dict) -> list[dict]:
    """Rows latents / noise: n_rej, %_rej, n_acc, %_acc (percent, where upstream's dict holds fractions)."""
    head = {"model": result["model"], "n": result["n"], "steps": result["steps"], "seed": result["seed"],
            "tested_elements": result["tested_elements"], "with_replacement": result["with_replacement"],
            "p_value": result["p_value"]}
    out = []
    for k in ROWS:
        s = result["shapiro"][k]
        out.append({**head, "row": k, "n_rej": s["n_rej"], "%_rej": 100 * s["%_rej"], "n_acc": s["n_acc"],
                    "%_acc": 100 * s["%_acc"]})
    return out


def _how(result: dict) -> str:
    return "elements drawn with replacement" if result["with_replacement"] else "distinct elements"


def plot(result: dict, path: str) -> str:
    """normality.png: QQ plot of latent against noise quantiles (with the statsmodels "s" line and y = x), and the
    Shapiro-Wilk p-value histograms of latents and noise (the acceptance threshold marked)."""
    fig, axes = plotting.new_figure(1, 2, size=(5.0, 4.4))
    qq = result["qq"]
    ax = axes[0, 0]
    x, y = np.asarray(qq["x"]), np.asarray(qq["y"])
    ax.plot(x, y, ".", ms=3, color=COLOURS["latents"], label="latent vs noise quantiles")
    ax.plot(x, qq["line_intercept"] + qq["line_slope"] * x, "-", color="0.2", lw=1,
            label=f"Gaussian with the latents' mean, std ({qq['line_slope']:.3f})")
    ax.plot(x, x, ":", color=COLOURS["noise"], lw=1.3, label="y = x (same as noise)")
    ax.set_xlabel(r"noise $x_T$ quantiles")
    ax.set_ylabel(r"latent $\hat{x}_T$ quantiles")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    ax.set_title(plotting.run_title("QQ: latents vs noise (all elements)", result["model"], result["n"],
                                    result["steps"]), fontsize=10)

    ax = axes[0, 1]
    hist = result["p_value_histogram"]
    edges = np.asarray(hist["bin_edges"])
    for k in ROWS:
        s = result["shapiro"][k]
        ax.stairs(hist[k], edges, color=COLOURS[k], lw=1.5, fill=k == "latents", alpha=0.45 if k == "latents" else 1,
                  label=f"{LABELS[k]}: {100 * s['%_acc']:.1f}% accepted")
    ax.axvline(result["p_value"], color="black", ls="--", lw=1, label=f"p = {result['p_value']:g}")
    ax.set_xlabel("Shapiro-Wilk p-value per sample")
    ax.set_ylabel("number of samples")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(plotting.run_title(f"Shapiro-Wilk p-values per sample\n({result['tested_elements']} {_how(result)})",
                                    result["model"], result["n"], result["steps"]), fontsize=10)
    return plotting.save(fig, path)


def display_images(x) -> np.ndarray:
    """(k, C, H, W) -> (k, H, W, 3) in [0, 1]: 3 channels as RGB, 1 channel grey, otherwise the first 3 principal
    components over channels fitted on all k arrays together (upstream ``pca_latent``); then each image min-max
    normalised on its own (upstream ``tensors_to_pils_single``)."""
    x = np.asarray(x, np.float64)
    k, c, h, w = x.shape
    if c == 3:
        rgb = x.transpose(0, 2, 3, 1)
    elif c == 1:
        rgb = np.repeat(x.transpose(0, 2, 3, 1), 3, axis=-1)
    else:
        pixels = x.transpose(0, 2, 3, 1).reshape(-1, c)
        centred = pixels - pixels.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        comps = vt[:3]
        rgb = (centred @ comps.T)
        if rgb.shape[1] < 3:
            rgb = np.concatenate([rgb, np.zeros((rgb.shape[0], 3 - rgb.shape[1]))], axis=1)
        rgb = rgb.reshape(k, h, w, 3)
    lo = rgb.min(axis=(1, 2, 3), keepdims=True)
    span = rgb.max(axis=(1, 2, 3), keepdims=True) - lo
    return (rgb - lo) / np.where(span > 0, span, 1.0)


def plot_latents(result: dict, path: str) -> str:
    """normality_latents.png (paper Fig. 2): image, noise, latent and latent - noise of the shown samples, read from
    the run folder."""
    from jtaba.runs import open_run

    run = open_run(result["run"])
    idx = result["shown"]
    image = run.get("decoded_samples")
    rows = [("image $x_0$" + (" (decoded)" if image is not None else ""),
             (image if image is not None else run["samples"])[idx]),
            (r"noise $x_T$", run["noise"][idx]), (r"latent $\hat{x}_T$", run["latents"][idx]),
            (r"latent $-$ noise", np.asarray(run["latents"][idx], np.float64) - np.asarray(run["noise"][idx]))]
    c = run["latents"].shape[1]
    fig, axes = plotting.new_figure(len(rows), len(idx), size=(1.9, 1.9))
    for r, (name, arr) in enumerate(rows):
        imgs = display_images(arr)
        for j, img in enumerate(imgs):
            ax = axes[r, j]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=9)
            if r == 0:
                ax.set_title(f"sample {idx[j]}", fontsize=9)
    how = "" if c == 3 else (" (grey)" if c == 1 else f" ({c} channels: first 3 principal components)")
    fig.suptitle(plotting.run_title(f"latents as images, each min-max normalised{how}", result["model"],
                                    result["n"], result["steps"]), fontsize=10)
    return plotting.save(fig, path)


def report(result: dict) -> str:
    """Human-readable summary printed at the end."""
    lines = [f"Shapiro-Wilk on {result['tested_elements']} {_how(result)} per sample (p > {result['p_value']:g}: "
             f"accepted), {result['n']} samples, T={result['steps']} ({result['model']}):",
             f"  {'row':8s} {'n_rej':>6s} {'%_rej':>7s} {'n_acc':>6s} {'%_acc':>7s}"]
    for k in ROWS:
        s = result["shapiro"][k]
        lines.append(f"  {k:8s} {s['n_rej']:6d} {100 * s['%_rej']:6.1f}% {s['n_acc']:6d} {100 * s['%_acc']:6.1f}%")
    qq = result["qq"]
    lines.append(f"  QQ reference line: latent mean {qq['line_intercept']:+.4f}, std {qq['line_slope']:.4f}")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The Shapiro-Wilk table (latents, with noise as the control) as markdown."""
    rows = ["| | n_rej | %_rej | n_acc | %_acc |", "|---|---|---|---|---|"]
    for k in ROWS:
        s = result["shapiro"][k]
        name = "latent $\\hat{x}_T$" if k == "latents" else "noise $x_T$ (control)"
        rows.append(f"| {name} | {s['n_rej']} | "
                    f"{100 * s['%_rej']:.1f} | {s['n_acc']} | {100 * s['%_acc']:.1f} |")
    return "\n".join(rows + ["", f"{result['model']}, N = {result['n']}, T = {result['steps']}: Shapiro-Wilk on "
                                 f"{result['tested_elements']} {_how(result)} per sample, accepted when "
                                 f"p > {result['p_value']:g}."
                             + (" The noise is Gaussian: its rejection rate is the test's own (repeated values "
                                "from the draw with replacement inflate it)." if result["with_replacement"] else ""),
                             "", f"Columns: n_rej / %_rej = samples (and their percentage of N) whose Shapiro-Wilk "
                                 f"p-value is at most {result['p_value']:g}, rejected as Gaussian; n_acc / %_acc = "
                                 "the others."])


def write_outputs(result: dict, out: str) -> dict:
    """normality.json, normality.csv, normality.png and normality_latents.png in ``out``."""
    io.write_json(os.path.join(out, "normality.json"), result)
    io.write_csv(os.path.join(out, "normality.csv"), csv_rows(result))
    plot(result, os.path.join(out, "normality.png"))
    if result["shown"]:
        plot_latents(result, os.path.join(out, "normality_latents.png"))
    return result


def out_parts(opts: Options) -> list[str]:
    """Out-folder name parts for the analysis settings that differ from their defaults."""
    named = (("limit", "limit{}"), ("p_value", "p{:g}"), ("index_seed", "iseed{}"), ("show", "show{}"))
    return cli.changed_parts(opts, named) + ([] if opts.replace else ["norepl"])


ANALYSIS = cli.Analysis(
    name="normality", paper_ref="Sec. 3.2, Fig. 2", options_class=Options, build_parser=build_parser, compute=compute,
    write_outputs=write_outputs, markdown=markdown, options_from_args=options_from_args, out_parts=out_parts,
    console=report,
)
main = cli.analysis_main(ANALYSIS)


if __name__ == "__main__":
    main()
