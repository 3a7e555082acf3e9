"""``python -m experiments.interpolation`` end to end on the tiny random ADM of test_exp_triangles: the inputs every
interpolation run got are recomputed from the sets' run files with SLERP re-typed in numpy (per flattened sample and
upstream's last-axis rows), the input / image statistics with numpy, and FID / precision / recall from Inception
features of the written image files, with the Fréchet distance taken on the span of the features (scipy sqrtm through
``jtaba.metrics.frechet_distance``) and the k-NN precision / recall re-typed; without the Inception checkpoint the
scores are skipped naming the convert command, and a rerun reuses every run."""
import csv
import json
import os

import matplotlib.image
import numpy as np
import pytest

from experiments import interpolation as ip
from tests.perception import write_tiny_networks
from tests.test_exp_triangles import BATCH, STEPS, save_tiny_checkpoint

T = STEPS
SEED, SEED_B, FSEED, FSEED_B = 3, 11, 5, 6


# ---- independent numpy recomputation ----
def oracle_slerp(v0, v1, t, per_sample=True):
    """SLERP of rows: one row per flattened sample, or upstream's rows along the last axis; lerp when nearly
    parallel (|cos| > 0.9995)."""
    shape = v0.shape
    rows = (shape[0], -1) if per_sample else (-1, shape[-1])
    a, b = np.asarray(v0, np.float64).reshape(rows), np.asarray(v1, np.float64).reshape(rows)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    theta = np.arccos(np.clip(cos, -1, 1))[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):  # parallel rows: replaced by lerp below
        out = (np.sin((1 - t) * theta) * a + np.sin(t * theta) * b) / np.sin(theta)
    lerp = np.abs(cos) > 0.9995
    out[lerp] = ((1 - t) * a + t * b)[lerp]
    return out.reshape(shape)


def oracle_input_stats(x):
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x.reshape(len(x), -1), axis=1) / np.sqrt(x[0].size)
    m, s = x.mean(), x.std(ddof=1)
    return {"input_norm": norms.mean(), "input_norm_std": norms.std(ddof=1), "input_mean": m, "input_std": s,
            "input_kl": np.log(s) + (1 + m ** 2) / (2 * s ** 2) - 0.5}  # KL(N(0,1) || N(m, s^2))


def oracle_pixel_std(images):
    x = np.clip(np.asarray(images, np.float64), -1, 1)
    return x.reshape(len(x), -1).std(axis=1, ddof=1).mean()


def oracle_fid(ref, gen):
    """FID on an orthonormal basis of the span of both centred feature sets (the covariances live there; the
    squared mean difference is taken in full), by scipy's sqrtm."""
    from jtaba.metrics import frechet_distance

    ref, gen = np.asarray(ref, np.float64), np.asarray(gen, np.float64)
    _, sv, vt = np.linalg.svd(np.concatenate([ref - ref.mean(0), gen - gen.mean(0)]), full_matrices=False)
    q = vt[sv > 1e-9 * sv.max()]
    pr, pg = ref @ q.T, gen @ q.T
    diff = ref.mean(0) - gen.mean(0)
    zero = np.zeros(len(q))
    return diff @ diff + frechet_distance(zero, np.cov(pr, rowvar=False), zero, np.cov(pg, rowvar=False))


def oracle_precision_recall(real, fake, k=3):
    def dist(a, b):
        return np.linalg.norm(a[:, None].astype(np.float64) - b[None].astype(np.float64), axis=-1)

    r_real, r_fake = np.sort(dist(real, real), 1)[:, k], np.sort(dist(fake, fake), 1)[:, k]
    precision = (dist(fake, real) <= r_real[None]).any(1).mean()
    recall = (dist(real, fake) <= r_fake[None]).any(1).mean()
    return precision, recall


def load(run_dir, name):
    return np.load(os.path.join(run_dir, f"{name}.npy"))


def run_mtimes(runs_dir):
    return {d: os.path.getmtime(os.path.join(root, d, "samples.npy")) for root, dirs, _ in os.walk(runs_dir)
            for d in dirs if os.path.exists(os.path.join(root, d, "samples.npy"))}


