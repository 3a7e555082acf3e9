"""Bad inputs (issue "Integrity everywhere"): refused by name before any work, or warned; NaN never passes: training
hyperparameters and unknown flags are checked, a NaN loss stops training naming its step with the last good
checkpoint kept and log.jsonl strict JSON; run outputs are checked finite; empty inputs, a 0-byte .npy, a seed beyond
64 bits and statistics over too few samples are refused by name."""
import json
import os

import jax
import numpy as np
import pytest

import jtaba
from experiments import sample_invert
from jtaba import runs
from jtaba.metrics.correlation import top_k_corr, top_k_corr_in_patches
from jtaba.train import __main__ as train_main
from jtaba.train import loop
from jtaba.train.run_checkpoints import RunCheckpoints
from tests.test_reliability_interruption import fake_training
from tests.test_sample_invert import SHAPE, tiny_adm
from tests.test_train_resume import TINY


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_adm(tmp_path_factory.mktemp("ckpt") / "adm")


def train_fails(argv, match, tmp_path):
    out = str(tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        train_main.main(["--preset=builtin", f"--out={out}", "--no-progress", *argv])
    text = str(e.value)
    assert text.startswith("error: ") and "\n" not in text and match in text, text
    assert not os.path.exists(out)  # refused before anything is written


@pytest.mark.parametrize("argv, match", [
    (["--lr=nan"], "lr (--lr) must be a finite number > 0"),
    (["--lr=0"], "lr (--lr) must be"),
    (["--lr=inf"], "lr (--lr) must be"),
    (["--weight-decay=-1"], "weight_decay"),
    (["--ema=1.5"], "ema_rate (--ema) must be in [0, 1)"),
    (["--batch=0"], "batch_size (--batch)"),
    (["--seed=36893488147419103232"], "seed (--seed)"),
    (["--flag", "nonsense=1"], "unknown guided-diffusion flag(s) nonsense"),
])
def test_bad_training_settings_are_refused_by_name(argv, match, tmp_path):
    train_fails(argv, match, tmp_path)


def test_a_nan_loss_stops_training_naming_the_step(tmp_path, monkeypatch):
    fake_training(monkeypatch, nan_at=3)
    cfg = TINY.replace(steps=4, save="every:2", log_every=1)
    run = str(tmp_path / "run")
    with pytest.raises(ValueError, match=r"not finite \(NaN / Inf\) at step 3: .*last good checkpoint: step 2"):
        loop.train(cfg, run, progress=False)
    assert RunCheckpoints(run).all_steps() == [0, 2]  # nothing saved after the bad step

    def strict(text):
        raise ValueError(f"not strict JSON: {text}")

    with open(os.path.join(run, loop.LOG_NAME)) as f:
        assert [json.loads(line, parse_constant=strict)["step"] for line in f] == [1, 2]


def test_non_finite_run_outputs_are_refused_naming_the_sample(ckpt, tmp_path):
    model = jtaba.load(ckpt)
    leaves, tree = jax.tree.flatten(model.params)
    broken = jtaba.Model(model.family, model.config, model.network,
                         jax.tree.unflatten(tree, [leaves[0] * np.nan, *leaves[1:]]), model.diffusion)
    out = str(tmp_path / "run")
    settings = runs.RunSettings(n=2, steps=2, batch=2, inversion=False, reconstruction=False)
    with pytest.raises(ValueError, match=r"samples is NaN or Inf at sample 0"):
        runs.run(broken, settings, out, progress=False)
    assert not os.path.exists(os.path.join(out, "samples.npy"))
    assert not os.listdir(os.path.join(out, ".chunks"))


def test_empty_and_unreadable_input_files_are_refused_by_name(ckpt, tmp_path):
    empty = str(tmp_path / "empty.npy")
    np.save(empty, np.zeros((0, *SHAPE), np.float32))
    zero = str(tmp_path / "zero.npy")
    open(zero, "wb").close()
    for path, match in ((empty, "noise holds no samples"), (zero, f"--noise: {zero} is not a readable .npy")):
        out = str(tmp_path / "out")
        with pytest.raises(SystemExit) as e:
            sample_invert.main(["--ckpt", ckpt, "--steps", "2", "--noise", path, "--out", out])
        assert str(e.value).startswith("error: ") and match in str(e.value), str(e.value)
        assert not os.path.exists(out)


def test_a_seed_beyond_64_bits_is_refused_by_argparse(ckpt, capsys):
    with pytest.raises(SystemExit) as e:
        sample_invert.main(["--ckpt", ckpt, "--seed", str(2 ** 64)])
    assert e.value.code == 2 and "--seed: must be in [0, 2^63)" in capsys.readouterr().err


def test_samples_outside_the_data_range_are_warned(ckpt, capsys):
    model = jtaba.load(ckpt)
    x = np.zeros((3, *SHAPE), np.float32)
    x[2, 0, 1, 1] = 15.0
    runs.plan(model, runs.RunSettings(samples=x, steps=2))
    err = capsys.readouterr().err
    assert "outside the model's data range [-1, 1] (sample 2 reaches 15)" in err
    runs.plan(model, runs.RunSettings(samples=np.clip(x, -1.2, 1.2), steps=2))  # DDIM samples overshoot a little
    assert capsys.readouterr().err == ""


def test_correlations_need_two_samples():
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8))
    for f in (top_k_corr_in_patches, top_k_corr):
        with pytest.raises(ValueError, match=r"need N >= 2 samples, got N = 1"):
            f(x)


