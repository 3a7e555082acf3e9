"""``python -m experiments.alignment`` on two tiny fake training runs (the fixture of test_exp_training_dynamics, two
"seeds"): every metric recomputed from the written sample files with upstream's code re-typed in numpy / scipy /
skimage / sklearn, the seed aggregate by hand, the runs shared with training_dynamics, the skipped networks, resume."""
import csv
import json
import os

import numpy as np
import pytest

import tests.test_exp_training_dynamics as tdt
from experiments import alignment as al
from experiments import training_dynamics as td
from jtaba.analyses.alignment import upstream_uint8
from tests.perception import write_tiny_networks
from tests.test_exp_triangles import BATCH, STEPS, tiny_params

N, K = 16, 5
FINAL = tdt.SAVED[-1]


def test_upstream_uint8_truncates_like_to_pil_image():
    x = np.array([-1.0, 0.0, 0.5, 1.0], np.float32).reshape(1, 1, 2, 2)  # x̃ = 0, .5, .75, 1
    np.testing.assert_array_equal(upstream_uint8(x).ravel(), [0, 127, 191, 255])


# ---- upstream (similarity_last_sample.py) re-typed ----
def tensors_to_tensors(x):
    x = np.asarray(x, np.float64)
    x = x - x.min()
    return x / x.max()


def knn_counts(a, b, k):
    """scipy cdist, ``topk(k + 1, largest=False)[1][:, 1:]``, per-sample ``isin`` counts."""
    from scipy.spatial.distance import cdist

    nn = [np.argsort(cdist(f, f), axis=1, kind="stable")[:, 1:k + 1] for f in (a, b)]
    return np.array([np.isin(nn[1][i], nn[0][i]).sum() for i in range(len(a))])


def cka(a, b):
    def hsic(k, g):
        h = np.eye(len(k)) - 1 / len(k)
        return np.trace(k @ h @ g @ h)

    k, g = a @ a.T, b @ b.T
    return hsic(k, g) / (np.sqrt(hsic(k, k) * hsic(g, g)) + 1e-6)


def svcca(a, b, dim=10):
    """Upstream with numpy's exact SVD in place of torch.svd_lowrank, sklearn's CCA, no jitter."""
    from sklearn.cross_decomposition import CCA

    def top(f):
        f = f - f.mean(0)
        f = f / (f.std(0, ddof=1) + 1e-8)
        return np.linalg.svd(f, full_matrices=False)[0][:, :dim]

    ua, ub = top(a), top(b)
    ca, cb = CCA(n_components=dim, max_iter=5000, tol=1e-12).fit(ua, ub).transform(ua, ub)
    return np.mean([np.corrcoef(ca[:, i], cb[:, i])[0, 1] for i in range(dim)])


def ssim_psnr(a, b):
    """skimage SSIM per channel (data_range 1) and cv2.PSNR (R = 255, RMSE + DBL_EPSILON) on HWC x̃ pairs."""
    from skimage.metrics import structural_similarity

    ssims, psnrs = [], []
    for x, y in zip(a.transpose(0, 2, 3, 1), b.transpose(0, 2, 3, 1)):
        ssims.append(np.mean([structural_similarity(x[..., c], y[..., c], data_range=1) for c in range(3)]))
        psnrs.append(20 * np.log10(255 / (np.sqrt(np.mean((x - y) ** 2)) + np.finfo(np.float64).eps)))
    return np.array(ssims), np.array(psnrs)


def cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def oracle_row(ref_samples, samples, nets) -> dict:
    from jtaba.metrics import clip, dino

    ref, cur = tensors_to_tensors(ref_samples), tensors_to_tensors(samples)
    pr, pc = ref.reshape(N, -1), cur.reshape(N, -1)
    counts = knn_counts(pr, pc, K)
    s, p = ssim_psnr(ref, cur)
    row = {"knn_mean": counts.mean(), "knn_std": counts.std(), "cka": cka(pr, pc), "svcca": svcca(pr, pc),
           "ssim_mean": s.mean(), "ssim_std": s.std(), "psnr_mean": p.mean(), "psnr_std": p.std()}
    fns = {"dino": dino.features, "clip": clip.image_embeds}
    for role, (config, params) in nets.items():
        uint8 = [np.floor(tensors_to_tensors(x).astype(np.float32) * np.float32(255)) for x in (ref_samples, samples)]
        fr, fc = (np.asarray(fns[role](config, params, u, input_range="uint8"), np.float64) for u in uint8)
        cos = cosines(fr, fc)
        c = knn_counts(fr, fc, K)
        row.update({f"{role}_cos_sim_mean": cos.mean(), f"{role}_cos_sim_std": cos.std(ddof=1),
                    f"{role}_cka": cka(fr, fc), f"{role}_svcca": svcca(fr, fc), f"{role}_knn_mean": c.mean(),
                    f"{role}_knn_std": c.std()})
    return row