def check_inputs_and_statistics(res, per_sample):
    """Every row's inputs (the SLERP of the sets' files, or the endpoints) and its statistics."""
    runs = res["runs"]
    sets = {"noise": ("noise", runs["a"], runs["b"], None), "latents": ("latents", runs["a"], runs["b"], 0)}
    sets.update({f"latents_forward{k}": ("latents", f["a"], f["b"], int(k)) for k, f in runs["forward"].items()})
    assert res["sources"] == list(sets)
    n_alpha = len(res["alphas"])
    for source, (field, ra, rb, k) in sets.items():
        rows = [r for r in res["rows"] if r["source"] == source]
        assert [r["alpha"] for r in rows] == pytest.approx(np.linspace(0, 1, n_alpha).tolist())
        a, b = load(ra, field), load(rb, field)
        for i, row in enumerate(rows):
            endpoint = "samples" if source == "noise" else "samples2"
            if i == 0:
                inputs, want_run, want_images = a, ra, endpoint
            elif i == n_alpha - 1:
                inputs, want_run, want_images = b, rb, endpoint
            else:
                inputs = load(row["run"], "noise")  # what the interpolation run was started from
                np.testing.assert_allclose(inputs, oracle_slerp(a, b, row["alpha"], per_sample), atol=2e-6)
                with open(os.path.join(row["run"], "metrics.json")) as f:
                    ident = json.load(f)["_params"]
                assert ident["inversion"] is False and ident["noise"] is not None and ident["steps"] == T
                want_run, want_images = row["run"], "samples"
            assert row["run"] == want_run and row["images"] == want_images
            for key, value in oracle_input_stats(inputs).items():
                assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-9), (source, i, key)
            assert row["image_pixel_std"] == pytest.approx(oracle_pixel_std(load(row["run"], row["images"])),
                                                           rel=1e-5)
            assert row["k"] == k


def check_csv(res, out):
    with open(os.path.join(out, "interpolation.csv")) as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(res["rows"])
    for line, row in zip(table, res["rows"]):
        assert line["source"] == row["source"] and line["alpha_tag"] == row["tag"]
        assert float(line["alpha"]) == pytest.approx(row["alpha"], rel=1e-12)
        for m in ip.CSV_METRICS:
            assert (line[m] == "") if row[m] is None else float(line[m]) == pytest.approx(row[m], rel=1e-9), m
    png = matplotlib.image.imread(os.path.join(out, "interpolation.png"))
    assert png.shape[0] > 400 and png.shape[1] > 1000 and png[..., :3].std() > 0.05  # drawn, not blank