def test_a_tfds_dataset_not_prepared_is_one_line(tmp_path, monkeypatch):
    fake_training(monkeypatch)
    with pytest.raises(ValueError, match=r"--dataset=cifar10 is not prepared as array_record under .*prepare\("):
        loop.train(TINY.replace(dataset="cifar10"), str(tmp_path / "run"), data_dir=str(tmp_path / "tfds"),
                   progress=False)


def test_a_truncated_source_is_one_line_naming_it(tmp_path, capsys):
    """safetensors' own SafetensorError and torch's RuntimeError become one line naming the file, through the
    converters' error path."""
    from safetensors.numpy import save_file

    from convert import inception

    whole = str(tmp_path / "whole.safetensors")
    save_file({"w": np.ones((64, 64), np.float32)}, whole)
    with open(whole, "rb") as f:
        data = f.read()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(SystemExit):
        inception.main(["--src", str(cut), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot read ") and str(cut) in err and "safetensors" in err and "\n" not in err, err
    assert sorted(os.listdir(tmp_path)) == ["cut.safetensors", "whole.safetensors"]  # no staging folder left

    torch = pytest.importorskip("torch")
    from convert.common import load_state_dict

    pt = tmp_path / "cut.pt"
    torch.save({"w": torch.ones(64, 64)}, str(pt))
    pt.write_bytes(pt.read_bytes()[:200])
    with pytest.raises(ValueError, match=f"cannot read {pt} as a torch state dict"):
        load_state_dict(str(pt))


def test_converter_mains_end_os_errors_in_one_line(tmp_path, monkeypatch):
    """Every converter's main goes through jtaba.cli.entry_point: an OSError (disk full) is one line, exit 1."""
    import importlib

    from convert import inception

    for name in ("adm", "clip", "dino", "dit", "dreamsim", "if", "inception", "ldm", "lpips", "vgg16"):
        main = importlib.import_module(f"convert.{name}").main
        assert main.__code__ is not main.__wrapped__.__code__, name  # wrapped by entry_point

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    src = tmp_path / "w.pth"
    src.write_bytes(b"x")
    monkeypatch.setattr(inception, "load_state_dict", disk_full)
    with pytest.raises(SystemExit) as e:
        inception.main(["--src", str(src), "--out", str(tmp_path / "out")])
    assert str(e.value.code) == "error: [Errno 28] No space left on device"
    assert os.listdir(tmp_path) == ["w.pth"]
