"""Figure helpers shared by the experiments (matplotlib, Agg backend: no display needed).

Every figure is written atomically (a temporary file renamed into place) and closed after saving.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

VERTEX_COLORS = {"noise": "tab:blue", "image": "tab:green", "latent": "tab:red"}


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (5.0, 4.0)):
    """(figure, axes array of shape (nrows, ncols)); ``size`` is per panel in inches."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    return fig, axes


def save(fig, path: str, dpi: int = 120) -> str:
    """Write ``fig`` to ``path`` (format from the extension) atomically and close it; returns ``path``."""
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{ext}"
    fig.tight_layout()
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def triangle_vertices(angle_noise: float, angle_image: float, angle_latent: float,
                      noise_latent: float = 1.0) -> dict[str, np.ndarray]:
    """2-D vertex positions of the triangle with these interior angles (degrees, summing to 180) drawn to scale:
    noise at the origin, latent on the positive x axis at distance ``noise_latent``, image above the x axis
    (law of sines: |noise - image| = noise_latent * sin(angle_latent) / sin(angle_image))."""
    total = angle_noise + angle_image + angle_latent
    if not np.isclose(total, 180.0) or min(angle_noise, angle_image, angle_latent) <= 0:
        raise ValueError(f"not a triangle: angles {angle_noise}, {angle_image}, {angle_latent} (sum {total})")
    a_n, a_s, a_l = np.deg2rad([angle_noise, angle_image, angle_latent])
    noise_image = noise_latent * np.sin(a_l) / np.sin(a_s)
    return {"noise": np.zeros(2), "latent": np.array([noise_latent, 0.0]),
            "image": noise_image * np.array([np.cos(a_n), np.sin(a_n)])}


def draw_triangle(ax, angles: Mapping[str, float], side_labels: Mapping[tuple[str, str], str] | None = None,
                  title: str | None = None) -> None:
    """Draw the triangle with interior ``angles`` {"noise", "image", "latent"} (degrees) to scale, each vertex
    named and its angle written inside the corner; ``side_labels`` {(vertex, vertex): text} annotate sides."""
    pts = triangle_vertices(angles["noise"], angles["image"], angles["latent"])
    xy = np.stack([pts["noise"], pts["latent"], pts["image"], pts["noise"]])
    ax.plot(xy[:, 0], xy[:, 1], color="black", lw=1.5)
    ax.fill(xy[:, 0], xy[:, 1], color="0.93")
    center = np.mean([pts[k] for k in VERTEX_COLORS], axis=0)
    span = max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1]), 1e-9)
    names = {"noise": "noise $x_T$", "image": "image $x_0$", "latent": r"latent $\hat{x}_T$"}
    for key, p in pts.items():
        away = p - center
        away = away / (np.linalg.norm(away) + 1e-12)
        ax.plot(*p, "o", color=VERTEX_COLORS[key], ms=7, zorder=3)
        ax.annotate(names[key], p + 0.1 * span * away, ha="center", va="center", color=VERTEX_COLORS[key],
                    fontsize=10, fontweight="bold")
        inward = -away
        ax.annotate(f"{angles[key]:g}°", p + 0.12 * span * inward, ha="center", va="center", fontsize=9)
    for (u, v), text in (side_labels or {}).items():
        mid = (pts[u] + pts[v]) / 2
        out = mid - center
        out = out / (np.linalg.norm(out) + 1e-12)
        ax.annotate(text, mid + 0.05 * span * out, ha="center", va="center", fontsize=8, color="0.3")
    ax.set_aspect("equal")
    ax.margins(0.2)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)


def angle_histogram_panel(ax, left_edges: Sequence[int], probs: Sequence[float], vertex: str,
                          mark: float | None = None) -> None:
    """Bar plot of 1-degree angle-bin probabilities (bins [k, k+1) at left edges ``left_edges``), x range zoomed
    to the occupied bins; ``mark`` draws a dashed line at the chosen angle."""
    left_edges, probs = np.asarray(left_edges), np.asarray(probs)
    ax.bar(left_edges, probs, width=1.0, align="edge", color=VERTEX_COLORS[vertex], alpha=0.8)
    used = left_edges[probs > 0]
    if used.size:
        ax.set_xlim(used.min() - 2, used.max() + 3)
    if mark is not None:
        ax.axvline(mark + 0.5, color="black", ls="--", lw=1)
    ax.set_xlabel(f"angle at the {vertex} vertex (degrees)")
    ax.set_ylabel("probability")


def step_axis(ax, steps: Sequence[int]) -> None:
    """Training-step x axis: symmetric log when the steps span several decades (dense early checkpoints)."""
    steps = np.asarray(steps)
    if steps.size and steps.max() > 100:
        ax.set_xscale("symlog", linthresh=max(1, int(steps[steps > 0].min()) if (steps > 0).any() else 1))
    ax.set_xlabel("training step")
    ax.grid(alpha=0.3)


def series_panel(ax, steps: Sequence[int], series: Mapping[str, Sequence[float]], ylabel: str,
                 title: str | None = None) -> None:
    """One line (with markers) per named series against the training step."""
    for label, values in series.items():
        ax.plot(steps, values, "o-", ms=3, lw=1, label=label)
    step_axis(ax, steps)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
