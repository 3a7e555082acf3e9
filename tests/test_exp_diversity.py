"""``python -m experiments.diversity`` end to end on a tiny random class-conditional ADM (32x32, the smallest LPIPS
AlexNet accepts) with tiny random perception networks: the runs are checked to hold what the analysis says (source
classes drawn as taba's ``load_cond`` re-typed here with cond_seed 10, every target run started from its column's
array with the cond_seed 42 classes) and every metric is recomputed from the written run files: SSIM with skimage
and PSNR with OpenCV on the raw arrays (upstream), LPIPS on the re-typed uint8 images, DINO / CLIP with the
networks called directly, CLIP-T against the prompt embeddings written for the class names."""
import csv
import functools
import json
import os
import random

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from experiments import diversity
from jtaba import io
from jtaba.checkpoint import save_checkpoint
from jtaba.diffusion import DiffusionConfig
from jtaba.metrics import networks
from jtaba.models import dit, vae
from tests.golden import golden_path
from tests.perception import random_params, write_prompt_embeds, write_tiny_networks
from tests.test_exp_triangles import STEPS, save_tiny_checkpoint

# Class 3's synonym "thing1" overwrites class 1's name in upstream's name -> id lookup: a drawn "thing1" is id 3.
ID2LABEL = {"0": "thing0, zero", "1": "thing1", "2": "thing2, two", "3": "thing3, thing1", "4": "thing4"}
N, PER, SEED = 8, 2, 7
NAMES = [ID2LABEL[str(i)].split(",")[0] for i in range(len(ID2LABEL))]
ROLES = ("lpips", "dino", "clip", "dreamsim")


@functools.lru_cache(maxsize=1)
def _tiny_dit():
    """(DiT config, VAE config, their param shapes, the DDIM schedule) of the golden tiny DiT pipeline with 16x16
    latents (decoded to 32x32 images) and 5 classes."""
    folder = golden_path("dit_pipeline_tiny")
    def read(*p):
        return io.read_json(os.path.join(folder, *p, "config.json"))
    net = dit.Config.from_diffusers({**read("transformer"), "sample_size": 16, "num_embeds_ada_norm": len(ID2LABEL)})
    dec = vae.Config.from_diffusers(read("vae"))
    z, x = jnp.zeros((1, 16, 16, 4)), jnp.zeros((1, 32, 32, 3))
    net_shapes = jax.eval_shape(lambda: dit.Network(net).init(jax.random.key(0), z, jnp.zeros((1,)),
                                                              jnp.zeros((1,), jnp.int32))["params"])
    dec_shapes = jax.eval_shape(lambda: vae.Network(dec).init(jax.random.key(0), x)["params"])
    schedule = io.read_json(os.path.join(folder, "scheduler", "scheduler_config.json"))
    return net, dec, net_shapes, dec_shapes, DiffusionConfig.from_diffusers_scheduler(schedule, learned_sigma=True)


def save_tiny_dit_checkpoint(directory, seed: int = 0) -> str:
    """A tiny random class-conditional latent DiT with a VAE decoder and class names, as convert/dit.py lays it out."""
    net, dec, net_shapes, dec_shapes, diffusion = _tiny_dit()
    save_checkpoint(str(directory), {"family": "dit", "model": net.to_dict(), "diffusion": diffusion.to_dict(),
                                     "extras": {"id2label": ID2LABEL, "latent": True, "decoder": "decoder"}},
                    random_params(net_shapes, seed))
    save_checkpoint(os.path.join(str(directory), "decoder"), {"family": "vae", "model": dec.to_dict(),
                                                              "diffusion": None}, random_params(dec_shapes, seed + 1))
    return str(directory)


