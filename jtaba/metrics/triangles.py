"""Noise-sample-latent triangles (paper Sec. 3.3, App. B; Tab. 3, Tab. 10, Fig. 9, App. G.1).

Each sample i gives a triangle with vertices noise x_T, image x_0 (sample) and latent x̂_T, each flattened to one
vector of C*H*W values. Vertex names: "image" (angle_s), "noise" (angle_n), "latent" (angle_l). Float64 throughout.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jtaba.metrics._chunks import float64_blocks

ANGLE_BIN_EDGES = np.arange(1, 180)  # np.histogram(bins=range(1, 180)): 178 bins [1,2), ..., [177,178), [178,179]


def _per_sample_geometry(noise, samples, latents) -> dict:
    """Per-sample squared side lengths and dot products of a = noise - sample, b = latent - sample,
    c = noise - latent (float64, (N,) each)."""
    parts = []
    for n, s, lat in float64_blocks(noise, samples, latents):
        a, b, c = n - s, lat - s, n - lat
        parts.append(np.stack([np.einsum("nd,nd->n", u, v)
                               for u, v in ((a, a), (b, b), (c, c), (a, b), (a, c), (b, c))]))
    aa, bb, cc, ab, ac, bc = np.concatenate(parts, axis=1)
    return {"aa": aa, "bb": bb, "cc": cc, "ab": ab, "ac": ac, "bc": bc}


def _vertex_dots(g: dict) -> dict:
    """Vertex -> (dot, |u|, |v|) of the two edge vectors leaving that vertex."""
    na, nb, nc = np.sqrt(g["aa"]), np.sqrt(g["bb"]), np.sqrt(g["cc"])
    return {
        "image": (g["ab"], na, nb),  # (noise - sample, latent - sample)
        "noise": (g["ac"], na, nc),  # (sample - noise, latent - noise) = (-a, -c)
        "latent": (-g["bc"], nc, nb),  # (noise - latent, sample - latent) = (c, -b)
    }


ARITHMETICS = ("float64", "float16")


def _round16(v) -> np.ndarray:
    with np.errstate(over="ignore"):  # beyond 65504 float16 holds inf, as torch's half tensors
        return np.asarray(v).astype(np.float16)


def _half_angles(noise, samples, latents) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``vertex_angles`` as upstream's ``most_probable_triangle.py`` computed them on float16 tensors (DiT, IF):
    edge vectors ns = noise − sample, ls = latent − sample, nl = noise − latent rounded to float16; per angle
    ``torch.dot`` (float64 sum) and both ``norm()`` (float32 sum in order, float32 sqrt) rounded to float16, their
    product, the quotient, ``clamp``, ``acos`` and ``rad2deg`` (float32 op, float16 result) each rounded once."""
    deg = np.float32(180.0 / np.pi)

    def norm(u):  # torch's half norm sums the float32 squares in order (rounding ties come out as torch's)
        squares = np.square(u.astype(np.float32))
        return _round16(np.sqrt(np.cumsum(squares, axis=1, dtype=np.float32)[:, -1])).astype(np.float32)

    def angle(u, v):
        dot = _round16(np.einsum("nd,nd->n", u, v)).astype(np.float32)
        nu, nv = norm(u), norm(v)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = _round16(dot / _round16(nu * nv).astype(np.float32))
        cos = np.clip(cos, np.float16(-1), np.float16(1)).astype(np.float32)
        return _round16(_round16(np.arccos(cos)).astype(np.float32) * deg)

    parts = []
    for n, s, lat in float64_blocks(noise, samples, latents):
        n, s, lat = (_round16(a).astype(np.float64) for a in (n, s, lat))
        ns, ls, nl = (_round16(a).astype(np.float64) for a in (n - s, lat - s, n - lat))
        parts.append((angle(nl, -ls), angle(ns, ls), angle(-nl, -ns)))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def vertex_angles(noise, samples, latents, arithmetic: str = "float64") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample angles in degrees (most_probable_triangle.calculate_angle: acos(clamp(u.v / (|u||v|), -1, 1)))
    at the latent, image and noise vertices: (angle_l, angle_s, angle_n), each (N,). ``arithmetic="float16"``:
    upstream's float16 computation for DiT / IF (``_half_angles``; float16 angles); default float64."""
    if arithmetic == "float16":
        return _half_angles(noise, samples, latents)
    if arithmetic != "float64":
        raise ValueError(f"arithmetic must be one of {ARITHMETICS}, got {arithmetic!r}")
    dots = _vertex_dots(_per_sample_geometry(noise, samples, latents))

    def angle(dot, nu, nv):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.rad2deg(np.arccos(np.clip(dot / (nu * nv), -1.0, 1.0)))

    return angle(*dots["latent"]), angle(*dots["image"]), angle(*dots["noise"])


