"""``python -m experiments.import_run``: upstream-format arrays (``.pt`` as upstream's ``torch.save`` writes them, and
``.npy``) become a jtaba run that analyses use instead of computing one (the triangle angles are those of the given
arrays, which no model computed, and no run is computed) and that ``--swap-from`` takes; wrong shapes, a missing
file and arrays of another model are refused in one line."""
import json
import os

import numpy as np
import pytest
import torch

from experiments import import_run, sample_invert, triangles
from jtaba import load
from jtaba.runs import open_run
from tests.test_exp_triangles import SHAPE, oracle_vertex_cosines, save_tiny_checkpoint

N, T = 6, 2


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "adm")


def upstream_arrays(seed: int = 0) -> dict:
    rng = np.random.RandomState(seed)
    a = {k: rng.randn(N, *SHAPE).astype(np.float32) for k in ("noise", "samples", "latents", "samples2")}
    for what in ("samples", "latents", "samples2"):
        for kind in ("", "eps_", "pred_xstart_"):
            a[f"all_t_{kind}{what}"] = rng.randn(T, N, *SHAPE).astype(np.float32)
    a["all_t_samples"][-1] = a["samples"]
    return a


def write(folder, arrays: dict, ext: str) -> str:
    os.makedirs(folder, exist_ok=True)
    for k, v in arrays.items():
        if ext == ".pt":
            torch.save(torch.from_numpy(np.ascontiguousarray(v)), os.path.join(folder, k + ".pt"))
        else:
            np.save(os.path.join(folder, k + ".npy"), v)
    return str(folder)


def error(argv) -> str:
    with pytest.raises(SystemExit) as e:
        import_run.main(argv)
    return str(e.value.code)


def test_imported_run_serves_analyses_and_swap(ckpt, tmp_path):
    arrays = upstream_arrays()
    src = write(tmp_path / "upstream", arrays, ".pt")
    runs = str(tmp_path / "runs")
    path = import_run.main(["--ckpt", ckpt, "--from", src, "--runs-dir", runs, "--seed", "420"])
    run = open_run(path)
    assert run.identity["imported"]["files"] == sorted(arrays) and run.identity["record"]
    assert (run.steps, run.n) == (T, N)
    for k, a in arrays.items():
        np.testing.assert_array_equal(run[k], a)
    assert json.load(open(os.path.join(path, "metrics.json")))["metrics"]["latent_stats"]
    # an analysis asked for the run of that noise uses the authors' arrays: nothing is computed
    out = triangles.main(["--ckpt", ckpt, "--noise", os.path.join(path, "noise.npy"), "--n", str(N), "--steps",
                          str(T), "--seed", "420", "--runs-dir", runs, "--out", str(tmp_path / "tri")])
    res = json.load(open(os.path.join(out, "triangles.json")))
    assert res["run"] == path and os.listdir(os.path.join(runs, "adm", "sample_invert")) == [os.path.basename(path)]
    cos = oracle_vertex_cosines(arrays["noise"], arrays["samples"], arrays["latents"])
    want = np.degrees(np.arccos(np.clip(cos["latent"].mean(), -1, 1)))
    assert res["calc_angles"]["mean_cossim_latent"] == pytest.approx(want, abs=1e-3)
    # --swap-from: the imported eps of the first sampling step replaces the first inversion step's
    swapped = sample_invert.main(["--ckpt", ckpt, "--swap-from", path, "--swap-before", "1", "--steps", str(T),
                                  "--runs-dir", runs, "--no-reconstruction"])
    got = open_run(swapped)
    np.testing.assert_array_equal(got["samples"], arrays["samples"])
    np.testing.assert_array_equal(got["noise"], arrays["noise"])
    # .npy files give the same run (same identity, same folder reused)
    again = import_run.main(["--ckpt", ckpt, "--from", write(tmp_path / "npy", arrays, ".npy"), "--out", path,
                             "--seed", "420"])
    assert again == path


def test_refusals_name_the_problem(ckpt, tmp_path):
    arrays = upstream_arrays()
    base = ["--ckpt", ckpt, "--runs-dir", str(tmp_path / "runs")]
    missing = write(tmp_path / "missing", {k: v for k, v in arrays.items() if k != "noise"}, ".npy")
    assert "noise.pt / noise.npy missing" in error([*base, "--from", missing])
    other = write(tmp_path / "other", {**arrays, "latents": np.zeros((N, 4, 32, 32), np.float32)}, ".npy")
    msg = error([*base, "--from", other])
    assert "latents is (6, 4, 32, 32): arrays of another model" in msg and "(N, 3, 8, 8)" in msg
    conds = write(tmp_path / "conds", {**arrays, "conds": np.zeros(N, np.int64)}, ".npy")
    assert "conds given: arrays of another model" in error([*base, "--from", conds])
    short = write(tmp_path / "short", {**arrays, "samples2": arrays["samples2"][:3]}, ".npy")
    assert "samples2 holds 3 samples, noise 6" in error([*base, "--from", short])
    steps = write(tmp_path / "steps", arrays, ".npy")
    assert "steps=5, but the all_t_* files hold 2 steps" in error([*base, "--from", steps, "--steps", "5"])
    assert len(error([*base, "--from", str(tmp_path / "nowhere")]).splitlines()) == 1


def test_library_takes_arrays(ckpt, tmp_path):
    from jtaba.runs import import_run as library_import

    arrays = {k: v for k, v in upstream_arrays(1).items() if not k.startswith("all_t_")}
    run = library_import(load(ckpt), arrays, str(tmp_path / "run"), steps=T)
    assert "latents" in run.identity["imported"] and not run.identity["record"]
    with pytest.raises(ValueError, match="the step count T is needed"):
        library_import(load(ckpt), arrays, str(tmp_path / "run2"))
