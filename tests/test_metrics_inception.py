"""FID Inception-v3 (jtaba.metrics.inception, convert/inception.py) against pytorch-fid 0.3.0 and torch-fidelity
0.4.0 on random weights (nothing is downloaded: pytorch-fid's weight download is replaced by a random state dict of
the same architecture), plus the three input resizes against their references (torch bilinear, torch-fidelity's
TF1 bilinear, Pillow bicubic) and the converter's key accounting."""
import importlib
import importlib.util

import jax.numpy as jnp
import numpy as np
import pytest

from convert.common import import_torchvision
from tests.golden import report

torch = pytest.importorskip("torch")

RTOL = 1e-4


def _need(module):
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    import_torchvision()
    return pytest.importorskip(module)


def randomize(model, seed):
    """He-normal convs (activations stay O(1) through 90-odd layers), BatchNorm affine and running statistics
    drawn away from their identity defaults, a random fc."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, m in model.named_modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            elif isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def fid_reference():
    """(pytorch-fid InceptionV3([3]) in eval mode on a random state, that state dict)."""
    pi = _need("pytorch_fid.inception")
    holder = {}

    def random_fid_state(url, progress=True):
        assert url == pi.FID_WEIGHTS_URL
        net = pi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        # pytorch-fid's fid_inception_v3 block swap; a mismatch fails its strict load_state_dict
        net.Mixed_5b = pi.FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = pi.FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = pi.FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = pi.FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = pi.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = pi.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = pi.FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = pi.FIDInceptionE_1(1280)
        net.Mixed_7c = pi.FIDInceptionE_2(2048)
        holder["state"] = {k: v.clone() for k, v in randomize(net, seed=0).state_dict().items()}
        return holder["state"]

    mp = pytest.MonkeyPatch()
    mp.setattr(pi, "load_state_dict_from_url", random_fid_state)
    try:
        model = pi.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()
    finally:
        mp.undo()
    return model, holder["state"]


@pytest.fixture(scope="module")
def converted(fid_reference):
    from convert import inception as C
    from jtaba.metrics import inception as I

    cfg, params = C.convert_state(fid_reference[1])
    assert cfg["family"] == "inception_fid" and cfg["model"] == {"num_classes": 1008}
    return I.Config.from_dict(cfg["model"]), params


def images(seed, size, b=2):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (b, 3, size, size)).astype(np.float32)


def test_pytorch_fid_parity(fid_reference, converted):
    """pytorch-fid InceptionV3 (bilinear resize to 299, 2x - 1) on [0, 1] images, and the logits of the fc."""
    from jtaba.metrics import inception as I

    model, state = fid_reference
    config, params = converted
    x = images(0, 64)
    with torch.no_grad():
        ref = model(torch.from_numpy(x))[0].numpy().reshape(2, 2048)
    assert np.std(ref) > 1e-2  # random weights still give spread-out features
    got, logits = I.features(config, params, x, input_range="unit", protocol="pytorch_fid", logits=True)
    assert got.shape == (2, 2048) and logits.shape == (2, 1008)
    _, rel = report("fid inception pool3 (pytorch-fid)", got, ref)
    assert rel < RTOL
    ref_logits = ref @ state["fc.weight"].numpy().T + state["fc.bias"].numpy()
    assert report("fid inception logits", logits, ref_logits)[1] < RTOL
    # the same images given in [-1, 1]
    got_signed = I.features(config, params, 2 * x - 1, input_range="signed")
    assert report("fid inception pool3 (signed input)", got_signed, ref)[1] < RTOL


@pytest.mark.slow
def test_torch_fidelity_parity(fid_reference, converted, tmp_path):
    """torch-fidelity's FeatureExtractorInceptionV3 (TF1 bilinear resize, (x - 128) / 128 on uint8) loading the same
    random state from a file: the protocol of upstream ``eval_fids.py``'s torch_fidelity.calculate_metrics."""
    fe = _need("torch_fidelity.feature_extractor_inceptionv3")
    from jtaba.metrics import inception as I

    _, state = fid_reference
    config, params = converted
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                           feature_extractor_weights_path=str(path))
    u8 = (images(1, 48) * 255).astype(np.uint8)
    with torch.no_grad():
        ref, ref_unbiased = (t.numpy() for t in model(torch.from_numpy(u8)))
    got, logits = I.features(config, params, u8, input_range="uint8", protocol="torch_fidelity", logits=True)
    assert report("fid inception pool3 (torch-fidelity)", got, ref)[1] < RTOL
    assert report("fid inception logits_unbiased", logits - np.asarray(params["fc"]["bias"]), ref_unbiased)[1] < RTOL


