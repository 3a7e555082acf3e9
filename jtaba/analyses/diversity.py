"""Editing diversity of conditional models: per-pair scores of edited generations against their source images
(paper Sec. 4.2, App. F.2, Tab. 7, Tab. 13, Fig. 6-7; upstream ``taba/scripts/eval``): DreamSim, LPIPS, SSIM / PSNR
as upstream, DINO cosine and CLIP-T with the source and target prompts, their summaries with upstream's std
conventions, and the Fig. 7 improvement over the plain latents. ``experiments.diversity`` documents the protocol
and adds the conditions, runs, figures and writing.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jtaba.analyses._result import Result

STD_DDOF = {"dreamsim": 1, "lpips": 1}  # upstream: torch .std() for these, numpy .std() for the others
# +1: higher is the direction of the noise row (more diverse, better edit); -1: lower is.
DIRECTION = {"dreamsim": 1, "lpips": 1, "ssim": -1, "dino": -1, "clip_t_source": -1, "clip_t_target": 1, "psnr": -1,
             "ssim_01": -1}


def lpips_input(images):
    """Upstream's LPIPS input: the uint8 image (diffusers ``pt_to_pil``) / 127.5 - 1."""
    from jtaba.metrics.vit_features import to_uint8

    return to_uint8(images, "signed").transpose(0, 3, 1, 2) / 127.5 - 1.0


@dataclasses.dataclass(frozen=True)
class PairScores(Result):
    """Per-pair scores (N,) of target vs source images: SSIM / PSNR as upstream, SSIM of the [-1, 1]-clipped images
    as skimage, and (None where its network is not loaded) LPIPS, DreamSim, DINO cosine and the CLIP-T cosines with
    the source and the target prompt."""
    ssim: np.ndarray
    psnr: np.ndarray
    ssim_01: np.ndarray
    lpips: np.ndarray | None = None
    dreamsim: np.ndarray | None = None
    dino: np.ndarray | None = None
    clip_t_source: np.ndarray | None = None
    clip_t_target: np.ndarray | None = None

    def of(self, metric: str) -> np.ndarray:
        """The scores of ``metric`` (a field name, a key of ``DIRECTION``); an error where it was not computed."""
        values = getattr(self, metric)
        if values is None:
            raise ValueError(f"no {metric} scores: its network was not loaded")
        return values

    def to_json(self) -> dict:
        return {f.name: np.asarray(v).tolist() for f in dataclasses.fields(self)
                if (v := getattr(self, f.name)) is not None}


@dataclasses.dataclass(frozen=True)
class Relative(Result):
    """Fig. 7 for one column, per metric: the improvement over the latents column in % (sign: ``DIRECTION``; None
    where the latents' mean is 0) and the share of the latents -> noise gap it closes in % (None for an empty gap)."""
    improvement_percent: dict[str, float | None]
    gap_closed_percent: dict[str, float | None]


def pair_scores(nets: dict, target, source, batch: int, clip_text: dict | None = None) -> PairScores:
    """Per-pair scores (N,) of target vs source images for the image metrics whose network is loaded, and with
    ``clip_text`` (``clip_scores``'s ``text_emb``) the CLIP-T cosines of the target images."""
    import jax.numpy as jnp

    from jtaba.metrics import image_quality as iq
    from jtaba.metrics.networks import map_batches

    def unit(x):
        return jnp.clip(x, -1.0, 1.0)

    fns = {"ssim": lambda a, b: iq.ssim(a, b, upstream=True), "psnr": lambda a, b: iq.psnr(a, b, upstream=True),
           "ssim_01": lambda a, b: iq.ssim(unit(a), unit(b), value_range="[-1,1]", window="skimage")}
    if "lpips" in nets:
        from jtaba.metrics import lpips

        cfg, p = nets["lpips"]
        fns["lpips"] = lambda a, b: lpips.distance(cfg, p, lpips_input(a), lpips_input(b))
    if "dreamsim" in nets:
        from jtaba.metrics import dreamsim

        cfg_d, p_d = nets["dreamsim"]
        fns["dreamsim"] = lambda a, b: dreamsim.distance(cfg_d, p_d, a, b, input_range="signed")
    if "dino" in nets:
        from jtaba.metrics import dino

        cfg_n, p_n = nets["dino"]
        fns["dino"] = lambda a, b: dino.similarity(cfg_n, p_n, a, b)
    scores = {m: map_batches(fn, target, source, batch=batch) for m, fn in fns.items()}
    if clip_text is not None:
        scores.update(clip_scores(nets["clip"], target, clip_text, batch))
    return PairScores(**scores)


def clip_scores(net, images, text_emb: dict, batch: int) -> dict:
    """CLIP-T cosines (N,) of each image with its source and its target prompt's text embedding (N, P)."""
    from jtaba.metrics import clip
    from jtaba.metrics.networks import map_batches

    cfg, p = net
    img = map_batches(lambda a: clip.image_embeds(cfg, p, a), images, batch=batch)
    return {f"clip_t_{side}": np.asarray(clip.clip_score(img, text_emb[side])[1], np.float64)
            for side in ("source", "target")}


@dataclasses.dataclass(frozen=True)
class Summary(Result):
    """A metric's mean and sd over the pairs (sd with upstream's ddof, ``STD_DDOF``; None for too few pairs)."""
    mean: float
    std: float | None


def summary(metric: str, values) -> Summary:
    """``Summary`` of a metric's per-pair values (N,)."""
    v = np.asarray(values, np.float64)
    ddof = STD_DDOF.get(metric, 0)
    return Summary(mean=float(v.mean()), std=float(v.std(ddof=ddof)) if v.size > ddof else None)


def relative(means: dict[str, float], latents: dict[str, float], noise: dict[str, float]) -> Relative:
    """``Relative`` of a column's metric means against the latents column's and the noise column's (same keys)."""
    imp, gap = {}, {}
    for m, v in means.items():
        v0, v1 = latents[m], noise[m]
        imp[m] = 100.0 * DIRECTION[m] * (v - v0) / abs(v0) if v0 else None
        gap[m] = 100.0 * (v - v0) / (v1 - v0) if v1 != v0 else None
    return Relative(improvement_percent=imp, gap_closed_percent=gap)