@pytest.mark.slow
def test_interpolation_end_to_end(tmp_path, monkeypatch):
    """1. No Inception checkpoint: the inputs, their statistics and the images' pixel sd; FID / P / R skipped with
    the convert command. 2. A random full-size Inception appears: the same command reuses every run, samples the
    reference set and scores every row; FID / P / R recomputed from features of the written image files."""
    from jtaba.metrics import inception, networks

    monkeypatch.setenv("JTABA_HOME", str(tmp_path / "home"))
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    runs, n = str(tmp_path / "runs"), 4
    argv = ["--ckpt", ckpt, "--n", str(n), "--steps", str(T), "--batch", str(BATCH), "--seed", str(SEED), "--seed-b",
            str(SEED_B), "--alphas", "3", "--forward-before", "1", "--forward-seed", str(FSEED), "--forward-seed-b",
            str(FSEED_B), "--reference-seed", "9", "--runs-dir", runs, "--out", str(tmp_path / "out")]
    out = ip.main(argv)
    with open(os.path.join(out, "interpolation.json")) as f:
        bare = json.load(f)
    assert bare["slerp"] == "per_sample" and bare["forward_before"] == [1] and bare["n"] == n
    assert bare["sources"] == ["noise", "latents", "latents_forward1"]
    command = networks.convert_command("inception")
    assert set(bare["skipped"]) == {"fid", "precision", "recall"}
    assert all(command in why for why in bare["skipped"].values())
    assert f"skipped fid, precision, recall: {bare['skipped']['fid']}" in ip.markdown(bare)
    assert all(r[m] is None for r in bare["rows"] for m in ("fid", "precision", "recall"))
    assert "reference" not in bare["runs"]  # the reference set is sampled only when scored

    # the sets: A and B independent, the forward runs invert the sets' samples with their own forward seeds
    a, b = bare["runs"]["a"], bare["runs"]["b"]
    assert not np.allclose(load(a, "noise"), load(b, "noise"))
    for key, seed, fseed in (("a", SEED, FSEED), ("b", SEED_B, FSEED_B)):
        fwd = bare["runs"]["forward"]["1"][key]
        np.testing.assert_array_equal(load(fwd, "samples"), load(bare["runs"][key], "samples"))
        with open(os.path.join(fwd, "metrics.json")) as f:
            assert json.load(f)["_params"]["forward"] == {"before": 1, "level": "exact", "noise": f"seed:{fseed}"}
        with open(os.path.join(bare["runs"][key], "metrics.json")) as f:
            assert json.load(f)["_params"]["seed"] == seed
    check_inputs_and_statistics(bare, per_sample=True)
    check_csv(bare, out)
    assert "| ø (0) |" in ip.markdown(bare) and "| 1 (33 %), forward (exact) |" in ip.markdown(bare)
    kept = run_mtimes(runs)
    assert len(kept) == 2 + 2 + 3  # A, B, two forward, the interior α per source

    # 2. the Inception checkpoint appears: the same command (another batch) reuses the runs and adds the scores
    inception_dir = write_tiny_networks(tmp_path / "home" / "models", ("inception",))["inception"]
    ip.main(argv + ["--batch", "8"])
    with open(os.path.join(out, "interpolation.json")) as f:
        res = json.load(f)
    assert {k: v for k, v in run_mtimes(runs).items() if k in kept} == kept
    assert res["skipped"] == {} and "skipped" not in ip.markdown(res)
    scores = ("fid", "precision", "recall", "f_score")
    assert [{k: v for k, v in r.items() if k not in scores} for r in res["rows"]] == \
        [{k: v for k, v in r.items() if k not in scores} for r in bare["rows"]]
    check_csv(res, out)
    ref = res["reference"]
    assert ref["kind"] == "model samples" and ref["seed"] == 9 and ref["n"] == n
    assert ref["run"] == res["runs"]["reference"] and len(run_mtimes(runs)) == len(kept) + 1
    with open(os.path.join(ref["run"], "metrics.json")) as f:
        ident = json.load(f)["_params"]
    assert ident["seed"] == 9 and ident["inversion"] is False and ident["noise"] is None

    config, params = inception.load(inception_dir)

    def features(images):  # batch n: the shape the analysis compiled
        return np.asarray(inception.features(config, params, np.clip(images, -1, 1), input_range="signed"))

    ref_features = features(load(ref["run"], "samples"))
    assert ref_features.std() > 1e-3  # the random network separates images
    for row in res["rows"]:
        assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1 and np.isfinite(row["fid"])
    (row,) = [r for r in res["rows"] if (r["source"], r["tag"]) == ("latents", "0500")]
    gen = features(load(row["run"], row["images"]))
    assert row["fid"] == pytest.approx(oracle_fid(ref_features, gen), rel=1e-4)
    precision, recall = oracle_precision_recall(ref_features, gen)
    assert (row["precision"], row["recall"]) == (pytest.approx(precision), pytest.approx(recall))


