"""The most probable noise-sample-latent triangle (reference §3.4; paper Tab. 3, Tab. 10, Fig. 9).

    python -m experiments.triangles                        # the built-in default model, quick settings
    python -m experiments.triangles --model=adm32 --n=10240 --steps=100 --batch=256

Samples N images from seed-indexed noise, inverts them with DDIM (through ``experiments.sample_invert``: batched,
sharded over the devices, resumable, and writing the standard noise / samples / latents .npy files and metrics.json
into --out), then per sample the angles at the noise (x_T), image (x_0) and latent (x̂_T) vertices, their 1-degree
histograms and the triangle of integer angles with the highest joint probability (upstream
``most_probable_triangle.py``), the mean angles (``calc_angles``: acos of the mean cosine) and the mean L2 distances
(``calc_distances``). Writes triangles.json, triangles.csv (one row, the paper's table columns) and triangles.png
(the triangle to scale with its angles, and the three histograms) into --out. Re-running the same command resumes the
sampling / inversion and recomputes the analysis.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np

from experiments import add_model_flags, model_dir

VERTICES = ("image", "noise", "latent")  # paper column order (Tab. 3)
CALC_ANGLE_KEYS = {"image": "mean_cossim_img", "noise": "mean_cossim_noise", "latent": "mean_cossim_latent"}
SIDES = {("noise", "latent"): "noise_lat", ("image", "latent"): "img_lat", ("image", "noise"): "img_noise"}
RUN_FILES = ("noise", "samples", "latents")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.triangles", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    p.add_argument("--n", type=int, default=512,
                   help="number of samples N (default 512: about 3 minutes on 2 CPU cores with the built-in model; "
                        "the paper used 10,240)")
    p.add_argument("--steps", type=int, default=50,
                   help="DDIM steps T of sampling and inversion (default 50; the paper used 100)")
    p.add_argument("--batch", type=int, default=128,
                   help="samples per batch over all devices (memory / speed only; results do not depend on it)")
    p.add_argument("--seed", type=int, default=42, help="seed of the initial noise (sample i depends on (seed, i))")
    p.add_argument("--out", default=None,
                   help="output directory for the run files and triangles.{json,csv,png} "
                        "(default runs/<model>/triangles/seed<S>_T<T>_n<N>); re-run to resume")
    return p


def angle_table(noise, samples, latents) -> dict:
    """Everything triangles.json holds about one set of (N, C, H, W) arrays: per-vertex histograms (178 bins of
    1 degree, left edges 1..178), the most probable triangle (None when no triangle has a positive joint
    probability, e.g. for very small N; the reason in ``most_probable_triangle_error``), the mean per-sample angle
    per vertex, ``calc_angles`` and ``calc_distances``."""
    from jtaba.metrics.triangles import (ANGLE_BIN_EDGES, angle_histogram, calc_angles, calc_distances,
                                         find_max_prob_triangle, vertex_angles)

    angle_l, angle_s, angle_n = vertex_angles(noise, samples, latents)
    per_sample = {"latent": angle_l, "image": angle_s, "noise": angle_n}
    out = {"most_probable_triangle": None, "histograms": None}
    try:
        hists = {k: angle_histogram(per_sample[k]) for k in ("latent", "image", "noise")}
        out["histograms"] = {"bin_left_edges": ANGLE_BIN_EDGES[:-1].tolist(),
                             **{k: hists[k].tolist() for k in VERTICES}}
        (a, b, c), prob = find_max_prob_triangle(hists["latent"], hists["image"], hists["noise"])
        out["most_probable_triangle"] = {"latent": a, "image": b, "noise": c, "probability": prob}
    except ValueError as e:
        out["most_probable_triangle_error"] = str(e)
    out["mean_sample_angle"] = {k: float(np.nanmean(per_sample[k])) for k in VERTICES}
    out["calc_angles"] = calc_angles(noise, samples, latents)
    out["calc_distances"] = calc_distances(noise, samples, latents)
    return out


def csv_row(result: dict) -> dict:
    """The paper's table columns: most probable angles, mean angles (acos of the mean cosine), L2 mean ± std."""
    tri = result["most_probable_triangle"] or {}
    row = {"n": result["params"]["n"], "steps": result["params"]["steps"], "seed": result["params"]["seed"]}
    row.update({f"triangle_angle_{k}": tri.get(k) for k in VERTICES})
    row["triangle_probability"] = tri.get("probability")
    row.update({f"mean_angle_{k}": result["calc_angles"][CALC_ANGLE_KEYS[k]] for k in VERTICES})
    for (u, v), key in SIDES.items():
        row[f"l2_{u}_{v}_mean"] = result["calc_distances"][f"mean_l2_{key}"]
        row[f"l2_{u}_{v}_std"] = result["calc_distances"][f"std_l2_{key}"]
    return row


