"""Editing diversity of conditional models: per-pair scores of edited generations against their source images
(paper Sec. 4.2, App. F.2, Tab. 7, Tab. 13, Fig. 6-7; upstream ``taba/scripts/eval``): DreamSim, LPIPS, SSIM / PSNR
as upstream, DINO cosine and CLIP-T with the source and target prompts, their summaries with upstream's std
conventions, and the Fig. 7 improvement over the plain latents. ``experiments.diversity`` documents the protocol
and adds the conditions, runs, figures and writing.
"""
from __future__ import annotations

import numpy as np

STD_DDOF = {"dreamsim": 1, "lpips": 1}  # upstream: torch .std() for these, numpy .std() for the others
# +1: higher is the direction of the noise row (more diverse, better edit); -1: lower is.
DIRECTION = {"dreamsim": 1, "lpips": 1, "ssim": -1, "dino": -1, "clip_t_source": -1, "clip_t_target": 1, "psnr": -1,
             "ssim_01": -1}


def lpips_input(images):
    """Upstream's LPIPS input: the uint8 image (diffusers ``pt_to_pil``) / 127.5 - 1."""
    from jtaba.metrics.vit_features import to_uint8

    return to_uint8(images, "signed").transpose(0, 3, 1, 2) / 127.5 - 1.0


def pair_scores(nets: dict, target, source, batch: int) -> dict:
    """Per-pair scores (N,) of target vs source images for the image metrics whose network is loaded."""
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
    return {m: map_batches(fn, target, source, batch=batch) for m, fn in fns.items()}


def clip_scores(net, images, text_emb: dict, batch: int) -> dict:
    """CLIP-T cosines (N,) of each image with its source and its target prompt's text embedding (N, P)."""
    from jtaba.metrics import clip
    from jtaba.metrics.networks import map_batches

    cfg, p = net
    img = map_batches(lambda a: clip.image_embeds(cfg, p, a), images, batch=batch)
    return {f"clip_t_{side}": np.asarray(clip.clip_score(img, text_emb[side])[1], np.float64)
            for side in ("source", "target")}


def summary(metric: str, values) -> dict:
    """{"mean", "std"} over pairs (std with upstream's ddof for the metric)."""
    v = np.asarray(values, np.float64)
    ddof = STD_DDOF.get(metric, 0)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=ddof)) if v.size > ddof else None}


def relative_rows(columns: list, metrics: list) -> None:
    """Add to each K column the improvement over the latents column in % (Fig. 7; sign: DIRECTION) and the share
    of the latents -> noise gap it closes in %."""
    by = {c["column"]: c["metrics"] for c in columns}
    lat, noise = by["latents"], by["noise"]
    for c in columns:
        if c["k"] is None or c["method"] == "latents":
            continue
        imp, gap = {}, {}
        for m in metrics:
            v, v0, v1 = c["metrics"][m]["mean"], lat[m]["mean"], noise[m]["mean"]
            imp[m] = 100.0 * DIRECTION[m] * (v - v0) / abs(v0) if v0 else None
            gap[m] = 100.0 * (v - v0) / (v1 - v0) if v1 != v0 else None
        c["improvement_percent"], c["gap_closed_percent"] = imp, gap