def test_upstream_slerp_rows():
    """--upstream-slerp: one SLERP per image row (last axis), blockwise over samples; the default per sample."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 3, 4, 6)).astype(np.float32), rng.normal(size=(5, 3, 4, 6)).astype(np.float32)
    b[0, 0, 0] = 2 * a[0, 0, 0]  # a parallel row: lerp
    for upstream in (True, False):
        got = ip.interpolate(a, b, 0.3, upstream)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, oracle_slerp(a, b, 0.3, per_sample=not upstream), atol=2e-6)
    assert not np.allclose(ip.interpolate(a, b, 0.3, True), ip.interpolate(a, b, 0.3, False), atol=1e-3)


def test_options_and_out_folder(tmp_path):
    from jtaba import cli

    parser = ip.build_parser()
    opts = ip.options_from_args(parser.parse_args([]))
    assert opts == ip.Options() and ip.out_parts(opts) == ()
    assert [ip.alpha_tag(a) for a in ip.alpha_values(7)] == ["0000", "0167", "0333", "0500", "0667", "0833", "1000"]
    np.save(tmp_path / "cifar.npy", np.zeros((5, 3, 4, 4), np.float32))
    args = parser.parse_args(["--runs-dir", str(tmp_path), "--forward-before", "2,1", "--seed-b", "7",
                              "--upstream-slerp", "--reference", str(tmp_path / "cifar.npy")])
    out = cli.out_dir(args, "default", "interpolation", *ip.out_parts(ip.options_from_args(args)))
    assert out.endswith(f"T{ip.Options.steps}_n{ip.Options.n}_seed42_seedb7_upslerp_K1-2_ref-cifar")
    for flags in (["--n", "3"], ["--alphas", "1"], ["--forward-before", "30"], ["--n-reference", "2"]):
        with pytest.raises(ValueError):
            ip.options_from_args(parser.parse_args(flags))
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((5, 3, 4, 4), 2.0, np.float32))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):  # at the flags, before any run
        ip.options_from_args(parser.parse_args(["--reference", str(bad)]))
    with pytest.raises(ValueError, match="does not exist"):
        ip.options_from_args(parser.parse_args(["--reference", str(tmp_path / "missing.npy")]))


def test_low_rank_fid_matches_the_eigenvalue_route():
    """fid_from_features(method="auto") (the N x N SVD route when N < D) against the eigenvalue route and the oracle."""
    from jtaba.metrics import fid_from_features

    rng = np.random.default_rng(0)
    ref, gen = rng.normal(size=(6, 10)), 0.5 + 2 * rng.normal(size=(5, 10))
    auto = fid_from_features(ref, gen, method="auto")
    # eigenvalues of the singular 10 x 10 product: the zero ones come out ~1e-8, hence the looser tolerance
    assert auto == pytest.approx(fid_from_features(ref, gen, method="eigvals"), rel=1e-6)
    assert auto == pytest.approx(oracle_fid(ref, gen), rel=1e-6)
    ref, gen = rng.normal(size=(40, 4)), rng.normal(size=(30, 4))  # N >= D: the eigenvalue route itself
    assert fid_from_features(ref, gen, method="auto") == pytest.approx(fid_from_features(ref, gen), rel=1e-9)

def oracle_export_uint8(images):
    """upstream eval_fids.tensors_to_pil_single + ToPILImage, re-typed: per image x − min, / max, ⌊255·x⌋."""
    x = np.asarray(images, np.float32)
    x = x - x.min(axis=(1, 2, 3), keepdims=True)
    x = x / x.max(axis=(1, 2, 3), keepdims=True)
    return np.floor(x * np.float32(255)).astype(np.uint8)


@pytest.mark.slow
def test_torch_fidelity_protocol_eps_swap_source_and_folder_reference(tmp_path, monkeypatch):
    """--fid-protocol=torch-fidelity with only the VGG16 checkpoint (FID skipped, naming the Inception converter),
    a folder of PNGs as the reference, and the ε-swap source of Tab. 12 (--swap-steps): the swap runs invert the
    recorded sampling runs' samples with the first K predictions swapped; precision / recall recomputed from VGG16
    features of the upstream uint8 export, in upstream's torch-fidelity argument order."""
    from PIL import Image

    from jtaba.metrics import networks, vgg16

    monkeypatch.setenv("JTABA_HOME", str(tmp_path / "home"))
    vgg_dir = write_tiny_networks(tmp_path / "home" / "models", ("vgg16",))["vgg16"]
    folder = tmp_path / "reference"
    folder.mkdir()
    ref_uint8 = np.random.default_rng(4).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    for i, im in enumerate(ref_uint8):
        Image.fromarray(im).save(folder / f"{i}.png")
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    argv = ["--ckpt", ckpt, "--n", "4", "--steps", str(T), "--batch", str(BATCH), "--seed", str(SEED), "--seed-b",
            str(SEED_B), "--alphas", "2", "--forward-before", "none", "--swap-steps", "1", "--fid-protocol",
            "torch-fidelity", "--reference", str(folder), "--runs-dir", str(tmp_path / "runs"), "--out",
            str(tmp_path / "out")]
    with open(os.path.join(ip.main(argv), "interpolation.json")) as f:
        res = json.load(f)
    assert res["sources"] == ["noise", "latents", "latents_swap1"] and res["fid_protocol"] == "torch-fidelity"
    assert set(res["skipped"]) == {"fid"} and networks.convert_command("inception") in res["skipped"]["fid"]
    assert res["reference"] == {"kind": "images", "spec": str(folder), "name": "reference", "n": 6}
    for key in ("a", "b"):
        swap_run, record = res["runs"]["swap"]["1"][key], res["runs"]["records"][key]
        np.testing.assert_array_equal(load(swap_run, "samples"), load(record, "samples"))
        np.testing.assert_array_equal(load(record, "noise"), load(res["runs"][key], "noise"))
        with open(os.path.join(swap_run, "metrics.json")) as f:
            swap = json.load(f)["_params"]["swap"]
        assert swap["before"] == 1 and swap["type"] == "eps"
    rows = [r for r in res["rows"] if r["source"] == "latents_swap1"]  # the endpoints: the swap runs' samples2
    assert [(r["k"], r["run"], r["images"]) for r in rows] == [(1, res["runs"]["swap"]["1"][k], "samples2")
                                                               for k in ("a", "b")]

    config, params = vgg16.load(vgg_dir)
    ref_features = np.asarray(vgg16.features(config, params, ref_uint8.transpose(0, 3, 1, 2)))
    for row in (rows[1], res["rows"][0]):  # swap endpoint B, noise endpoint A
        gen = np.asarray(vgg16.features(config, params, oracle_export_uint8(load(row["run"], row["images"]))))
        precision, recall = oracle_precision_recall(gen, ref_features)  # upstream: input1 = the reference
        assert (row["precision"], row["recall"]) == pytest.approx((precision, recall), abs=1e-9)
        assert row["fid"] is None
    md = ip.markdown(res)
    assert "| 1 (33 %), ε swap |" in md and "torch-fidelity protocol" in md  # Tab. 12 at α = 0 here


