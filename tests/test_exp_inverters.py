"""``python -m experiments.inverters`` and its Tab. 12 protocol per method, end to end on the tiny random ADM of
test_exp_triangles: without a perception network the interpolation columns are absent and the report says in one
line how to get them; with a tiny random VGG16 (--fid-protocol=torch-fidelity: precision / recall; FID skipped,
naming the Inception converter) ddpm's interpolants are recomputed from the run files (SLERP re-typed per
sample on both parts of its inverted state: the latent and the noise maps), sampled back with ``jtaba.sample``,
exported as upstream's uint8 and scored with re-typed k-NN precision / recall against a --reference .npy's images
(the reference set of experiments.interpolation)."""
import csv
import json
import os

import matplotlib.image
import numpy as np
import pytest

import jtaba
from experiments import inverters as command
from jtaba.analyses import inverters as analysis
from jtaba.inverters import Method
from tests.perception import write_tiny_networks
from tests.test_exp_interpolation import load, oracle_export_uint8, oracle_precision_recall, oracle_slerp
from tests.test_exp_triangles import BATCH, STEPS, save_tiny_checkpoint

METHODS = ("ddpm",)  # its latent and T noise maps (T, N, ...); a paired state (N, ...): test_interpolated_states
ALPHA = 0.4


def read_outputs(out):
    with open(os.path.join(out, "inverters.json")) as f:
        res = json.load(f)
    with open(os.path.join(out, "inverters.csv")) as f:
        rows = list(csv.DictReader(f))
    png = matplotlib.image.imread(os.path.join(out, "inverters.png"))
    return res, rows, png


def test_interpolated_states():
    """Every part of an inverted state SLERPed per sample with the same α: a latent alone (ddim), with a paired
    state (edict's y, bdia / belm's x_1: ``latents_paired``) or with noise maps (ddpm, per step and sample)."""
    rng = np.random.default_rng(0)

    def state(*shapes):
        return dict(zip(("latents", "latents_paired"), (rng.normal(size=sh).astype(np.float32) for sh in shapes)))

    for shapes in (((5, 3, 4, 4),), ((5, 3, 4, 4), (5, 3, 4, 4)), ((5, 3, 4, 4), (2, 5, 3, 4, 4))):
        a, b = state(*shapes), state(*shapes)
        if len(shapes[-1]) == 5:  # noise maps
            a["all_t_noise_maps"], b["all_t_noise_maps"] = a.pop("latents_paired"), b.pop("latents_paired")
        x, paired = analysis.interpolate_state(analysis.inverted_state(a), analysis.inverted_state(b), ALPHA, 1, 4)
        np.testing.assert_allclose(x, oracle_slerp(a["latents"][1:4], b["latents"][1:4], ALPHA), atol=1e-6)
        if len(shapes) == 1:
            assert paired is None
        elif len(shapes[-1]) == 4:
            np.testing.assert_allclose(paired, oracle_slerp(a["latents_paired"][1:4], b["latents_paired"][1:4],
                                                            ALPHA), atol=1e-6)
        else:
            want = [oracle_slerp(ma[1:4], mb[1:4], ALPHA) for ma, mb in zip(a["all_t_noise_maps"],
                                                                             b["all_t_noise_maps"])]
            np.testing.assert_allclose(paired, np.stack(want), atol=1e-6)


def oracle_state(run_a, run_b):
    """SLERP(A, B, ALPHA) per sample of both parts of two runs' inverted states: (latents, paired)."""
    x = oracle_slerp(load(run_a, "latents"), load(run_b, "latents"), ALPHA)
    if os.path.exists(os.path.join(run_a, "all_t_noise_maps.npy")):  # per step and sample
        a, b = load(run_a, "all_t_noise_maps"), load(run_b, "all_t_noise_maps")
        return x, np.stack([oracle_slerp(ma, mb, ALPHA) for ma, mb in zip(a, b, strict=True)])
    return x, oracle_slerp(load(run_a, "latents_paired"), load(run_b, "latents_paired"), ALPHA)


