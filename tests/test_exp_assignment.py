"""``python -m experiments.assignment`` on a tiny random ADM checkpoint: the accuracies, attractors and least variant
samples are recomputed from the run's files with a brute-force numpy distance matrix (upstream OLD
``distance_classification._find_closest_x_for_y_with_distances`` and ``img_noise_cls_divs`` re-typed); a hand-made
1-D case with a known answer checks which direction is which."""
import csv
import json
import os

import jax
import matplotlib.image
import numpy as np
import pytest

from experiments import assignment
from jtaba.analyses import assignment as analysis
from jtaba.checkpoint import save_checkpoint
from tests.test_exp_triangles import BATCH, SHAPE, STEPS, tiny_config_dict, tiny_params


def save_strong_checkpoint(directory, seed: int = 0, scale: float = 3.0) -> str:
    """The tiny random ADM of test_exp_triangles with every parameter scaled by ``scale`` (same shapes: the same
    compiled loops). At scale 1 its samples follow the noise so closely that every assignment is right; at 3 they
    depend on the network, and the accuracies and attractor counts are not trivial."""
    save_checkpoint(str(directory), tiny_config_dict(), jax.tree_util.tree_map(lambda a: a * scale, tiny_params(seed)))
    return str(directory)


# ---- independent numpy recomputation ----
def oracle_closest(x, y) -> np.ndarray:
    """_find_closest_x_for_y_with_distances: for each y[i] the index of the x with the smallest mean squared
    distance (first minimum)."""
    x, y = (np.asarray(a, np.float64).reshape(len(a), -1) for a in (x, y))
    d = ((x[None, :, :] - y[:, None, :]) ** 2).mean(axis=2)  # (len(y), len(x))
    return d.argmin(axis=1)


def oracle_divs(x, y, divs: int) -> dict:
    """img_noise_cls_divs: per consecutive chunk both accuracies; mean and unbiased std x 100."""
    size = len(x) // divs
    acc = {"img_to_noise": [], "noise_to_img": []}
    for k in range(divs):
        xs, ys = x[k * size:(k + 1) * size], y[k * size:(k + 1) * size]
        acc["img_to_noise"].append(np.mean(oracle_closest(xs, ys) == np.arange(size)))
        acc["noise_to_img"].append(np.mean(oracle_closest(ys, xs) == np.arange(size)))
    return {k: (100 * np.mean(v), 100 * np.std(v, ddof=1) if divs > 1 else np.nan, 100 * np.array(v))
            for k, v in acc.items()}


def oracle_accuracies(noise, samples, latents, divs: int) -> dict:
    nz, lt = oracle_divs(noise, samples, divs), oracle_divs(latents, samples, divs)
    return {"image_to_noise": nz["img_to_noise"], "noise_to_image": nz["noise_to_img"],
            "image_to_latent": lt["img_to_noise"], "latent_to_image": lt["noise_to_img"]}


def oracle_attractors(x, samples, top: int):
    """plot_most_attractive: nearest sample for every x, counts per sample, largest first (ties: lower index)."""
    counts = np.bincount(oracle_closest(samples, x), minlength=len(samples))
    order = sorted(range(len(samples)), key=lambda i: (-counts[i], i))[:top]
    return [i for i in order if counts[i] > 0], counts


def check_accuracy(got: dict, want: dict):
    for key, (mean, std, per_div) in want.items():
        np.testing.assert_allclose(got[key]["mean"], mean, atol=1e-9)
        np.testing.assert_allclose(got[key]["per_div"], per_div, atol=1e-9)
        if np.isnan(std):
            assert got[key]["std"] is None or np.isnan(got[key]["std"])
        else:
            np.testing.assert_allclose(got[key]["std"], std, atol=1e-9)


