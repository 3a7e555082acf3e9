"""LPIPS (jtaba.metrics.lpips, convert/lpips.py) against the lpips package 0.1.4 on random weights (nothing is
downloaded): the lpips ``LPIPS.state_dict()`` layout, the torchvision-trunk + lin-file layout with the lin heads the
lpips package ships, strict key accounting, and the converter's offline message."""
import importlib
import importlib.util
import os

import jax
import numpy as np
import pytest

from convert.common import import_torchvision
from tests.golden import report

torch = pytest.importorskip("torch")

RTOL = 1e-5


@pytest.fixture(scope="module")
def lpips_pkg():
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed (lpips needs it)")
    import_torchvision()
    return pytest.importorskip("lpips")


def torch_lpips(lpips_pkg, net, seed=0, shipped_lin=False):
    """Random-trunk lpips.LPIPS (``shipped_lin``: the lin heads the package ships, else random), biases and lin
    weights made non-trivial, eval mode."""
    torch.manual_seed(seed)
    model = lpips_pkg.LPIPS(net=net, version="0.1", pretrained=shipped_lin, pnet_rand=True, verbose=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("net.") and name.endswith(".bias"):
                p.normal_(0.0, 0.05)
            elif name.startswith("lin") and not shipped_lin:
                p.uniform_(0.0, 1.0)  # the trained heads are non-negative
    return model.eval()


def inputs(seed=0, size=64):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, (2, 3, size, size)).astype(np.float32)
    x1 = np.clip(x0 + rng.normal(0, 0.3, x0.shape), -1, 1).astype(np.float32)
    x1[1] = rng.uniform(-1, 1, x1[1].shape)  # one near pair, one unrelated pair
    return x0, x1


def torch_distance(model, x0, x1):
    with torch.no_grad():
        total, per = model(torch.from_numpy(x0), torch.from_numpy(x1), retPerLayer=True)
    return total.numpy().reshape(-1), [r.numpy().reshape(-1) for r in per]


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_parity_random_weights(lpips_pkg, net):
    from convert import lpips as C
    from jtaba.metrics import lpips as L

    model = torch_lpips(lpips_pkg, net)
    cfg, params = C.convert_state(model.state_dict(), net)
    assert cfg["family"] == "lpips" and cfg["model"] == {"net": net}
    config = L.Config.from_dict(cfg["model"])
    x0, x1 = inputs()
    ref, ref_per = torch_distance(model, x0, x1)
    got, got_per = L.distance(config, params, x0, x1, per_layer=True)
    assert got.shape == (2,)
    _, rel = report(f"lpips {net}", got, ref)
    assert rel < RTOL
    for k, (g, r) in enumerate(zip(got_per, ref_per)):
        assert report(f"lpips {net} layer {k}", g, r)[1] < RTOL
    # [0, 1] inputs with normalize=True: the same numbers (lpips maps 2x - 1)
    got01 = L.distance(config, params, (x0 + 1) / 2, (x1 + 1) / 2, normalize=True)
    assert report(f"lpips {net} normalize", got01, ref)[1] < 1e-5
    # self-distance is zero, and the batch is per sample
    np.testing.assert_allclose(np.asarray(L.distance(config, params, x0, x0)), 0.0, atol=1e-7)
    one = L.distance(config, params, x0[1:], x1[1:])
    np.testing.assert_allclose(np.asarray(one), np.asarray(got)[1:], rtol=1e-5)


def test_convert_torchvision_files_with_shipped_lin(lpips_pkg, tmp_path, monkeypatch):
    """The real file layout: torchvision ``features.*``/``classifier.*`` trunk + lpips' own shipped lin weights
    (the converter's default --lin), through the CLI, save and load."""
    from convert import lpips as C
    from jtaba.metrics import lpips as L

    net = "alex"
    model = torch_lpips(lpips_pkg, net, seed=1, shipped_lin=True)
    trunk = {f"features.{k.split('.', 2)[2]}": v for k, v in model.state_dict().items() if k.startswith("net.")}
    trunk["classifier.1.weight"] = torch.zeros(8, 4)  # dropped by name, like torchvision's real classifier
    trunk["classifier.1.bias"] = torch.zeros(8)
    torch.save(trunk, tmp_path / "alexnet-owt-7be5be79.pth")
    shipped = C.default_lin(net)
    assert shipped is not None and shipped.endswith(os.path.join("weights", "v0.1", "alex.pth"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # the trunk comes from --trunk, not a cache
    C.main(["--net", net, "--trunk", str(tmp_path / "alexnet-owt-7be5be79.pth"), "--out", str(tmp_path / "ck")])
    config, params = L.load(str(tmp_path / "ck"))
    assert config == L.Config(net="alex")
    x0, x1 = inputs(seed=2)
    ref, _ = torch_distance(model, x0, x1)
    _, rel = report("lpips alex (converted files, shipped lin)", L.distance(config, params, x0, x1), ref)
    assert rel < RTOL


def test_key_accounting(lpips_pkg):
    from convert import lpips as C
    from convert.common import ConversionError

    state = dict(torch_lpips(lpips_pkg, "alex").state_dict())
    del state["net.slice2.3.bias"]
    state["net.slice5.10.running_mean"] = torch.zeros(256)
    state["lin2.model.1.weight"] = torch.zeros(1, 385, 1, 1)
    with pytest.raises(ConversionError) as e:
        C.convert_state(state, "alex")
    msg = str(e.value)
    assert "missing keys (1): net.slice2.3.bias" in msg
    assert "unexpected keys (1): net.slice5.10.running_mean" in msg
    assert "lin2.model.1.weight: (1, 385, 1, 1)" in msg
    state = dict(torch_lpips(lpips_pkg, "alex").state_dict())
    state["scaling_layer.scale"] = state["scaling_layer.scale"] * 2
    with pytest.raises(ConversionError, match="scaling_layer.scale"):
        C.convert_state(state, "alex")
    with pytest.raises(ConversionError, match="net.slice1.0.weight"):  # an alexnet state is not a vgg one
        C.convert_state(dict(torch_lpips(lpips_pkg, "alex").state_dict()), "vgg")


def test_offline_message_names_the_downloads(tmp_path, monkeypatch, capsys):
    from convert import lpips as C

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(SystemExit):
        C.main(["--net", "vgg", "--lin", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in err
    assert "nope.pth: no such file" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_jit_bfloat16_trunk():
    """The trunk in bfloat16 (slow on CPU: XLA emulates bf16 convolutions there)."""
    from jtaba.metrics import lpips as L

    config = L.Config(net="alex")
    params = L.init_params(config, seed=3)
    params = {k: jax.tree.map(jax.numpy.abs, v) if k.startswith("lin_") else v for k, v in params.items()}
    x0, x1 = inputs(seed=4, size=48)
    d32 = np.asarray(L.distance(config, params, x0, x1))
    d16 = np.asarray(L.distance(config, params, x0, x1, dtype=jax.numpy.bfloat16))
    assert d16.dtype == np.float32 and np.all(d32 > 0)
    assert np.max(np.abs(d16 - d32) / d32) < 5e-2


def test_config_checked():
    from jtaba.metrics import lpips as L

    with pytest.raises(ValueError, match="net must be one of"):
        L.Config(net="squeeze")
    assert L.Config.from_dict({"net": "vgg"}) == L.Config(net="vgg")