def hand_aggregate(rows: list[dict]) -> dict:
    out = {}
    for key in rows[0]:
        if key in ("step", "run", "skipped"):
            continue
        v = np.array([r[key] for r in rows])
        if key.endswith("_mean"):
            out[key] = v.mean()
        elif key.endswith("_std"):
            out[key] = np.sqrt((v ** 2).mean())
        else:
            out[f"{key}_mean"], out[f"{key}_std"] = v.mean(), v.std()
    return out


def load(path, name="samples"):
    return np.load(os.path.join(path, f"{name}.npy"))


def mtimes(res) -> dict:
    return {r["run"]: os.path.getmtime(os.path.join(r["run"], "samples.npy"))
            for run in res["runs"].values() for r in run["rows"]}


@pytest.mark.slow
def test_alignment_end_to_end(tmp_path, monkeypatch):
    from jtaba.metrics import networks

    monkeypatch.setenv("JTABA_HOME", str(tmp_path / "home"))
    seeds = {"s0": tmp_path / "s0", "s10": tmp_path / "s10"}
    tdt.make_fake_run(seeds["s0"])
    with monkeypatch.context() as m:  # another "training seed": other EMA weights
        m.setattr(tdt, "tiny_params", lambda seed: tiny_params(seed + 1000))
        tdt.make_fake_run(seeds["s10"])
    runs_dir = str(tmp_path / "runs")
    common = ["--n", str(N), "--steps", str(STEPS), "--batch", str(BATCH), "--runs-dir", runs_dir]
    # training_dynamics' G.2 run of s0's final checkpoint exists: alignment must use it, not sample again
    td.main(["--run", str(seeds["s0"]), *common, "--parts", "g2", "--select", f"at:{FINAL}",
             "--out", str(tmp_path / "td")])
    with open(tmp_path / "td" / "training_dynamics.json") as f:
        td_final = json.load(f)["g2"][0]["run"]

    argv = [a for s in seeds.values() for a in ("--run", str(s))] + common + ["--knn-k", str(K),
                                                                              "--out", str(tmp_path / "al")]
    # 1. no perception networks: pixel metrics only, the networks skipped with their convert commands
    out = al.main(argv)
    with open(os.path.join(out, "alignment.json")) as f:
        bare = json.load(f)
    assert set(bare["skipped"]) == {"dino", "clip", "inception"}
    for role, reason in bare["skipped"].items():
        assert networks.convert_command(role) in reason
        assert f"skipped {role}" in al.markdown(bare)
    assert not any(k.startswith(("dino", "clip", "inception")) for k in bare["aggregate"][0])

    # 2. tiny DINO / CLIP appear: the rows are recomputed from the same (reused) runs
    nets = write_tiny_networks(tmp_path / "home" / "models", ("dino", "clip"))
    kept = mtimes(bare)
    al.main(argv)
    with open(os.path.join(out, "alignment.json")) as f:
        res = json.load(f)
    assert mtimes(res) == kept
    assert set(res["skipped"]) == {"inception"} and "convert/inception.py" in res["skipped"]["inception"]
    assert (res["n"], res["steps"], res["seed"], res["knn_k"]) == (N, STEPS, 420, K)

    loaded = {role: networks.load(role) for role in nets}
    for name, run in res["runs"].items():
        rows = {r["step"]: r for r in run["rows"]}
        assert run["final"] == FINAL and sorted(rows) == list(tdt.SAVED)
        ref = load(rows[FINAL]["run"])
        if name == "s0":
            assert rows[FINAL]["run"] == td_final  # training_dynamics' run, reused
            assert os.path.exists(os.path.join(td_final, "latents.npy"))
        assert not os.path.exists(os.path.join(rows[0]["run"], "latents.npy"))  # sampled only
        for step, row in rows.items():
            samples = load(row["run"])
            np.testing.assert_array_equal(load(row["run"], "noise"), load(rows[FINAL]["run"], "noise"))
            want = oracle_row(ref, samples, loaded)
            assert set(row) == set(want) | {"step", "run", "skipped"}
            for k, v in want.items():
                float32 = k.startswith(("ssim", "psnr")) or "cos_sim" in k  # computed in float32 (jax)
                tol = {"rtol": 1e-5, "atol": 1e-6} if float32 else {"rtol": 1e-9, "atol": 1e-12}
                np.testing.assert_allclose(row[k], v, **tol, err_msg=f"{name} {step} {k}")
            pixel = {r["step"]: r for r in bare["runs"][name]["rows"]}[step]
            assert all(row[k] == v for k, v in pixel.items() if k != "skipped")
        assert rows[FINAL]["cka"] == pytest.approx(1, abs=1e-6) and rows[FINAL]["ssim_mean"] == pytest.approx(1)
        assert rows[0]["dino_cos_sim_mean"] < 1 - 1e-6
    assert res["runs"]["s0"]["rows"][0]["cka"] != res["runs"]["s10"]["rows"][0]["cka"]

    # the seed aggregate, by hand
    assert [r["step"] for r in res["aggregate"]] == list(tdt.SAVED)
    for agg in res["aggregate"]:
        rows = [{r["step"]: r for r in run["rows"]}[agg["step"]] for run in res["runs"].values()]
        want = hand_aggregate(rows)
        assert set(agg) == set(want) | {"step", "runs"} and agg["runs"] == 2
        for k, v in want.items():
            assert agg[k] == pytest.approx(v, rel=1e-12, abs=1e-15), k

    # CSV = JSON, figure drawn
    with open(os.path.join(out, "alignment.csv")) as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(res["aggregate"])
    for line, agg in zip(table, res["aggregate"]):
        assert {k: float(v) for k, v in line.items()} == pytest.approx(agg, rel=1e-12)
    with open(os.path.join(out, "alignment_runs.csv")) as f:
        per_run = list(csv.DictReader(f))
    flat = [(name, r) for name, run in res["runs"].items() for r in run["rows"]]
    assert [(line["training_run"], int(line["step"])) for line in per_run] == [(n, r["step"]) for n, r in flat]
    assert all(float(line["svcca"]) == r["svcca"] for line, (_, r) in zip(per_run, flat))
    import matplotlib.image

    png = matplotlib.image.imread(os.path.join(out, "alignment.png"))
    assert png.shape[1] > 1200 and png[..., :3].std() > 0.05
    for name in res["runs"]:  # Figs. 17-19: one generation grid per training run
        png = matplotlib.image.imread(os.path.join(out, f"generations_{name}.png"))
        assert png.shape[0] > 200 and png[..., :3].std() > 0.05
    assert f"{res['aggregate'][0]['cka_mean']:.4g}" in al.markdown(res)

    # 3. rerun: nothing recomputed; other settings refused
    row_file = os.path.join(out, al.ROWS_DIR, "s10", f"{0:09d}.json")
    before = os.path.getmtime(row_file)
    al.main(argv)
    assert os.path.getmtime(row_file) == before and mtimes(res) == kept
    with open(os.path.join(out, "alignment.json")) as f:
        assert json.load(f) == res
    with pytest.raises(SystemExit, match="other settings"):
        al.main(argv + ["--knn-k", "3"])


def test_svcca_method_flag_and_its_folder():
    p = al.build_parser()
    base = ["--run", "runs/train/s0"]
    exact = al.options_from_args(p.parse_args(base))
    upstream = al.options_from_args(p.parse_args(base + ["--svcca-method", "upstream"]))
    assert exact.svcca_method == "exact" and upstream.svcca_method == "upstream"
    assert al.default_out(upstream) == al.default_out(exact).replace("seed420", "seed420_svcca_upstream")
