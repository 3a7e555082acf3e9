"""Image alignment over training time (paper App. G.3, Fig. 16-19; upstream ``similarity_last_sample.py``,
``get_full_stats_dict``): the samples of one fixed noise set by each checkpoint against the final checkpoint's.

Per pair of sample sets, with x̃ = (x − min) / (max − min) over each whole set: the mutual k-NN overlap, linear CKA
and SVCCA of x̃ (and of DINO / CLIP features), SSIM / PSNR per image pair as upstream, and the cosine of DINO,
CLIP-I and Inception features; a row is an ``Alignment`` (``compare``; ``to_json`` gives the flat dict of metric
name -> value that the rows are stored as), aggregated over training seeds by ``aggregate`` (``SeedAggregate``).
``experiments.alignment`` documents every metric and adds the runs, resumable rows and figures.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jtaba.analyses._result import Result

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


@dataclasses.dataclass(frozen=True)
class SpaceAlignment(Result):
    """Two aligned feature sets' mutual k-NN overlap (mean / std over samples), linear CKA and SVCCA."""
    knn_mean: float
    knn_std: float
    cka: float
    svcca: float

    def flat(self, prefix: str = "") -> dict:
        """The fields as ``{prefix}<name>`` keys."""
        return {f"{prefix}{k}": v for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class Alignment(Result):
    """One row (App. G.3) between the final checkpoint's sample set and a checkpoint's: ``pixel`` alignment of the
    min-max scaled images, SSIM / PSNR mean and sd over image pairs, per loaded network of ``NETWORK_ROLES`` the
    feature cosine's mean and unbiased sd (``cos_sim``: role -> (mean, sd)), and per loaded network of
    ``FEATURE_SPACES`` its features' alignment (``spaces``). ``to_json``: the flat row (``knn_mean``, ...,
    ``<role>_cos_sim_mean``, ``<role>_knn_mean``, ...)."""
    pixel: SpaceAlignment
    ssim_mean: float
    ssim_std: float
    psnr_mean: float
    psnr_std: float
    cos_sim: dict[str, tuple[float, float]]
    spaces: dict[str, SpaceAlignment]

    def to_json(self) -> dict:
        row = {**self.pixel.flat(), "ssim_mean": self.ssim_mean, "ssim_std": self.ssim_std,
               "psnr_mean": self.psnr_mean, "psnr_std": self.psnr_std}
        for role, (mean, std) in self.cos_sim.items():
            row[f"{role}_cos_sim_mean"], row[f"{role}_cos_sim_std"] = mean, std
        for role, space in self.spaces.items():
            row.update(space.flat(f"{role}_"))
        return row


@dataclasses.dataclass(frozen=True)
class SeedAggregate(Result):
    """One step's aggregate over ``runs`` training seeds: ``values`` maps a row key's aggregate (``aggregate``) to
    its value; ``to_json`` gives {"step", "runs", **values}."""
    step: int
    runs: int
    values: dict[str, float]

    def to_json(self) -> dict:
        return {"step": self.step, "runs": self.runs, **self.values}


def space_alignment(x, y, k: int, svcca_method: str = "exact", seed: int = 0) -> SpaceAlignment:
    """``SpaceAlignment`` of two aligned (N, ...) feature sets."""
    from jtaba.metrics import cka, mutual_knn_counts, svcca

    knn_mean, knn_std = mean_std(mutual_knn_counts(x, y, k))
    return SpaceAlignment(knn_mean=knn_mean, knn_std=knn_std, cka=cka(x, y),
                          svcca=svcca(x, y, n_components=SVCCA_COMPONENTS, standardize=True, method=svcca_method,
                                      seed=seed))


def compare(ref: dict, cur: dict, k: int, svcca_method: str = "exact", seed: int = 0) -> Alignment:
    """One row's ``Alignment`` between the final checkpoint's features ``ref`` and a checkpoint's (``set_features``
    dicts)."""
    from jtaba.metrics import psnr, ssim
    from jtaba.metrics.vit_features import cosine

    svcca_kw = {"svcca_method": svcca_method, "seed": seed}
    ssim_mean, ssim_std = mean_std(ssim(ref["pixel"], cur["pixel"], upstream=True))
    psnr_mean, psnr_std = mean_std(psnr(ref["pixel"], cur["pixel"], upstream=True))
    return Alignment(pixel=space_alignment(ref["pixel"], cur["pixel"], k, **svcca_kw),
                     ssim_mean=ssim_mean, ssim_std=ssim_std, psnr_mean=psnr_mean, psnr_std=psnr_std,
                     cos_sim={role: mean_std(cosine(ref[role], cur[role]), ddof=1)
                              for role in NETWORK_ROLES if role in ref},
                     spaces={role: space_alignment(ref[role], cur[role], k, **svcca_kw)
                             for role in FEATURE_SPACES if role in ref})


def metric_role(key: str) -> str | None:
    """The network a row key needs (None: a pixel metric)."""
    return next((role for role in NETWORK_ROLES if key.startswith(f"{role}_")), None)


def aggregate(rows_by_run: dict[str, list[dict]]) -> list[SeedAggregate]:
    """Upstream's seed aggregate of stored rows (``Alignment.to_json`` + "step") over the steps every run has:
    ``*_mean`` averaged, ``*_std`` -> sqrt(mean(std²)), the other metrics (cka, svcca, ...) -> ``<key>_mean`` /
    ``<key>_std`` (ddof 0) across the runs."""
    by_step = [{r["step"]: r for r in rows} for rows in rows_by_run.values()]
    common = sorted(set.intersection(*(set(d) for d in by_step))) if by_step else []
    out = []
    for step in common:
        rows = [d[step] for d in by_step]
        values = {}
        for key in (k for k in rows[0] if k not in ("step", "run", "skipped")):
            v = np.array([r[key] for r in rows], np.float64)
            if key.endswith("_mean"):
                values[key] = float(v.mean())
            elif key.endswith("_std"):
                values[key] = float(np.sqrt(np.mean(v ** 2)))
            else:
                values[f"{key}_mean"], values[f"{key}_std"] = float(v.mean()), float(v.std())
        out.append(SeedAggregate(step=step, runs=len(rows), values=values))
    return out
