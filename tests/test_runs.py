"""``jtaba.runs`` as a library: a model in memory -> a run folder; runs identified by content, reused when a finished
run serves the request, resumed in place, and refused when a folder holds another run. Named models (``jtaba.load``
of "default" and of model-home names) and the one CLI convention of every command."""
import importlib
import os
import pkgutil
import re

import numpy as np
import pytest

import experiments
import jtaba
from jtaba import home, io, runs
from jtaba.runs.fingerprint import array_digest, model_digest
from tests.test_sample_invert import SHAPE, N, T, tiny_adm


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return jtaba.load(tiny_adm(tmp_path_factory.mktemp("ckpt") / "adm"))


def settings(**kw):
    return runs.RunSettings(**{**dict(n=N, steps=T, batch=2), **kw})


def test_a_model_in_memory_runs_and_is_reused(model, tmp_path):
    root = str(tmp_path / "runs")
    r = runs.run(model, settings(record=True), root=root, tag="tiny")
    assert r.path.startswith(os.path.join(root, "tiny", "sample_invert", f"T{T}_n{N}_seed42_rec_"))
    assert r["latents"].shape == (N, *SHAPE) and r["all_t_samples"].shape == (T, N, *SHAPE)
    assert r.identity["model"] == model_digest(model) and r.identity["record"]
    np.testing.assert_equal(io.read_json(os.path.join(r.path, "metrics.json"))["_params"], r.identity)
    mtime = os.path.getmtime(os.path.join(r.path, "samples.npy"))
    # a request for less (no record, no reconstruction, another batch size) is served by the recorded run
    again = runs.run(model, settings(batch=4, reconstruction=False), root=root, tag="tiny")
    assert again.path == r.path and os.path.getmtime(os.path.join(r.path, "samples.npy")) == mtime
    # another seed is another run
    other = runs.Workspace(model, "tiny", root).run(settings(seed=1))
    assert other.path != r.path and not np.array_equal(other["noise"], r["noise"])
    assert runs.find_run(root, r.identity).path == r.path


def test_identity_is_content_not_paths(model, tmp_path):
    noise = np.random.default_rng(0).standard_normal((N, *SHAPE)).astype(np.float32)
    path = str(tmp_path / "noise.npy")
    np.save(path, noise)
    a = runs.plan(model, settings(noise=np.load(path, mmap_mode="r")))[0]
    moved = str(tmp_path / "moved.npy")
    os.replace(path, moved)
    assert runs.plan(model, settings(noise=np.load(moved, mmap_mode="r")))[0] == a
    assert a["noise"] == array_digest(noise)
    noise[0, 0, 0, 0] += 1  # the same path rewritten with other values is another run
    assert runs.plan(model, settings(noise=noise))[0]["noise"] != a["noise"]
    import jax

    leaves, tree = jax.tree.flatten(model.params)
    bumped = jtaba.Model(model.family, model.config, model.network,
                         jax.tree.unflatten(tree, [leaves[0] + 1e-3, *leaves[1:]]), model.diffusion)
    assert model_digest(bumped) != model_digest(model)


def test_a_moved_run_folder_resumes_and_a_folder_of_another_run_is_refused(model, tmp_path):
    out = str(tmp_path / "a")
    r = runs.run(model, settings(reconstruction=False), out)
    moved = str(tmp_path / "b")
    os.replace(out, moved)
    assert runs.run(model, settings(reconstruction=False), moved).identity == r.identity  # finished: reopened
    with pytest.raises(runs.RunMismatch, match="seed"):
        runs.run(model, settings(reconstruction=False, seed=3), moved)


@pytest.mark.parametrize("bad, msg", [
    (dict(noise=np.full((N, *SHAPE), np.nan, np.float32)), "NaN or Inf in sample 0"),
    (dict(swap_before=2), "swap_from"),
    (dict(inversion=False), "reconstruction needs inversion"),
    (dict(precision="float64"), "precision"),
    (dict(noise=np.zeros((N, 3, 4, 4), np.float32)), r"\(3, 4, 4\)"),
])
def test_bad_settings_are_refused_before_any_work(model, tmp_path, bad, msg):
    with pytest.raises(ValueError, match=msg):
        runs.run(model, settings(**bad), str(tmp_path / "never"))
    assert not os.path.exists(tmp_path / "never")


def test_named_models(tmp_path, monkeypatch):
    m = jtaba.load("default")
    assert m.family == "adm" and m.sample_shape == (3, 16, 16)
    monkeypatch.setenv("JTABA_HOME", str(tmp_path))
    assert home.available() == ["default"]
    with pytest.raises(home.UnknownModel) as e:
        jtaba.load("ldm")
    assert "python convert/ldm.py" in str(e.value) and "models present: default" in str(e.value)
    with pytest.raises(home.UnknownModel, match="convert/if.py"):
        jtaba.load("my-model")  # unknown: every known convert command is listed
    os.makedirs(tmp_path / "models")
    os.symlink(home.default_model_dir(), tmp_path / "models" / "tiny")
    assert home.available() == ["default", "tiny"] and home.resolve("tiny").tag == "tiny"


def command_modules():
    """Every experiment and converter module (each has ``build_parser``)."""
    import convert

    return [importlib.import_module(f"{pkg.__name__}.{m.name}") for pkg in (experiments, convert)
            for m in pkgutil.iter_modules(pkg.__path__) if m.name not in ("common", "diffusers_keys", "autoencoders")]


@pytest.mark.parametrize("module", command_modules(), ids=lambda m: m.__name__)
def test_every_command_uses_kebab_flags_with_defaults_and_help(module):
    parser = module.build_parser()
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag.startswith("-") and "_" not in flag, (module.__name__, flag)
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 10, (module.__name__, action.dest)
    text = parser.format_help()
    assert "(default:" in text, module.__name__


def test_experiments_import_only_public_library_modules():
    internal = re.compile(r"jtaba\.(runs\.store|sharding|distributed|checkpoint)\b|"
                          r"from jtaba(\.runs)? import [^\n]*\b(store|sharding|distributed|checkpoint)\b")
    root = os.path.dirname(experiments.__file__)
    for name in sorted(os.listdir(root)):
        if name.endswith(".py") and name != "benchmark.py":  # the benchmark times the engine and devices
            text = open(os.path.join(root, name)).read()
            assert not internal.search(text), (name, internal.search(text))
            assert ".main([" not in text and "argv=[" not in text, name


def test_a_damaged_checkpoint_is_one_line_error(tmp_path):
    import shutil

    from experiments import triangles

    ckpt = str(tmp_path / "ckpt")
    shutil.copytree(home.default_model_dir(), ckpt)
    data = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(ckpt, "params")) for f in fs if "/d/" in r + "/"]
    for path in data:
        os.remove(path)
    with pytest.raises(ValueError, match="params cannot be read"):
        jtaba.load(ckpt)
    with pytest.raises(SystemExit, match=r"^error: .*params cannot be read") as e:
        triangles.main(["--ckpt", ckpt, "--runs-dir", str(tmp_path / "runs")])
    assert "\n" not in str(e.value).strip()
    shutil.rmtree(os.path.join(ckpt, "params"))
    with pytest.raises(SystemExit, match="params: missing"):
        triangles.main(["--ckpt", ckpt, "--runs-dir", str(tmp_path / "runs")])
