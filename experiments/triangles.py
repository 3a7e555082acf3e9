"""The most probable noise-sample-latent triangle (paper Sec. 3.3, App. B; Tab. 3, Tab. 10, Fig. 9).

    python -m experiments.triangles                        # the built-in default model, quick settings
    python -m experiments.triangles --model=adm32 --n=10240 --steps=100 --batch=256

Samples N images from seed-indexed noise and inverts them with DDIM (``jtaba.runs``: batched, sharded over the
devices, resumable; a finished run with the same model and settings is reused), then per sample the angles at the
noise (x_T), image (x_0) and latent (x̂_T) vertices, their 1-degree histograms and the triangle of integer angles
with the highest joint probability (upstream ``most_probable_triangle.py``), the mean angles (``calc_angles``: acos
of the mean cosine) and the mean L2 distances (``calc_distances``). Writes triangles.json, triangles.csv (one row,
the paper's table columns) and triangles.png (the most probable triangle to scale with its angles, and the three
histograms) into --out. ``--upstream-fp16`` computes the per-sample angles in float16 arithmetic as upstream did for
DiT / IF (its tensors were float16); the mean angles and distances stay float64.
"""
from __future__ import annotations

import dataclasses
import os

from jtaba import cli, io, plotting
from jtaba.analyses import triangles as analysis
from jtaba.runs import StandardOptions

VERTICES = analysis.VERTICES
CALC_ANGLE_KEYS = {"image": "mean_cossim_img", "noise": "mean_cossim_noise", "latent": "mean_cossim_latent"}
COLUMN_DEFINITIONS = (
    "Columns: the vertices of each sample's triangle: its image x_0, its noise x_T and its latent x̂_T (the DDIM "
    "inversion of x_0). Rows: most probable angle = the integer angles (1° bins) of the triangle with the highest "
    "joint probability of its three angles, summing to 180° (App. B); acos of mean cosine = the angle whose cosine is "
    "the mean over samples of the cosine at that vertex (upstream calc_angles). Mean L2 distances: mean ± std over "
    "samples of each side.")
SIDES = {("noise", "latent"): "noise_lat", ("image", "latent"): "img_lat", ("image", "noise"): "img_noise"}


@dataclasses.dataclass(frozen=True)
class Options(StandardOptions):
    """The standard run's settings (``jtaba.runs.StandardOptions``)."""
    upstream_fp16: bool = False


def build_parser():
    p = cli.parser("python -m experiments.triangles", __doc__)
    cli.add_analysis_flags(p, Options)
    p.add_argument("--upstream-fp16", action="store_true",
                   help="per-sample angles and the most probable triangle in float16 arithmetic, as upstream's "
                        "most_probable_triangle.py on DiT / IF tensors (Tab. 3); default float64")
    return p


def out_parts(opts: Options) -> list[str]:
    return ["fp16"] if opts.upstream_fp16 else []


def csv_row(result: dict) -> dict:
    """The paper's table columns: most probable angles, mean angles (acos of the mean cosine), L2 mean ± std."""
    tri = result["most_probable_triangle"] or {}
    row = {"model": result["model"], "n": result["n"], "steps": result["steps"], "seed": result["seed"]}
    row.update({f"triangle_angle_{k}": tri.get(k) for k in VERTICES})
    row["triangle_probability"] = tri.get("probability")
    row.update({f"mean_angle_{k}": result["calc_angles"][CALC_ANGLE_KEYS[k]] for k in VERTICES})
    for (u, v), key in SIDES.items():
        row[f"l2_{u}_{v}_mean"] = result["calc_distances"][f"mean_l2_{key}"]
        row[f"l2_{u}_{v}_std"] = result["calc_distances"][f"std_l2_{key}"]
    return row


def plot(result: dict, path: str) -> str:
    """triangles.png: the most probable triangle drawn to its angles, and the three angle histograms with the
    chosen angles marked (the mean L2 distances are in the tables: they form another triangle)."""
    tri = result["most_probable_triangle"]
    fig, axes = plotting.new_figure(1, 4, size=(4.0, 3.6))
    head = plotting.run_title("most probable triangle", result["model"], result["n"], result["steps"])
    if tri is not None:
        plotting.draw_triangle(axes[0, 0], {k: tri[k] for k in VERTICES},
                               title=f"{head}\n(joint probability {tri['probability']:.2e})")
        hist = result["histograms"]
        for ax, k in zip(axes[0, 1:], VERTICES):
            plotting.angle_histogram_panel(ax, hist["bin_left_edges"], hist[k], k, mark=tri[k])
            ax.set_title(f"{k}: {tri[k]}° (acos of mean cosine {result['calc_angles'][CALC_ANGLE_KEYS[k]]:.1f}°)",
                         fontsize=9)
    else:
        for ax in axes[0]:
            ax.axis("off")
        axes[0, 0].set_title(head, fontsize=10)
        axes[0, 0].text(0.0, 0.5, "no triangle with positive probability:\n"
                        + result.get("most_probable_triangle_error", ""), fontsize=9, wrap=True)
    return plotting.save(fig, path)


def report(result: dict) -> str:
    """Human-readable summary printed at the end."""
    tri = result["most_probable_triangle"]
    ang = result["calc_angles"]
    lines = [f"noise-sample-latent triangles of {result['n']} samples, T={result['steps']} ({result['model']}):"]
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


def compute(ws, opts: Options) -> dict:
    """Sample and invert (or reuse the run), then the triangle statistics."""

    run = ws.run(opts.run_settings())
    return {"model": ws.tag, "n": opts.n, "steps": opts.steps, "seed": opts.seed, "precision": opts.precision,
            "run": run.path, "upstream_fp16": opts.upstream_fp16,
            **analysis.of_run(run, "float16" if opts.upstream_fp16 else "float64").to_json()}


def markdown(result: dict) -> str:
    """The paper's Tab. 3 row as a markdown table."""
    tri = result["most_probable_triangle"] or {}
    ang, d = result["calc_angles"], result["calc_distances"]
    head = "| | image $x_0$ | noise $x_T$ | latent $\\hat{x}_T$ |\n|---|---|---|---|"
    rows = ["| most probable angle (°) | " + " | ".join(str(tri.get(k, "-")) for k in VERTICES) + " |",
            "| acos of mean cosine (°) | " + " | ".join(f"{ang[CALC_ANGLE_KEYS[k]]:.1f}" for k in VERTICES) + " |"]
    sides = ", ".join(f"{u}-{v} {d[f'mean_l2_{key}']:.2f} ± {d[f'std_l2_{key}']:.2f}" for (u, v), key in SIDES.items())
    return "\n".join([head, *rows, "", f"Mean L2 distances: {sides}.", "", COLUMN_DEFINITIONS])


def write_outputs(result: dict, out: str) -> dict:
    """triangles.json, triangles.csv and triangles.png in ``out``."""
    io.write_json(os.path.join(out, "triangles.json"), result)
    io.write_csv(os.path.join(out, "triangles.csv"), [csv_row(result)])
    plot(result, os.path.join(out, "triangles.png"))
    return result


ANALYSIS = cli.Analysis(
    name="triangles", paper_ref="Sec. 3.3, Tab. 3, App. B, Fig. 9", options_class=Options, build_parser=build_parser,
    compute=compute, write_outputs=write_outputs, markdown=markdown, console=report, out_parts=out_parts,
)
main = cli.analysis_main(ANALYSIS)


if __name__ == "__main__":
    main()
