"""``python -m experiments.steps`` on a tiny random ADM checkpoint: per T, the angles, the most probable triangle,
the L2 sides and the assignment accuracies are recomputed from that T's run files with plain numpy (the oracles of
test_exp_triangles and test_exp_assignment)."""
import csv
import json
import os

import matplotlib.image
import numpy as np
import pytest

from experiments import steps
from tests.test_exp_assignment import check_accuracy, oracle_accuracies, save_strong_checkpoint
from tests.test_exp_triangles import BATCH, SHAPE, STEPS, oracle_triangle, oracle_vertex_cosines


def test_default_steps_list_includes_steps():
    assert steps.Options().all_steps == (10, 20, 50)
    assert steps.Options(steps=100).all_steps == (10, 20, 100)
    assert steps.Options(steps=10).all_steps == (10, 20)
    assert steps.Options(steps_list=(5, 1000)).all_steps == (5, 1000)
    args = steps.build_parser().parse_args(["--steps", "30"])
    assert steps.options_from_args(args).all_steps == (10, 20, 30)


@pytest.mark.slow
def test_steps_end_to_end(tmp_path):
    ckpt = save_strong_checkpoint(tmp_path / "ckpt")
    n, divs, ts = 32, 4, (STEPS - 1, STEPS)
    argv = ["--ckpt", ckpt, "--n", str(n), "--steps-list", ",".join(map(str, ts)), "--batch", str(BATCH),
            "--seed", "7", "--divs", str(divs), "--runs-dir", str(tmp_path / "runs")]
    out = steps.main(argv + ["--out", str(tmp_path / "out")])
    with open(os.path.join(out, "steps.json")) as f:
        res = json.load(f)
    assert res["steps"] == list(ts) and [r["steps"] for r in res["rows"]] == list(ts)
    with open(os.path.join(out, "steps.csv")) as f:
        lines = list(csv.DictReader(f))
    assert [int(r["steps"]) for r in lines] == list(ts)

    angle_sets = []
    for r, line in zip(res["rows"], lines):
        noise, samples, latents = (np.load(os.path.join(r["run"], f"{k}.npy")) for k in ("noise", "samples", "latents"))
        assert noise.shape == (n, *SHAPE)
        with open(os.path.join(r["run"], "metrics.json")) as f:
            assert json.load(f)["_params"]["steps"] == r["steps"]
        cosines = oracle_vertex_cosines(noise, samples, latents)
        angles = {k: np.degrees(np.arccos(np.clip(c, -1, 1))) for k, c in cosines.items()}
        angle_sets.append(angles)
        for k, key in steps.CALC_ANGLE_KEYS.items():
            want = np.degrees(np.arccos(cosines[k].mean()))
            np.testing.assert_allclose(r["calc_angles"][key], want, atol=1e-9)
            assert float(line[f"mean_angle_{k}"]) == pytest.approx(want, abs=1e-9)
            np.testing.assert_allclose(r["mean_sample_angle"][k], angles[k].mean(), atol=1e-9)
        flat = {k: np.asarray(a, np.float64).reshape(n, -1) for k, a in
                (("noise", noise), ("image", samples), ("latent", latents))}
        for (u, v), key in steps.SIDES.items():
            d = np.linalg.norm(flat[u] - flat[v], axis=1)
            np.testing.assert_allclose(r["calc_distances"][f"mean_l2_{key}"], d.mean(), rtol=1e-12)
            np.testing.assert_allclose(r["calc_distances"][f"std_l2_{key}"], d.std(ddof=1), rtol=1e-9)
            assert float(line[f"l2_{u}_{v}_mean"]) == pytest.approx(d.mean(), rel=1e-12)
        best, best_p, _ = oracle_triangle(angles)
        tri = r["most_probable_triangle"]
        if best is None:
            assert tri is None and line["triangle_angle_image"] == ""
        else:
            assert (tri["latent"], tri["image"], tri["noise"]) == best
            np.testing.assert_allclose(tri["probability"], best_p, rtol=1e-12)
            assert [int(line[f"triangle_angle_{k}"]) for k in ("latent", "image", "noise")] == list(best)
        acc = oracle_accuracies(noise, samples, latents, divs)
        check_accuracy(r["accuracy"], acc)
        for key in steps.DIRECTIONS:
            assert float(line[f"{key}_mean"]) == pytest.approx(acc[key][0], abs=1e-9)
    assert not np.allclose(angle_sets[0]["latent"], angle_sets[1]["latent"])  # the runs differ in T

    md = steps.markdown(res)
    assert md.count("\n| 2 |") == 2 and md.count("\n| 3 |") == 2  # one row per T in Tab. 10 and Tab. 11
    png = matplotlib.image.imread(os.path.join(out, "steps.png"))
    assert png.shape[0] > 300 and png.shape[1] > 1000 and png[..., :3].std() > 0.05  # drawn, not blank

    # rerun: every run reused, identical numbers
    mtimes = [os.path.getmtime(os.path.join(r["run"], "samples.npy")) for r in res["rows"]]
    steps.main(argv + ["--out", out])
    assert [os.path.getmtime(os.path.join(r["run"], "samples.npy")) for r in res["rows"]] == mtimes
    with open(os.path.join(out, "steps.json")) as f:
        assert json.load(f) == res
