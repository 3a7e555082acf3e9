"""Image alignment over training time (paper App. G.3, Fig. 16-19; upstream ``similarity_last_sample.py``,
``get_full_stats_dict``): the samples of one fixed noise set by each checkpoint against the final checkpoint's.

Per pair of sample sets, with x̃ = (x − min) / (max − min) over each whole set: the mutual k-NN overlap, linear CKA
and SVCCA of x̃ (and of DINO / CLIP features), SSIM / PSNR per image pair as upstream, and the cosine of DINO,
CLIP-I and Inception features; rows are dicts of metric name -> value (``compare``), aggregated over training seeds
by ``aggregate``. ``experiments.alignment`` documents every metric and adds the runs, resumable rows and figures.
"""
from __future__ import annotations

import numpy as np

NETWORK_ROLES = ("dino", "clip", "inception")
FEATURE_SPACES = ("dino", "clip")  # networks whose features also get CKA / SVCCA / knn
SVCCA_COMPONENTS = 10
NETWORK_BATCH = 64


def upstream_uint8(samples) -> np.ndarray:
    """(N, C, H, W) uint8 images as upstream's ``tensors_to_pils`` makes them: whole-batch min-max in float32, then
    torchvision ``ToPILImage`` (``x.mul(255).byte()``: truncation)."""
    x = np.asarray(samples, np.float32)
    x = x - x.min()
    x = x / x.max()
    return (x * np.float32(255)).astype(np.uint8)


def network_features(role: str, net, samples) -> np.ndarray:
    """(N, D) float32 features of (N, C, H, W) [-1, 1] samples as upstream computed them (module docstring)."""
    from jtaba.metrics import clip, dino, inception, networks

    config, params = net
    if role == "inception":  # raw [-1, 1] samples into pytorch-fid's [0, 1] pipeline, as upstream
        return networks.map_batches(lambda b: inception.features(config, params, b, input_range="unit",
                                                                 protocol="pytorch_fid"), samples,
                                    batch=NETWORK_BATCH)
    fn = {"dino": dino.features, "clip": clip.image_embeds}[role]
    return networks.map_batches(lambda b: fn(config, params, b, input_range="uint8"), upstream_uint8(samples),
                                batch=NETWORK_BATCH)


def set_features(samples, nets: dict) -> dict:
    """{"pixel": x̃ (N, C, H, W) float64, role: (N, D) features for each loaded network} of one sample set."""
    from jtaba.metrics import batch_min_max

    samples = np.asarray(samples, np.float32)
    return {"pixel": batch_min_max(samples), **{role: network_features(role, net, samples)
                                                 for role, net in nets.items()}}


def mean_std(values, ddof: int = 0) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=ddof))


def space_alignment(x, y, k: int, prefix: str = "", svcca_method: str = "exact", seed: int = 0) -> dict:
    """``{prefix}knn_mean/std``, ``{prefix}cka``, ``{prefix}svcca`` of two aligned (N, ...) feature sets."""
    from jtaba.metrics import cka, mutual_knn_counts, svcca

    row = {}
    row[f"{prefix}knn_mean"], row[f"{prefix}knn_std"] = mean_std(mutual_knn_counts(x, y, k))
    row[f"{prefix}cka"] = cka(x, y)
    row[f"{prefix}svcca"] = svcca(x, y, n_components=SVCCA_COMPONENTS, standardize=True, method=svcca_method,
                                  seed=seed)
    return row


def compare(ref: dict, cur: dict, k: int, svcca_method: str = "exact", seed: int = 0) -> dict:
    """One row's metrics (module docstring) between the final checkpoint's features ``ref`` and a checkpoint's."""
    from jtaba.metrics import psnr, ssim
    from jtaba.metrics.vit_features import cosine

    svcca_kw = {"svcca_method": svcca_method, "seed": seed}
    row = space_alignment(ref["pixel"], cur["pixel"], k, **svcca_kw)
    row["ssim_mean"], row["ssim_std"] = mean_std(ssim(ref["pixel"], cur["pixel"], upstream=True))
    row["psnr_mean"], row["psnr_std"] = mean_std(psnr(ref["pixel"], cur["pixel"], upstream=True))
    for role in NETWORK_ROLES:
        if role in ref:
            cos = cosine(ref[role], cur[role])
            row[f"{role}_cos_sim_mean"], row[f"{role}_cos_sim_std"] = mean_std(cos, ddof=1)
    for role in FEATURE_SPACES:
        if role in ref:
            row.update(space_alignment(ref[role], cur[role], k, prefix=f"{role}_", **svcca_kw))
    return row


def metric_role(key: str) -> str | None:
    """The network a row key needs (None: a pixel metric)."""
    return next((role for role in NETWORK_ROLES if key.startswith(f"{role}_")), None)


def aggregate(rows_by_run: dict[str, list[dict]]) -> list[dict]:
    """Upstream's seed aggregate over the steps every run has: ``*_mean`` averaged, ``*_std`` -> sqrt(mean(std²)),
    the other metrics (cka, svcca, ...) -> ``<key>_mean`` / ``<key>_std`` (ddof 0) across the runs."""
    by_step = [{r["step"]: r for r in rows} for rows in rows_by_run.values()]
    common = sorted(set.intersection(*(set(d) for d in by_step))) if by_step else []
    out = []
    for step in common:
        rows = [d[step] for d in by_step]
        agg = {"step": step, "runs": len(rows)}
        for key in (k for k in rows[0] if k not in ("step", "run", "skipped")):
            v = np.array([r[key] for r in rows], np.float64)
            if key.endswith("_mean"):
                agg[key] = float(v.mean())
            elif key.endswith("_std"):
                agg[key] = float(np.sqrt(np.mean(v ** 2)))
            else:
                agg[f"{key}_mean"], agg[f"{key}_std"] = float(v.mean()), float(v.std())
        out.append(agg)
    return out