def test_directions_known_answer():
    """1-D 'images': noises 0, 1, 2, 3 and samples 0.1, 1.5, 5, 9. Image -> noise: 0.1 -> 0, 1.5 -> 1 (tie with 2:
    lower index), 5 -> 3 (wrong), 9 -> 3: 75 %. Noise -> image: 0 -> 0.1, 1 -> 1.5, 2 -> 1.5 (wrong), 3 -> 1.5
    (wrong): 50 %; sample 1 attracts three noises. Latents 5, 9, 0.1, 1.5 (a permutation of the samples): every
    sample's nearest latent and every latent's nearest sample is another pair's: 0 % both ways."""
    def col(v):  # 2 equal pixels
        return np.repeat(np.array(v, np.float32).reshape(-1, 1, 1, 1), 2, axis=3)

    noise, samples, latents = col([0, 1, 2, 3]), col([0.1, 1.5, 5, 9]), col([5, 9, 0.1, 1.5])
    res = analysis.assignment_stats(noise, samples, latents, divs=1, top=3).to_json()
    acc = {k: v["mean"] for k, v in res["accuracy"].items()}
    assert acc == {"image_to_noise": 75.0, "noise_to_image": 50.0, "image_to_latent": 0.0, "latent_to_image": 0.0}
    assert res["attractors"]["noise"]["index"] == [1, 0] and res["attractors"]["noise"]["count"] == [3, 1]
    assert res["attractors"]["noise"]["distinct_nearest"] == 2
    # latents 5, 9, 0.1, 1.5 -> nearest samples 5 (#2), 9 (#3), 0.1 (#0), 1.5 (#1): one each
    assert res["attractors"]["latent"]["index"] == [0, 1, 2] and res["attractors"]["latent"]["count"] == [1, 1, 1]
    assert res["lowest_variance"] == {"index": [0, 1, 2], "variance": [0.0, 0.0, 0.0]}  # flat: ties by index
    oracle = oracle_accuracies(noise, samples, latents, 1)
    check_accuracy(res["accuracy"], oracle)


@pytest.mark.slow
def test_assignment_end_to_end(tmp_path):
    ckpt = save_strong_checkpoint(tmp_path / "ckpt")
    n, divs, top = 48, 4, 5
    argv = ["--ckpt", ckpt, "--n", str(n), "--steps", str(STEPS), "--batch", str(BATCH), "--seed", "7",
            "--divs", str(divs), "--top", str(top), "--runs-dir", str(tmp_path / "runs")]
    out = assignment.main(argv + ["--out", str(tmp_path / "out")])
    with open(os.path.join(out, "assignment.json")) as f:
        res = json.load(f)
    (row,) = res["rows"]
    assert row["steps"] == row["sample_steps"] == STEPS and row["run"] == row["noise_run"]
    noise, samples, latents = (np.load(os.path.join(row["run"], f"{k}.npy")) for k in ("noise", "samples", "latents"))
    assert noise.shape == samples.shape == latents.shape == (n, *SHAPE)
    assert res["chunk"] == n // divs and res["model"] == "ckpt"

    want = oracle_accuracies(noise, samples, latents, divs)
    check_accuracy(row["accuracy"], want)
    assert 0 < want["image_to_noise"][0] < 100 and 0 < want["image_to_latent"][0] < 100, "a non-trivial case"
    assert max(row["attractors"]["noise"]["count"]) > 1

    variances = np.asarray(samples, np.float64).reshape(n, -1).var(axis=1, ddof=1)
    order = np.argsort(variances, kind="stable")
    rank = np.argsort(order)
    origin_rank = np.argsort(np.argsort((np.asarray(samples, np.float64).reshape(n, -1) ** 2).mean(axis=1),
                                        kind="stable"))
    for key, x in (("noise", noise), ("latent", latents)):
        idx, counts = oracle_attractors(x, samples, top)
        att = row["attractors"][key]
        assert att["index"] == idx and att["count"] == counts[idx].tolist()
        assert att["variance_rank"] == rank[idx].tolist() and att["origin_rank"] == origin_rank[idx].tolist()
        assert att["distinct_nearest"] == int((counts > 0).sum()) and att["items"] == n
    assert row["lowest_variance"]["index"] == order[:top].tolist()
    np.testing.assert_allclose(row["lowest_variance"]["variance"], variances[order[:top]], rtol=1e-12)
    # Fig. 12A: the first chunk's noises whose nearest sample is not their own
    c = n // divs
    d = np.square(noise[:c, None].astype(np.float64) - samples[None, :c]).reshape(c, c, -1).mean(-1)  # [noise, sample]
    assigned = d.argmin(axis=1)
    wrong = np.flatnonzero(assigned != np.arange(c))
    w = row["wrong_noise_to_image"]
    assert w["wrong"] == len(wrong) > 0 and w["chunk"] == c
    assert w["noise_index"] == wrong[:top].tolist() and w["assigned"] == assigned[wrong[:top]].tolist()
    np.testing.assert_allclose(w["mse_own"], d[wrong[:top], wrong[:top]], rtol=1e-12)
    np.testing.assert_allclose(w["mse_assigned"], d[wrong[:top], assigned[wrong[:top]]], rtol=1e-12)
    png = matplotlib.image.imread(os.path.join(out, "assignment_wrong.png"))
    assert png.shape[0] > 200 and png[..., :3].std() > 0.05

    with open(os.path.join(out, "assignment.csv")) as f:
        (line,) = list(csv.DictReader(f))
    assert int(line["steps"]) == STEPS and int(line["n"]) == n and int(line["chunk"]) == n // divs
    for key in assignment.DIRECTIONS:
        assert float(line[f"{key}_mean"]) == pytest.approx(row["accuracy"][key]["mean"], rel=1e-12)
        assert float(line[f"{key}_std"]) == pytest.approx(row["accuracy"][key]["std"], rel=1e-12)
    assert "| image → noise |" in assignment.markdown(res).splitlines()[0]

    png = matplotlib.image.imread(os.path.join(out, "assignment.png"))
    assert png.shape[0] > 300 and png.shape[1] > 500 and png[..., :3].std() > 0.05  # drawn, not blank

    # the same command again reuses the finished run and rewrites identical numbers
    mtime = os.path.getmtime(os.path.join(row["run"], "samples.npy"))
    assignment.main(argv + ["--out", out])
    assert os.path.getmtime(os.path.join(row["run"], "samples.npy")) == mtime
    with open(os.path.join(out, "assignment.json")) as f:
        assert json.load(f) == res


