"""Replacing the first inversion steps with ground truth or forward diffusion: the rows of Tab. 9 (paper Sec. 5;
upstream ``run_*_invert_swap.py``, ``run_*_invert_forward.py``). A row holds, for one inversion run, the pixel
correlation of its latents (top-20 |Pearson r| in 8x8 patches), the image reconstruction error mean |samples2 -
samples|, the noise reconstruction error mean |noise - latents| and KL(noise || latents) of 1-D Gaussians.
``experiments.swap`` makes the runs (one per method and K) and the table.
"""
from __future__ import annotations

import dataclasses

from jtaba.analyses._result import Result

CORRELATION_PATCH, CORRELATION_TOP_K = 8, 20


def forward_levels_coincide(model) -> bool:
    """ADM's forward replacement noises to the level K inversion steps reach under both conventions."""
    return model.diffusion.kind == "adm"


def swap_range_note(model, steps: int, kind: str, k: int):
    """None when a ``kind`` swap of the first ``k`` inversion steps has mirror steps in the sampling run, else why
    not (``jtaba.engine.mirror_indices``)."""
    from jtaba import engine

    try:
        engine.mirror_indices(model.diffusion, steps, kind, k)
    except ValueError as e:
        return str(e)
    return None


@dataclasses.dataclass(frozen=True)
class SwapRow(Result):
    """One row of Tab. 9: the latents' pixel correlation (mean / std of the per-sample top-20 |Pearson r|), the
    image reconstruction error (None without images), the noise reconstruction error, KL(noise || latents) and the
    run's folder (None for the noise row, which has no run; ``to_json`` then leaves "run" out)."""
    correlation: float
    correlation_std: float
    image_error: float | None
    noise_error: float
    kl: float
    run: str | None = None

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        if self.run is None:
            del out["run"]
        return out


def run_metrics(run) -> SwapRow:
    """The row of one run (Tab. 9 columns) from its metrics.json (computed from its files when absent)."""
    m = run.metrics
    if not all(k in m for k in ("correlation", "kl_div_noise_latent", "reconstruction_error_noise",
                                "reconstruction_error_images")):
        from jtaba.metrics import core_metrics

        p = "decoded_" if "decoded_samples" in run else ""
        m = core_metrics(run["noise"], run["latents"], run.get(p + "samples"), run.get(p + "samples2"))
    return SwapRow(correlation=m["correlation"]["mean"], correlation_std=m["correlation"]["std"],
                   image_error=m.get("reconstruction_error_images"), noise_error=m["reconstruction_error_noise"],
                   kl=m["kl_div_noise_latent"], run=run.path)


def noise_row(noise) -> SwapRow:
    """The table's last row: the noise itself (its correlation; its errors and KL are 0, no image)."""
    from jtaba.metrics import top_k_corr_in_patches

    corr = top_k_corr_in_patches(noise, patch_size=CORRELATION_PATCH, top_k=CORRELATION_TOP_K)
    return SwapRow(correlation=corr["mean"], correlation_std=corr["std"], image_error=None, noise_error=0.0, kl=0.0)
