"""A latent model end to end through the command line: ``convert/dit.py`` on the golden diffusers DiT pipeline
folder, then ``experiments.sample_invert`` with given noise and labels; the written files equal the original
pipeline's outputs (golden ``dit_pipeline_tiny/``) and decoded images sit beside the latents."""
import json
import os

import numpy as np
import pytest

from tests.golden import golden_path, load_npz, report


@pytest.mark.slow
def test_convert_then_sample_invert_dit_pipeline(tmp_path):
    from convert import dit as convert_dit
    from experiments import sample_invert

    src = golden_path("dit_pipeline_tiny")
    ckpt = str(tmp_path / "dit")
    convert_dit.main(["--src", src, "--out", ckpt])
    assert os.path.exists(os.path.join(ckpt, "decoder", "config.json"))

    ref = load_npz("dit_pipeline_tiny", "trajectories.npz")
    np.save(tmp_path / "noise.npy", ref["noise"])
    np.save(tmp_path / "labels.npy", ref["class_labels"])
    out = sample_invert.main(["--ckpt", ckpt, "--noise", str(tmp_path / "noise.npy"), "--labels",
                              str(tmp_path / "labels.npy"), "--steps", "10", "--batch", "3",
                              "--out", str(tmp_path / "run")])
    files = {name: np.load(os.path.join(out, name + ".npy")) for name in
             ("noise", "conds", "samples", "latents", "samples2", "decoded_samples", "decoded_samples2")}
    np.testing.assert_array_equal(files["conds"], ref["class_labels"])
    for name in ("samples", "samples2"):  # hub schedule: |x| up to ~365, relative bar (as the golden set suggests)
        err, _ = report(f"cli {name}", files[name], ref[name])
        assert err <= 2e-5 * max(1.0, float(np.abs(ref[name]).max()))
    for name in ("latents", "decoded_samples", "decoded_samples2"):
        err, _ = report(f"cli {name}", files[name], ref[name])
        assert err <= 5e-5
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)["metrics"]
    expected = float(np.mean(np.abs(files["decoded_samples2"].astype(np.float64) - files["decoded_samples"])))
    assert metrics["reconstruction_error_images"] == pytest.approx(expected, rel=1e-6)
