"""examples/quickstart.ipynb runs top to bottom: its code cells (the install cell left out) executed in order in one
namespace, with a non-interactive matplotlib; the Tab. 3 and Tab. 2 numbers it prints are checked against numpy
re-computations from the notebook's own arrays."""
import json
import os

import matplotlib
import numpy as np
import pytest

NOTEBOOK = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "quickstart.ipynb")


def code_cells(path: str) -> list[str]:
    """The code cells' sources, without the install cell (tagged "install", or starting with %pip / !pip)."""
    with open(path) as f:
        nb = json.load(f)
    cells = []
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        install = "install" in cell.get("metadata", {}).get("tags", []) or any(
            line.lstrip().startswith(("%pip", "!pip")) for line in source.splitlines())
        if cell["cell_type"] == "code" and not install:
            cells.append(source)
    return cells


def test_install_cell_is_first_and_left_out():
    with open(NOTEBOOK) as f:
        nb = json.load(f)
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert "%pip install" in "".join(first["source"]) and "install" in first["metadata"]["tags"]
    assert not any("%pip" in c or "!pip" in c for c in code_cells(NOTEBOOK))


@pytest.mark.slow
def test_quickstart_notebook_runs(monkeypatch):
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setattr(plt, "show", lambda: None)
    ns: dict = {}
    for source in code_cells(NOTEBOOK):
        exec(compile(source, NOTEBOOK, "exec"), ns)  # noqa: S102 - the notebook is the code under test
    noise, samples, latents = ns["noise"], ns["samples"], ns["latents"]
    n = ns["N"]
    assert noise.shape == samples.shape == latents.shape == (n, *ns["model"].sample_shape)

    # Tab. 3: acos of the mean cosine at the noise vertex, re-computed in float64
    flat = {k: np.asarray(a, np.float64).reshape(n, -1) for k, a in
            (("noise", noise), ("image", samples), ("latent", latents))}
    u, v = flat["image"] - flat["noise"], flat["latent"] - flat["noise"]
    cos = (u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))
    stats = ns["stats"]
    assert stats.calc_angles["mean_cossim_noise"] == pytest.approx(np.degrees(np.arccos(cos.mean())), abs=1e-9)
    if stats.most_probable_triangle is not None:
        t = stats.most_probable_triangle
        assert t.latent + t.image + t.noise == 180

    # Tab. 2: the latents' top-20 correlation, one 8x8 patch at a time, as upstream get_top_k_corr_in_patches
    c, h, w = latents.shape[1:]
    values = []
    for i in range(0, h, 8):
        for j in range(0, w, 8):
            x = np.asarray(latents[:, :, i:i + 8, j:j + 8], np.float64).reshape(n, -1)
            r = np.abs(np.corrcoef(x, rowvar=False))[np.triu_indices(x.shape[1], 1)]
            values.append(np.sort(r)[-20:])
    values = np.concatenate(values)
    got = ns["table"].correlation["latents"]
    assert got.mean == pytest.approx(values.mean(), rel=1e-9) and got.std == pytest.approx(values.std(ddof=1), rel=1e-6)
    assert ns["fig"].axes  # the figure was drawn