def test_tab12_protocol_per_method(tmp_path, monkeypatch):
    from jtaba import sharding
    from jtaba.metrics import networks, vgg16
    from jtaba.model import replicate
    from jtaba.runs import open_run

    monkeypatch.setenv("JTABA_HOME", str(tmp_path / "home"))
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    out = str(tmp_path / "out")
    ref_images = np.random.default_rng(5).uniform(-1, 1, (5, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "ref.npy", ref_images)
    argv = ["--ckpt", ckpt, "--n", "4", "--steps", str(STEPS), "--batch", str(BATCH), "--seed", "3", "--seed-b",
            "11", "--methods", ",".join(METHODS), "--timing-images", "0", "--fid-protocol", "torch-fidelity",
            "--interpolation-alpha", str(ALPHA), "--reference", str(tmp_path / "ref.npy"), "--runs-dir",
            str(tmp_path / "runs"), "--out", out]

    # no network: no columns, one line saying how to get them (no run is needed to know)
    opts = command.options_from_args(command.build_parser().parse_args(argv))
    nets, note = command._interpolation_setup(opts)
    assert nets is None and "Tab. 12" in note and "\n" not in note
    assert networks.convert_command("vgg16") in note and networks.convert_command("inception") in note

    # a VGG16: precision / recall per method (FID skipped: no Inception)
    vgg_dir = write_tiny_networks(tmp_path / "home" / "models", ("vgg16",))["vgg16"]
    command.main(argv)
    res, lines, png = read_outputs(out)
    tab = res["interpolation"]
    assert tab["protocol"] == "torch-fidelity" and tab["alpha"] == ALPHA and tab["seed_b"] == 11
    assert set(tab["skipped"]) == {"fid"} and networks.convert_command("inception") in tab["skipped"]["fid"]
    assert tab["reference"] == {"kind": "file", "path": str(tmp_path / "ref.npy"), "n": 5}
    assert [r["label"] for r in res["rows"]] == list(METHODS)
    config, params = vgg16.load(vgg_dir)
    reference = np.asarray(vgg16.features(config, params, oracle_export_uint8(ref_images)))
    mesh = sharding.data_mesh()  # the runs' placement: their compiled loops serve these calls too
    model = replicate(jtaba.load(ckpt), sharding.replicated(mesh))
    for label, line in zip(METHODS, lines, strict=True):
        run_a, run_b = res["runs"][label], tab["runs_b"][label]
        with open(os.path.join(run_b, "metrics.json")) as f:
            ident = json.load(f)["_params"]
        assert ident["seed"] == 11 and ident["method"]["name"] == label and not ident["reconstruction"]
        x, paired = oracle_state(run_a, run_b)
        assert paired.ndim == 5  # ddpm's maps (T, N, ...)
        got = analysis.interpolate_state(analysis.inverted_state(open_run(run_a)),
                                         analysis.inverted_state(open_run(run_b)), ALPHA, 0, 4)
        np.testing.assert_allclose(got[0], x, atol=1e-5)
        np.testing.assert_allclose(got[1], paired, atol=1e-5)
        inverted = jtaba.Trajectory(sharding.put_batch(x.astype(np.float32), mesh), method=Method.of(label),
                                    steps=STEPS, paired=sharding.put_batch(paired.astype(np.float32), mesh,
                                                                           paired.ndim - 4))
        images = np.asarray(jtaba.sample(model, inverted, steps=STEPS).x)
        gen = np.asarray(vgg16.features(config, params, oracle_export_uint8(images)))
        precision, recall = oracle_precision_recall(gen, reference)  # upstream: input1 = the reference
        scores = tab["scores"][label]
        assert scores["fid"] is None
        assert (scores["precision"], scores["recall"]) == pytest.approx((precision, recall), abs=1e-9)
        assert float(line["interpolation_recall"]) == pytest.approx(recall, abs=1e-9)
        assert line["interpolation_fid"] == ""
    md = command.markdown(res)
    assert "| ddpm | – |" in md and "fid: no FID Inception checkpoint" in md and "ref.npy (5 images)" in md

    # the same table without the scores: columns, figure row and markdown table absent, the note instead
    bare = {**res, "interpolation": None, "interpolation_note": note}
    assert command.markdown(bare).endswith("\n" + note) and "| ddpm | – |" not in command.markdown(bare)
    assert not any(k.startswith("interpolation") for k in command.csv_rows(bare)[0])
    assert [len(command._panels(r)) for r in (bare, res)] == [8, 12]  # the figure's third row: the scores
    assert png.shape[:2] == pytest.approx((3 * 3.4 * 120, 4 * 4.2 * 120), abs=1)  # 3 rows of 4 panels, 120 dpi