# ---- oracles -------------------------------------------------------------------------------------------------
def taba_labels(cond_seed: int) -> np.ndarray:
    """taba load_cond: random.seed(cond_seed); random.choices(first names, k); get_label_ids (later ids win)."""
    lookup = {}
    for i in range(len(ID2LABEL)):
        for name in ID2LABEL[str(i)].split(","):
            lookup[name.strip()] = i
    random.seed(cond_seed)
    names = random.choices(NAMES, k=N // PER)
    return np.repeat([lookup[n] for n in names], PER)


def load(run_dir, name):
    return np.load(os.path.join(run_dir, f"{name}.npy"))


def upstream_uint8_signed(x):
    """diffusers pt_to_pil -> uint8 -> /127.5 - 1 (upstream's LPIPS input)."""
    u8 = np.round(np.clip(np.asarray(x, np.float64) / 2 + 0.5, 0, 1) * 255).astype(np.uint8)
    return u8.astype(np.float32) / 127.5 - 1.0


def oracle_scores(target, source, nets, text_emb, src_ids, tgt_ids) -> dict:
    import cv2
    from skimage.metrics import structural_similarity

    from jtaba.metrics import clip, dino, lpips

    t64, s64 = np.asarray(target, np.float64), np.asarray(source, np.float64)
    def hwc(x):
        return np.moveaxis(x, 0, -1)
    out = {
        "ssim": [np.mean([structural_similarity(hwc(a)[..., c], hwc(b)[..., c], data_range=1) for c in range(3)])
                 for a, b in zip(t64, s64)],
        "psnr": [cv2.PSNR(hwc(a), hwc(b)) for a, b in zip(t64, s64)],
        "ssim_01": [np.mean([structural_similarity(hwc(a)[..., c], hwc(b)[..., c], data_range=1) for c in range(3)])
                    for a, b in zip((np.clip(t64, -1, 1) + 1) / 2, (np.clip(s64, -1, 1) + 1) / 2)],
        "lpips": lpips.distance(*nets["lpips"], upstream_uint8_signed(target), upstream_uint8_signed(source)),
        "dino": dino.similarity(*nets["dino"], target, source),
    }
    if "dreamsim" in nets:
        from jtaba.metrics import dreamsim

        out["dreamsim"] = dreamsim.distance(*nets["dreamsim"], target, source, input_range="signed")
    img = np.asarray(clip.image_embeds(*nets["clip"], target), np.float64)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    for side, ids in (("source", src_ids), ("target", tgt_ids)):
        txt = text_emb[ids].astype(np.float64)  # the prompt set lists the first names in class id order
        out[f"clip_t_{side}"] = (img * txt / np.linalg.norm(txt, axis=1, keepdims=True)).sum(1)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


@pytest.mark.slow
def test_diversity_end_to_end(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("JTABA_HOME", str(home))
    dirs = write_tiny_networks(home / "models", ROLES)
    text_emb = write_prompt_embeds(dirs["clip"], "class_names", NAMES)
    ckpt = save_tiny_dit_checkpoint(tmp_path / "ckpt")
    runs = str(tmp_path / "runs")
    argv = ["--ckpt", ckpt, "--n", str(N), "--steps", str(STEPS), "--batch", str(N), "--seed", str(SEED),
            "--noises-per-cond", str(PER), "--swap-steps", "2", "--forward-steps", "1", "--runs-dir", runs,
            "--out", str(tmp_path / "out")]
    out = diversity.main(argv)
    with open(os.path.join(out, "diversity.json")) as f:
        res = json.load(f)
    assert res["conditioning"] == "class" and res["clip_prompts"] == "class_names" and res["forward_level"] == \
        "upstream"
    assert [c["column"] for c in res["columns"]] == ["noise", "latents", "swap_2", "forward_1"]
    want_skipped = {} if "dreamsim" in ROLES else {"dreamsim"}
    assert set(res["skipped"]) == set(want_skipped)
    assert set(res["metrics"]) == set(diversity.METRICS) - set(want_skipped)

    # the runs: source classes (cond_seed 10) and target classes (cond_seed 42) as taba draws them
    src_ids, tgt_ids = taba_labels(10), taba_labels(42)
    assert not np.array_equal(src_ids, tgt_ids) and 1 not in src_ids.tolist() + tgt_ids.tolist()
    assert res["conditions"] == {"source": src_ids.tolist(), "target": tgt_ids.tolist()}
    source_dir, plain_dir = res["runs"]["source"], res["runs"]["latents"]
    np.testing.assert_array_equal(load(source_dir, "conds"), src_ids)
    assert os.path.exists(os.path.join(source_dir, "all_t_eps_samples.npy"))  # recorded: the swap's ground truth
    source_images, source_noise = load(source_dir, "decoded_samples"), load(source_dir, "noise")
    assert source_images.shape == (N, 3, 32, 32) and source_noise.shape == (N, 4, 16, 16)
    for d in (plain_dir, *(c["start_run"] for c in res["columns"][2:])):
        np.testing.assert_array_equal(load(d, "samples"), load(source_dir, "samples"))  # every inversion: the source
        np.testing.assert_array_equal(load(d, "conds"), src_ids)  # with the source classes
    manifests = {c["column"]: io.read_json(os.path.join(c["start_run"], "metrics.json"))["_params"]
                 for c in res["columns"][2:]}
    assert manifests["swap_2"]["swap"]["before"] == 2 and manifests["swap_2"]["swap"]["type"] == "eps"
    assert manifests["forward_1"]["forward"]["before"] == 1 and manifests["forward_1"]["forward"]["level"] == \
        "upstream"
    starts = {"noise": source_noise, "latents": load(plain_dir, "latents")}
    starts.update({c["column"]: load(c["start_run"], "latents") for c in res["columns"][2:]})
    assert not np.allclose(starts["latents"], starts["swap_2"]) and not np.allclose(starts["latents"],
                                                                                      starts["forward_1"])

    # every metric from the files
    nets = {r: networks.load(r) for r in ROLES}
    by = {}
    for c in res["columns"]:
        np.testing.assert_array_equal(load(c["target_run"], "noise"), starts[c["column"]])
        np.testing.assert_array_equal(load(c["target_run"], "conds"), tgt_ids)
        want = oracle_scores(load(c["target_run"], "decoded_samples"), source_images, nets, text_emb, src_ids, tgt_ids)
        for m in res["metrics"]:
            ddof = 1 if m in ("lpips", "dreamsim") else 0
            tol = {"rel": 1e-5, "abs": 1e-6} if m.startswith(("ssim", "psnr")) else {"rel": 2e-4, "abs": 2e-5}
            assert c["metrics"][m]["mean"] == pytest.approx(want[m].mean(), **tol), (c["column"], m)
            assert c["metrics"][m]["std"] == pytest.approx(want[m].std(ddof=ddof), **tol), (c["column"], m)
        by[c["column"]] = c
    for m in res["metrics"]:  # Fig. 7: improvement over the latents, in the direction of the noise row
        v, v0, v1 = (by[k]["metrics"][m]["mean"] for k in ("swap_2", "latents", "noise"))
        sign = 1 if m in ("dreamsim", "lpips", "clip_t_target") else -1
        assert by["swap_2"]["improvement_percent"][m] == pytest.approx(100 * sign * (v - v0) / abs(v0), rel=1e-9)
        assert by["swap_2"]["gap_closed_percent"][m] == pytest.approx(100 * (v - v0) / (v1 - v0), rel=1e-9)

    # CSV = JSON (Tab. 7 / Tab. 13 rows)
    with open(os.path.join(out, "diversity.csv")) as f:
        table = list(csv.DictReader(f))
    assert [r["column"] for r in table] == ["noise", "latents", "swap_2", "forward_1"]
    for r, c in zip(table, res["columns"]):
        assert (r["k"], r["percent"]) == (("", "") if c["k"] is None else (str(c["k"]),
                                                                           str(100.0 * c["k"] / STEPS)))
        for m in res["metrics"]:
            assert float(r[f"{m}_mean"]) == pytest.approx(c["metrics"][m]["mean"], rel=1e-12)
            assert float(r[f"{m}_std"]) == pytest.approx(c["metrics"][m]["std"], rel=1e-12)
    md = diversity.markdown(res)
    assert md.count("\n|") == 5 and "ε swap K=2" in md and "CLIP-T (p_t)" in md
    for name, width in (("diversity.png", 1000), ("diversity_examples.png", 500)):
        png = matplotlib.image.imread(os.path.join(out, name))
        assert png.shape[0] > 300 and png.shape[1] > width and png[..., :3].std() > 0.05, name

    # again, with a model home holding only CLIP without the class-name prompt set: every run reused, SSIM /
    # PSNR unchanged, the other metrics skipped with the commands that make them
    run_dirs = [res["runs"]["source"], res["runs"]["latents"]] + [c[k] for c in res["columns"]
                                                                 for k in ("start_run", "target_run")]
    mtimes = {d: os.path.getmtime(os.path.join(d, "samples.npy")) for d in set(run_dirs)}
    home2 = tmp_path / "home2"
    monkeypatch.setenv("JTABA_HOME", str(home2))
    write_tiny_networks(home2 / "models", ("clip",))
    diversity.main(argv[:-1] + [str(tmp_path / "out2")])
    assert {d: os.path.getmtime(os.path.join(d, "samples.npy")) for d in mtimes} == mtimes
    assert len(os.listdir(os.path.join(runs, "ckpt", "sample_invert"))) == 8  # 4 source-side + 4 target runs
    with open(tmp_path / "out2" / "diversity.json") as f:
        res2 = json.load(f)
    assert res2["metrics"] == ["ssim", "psnr", "ssim_01"]
    for role in ("dreamsim", "lpips", "dino"):
        assert res2["skipped"][role] == networks.convert_command(role)
    names_file = os.path.join(runs, "ckpt", "diversity", "class_names.txt")
    assert f"--prompts {names_file}" in res2["skipped"]["clip_t"]
    assert res2["skipped"]["clip_t"].startswith(
        "no CLIP prompt set 'class_names'; make it with: python convert/clip.py")
    with open(names_file) as f:
        assert f.read().splitlines() == NAMES
    for c, c2 in zip(res["columns"], res2["columns"]):
        for m in res2["metrics"]:
            assert c2["metrics"][m] == c["metrics"][m]
    assert "skipped lpips: python convert/lpips.py" in diversity.markdown(res2)


def test_unconditional_model_refused_before_work(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "uncond")
    with pytest.raises(SystemExit) as e:
        diversity.main(["--ckpt", ckpt, "--n", "4", "--steps", str(STEPS), "--runs-dir", str(tmp_path / "runs"),
                        "--out", str(tmp_path / "out")])
    msg = str(e.value)
    assert "needs a conditional model" in msg and "convert/dit.py" in msg and "convert/if.py" in msg
    assert not os.path.exists(tmp_path / "runs") and not os.path.exists(tmp_path / "out")


def test_condition_draws():
    # IF prompts: pd.Series(prompts).sample(k, random_state=s) = RandomState(s).choice(M, k, replace=False)
    ids = diversity.draw_prompt_ids(42, 5, 30, 3)
    np.testing.assert_array_equal(ids, np.repeat(np.random.RandomState(42).choice(30, 5, replace=False), 3))
    with pytest.raises(ValueError, match="holds 4"):
        diversity.draw_prompt_ids(0, 5, 4, 1)
    random.seed(10)
    np.testing.assert_array_equal(diversity.draw_class_ids(10, 6, 1000, 2),
                                  np.repeat(random.choices(range(1000), k=6), 2))
    rows, why = diversity.clip_rows(["a", "b", "a"], np.array([2, 0, 1]), ["a", "b", "c"], None)
    assert rows is None and "lacks 1" in why
    rows, why = diversity.clip_rows(["b", "a"], np.array([0, 1, 0]), ["a", "b"], None)
    assert why is None and rows.tolist() == [1, 0, 1]
    rows, why = diversity.clip_rows(["x"] * 3, np.array([2, 0]), None, 3)
    assert why is None and rows.tolist() == [2, 0]
    assert "one per class id (4" in diversity.clip_rows(["x"] * 3, np.array([0]), None, 4)[1]


def test_options_and_folder_name(tmp_path):
    args = diversity.build_parser().parse_args(["--runs-dir", str(tmp_path), "--forward-steps", "2",
                                                "--target-cond-seed", "3"])
    opts = diversity.options_from_args(args)
    assert opts.forward_steps == (2,) and opts.swap_steps == (1, 2, 3, 5) and opts.prompts.endswith(
        os.path.join("prompts", "prompts.npy"))
    assert diversity.out_parts(opts) == ["S1-2-3-5", "F2", "tgt3"]
    with pytest.raises(ValueError, match="multiple of --noises-per-cond"):
        diversity.options_from_args(diversity.build_parser().parse_args(["--n", "6"]))
