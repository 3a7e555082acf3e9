"""SLERP interpolation between pairs of noises vs pairs of DDIM latents, scored by FID / precision / recall of the
generated images and by the Gaussianity of the inputs (paper Sec. 4.1, Fig. 5, App. F.1 Tab. 12; upstream
``taba/scripts/eval/eval_fids.py``). ``experiments.interpolation`` documents the protocols and adds the runs,
reference sets, figures and writing.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from jtaba.analyses._result import Result

PR_K = 3  # precision / recall neighbourhood (torch-fidelity prc_neighborhood, Kynkäänniemi et al.)
FEATURE_BATCH = 50  # images per Inception call (pytorch-fid's default batch size)
BLOCK_ROWS = 1024  # samples interpolated / summarised at a time
INCEPTION_METRICS = ("fid", "precision", "recall")


def interpolate(a, b, alpha: float, upstream: bool) -> np.ndarray:
    """(N, C, H, W) float32 SLERP(a[i], b[i], alpha) (``jtaba.metrics.slerp``; per flattened sample, or upstream's
    last-axis rows), computed in blocks of samples (a, b may be memory maps)."""
    from jtaba.metrics import slerp

    out = np.empty(a.shape, np.float32)
    for s in range(0, len(a), BLOCK_ROWS):
        out[s:s + BLOCK_ROWS] = slerp(a[s:s + BLOCK_ROWS], b[s:s + BLOCK_ROWS], alpha, per_sample=not upstream)
    return out


@dataclasses.dataclass(frozen=True)
class InputStatistics(Result):
    """Gaussianity of (N, ...) interpolation inputs: mean and sd over samples of ||x_i|| / sqrt(D) (sd None for one
    sample), mean and unbiased sd of all elements, and KL(N(0, 1) || N(mean, sd^2)) (one Gaussian over all elements,
    noise first as Tab. 9's KL)."""
    input_norm: float
    input_norm_std: float | None
    input_mean: float
    input_std: float
    input_kl: float


def input_statistics(x) -> InputStatistics:
    """``InputStatistics`` of (N, ...) inputs, read in blocks of ``BLOCK_ROWS`` samples."""
    from jtaba.metrics import gaussian_kl, mean_std

    d = int(np.prod(x.shape[1:]))
    norms = np.concatenate([np.linalg.norm(np.asarray(x[s:s + BLOCK_ROWS], np.float64).reshape(-1, d), axis=1)
                            for s in range(0, len(x), BLOCK_ROWS)]) / math.sqrt(d)
    mean, std = mean_std(x)
    return InputStatistics(input_norm=float(norms.mean()),
                           input_norm_std=float(norms.std(ddof=1)) if len(norms) > 1 else None,
                           input_mean=mean, input_std=std, input_kl=float(gaussian_kl(0.0, 1.0, mean, std)))


def as_images(x) -> np.ndarray:
    """Images as scored and shown: float32 clipped to [-1, 1] (what a PNG export keeps)."""
    return np.clip(np.asarray(x, np.float32), -1.0, 1.0)


def image_pixel_std(images) -> float:
    """Mean over images of each image's unbiased pixel sd (images clipped to [-1, 1])."""
    blocks = (as_images(images[s:s + BLOCK_ROWS]).astype(np.float64) for s in range(0, len(images), BLOCK_ROWS))
    return float(np.concatenate([b.reshape(len(b), -1).std(axis=1, ddof=1) for b in blocks]).mean())


# ---- FID / precision / recall ------------------------------------------------------------------------------------
def protocol_networks(protocol: str) -> dict[str, tuple]:
    """{network role: the metrics it serves} of an --fid-protocol."""
    if protocol == "torch-fidelity":
        return {"inception": ("fid",), "vgg16": ("precision", "recall")}
    return {"inception": INCEPTION_METRICS}


def scoring_features(images, nets: dict, protocol: str, *, uint8: bool = False, ldm: bool = False) -> dict:
    """{"fid": (N, 2048), "pr": (N, D)} features (for the loaded networks) of (N, 3, H, W) images: model-range
    [-1, 1] floats, or uint8 (``uint8``: reference images read from files) (module docstring: --fid-protocol)."""
    from jtaba.metrics import inception, vgg16
    from jtaba.metrics.fid import upstream_export_uint8
    from jtaba.metrics.networks import map_batches

    if protocol == "pytorch-fid":
        def prepare(x):
            return x if uint8 else as_images(x)
        kw = {"input_range": "uint8" if uint8 else "signed"}
    else:
        def prepare(x):
            return x if uint8 else upstream_export_uint8(x, ldm=ldm)
        kw = {"input_range": "uint8", "protocol": "torch_fidelity"}
    out = {}
    if "inception" in nets:
        config, params = nets["inception"]
        out["fid"] = map_batches(lambda x: inception.features(config, params, prepare(x), **kw), images,
                                 batch=FEATURE_BATCH)
    if protocol == "pytorch-fid":
        out["pr"] = out.get("fid")
    elif "vgg16" in nets:
        config, params = nets["vgg16"]
        out["pr"] = map_batches(lambda x: vgg16.features(config, params, prepare(x)), images, batch=FEATURE_BATCH)
    return out


@dataclasses.dataclass(frozen=True)
class Scores(Result):
    """Tab. 12's scores of one set of generated images against the reference set: FID and improved precision /
    recall (k = ``PR_K``) with their F-score; None where the network that serves a score is not loaded."""
    fid: float | None = None
    precision: float | None = None
    recall: float | None = None
    f_score: float | None = None


def scores(reference: dict, generated: dict, protocol: str) -> Scores:
    """``Scores`` of generated features against the reference's (``scoring_features``' dicts). torch-fidelity:
    upstream's argument order (the reference as torch-fidelity's input1)."""
    from jtaba.metrics import fid_from_features, precision_recall

    fid = (fid_from_features(reference["fid"], generated["fid"], method="auto")
           if generated.get("fid") is not None else None)
    if generated.get("pr") is None:
        return Scores(fid=fid)
    real, fake = ((generated["pr"], reference["pr"]) if protocol == "torch-fidelity"
                  else (reference["pr"], generated["pr"]))
    return Scores(fid=fid, **precision_recall(real, fake, k=PR_K))