def write_csv(path: str, rows: list[dict]) -> None:
    """Rows (same keys) as CSV with a header, written atomically."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def plot(result: dict, path: str) -> str:
    """triangles.png: the most probable triangle to scale (angles at the vertices, mean L2 distances on the sides)
    and the three angle histograms with the chosen angles marked."""
    from experiments import plotting

    tri = result["most_probable_triangle"]
    fig, axes = plotting.new_figure(1, 4, size=(4.0, 3.6))
    dist = result["calc_distances"]
    if tri is not None:
        sides = {uv: f"{dist[f'mean_l2_{key}']:.1f}" for uv, key in SIDES.items()}
        plotting.draw_triangle(axes[0, 0], {k: tri[k] for k in VERTICES}, sides,
                               title=f"most probable triangle (p = {tri['probability']:.2e})\n"
                                     f"N = {result['params']['n']}, T = {result['params']['steps']}")
        hist = result["histograms"]
        for ax, k in zip(axes[0, 1:], VERTICES):
            plotting.angle_histogram_panel(ax, hist["bin_left_edges"], hist[k], k, mark=tri[k])
            ax.set_title(f"{k}: {tri[k]}° (mean {result['calc_angles'][CALC_ANGLE_KEYS[k]]:.1f}°)", fontsize=10)
    else:
        for ax in axes[0]:
            ax.axis("off")
        axes[0, 0].text(0.0, 0.5, "no triangle with positive probability:\n"
                        + result.get("most_probable_triangle_error", ""), fontsize=9)
    return plotting.save(fig, path)


def report(result: dict) -> str:
    """Human-readable summary printed at the end."""
    tri = result["most_probable_triangle"]
    ang = result["calc_angles"]
    lines = [f"noise-sample-latent triangles of {result['params']['n']} samples, T={result['params']['steps']}:"]
    if tri is None:
        lines.append(f"  most probable triangle: none ({result.get('most_probable_triangle_error')})")
    else:
        lines.append(f"  most probable triangle (joint probability {tri['probability']:.3e}):")
    lines.append(f"  {'vertex':8s} {'triangle':>9s} {'mean angle':>11s}")
    for k in VERTICES:
        t = f"{tri[k]}°" if tri else "-"
        lines.append(f"  {k:8s} {t:>9s} {ang[CALC_ANGLE_KEYS[k]]:10.2f}°")
    lines.append("  L2 distances (mean ± std over samples):")
    for (u, v), key in SIDES.items():
        d = result["calc_distances"]
        lines.append(f"    {u}-{v}: {d[f'mean_l2_{key}']:.3f} ± {d[f'std_l2_{key}']:.3f}")
    return "\n".join(lines)


def analyze(run_dir: str, params: dict) -> dict:
    """Read the run files (memory-mapped), write triangles.{json,csv,png} into ``run_dir``; returns the result."""
    arrays = [np.load(os.path.join(run_dir, f"{name}.npy"), mmap_mode="r") for name in RUN_FILES]
    result = {"params": params, **angle_table(*arrays)}
    write_json(os.path.join(run_dir, "triangles.json"), result)
    write_csv(os.path.join(run_dir, "triangles.csv"), [csv_row(result)])
    plot(result, os.path.join(run_dir, "triangles.png"))
    return result


def main(argv: list[str] | None = None) -> str:
    """Run the experiment; returns the output directory."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from experiments import sample_invert

    ckpt, tag = model_dir(args)
    out = os.path.abspath(args.out or os.path.join("runs", tag, "triangles",
                                                   f"seed{args.seed}_T{args.steps}_n{args.n}"))
    sample_invert.main(["--ckpt", ckpt, "--n", str(args.n), "--steps", str(args.steps), "--batch", str(args.batch),
                        "--seed", str(args.seed), "--no-reconstruction", "--out", out])
    params = {"ckpt": ckpt, "n": args.n, "steps": args.steps, "seed": args.seed}
    result = analyze(out, params)
    print(report(result))
    print(f"wrote {os.path.join(out, 'triangles.json')}, triangles.csv, triangles.png")
    return out


if __name__ == "__main__":
    main()
