"""Figure helpers shared by the analyses (matplotlib ``Figure`` objects without pyplot: no display, no global
backend switch in a notebook). Every figure is written atomically (``jtaba.io.atomic_path``)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from jtaba.io import atomic_path

VERTEX_COLORS = {"noise": "tab:blue", "image": "tab:green", "latent": "tab:red"}


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (5.0, 4.0)):
    """(figure, axes array of shape (nrows, ncols)); ``size`` is per panel in inches."""
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save(fig, path: str, dpi: int = 120) -> str:
    """Write ``fig`` to ``path`` (format from the extension) atomically; returns ``path``."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
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


VERTEX_NAMES = {"noise": "noise $x_T$", "image": "image $x_0$", "latent": r"latent $\hat{x}_T$"}


def draw_triangle(ax, angles: Mapping[str, float], title: str | None = None) -> None:
    """Draw the triangle with interior ``angles`` {"noise", "image", "latent"} (degrees) to scale; vertices are
    coloured markers named with their angle in a legend (no labels that can overlap on a thin triangle)."""
    pts = triangle_vertices(angles["noise"], angles["image"], angles["latent"])
    xy = np.stack([pts["noise"], pts["latent"], pts["image"], pts["noise"]])
    ax.plot(xy[:, 0], xy[:, 1], color="black", lw=1.5)
    ax.fill(xy[:, 0], xy[:, 1], color="0.93")
    for key, p in pts.items():
        ax.plot(*p, "o", color=VERTEX_COLORS[key], ms=8, zorder=3, label=f"{VERTEX_NAMES[key]}: {angles[key]:g}°")
    ax.legend(loc="upper center", fontsize=9, frameon=False, bbox_to_anchor=(0.5, 0.0))
    ax.set_aspect("equal")
    ax.margins(0.08)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)


def run_title(what: str, model: str, n: int, steps: int) -> str:
    """Figure title naming the model, N and T."""
    return f"{what}\n{model}, N = {n}, T = {steps}"


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


MARKERS = ("o", "s", "^", "v", "D", "P")
LINESTYLES = ("-", "--", ":", "-.")


def series_panel(ax, steps: Sequence[int], series: Mapping[str, Sequence[float]], ylabel: str,
                 title: str | None = None) -> None:
    """One line per named series against the training step; markers, dashes and sizes differ per series, so
    series that coincide stay distinguishable."""
    for k, (label, values) in enumerate(series.items()):
        ax.plot(steps, values, marker=MARKERS[k % len(MARKERS)], ls=LINESTYLES[k % len(LINESTYLES)],
                ms=7 - 1.2 * (k % 4), lw=1.2, alpha=0.85, mfc="none" if k % 2 else None, label=label)
    step_axis(ax, steps)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)


def evenly_spaced(items: Sequence, count: int) -> list:
    """At most ``count`` items, evenly spaced, the first and the last always kept."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.unique(np.round(np.linspace(0, len(items) - 1, count)).astype(int))]


def generation_grid(rows: Sequence[tuple[str, np.ndarray]], path: str, title: str, cell: float = 1.1) -> str:
    """Images of the same inputs from several models (Fig. 16 right, Figs. 17-19): one row per (label, (k, C, H, W)
    images in [-1, 1]), columns = the inputs ("noise 0", ...); shown as [-1, 1] -> [0, 1] (clipped, not stretched)."""
    cols = max(len(images) for _, images in rows)
    fig, axes = new_figure(len(rows), cols, size=(cell, cell))
    for r, (label, images) in enumerate(rows):
        x = np.asarray(images, np.float64)
        x = np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x[:, :3]
        x = np.clip((np.moveaxis(x, 1, -1) + 1.0) / 2.0, 0.0, 1.0)
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(x):
                ax.imshow(x[c], interpolation="nearest")
            if r == 0:
                ax.set_title(f"noise {c}", fontsize=7)
        axes[r, 0].set_ylabel(label, fontsize=7)
    fig.suptitle(title, fontsize=8)
    return save(fig, path)