def test_resize_torch_bilinear():
    from jtaba.metrics import inception as I

    f = torch.nn.functional
    for size in (32, 67, 400):  # up, up (odd ratio), down (no antialias)
        x = images(2, size, b=1)
        ref = f.interpolate(torch.from_numpy(x), size=(299, 299), mode="bilinear", align_corners=False).numpy()
        got = np.asarray(I.resize_bilinear_torch(jnp.asarray(x.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
        assert report(f"torch bilinear {size}->299", got, ref)[0] < 1e-6


def test_resize_tf1_bilinear():
    compat = _need("torch_fidelity.interpolate_compat_tensorflow")
    from jtaba.metrics import inception as I

    for size in (32, 67, 400):
        x = images(3, size, b=1) * 255
        ref = compat.interpolate_bilinear_2d_like_tensorflow1x(torch.from_numpy(x), size=(299, 299),
                                                                align_corners=False).numpy()
        got = np.asarray(I.resize_bilinear_tf1(jnp.asarray(x.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
        assert report(f"tf1 bilinear {size}->299", got, ref)[0] < 1e-4  # values in [0, 255]


def test_resize_pil_bicubic_clean_fid():
    """clean-fid's "clean" resize: Pillow bicubic of each channel as a float32 image, clipped to [0, 255]."""
    Image = pytest.importorskip("PIL.Image")
    from jtaba.metrics import inception as I

    for h, w in ((32, 32), (64, 48), (400, 333)):
        u8 = (np.random.default_rng(h).uniform(0, 1, (h, w, 3)) * 255).astype(np.uint8)
        ref = np.stack([np.asarray(Image.fromarray(u8[:, :, c].astype(np.float32)).resize((299, 299),
                                                                                         Image.BICUBIC))
                        for c in range(3)], -1).clip(0, 255)
        got = np.asarray(I.preprocess(jnp.asarray(u8.transpose(2, 0, 1)[None]), "uint8", "clean_fid"))[0]
        assert report(f"pil bicubic {h}x{w}->299", got * 128 + 128, ref)[0] < 2e-3  # float32 vs Pillow's double


def test_key_accounting_and_checkpoint(fid_reference, tmp_path, capsys):
    from convert import inception as C
    from convert.common import ConversionError
    from jtaba.metrics import inception as I

    state = dict(fid_reference[1])
    del state["Mixed_6c.branch7x7_2.bn.running_var"]
    state["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    state["Mixed_7c.branch_pool.conv.weight"] = torch.zeros(192, 2048, 3, 3)
    with pytest.raises(ConversionError) as e:
        C.convert_state(state)
    msg = str(e.value)
    assert "missing keys (1): Mixed_6c.branch7x7_2.bn.running_var" in msg
    assert "unexpected keys (1): AuxLogits.fc.weight" in msg
    assert "Mixed_7c.branch_pool.conv.weight: (192, 2048, 3, 3)" in msg
    # through the CLI, save and load (the real file has no num_batches_tracked; both are accepted)
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({k: v for k, v in fid_reference[1].items() if not k.endswith("num_batches_tracked")}, path)
    C.main(["--src", str(path), "--out", str(tmp_path / "ck")])
    config, params = I.load(str(tmp_path / "ck"))
    assert config == I.Config()
    ref = C.convert_state(fid_reference[1])[1]
    np.testing.assert_array_equal(np.asarray(params["Mixed_7c"]["branch3x3_2b"]["conv"]["kernel"]),
                                  ref["Mixed_7c"]["branch3x3_2b"]["conv"]["kernel"])
    np.testing.assert_array_equal(np.asarray(params["fc"]["kernel"]), ref["fc"]["kernel"])


def test_offline_message(tmp_path, monkeypatch, capsys):
    from convert import inception as C

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(SystemExit):
        C.main(["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "pt_inception-2015-12-05-6726825d.pth" in err and "nothing is downloaded" in err
    assert not (tmp_path / "out").exists()


def test_flags_are_checked():
    from jtaba.metrics import inception as I

    x = jnp.zeros((1, 3, 8, 8))
    with pytest.raises(ValueError, match="input_range"):
        I.preprocess(x, "0-1")
    with pytest.raises(ValueError, match="protocol"):
        I.preprocess(x, "unit", "tf")
    with pytest.raises(ValueError, match="NCHW"):
        I.preprocess(jnp.zeros((1, 8, 8, 3)), "unit")