@pytest.mark.slow
def test_invert_from_other_steps(tmp_path):
    """--invert-from: the T0 samples inverted with T; the noise columns come from the T0 sampling run."""
    ckpt = save_strong_checkpoint(tmp_path / "ckpt")
    n, other = 32, STEPS - 1
    out = assignment.main(["--ckpt", ckpt, "--n", str(n), "--steps-list", f"{STEPS},{other}", "--invert-from",
                           str(STEPS), "--batch", str(BATCH), "--divs", "4", "--runs-dir", str(tmp_path / "runs"),
                           "--out", str(tmp_path / "out")])
    with open(os.path.join(out, "assignment.json")) as f:
        res = json.load(f)
    base, inv = res["rows"]
    assert (base["steps"], inv["steps"], inv["sample_steps"]) == (STEPS, other, STEPS)
    assert inv["noise_run"] == base["run"] and inv["run"] != base["run"]
    ref = {k: np.load(os.path.join(base["run"], f"{k}.npy")) for k in ("noise", "samples", "latents")}
    inv_files = {k: np.load(os.path.join(inv["run"], f"{k}.npy")) for k in ("noise", "samples", "latents")}
    np.testing.assert_array_equal(inv_files["samples"], ref["samples"])  # the T0 samples were inverted
    np.testing.assert_array_equal(inv_files["noise"], ref["noise"])
    assert not np.allclose(inv_files["latents"], ref["latents"])  # with other steps
    check_accuracy(inv["accuracy"], oracle_accuracies(ref["noise"], ref["samples"], inv_files["latents"], 4))
    for key in ("image_to_noise", "noise_to_image"):
        assert inv["accuracy"][key] == base["accuracy"][key]
    assert os.path.exists(os.path.join(out, f"assignment_T{other}.png"))
    with open(os.path.join(out, "assignment.csv")) as f:
        assert [(int(r["steps"]), int(r["sample_steps"])) for r in csv.DictReader(f)] == [(STEPS, STEPS),
                                                                                            (other, STEPS)]
