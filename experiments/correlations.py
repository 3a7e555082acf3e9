"""Pixel correlations of noise, latents and samples against pure chance (paper Sec. 3.2, Tab. 2).

    python -m experiments.correlations                     # the built-in default model, quick settings
    python -m experiments.correlations --model=adm32 --n=10240 --steps=100 --batch=256 --upstream-fp16

Samples N images from seed-indexed noise and inverts them with DDIM (the standard run that the analyses share,
``jtaba.runs``: batched, resumable, reused when finished), then for the noise x_T, the latents x̂_T and the samples
x_0 the paper's correlation metric (``jtaba.metrics.top_k_corr_in_patches``, upstream ``get_top_k_corr_in_patches``
with patch 8 and top 20): in every non-overlapping 8x8 patch, the 20 largest |Pearson r| between two of its
C*64 features (pixel x channel) measured across the N samples; mean and std over all patches' values.

At small N even independent Gaussians show sizeable top-20 correlations (the largest of C*64*(C*64-1)/2 sample
correlations of N draws), so a null row is added: ``--null-sets`` fresh standard Gaussian sets of the noise's
shape (numpy ``default_rng(--null-seed)``, drawn patch by patch: set 1 patch (0,0), (0,8), ..., set 2, ...), each
measured the same way; the row reports the mean over sets of each set's mean / std and their sd over sets. The
noise row should lie inside that spread; the distance of the latents from it (in null sds, ``z_vs_null``) is what
the paper's comparison means at this N.

``--upstream-fp16`` rounds every input (the null sets included) to float16 first, as upstream's correlation.py
``__main__`` (the Tab. 2 producer) does; the arithmetic is float64 either way. Without it the latents row equals
the run's metrics.json ``correlation``.

Writes correlations.json, correlations.csv (rows noise / latents / samples / null; columns mean, std and the null's
sd over sets) and correlations.png (the four means as bars with the null band) into --out. The default --out
folder names each analysis setting that differs from its default.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from jtaba import cli, io, plotting
from jtaba.runs import StandardOptions

ROWS = ("noise", "latents", "samples")  # paper column order of Tab. 2 (noise, latent, sample)
LABELS = {"noise": r"noise $x_T$", "latents": r"latent $\hat{x}_T$", "samples": r"sample $x_0$",
          "null": "null (fresh Gaussian)"}


@dataclasses.dataclass(frozen=True)
class Options(StandardOptions):
    null_sets: int = 5
    null_seed: int = 0
    upstream_fp16: bool = False


def build_parser():
    p = cli.parser("python -m experiments.correlations", __doc__)
    cli.add_analysis_flags(p, Options,
                           n_help="number of samples N (the standard run: computed once and shared with the "
                                  "other analyses; the paper used 10,240 and T = 100)")
    p.add_argument("--null-sets", type=int, default=Options.null_sets,
                   help="number of fresh standard Gaussian sets (shape of the noise) measured for the null row; "
                        "0 leaves the null row out")
    p.add_argument("--null-seed", type=int, default=Options.null_seed,
                   help="seed of the numpy generator drawing the null sets (independent of --seed)")
    p.add_argument("--upstream-fp16", action="store_true",
                   help="round noise, latents, samples and null sets to float16 before measuring, as upstream's "
                        "correlation.py __main__ (Tab. 2)")
    return p


def options_from_args(args) -> Options:
    if args.null_sets < 0:
        raise ValueError(f"--null-sets must be >= 0, got {args.null_sets}")
    return cli.options_from_args(Options, args)


def _patch_grid(height: int, width: int, patch: int):
    """(i, j, ph, pw) of the non-overlapping patches, row-major (border patches may be smaller)."""
    for i in range(0, height, patch):
        for j in range(0, width, patch):
            yield i, j, min(patch, height - i), min(patch, width - j)


def _pool(parts: list[tuple[int, float, float]]) -> dict:
    """Mean and unbiased std of the concatenation of groups given as (count, mean, unbiased std)."""
    if not parts:
        return {"mean": 0, "std": 0}  # no patch with two features (as the metric)
    k = np.array([p[0] for p in parts], np.float64)
    m = np.array([p[1] for p in parts], np.float64)
    s = np.array([p[2] if p[0] > 1 else 0.0 for p in parts], np.float64)
    total = k.sum()
    mean = (k * m).sum() / total
    ss = ((k - 1) * s ** 2).sum() + (k * (m - mean) ** 2).sum()
    return {"mean": float(mean), "std": float(np.sqrt(ss / (total - 1))) if total > 1 else float("nan")}


def patch_correlation(blocks) -> dict:
    """The patch-correlation metric (patch 8, top 20) of an array given as its patches: ``blocks`` yields each
    patch (N, C, ph, pw); every patch goes through ``jtaba.metrics.top_k_corr_in_patches`` alone and the per-patch
    mean / std are pooled exactly, so only one patch is in memory (memmaps, float16 casts, patch-wise null draws)."""
    from jtaba.metrics import top_k_corr_in_patches
    from jtaba.metrics.core import CORRELATION_PATCH, CORRELATION_TOP_K

    parts = []
    for b in blocks:
        d = int(np.prod(b.shape[1:]))
        if d < 2:
            continue
        r = top_k_corr_in_patches(b, patch_size=CORRELATION_PATCH, top_k=CORRELATION_TOP_K)
        parts.append((min(CORRELATION_TOP_K, d * (d - 1) // 2), r["mean"], r["std"]))
    return _pool(parts)


def array_correlation(x, fp16: bool = False) -> dict:
    """``patch_correlation`` of an (N, C, H, W) array (memmap), optionally rounded to float16 patch by patch."""
    from jtaba.metrics.core import CORRELATION_PATCH

    x = np.asarray(x)  # a view for memmaps: patches are read one at a time
    if x.ndim != 4:
        raise ValueError(f"expected (N, C, H, W), got shape {x.shape}")

    def blocks():
        for i, j, ph, pw in _patch_grid(x.shape[2], x.shape[3], CORRELATION_PATCH):
            b = np.asarray(x[:, :, i:i + ph, j:j + pw])
            yield b.astype(np.float16) if fp16 else b

    return patch_correlation(blocks())


def null_correlation(shape, sets: int, seed: int = 0, fp16: bool = False) -> dict:
    """The null row: ``sets`` standard Gaussian arrays of ``shape`` (N, C, H, W), drawn from one
    ``np.random.default_rng(seed)`` set after set, patch by patch in row-major patch order (each patch
    ``rng.standard_normal((N, C, ph, pw))`` float64, rounded to float16 with ``fp16``). Returns {"mean", "std"}
    (means over sets of each set's mean / std), "mean_sd", "std_sd" (unbiased sd over sets; None for one set)
    and "sets" (each set's {mean, std})."""
    from jtaba.metrics.core import CORRELATION_PATCH

    n, c, h, w = shape
    rng = np.random.default_rng(seed)

    def blocks():
        for i, j, ph, pw in _patch_grid(h, w, CORRELATION_PATCH):
            b = rng.standard_normal((n, c, ph, pw))
            yield b.astype(np.float16) if fp16 else b

    per_set = [patch_correlation(blocks()) for _ in range(sets)]
    means = np.array([r["mean"] for r in per_set], np.float64)
    stds = np.array([r["std"] for r in per_set], np.float64)
    sd = (lambda v: float(v.std(ddof=1)) if v.size > 1 else None)
    return {"mean": float(means.mean()), "std": float(stds.mean()), "mean_sd": sd(means), "std_sd": sd(stds),
            "sets": per_set}


def compute(ws, opts: Options) -> dict:
    """Sample and invert (or reuse the standard run), then the correlation rows and the null row."""
    from jtaba.metrics.core import CORRELATION_PATCH, CORRELATION_TOP_K

    run = ws.run(opts.run_settings())
    rows = {k: array_correlation(run[k], opts.upstream_fp16) for k in ROWS}
    result = {"model": ws.tag, "n": opts.n, "steps": opts.steps, "seed": opts.seed, "precision": opts.precision,
              "run": run.path, "patch_size": CORRELATION_PATCH, "top_k": CORRELATION_TOP_K,
              "upstream_fp16": opts.upstream_fp16, "null_sets": opts.null_sets, "null_seed": opts.null_seed,
              "correlation": rows, "null": None, "z_vs_null": None}
    if opts.null_sets > 0:
        null = null_correlation(run["noise"].shape, opts.null_sets, opts.null_seed, opts.upstream_fp16)
        result["null"] = null
        if null["mean_sd"]:
            result["z_vs_null"] = {k: (rows[k]["mean"] - null["mean"]) / null["mean_sd"] for k in ROWS}
    return result


def csv_rows(result: dict) -> list[dict]:
    """One row per source (noise, latents, samples, null): mean and std of the top-k values; for the null row
    also their sd over the null sets."""
    head = {"model": result["model"], "n": result["n"], "steps": result["steps"], "seed": result["seed"],
            "upstream_fp16": result["upstream_fp16"]}
    rows = [{**head, "row": k, "mean": result["correlation"][k]["mean"], "std": result["correlation"][k]["std"],
             "mean_sd_over_null_sets": None, "std_sd_over_null_sets": None, "null_sets": None} for k in ROWS]
    null = result["null"]
    if null is not None:
        rows.append({**head, "row": "null", "mean": null["mean"], "std": null["std"],
                     "mean_sd_over_null_sets": null["mean_sd"], "std_sd_over_null_sets": null["std_sd"],
                     "null_sets": result["null_sets"]})
    return rows


def plot(result: dict, path: str) -> str:
    """correlations.png: the mean top-k |r| per source as bars (error bars: std of the top-k values), the null
    row's mean ± 1 sd over sets as a grey band across the panel."""
    fig, ax = plotting.new_figure(1, 1, size=(6.4, 4.4))
    ax = ax[0, 0]
    names = list(ROWS) + (["null"] if result["null"] is not None else [])
    stats = {**result["correlation"], **({"null": result["null"]} if result["null"] is not None else {})}
    colours = {"noise": plotting.VERTEX_COLORS["noise"], "latents": plotting.VERTEX_COLORS["latent"],
               "samples": plotting.VERTEX_COLORS["image"], "null": "0.55"}
    xs = np.arange(len(names))
    means = [stats[k]["mean"] for k in names]
    ax.bar(xs, means, yerr=[stats[k]["std"] for k in names], capsize=5, width=0.6,
           color=[colours[k] for k in names], alpha=0.85)
    for x, m in zip(xs, means):
        ax.annotate(f"{m:.3f}", (x, m), textcoords="offset points", xytext=(12, 3), fontsize=8)
    null = result["null"]
    if null is not None:
        sd = null["mean_sd"]
        if sd is not None:
            ax.axhspan(null["mean"] - sd, null["mean"] + sd, color="0.7", alpha=0.5, zorder=0,
                       label=f"null mean ± 1 sd over {result['null_sets']} Gaussian sets")
        ax.axhline(null["mean"], color="0.3", ls="--", lw=1, zorder=0,
                   label="null mean" if sd is not None else "null mean (1 Gaussian set)")
    ax.set_xticks(xs, [LABELS[k] for k in names])
    ax.set_xlabel(f"bars: mean, whiskers: ± std of the top-{result['top_k']} values of all patches", fontsize=9)
    ax.set_ylabel(f"mean of top-{result['top_k']} |Pearson r| in {result['patch_size']}x{result['patch_size']} "
                  "patches")
    ax.set_ylim(0, min(1.05, max(m + stats[k]["std"] for m, k in zip(means, names)) * 1.25))
    if null is not None:
        ax.legend(fontsize=8, loc="upper left")
    fp16 = " (inputs rounded to float16)" if result["upstream_fp16"] else ""
    ax.set_title(plotting.run_title(f"pixel correlation in patches{fp16}", result["model"], result["n"],
                                    result["steps"]), fontsize=10)
    return plotting.save(fig, path)


def report(result: dict) -> str:
    """Human-readable summary printed at the end."""
    k, p = result["top_k"], result["patch_size"]
    lines = [f"top-{k} |Pearson r| in {p}x{p} patches, {result['n']} samples, T={result['steps']} "
             f"({result['model']}{', float16 inputs' if result['upstream_fp16'] else ''}):",
             f"  {'row':8s} {'mean':>8s} {'std':>8s}"]
    for name in ROWS:
        r = result["correlation"][name]
        z = f"   {result['z_vs_null'][name]:+.1f} null sd" if result["z_vs_null"] else ""
        lines.append(f"  {name:8s} {r['mean']:8.4f} {r['std']:8.4f}{z}")
    null = result["null"]
    if null is not None:
        spread = f" (sd over {result['null_sets']} sets: {null['mean_sd']:.4f}, {null['std_sd']:.4f})" \
            if null["mean_sd"] is not None else ""
        lines.append(f"  {'null':8s} {null['mean']:8.4f} {null['std']:8.4f}{spread}")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The paper's Tab. 2 row (noise, latent, sample: mean ± std) with the null as a fourth column."""
    c = result["correlation"]
    cells = [f"{c[k]['mean']:.3f} ± {c[k]['std']:.3f}" for k in ROWS]
    head = "| | noise $x_T$ | latent $\\hat{x}_T$ | sample $x_0$ |"
    sep = "|---|---|---|---|"
    null = result["null"]
    if null is not None:
        head += " null (Gaussian) |"
        sep += "---|"
        spread = f" (sd over {result['null_sets']} sets {null['mean_sd']:.3f})" if null["mean_sd"] is not None else ""
        cells.append(f"{null['mean']:.3f} ± {null['std']:.3f}{spread}")
    k, p = result["top_k"], result["patch_size"]
    note = (f"Mean ± std of the top-{k} |Pearson r| in {p}x{p} patches over N = {result['n']} samples"
            f"{', inputs rounded to float16' if result['upstream_fp16'] else ''}.")
    return "\n".join([head, sep, f"| {result['model']} | " + " | ".join(cells) + " |", "", note])


def write_outputs(result: dict, out: str) -> dict:
    """correlations.json, correlations.csv and correlations.png in ``out``."""
    io.write_json(os.path.join(out, "correlations.json"), result)
    io.write_csv(os.path.join(out, "correlations.csv"), csv_rows(result))
    plot(result, os.path.join(out, "correlations.png"))
    return result


def out_parts(opts: Options) -> list[str]:
    """Out-folder name parts for the analysis settings that differ from their defaults."""
    parts = cli.changed_parts(opts, (("null_sets", "null{}"), ("null_seed", "nullseed{}")))
    return parts + (["fp16"] if opts.upstream_fp16 else [])


main = cli.analysis_main(__name__)


if __name__ == "__main__":
    main()
