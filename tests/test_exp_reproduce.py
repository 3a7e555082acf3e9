"""``python -m experiments.reproduce`` with App. G: on the tiny ADM (triangles only, as the cheap model analysis)
and two tiny fake training runs (the fixture of test_exp_training_dynamics, two "seeds"), report.md holds the
training_dynamics section of the first run and the alignment section over both, with the numbers of their JSON
files; the rows are kept (and reused) where the analyses' own commands keep them; without --train-run both are
listed as skipped with the training command."""
import json
import os

import pytest

import tests.test_exp_training_dynamics as tdt
from experiments import alignment as al
from experiments import reproduce
from experiments import training_dynamics as td
from tests.test_exp_triangles import BATCH, STEPS, save_tiny_checkpoint, tiny_params

N = 16
FINAL = tdt.SAVED[-1]


def read(out, name):
    with open(os.path.join(out, name)) as f:
        return f.read() if name.endswith(".md") else json.load(f)


def section(report: str, name: str) -> str:
    """The report.md section of analysis ``name`` (up to the next one)."""
    return report.split(f"\n## {name} (", 1)[1].split("\n## ", 1)[0]


@pytest.mark.slow
def test_reproduce_runs_app_g_on_training_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("JTABA_HOME", str(tmp_path / "home"))  # no perception networks: alignment's pixel metrics
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    seeds = {"s0": tmp_path / "s0", "s10": tmp_path / "s10"}
    tdt.make_fake_run(seeds["s0"])
    with monkeypatch.context() as m:  # another "training seed": other EMA weights
        m.setattr(tdt, "tiny_params", lambda seed: tiny_params(seed + 1000))
        tdt.make_fake_run(seeds["s10"])
    runs_dir = str(tmp_path / "runs")
    common = ["--ckpt", ckpt, "--n", str(N), "--steps", str(STEPS), "--batch", str(BATCH), "--runs-dir", runs_dir]

    # 1. no --train-run: App. G listed as skipped, naming the training command
    bare = reproduce.main([*common, "--only", "training_dynamics,alignment", "--out", str(tmp_path / "bare")])
    report, summary = read(bare, "report.md"), read(bare, "report.json")
    for name in reproduce.TRAINING_NAMES:
        assert "Skipped:" in section(report, name) and "python -m jtaba.train" in section(report, name)
        assert summary["analyses"][name]["skipped"] == reproduce.NEEDS_TRAINING_RUN
    assert "Training ADMs from scratch" in reproduce.NEEDS_TRAINING_RUN and summary["training_runs"] == []

    # 2. with the runs: training_dynamics on the first, alignment over both, after the model analysis
    argv = [*common, "--only", "triangles,training_dynamics,alignment", "--out", str(tmp_path / "report"),
            "--train-run", str(seeds["s0"]), "--train-run", str(seeds["s10"])]
    out = reproduce.main(argv)
    report, summary = read(out, "report.md"), read(out, "report.json")
    assert report.index("## triangles (") < report.index("## training_dynamics (") < report.index("## alignment (")
    assert summary["training_runs"] == [str(s) for s in seeds.values()]

    dyn = read(os.path.join(out, "training_dynamics"), "training_dynamics.json")
    assert dyn["settings"]["run"] == str(seeds["s0"]) and dyn["final_step"] == FINAL
    assert (dyn["settings"]["n"], dyn["settings"]["steps"], dyn["settings"]["seed"]) == (N, STEPS, 420)
    text = section(report, "training_dynamics")
    assert td.markdown(dyn) in text
    for part in td.PARTS:
        assert [r["step"] for r in dyn[part]] == list(tdt.SAVED)
        for r in dyn[part]:
            assert (f"| {r['step']} | {r['angle_image']:.2f} | {r['angle_noise']:.2f} | {r['angle_latent']:.2f} | "
                    f"{r['mean_l2_img_lat']:.4g} |") in text
            assert f"| {r['acc_latent_to_img']:.1%} |" in text
        assert f"![training_dynamics {part}.png](training_dynamics/{part}.png)" in text
        assert os.path.exists(os.path.join(out, "training_dynamics", f"{part}.png"))

    align = read(os.path.join(out, "alignment"), "alignment.json")
    assert set(align["runs"]) == set(seeds) and [r["step"] for r in align["aggregate"]] == list(tdt.SAVED)
    assert (align["n"], align["steps"], align["seed"]) == (N, STEPS, 420)
    text = section(report, "alignment")
    assert al.markdown(align) in text and "![alignment alignment.png](alignment/alignment.png)" in text
    for agg in align["aggregate"]:
        assert f"| {agg['step']} | {agg['svcca_mean']:.4g} ± {agg['svcca_std']:.2g} |" in text
    # alignment's samples of s0's final checkpoint are training_dynamics' G.2 run
    assert {r["step"]: r for r in align["runs"]["s0"]["rows"]}[FINAL]["run"] == \
        {r["step"]: r for r in dyn["g2"]}[FINAL]["run"]

    # the rows live where the standalone commands keep them; a rerun reuses them
    entries = summary["analyses"]
    assert entries["training_dynamics"]["rows"] == os.path.abspath(td.default_out(td.Options(
        run=str(seeds["s0"]), n=N, steps=STEPS, batch=BATCH, runs_dir=runs_dir)))
    assert entries["alignment"]["options"]["runs"] == [str(s) for s in seeds.values()]
    assert all(entries[name]["seconds"] >= 0 for name in ("triangles", *reproduce.TRAINING_NAMES))
    row = os.path.join(entries["training_dynamics"]["rows"], td.ROWS_DIR, "g1", f"{0:09d}.json")
    kept = os.path.getmtime(row)
    reproduce.main(argv)
    assert os.path.getmtime(row) == kept
    assert read(os.path.join(out, "alignment"), "alignment.json") == align