def calc_angles(noise, samples, latents) -> dict:
    """``calc_angles`` parity (upstream quirk): per vertex, cosines via F.normalize (norms clamped at 1e-12);
    ``mean_cossim_{img,noise,latent}`` = degrees(acos(mean cosine)) (not the mean angle) and
    ``std_cossim_*`` = degrees(acos(unbiased std of the cosines)) (meaningless, kept for parity)."""
    dots = _vertex_dots(_per_sample_geometry(noise, samples, latents))
    cosines = {}
    for key, vertex in (("img", "image"), ("noise", "noise"), ("latent", "latent")):
        dot, nu, nv = dots[vertex]
        cosines[key] = dot / (np.maximum(nu, 1e-12) * np.maximum(nv, 1e-12))
    with np.errstate(invalid="ignore"):
        out = {f"mean_cossim_{k}": float(np.rad2deg(np.arccos(c.mean()))) for k, c in cosines.items()}
        out.update({f"std_cossim_{k}": float(np.rad2deg(np.arccos(c.std(ddof=1) if c.size > 1 else np.nan)))
                    for k, c in cosines.items()})
    return out


def calc_distances(noise, samples, latents, samples2=None) -> dict:
    """``calc_distances``: per-sample L2 distances over (C,H,W), mean and unbiased std over samples for
    image-latent, image-noise, noise-latent; with ``samples2`` also ``mean_mse_img_img2`` (mean per-sample MSE)."""
    g = _per_sample_geometry(noise, samples, latents)
    dists = {"img_lat": np.sqrt(g["bb"]), "img_noise": np.sqrt(g["aa"]), "noise_lat": np.sqrt(g["cc"])}
    out = {f"mean_l2_{k}": float(v.mean()) for k, v in dists.items()}
    out.update({f"std_l2_{k}": float(v.std(ddof=1)) if v.size > 1 else float("nan") for k, v in dists.items()})
    if samples2 is not None:
        per_sample = [np.square(s - s2).mean(axis=1) for s, s2 in float64_blocks(samples, samples2)]
        out["mean_mse_img_img2"] = float(np.concatenate(per_sample).mean())
    return out


def angle_histogram(angles) -> np.ndarray:
    """Probabilities of the 178 integer bins ``np.histogram(angles, bins=range(1, 180))`` (angles outside [1, 179]
    dropped; bin k has left edge k+1), normalized by the kept count."""
    hist, _ = np.histogram(np.asarray(angles, np.float64), bins=ANGLE_BIN_EDGES)
    if hist.sum() == 0:
        raise ValueError("no angle falls in [1, 179] degrees")
    return hist / hist.sum()


def find_max_prob_triangle(p_l, p_s, p_n) -> tuple[tuple[int, int, int], float]:
    """``find_max_prob_triangle_angles`` (upstream): over bin left edges A (latent), B (image) with C = 180 - A - B
    also an edge, maximize p_l[A] * p_s[B] * p_n[C]; A outer, B inner, strict '>' (first maximum wins; a zero
    maximum is an error, upstream returns None). Returns ((A, B, C), probability)."""
    p_l, p_s, p_n = (np.asarray(p, np.float64) for p in (p_l, p_s, p_n))
    left = ANGLE_BIN_EDGES[:-1]  # bin left edges 1..178 (edge 179 only pairs with C <= 0)
    a, b = left[:, None], left[None, :]
    c = 180 - a - b
    joint = p_l[:, None] * p_s[None, :] * p_n[np.clip(c - 1, 0, left.size - 1)]  # upstream product order
    joint = np.where((c >= left[0]) & (c <= left[-1]) & ~np.isnan(joint), joint, -np.inf)  # NaN > max is False
    flat = int(np.argmax(joint))  # first maximum in row-major = (A outer, B inner) order, as strict '>'
    prob = float(joint.flat[flat])
    if not prob > 0.0:
        raise ValueError("no triangle with positive joint probability (upstream returns best_angles=None)")
    i, j = np.unravel_index(flat, joint.shape)
    return (int(left[i]), int(left[j]), int(c[i, j])), prob


@dataclasses.dataclass(frozen=True)
class Triangle:
    """Most probable triangle: integer left-edge angles at the latent, image and noise vertices (upstream prints
    ``angle_l angle_s angle_n``), its joint probability and the three (178,) bin probabilities for plotting."""
    angle_l: int
    angle_s: int
    angle_n: int
    probability: float
    hist_l: np.ndarray
    hist_s: np.ndarray
    hist_n: np.ndarray

    @property
    def angles(self) -> tuple[int, int, int]:
        return self.angle_l, self.angle_s, self.angle_n


def most_probable_triangle(noise, samples, latents, arithmetic: str = "float64") -> Triangle:
    """``most_probable_triangle.main`` on in-memory (N, C, H, W) arrays (``arithmetic``: ``vertex_angles``)."""
    angle_l, angle_s, angle_n = vertex_angles(noise, samples, latents, arithmetic)
    hists = [angle_histogram(x) for x in (angle_l, angle_s, angle_n)]
    (a, b, c), prob = find_max_prob_triangle(*hists)
    return Triangle(a, b, c, prob, *hists)
