"""Are the latents Gaussian? Shapiro-Wilk per latent against the noise as control, and QQ quantiles (paper Sec. 3.2,
Fig. 2; upstream ``stat_test_normality`` / ``plt_qq``).

Per sample, min(C*H*W, ``limit``) elements (drawn with replacement as upstream, or distinct ones) go to Shapiro-Wilk
(``jtaba.metrics.shapiro_p_values``); a sample is accepted as normal when p > ``p_value``. The same indices on the
noise give the control row: upstream's draw with replacement repeats values, which makes Shapiro-Wilk reject even
Gaussian noise well above the nominal rate.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jtaba.analyses._result import Result
from jtaba.metrics import normality_counts, qq_quantiles, shapiro_p_values

ROWS = ("latents", "noise")  # the test's subject, then the control
P_BINS = 20


@dataclasses.dataclass(frozen=True)
class NormalityTable(Result):
    """Shapiro-Wilk per row of ``ROWS``: ``shapiro`` {n_rej, %_rej, n_acc, %_acc (fractions)}, the per-sample
    p-values (N,), their histogram over ``P_BINS`` bins of [0, 1] ("bin_edges" and a count list per row); ``qq``:
    quantiles of all latent elements ("y") against the noise's ("x") and the "s" line; ``tested_elements``: the
    elements per sample tested."""
    tested_elements: int
    shapiro: dict[str, dict]
    p_values: dict[str, np.ndarray]
    p_value_histogram: dict
    qq: dict

    def to_json(self) -> dict:
        return {"tested_elements": self.tested_elements, "shapiro": self.shapiro,
                "p_values": {k: np.asarray(v).tolist() for k, v in self.p_values.items()},
                "p_value_histogram": self.p_value_histogram,
                "qq": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.qq.items()}}


def normality_table(noise, latents, *, limit: int = 5000, p_value: float = 0.05, index_seed: int = 0,
                    replace: bool = True) -> NormalityTable:
    """``NormalityTable`` of (N, C, H, W) noise and latents; ``index_seed`` seeds the numpy generator of the tested
    indices (the same for both) and of the QQ subsample."""
    arrays = {"latents": latents, "noise": noise}
    p_values = {k: shapiro_p_values(arrays[k], limit, index_seed, replace) for k in ROWS}
    edges = np.linspace(0.0, 1.0, P_BINS + 1)
    return NormalityTable(
        tested_elements=min(int(np.prod(np.shape(latents)[1:])), limit),
        shapiro={k: normality_counts(p_values[k], p_value) for k in ROWS}, p_values=p_values,
        p_value_histogram={"bin_edges": edges.tolist(),
                           **{k: np.histogram(p_values[k], bins=edges)[0].tolist() for k in ROWS}},
        qq=qq_quantiles(noise, latents, seed=index_seed))


def of_run(run, **kwargs) -> NormalityTable:
    """``normality_table`` of a finished ``jtaba.runs.Run`` (keyword arguments as there)."""
    return normality_table(run["noise"], run["latents"], **kwargs)