def test_train_reference_not_prepared_is_one_line(tmp_path):
    from jtaba.data.reference import ReferenceUnavailable, reference_images

    with pytest.raises(ReferenceUnavailable, match="cifar10 training images are not prepared.*prepare"):
        reference_images("train", tag="adm32", size=32, data_dir=str(tmp_path))
    with pytest.raises(ReferenceUnavailable, match="no known training set"):
        reference_images("train", tag="model", size=8)


def test_torch_fidelity_scores_in_upstream_argument_order():
    """eval_fids.py: torch_fidelity.calculate_metrics(input1=reference, input2=generated); its prc treats input1 as
    the generated set, so the published precision is the share of reference images inside the generated manifold."""
    torch = pytest.importorskip("torch")
    from convert.common import import_torchvision

    import_torchvision()
    prc = pytest.importorskip("torch_fidelity.metric_prc")
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(60, 16)).astype(np.float32)
    gen = (0.7 * rng.normal(size=(50, 16)) + 0.3).astype(np.float32)
    want = prc.prc_features_to_metric(torch.from_numpy(ref), torch.from_numpy(gen), prc_neighborhood=3,
                                      prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    got = ip.scores({"pr": ref}, {"pr": gen}, "torch-fidelity")
    assert got.fid is None and 0 < want["precision"] < want["recall"]
    assert (got.precision, got.recall) == pytest.approx((want["precision"], want["recall"]), abs=1e-7)
    default = ip.scores({"pr": ref}, {"pr": gen}, "pytorch-fid")  # the usual order: precision of the generated set
    assert (default.precision, default.recall) == pytest.approx((want["recall"], want["precision"]), abs=1e-7)
