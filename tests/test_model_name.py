"""Runs started from Python are stored under the name ``jtaba.load`` was given (``runs/<name>/sample_invert/...``),
as the commands store theirs, not under a generic folder."""
import os

import jtaba
from jtaba import runs
from tests.test_sample_invert import tiny_adm


def test_runs_from_python_are_named_after_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("JTABA_HOME", str(tmp_path / "home"))
    tiny_adm(tmp_path / "home" / "models" / "tinyadm")
    model = jtaba.load("tinyadm")
    assert model.name == "tinyadm" and jtaba.load(str(tmp_path / "home" / "models" / "tinyadm")).name == "tinyadm"
    assert runs.Workspace(model).tag == "tinyadm" and runs.Workspace(model, "other").tag == "other"
    root = str(tmp_path / "runs")
    r = runs.run(model, runs.RunSettings(n=1, steps=2, batch=1), root=root, progress=False)
    assert r.path.startswith(os.path.join(root, "tinyadm", "sample_invert", "T2_n1_seed42_")), r.path
