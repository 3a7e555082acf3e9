"""VGG16 precision / recall features (jtaba.metrics.vgg16, convert/vgg16.py) against torch-fidelity 0.4.0's
``FeatureExtractorVGG16`` on random weights (its torchvision download is replaced by a torchvision ``VGG`` of VGG16's
layout with small widths, so the 224x224 protocol runs in seconds on a CPU), the adaptive average pool against
torch's, and the converter's key accounting."""
import importlib.util

import numpy as np
import pytest

from convert.common import ConversionError, import_torchvision

torch = pytest.importorskip("torch")


TINY_WIDTHS, TINY_HIDDEN = (8, 8, 16, 16, 16), 32


@pytest.fixture()
def tiny_vgg16():
    """(a torchvision ``VGG`` of VGG16's layout with small widths and a small classifier (same 7 layers), in eval
    mode with random weights and biases, a copy of its state dict: torch-fidelity deletes the classifier tail)."""
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    vgg = import_torchvision().models.vgg
    torch.manual_seed(0)
    cfg = [w for width, convs in zip(TINY_WIDTHS, (2, 2, 3, 3, 3), strict=True) for w in [width] * convs + ["M"]]
    nn = torch.nn
    model = vgg.VGG.__new__(vgg.VGG)  # VGG's forward, without allocating VGG16's 120M-parameter classifier first
    nn.Module.__init__(model)
    model.features, model.avgpool = vgg.make_layers(cfg), nn.AdaptiveAvgPool2d((7, 7))
    model.classifier = nn.Sequential(nn.Linear(TINY_WIDTHS[-1] * 49, TINY_HIDDEN), nn.ReLU(True), nn.Dropout(),
                                     nn.Linear(TINY_HIDDEN, TINY_HIDDEN), nn.ReLU(True), nn.Dropout(),
                                     nn.Linear(TINY_HIDDEN, 10))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                m.bias.copy_(0.05 * torch.randn(m.bias.shape))
    return model.eval(), {k: v.clone() for k, v in model.state_dict().items()}


def test_features_match_torch_fidelity(tiny_vgg16, monkeypatch):
    fe_module = pytest.importorskip("torch_fidelity.feature_extractor_vgg16")
    from convert.vgg16 import convert_state
    from jtaba.metrics import vgg16 as V

    model, state = tiny_vgg16
    monkeypatch.setattr(fe_module, "torchvision_load_pretrained_vgg16", lambda **kw: model)
    extractor = fe_module.FeatureExtractorVGG16("vgg16", ["fc2", "fc2_relu"])
    images = np.random.default_rng(1).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)  # CIFAR-sized, resized
    with torch.no_grad():
        fc2, fc2_relu = (t.numpy() for t in extractor(torch.from_numpy(images)))
    cfg, params = convert_state(state)
    config = V.Config.from_dict(cfg["model"])
    assert config == V.Config(widths=TINY_WIDTHS, hidden=TINY_HIDDEN)
    got = np.asarray(V.features(config, params, images, relu=False))
    scale = np.abs(fc2).max()
    assert scale > 0.1 and 0.2 < (fc2_relu > 0).mean() < 0.8  # a live network
    np.testing.assert_allclose(got, fc2, atol=1e-5 * scale)
    np.testing.assert_allclose(np.asarray(V.features(config, params, images)), fc2_relu, atol=1e-5 * scale)
    # the same images given as [0, 1] or [-1, 1] floats reach the network as the same values
    want = np.asarray(V.preprocess(images))
    np.testing.assert_allclose(np.asarray(V.preprocess(images / 255.0, "unit")), want, atol=1e-4)
    np.testing.assert_allclose(np.asarray(V.preprocess(images / 127.5 - 1.0, "signed")), want, atol=1e-4)


def test_adaptive_avg_pool_matches_torch():
    import jax.numpy as jnp

    from jtaba.metrics.vgg16 import adaptive_avg_pool

    x = np.random.default_rng(2).standard_normal((2, 3, 10, 13)).astype(np.float32)
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), (7, 7)).numpy()
    got = np.asarray(adaptive_avg_pool(jnp.asarray(x.transpose(0, 2, 3, 1)), 7)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_converter_accounts_for_every_key(tiny_vgg16):
    from convert.vgg16 import UNUSED, convert_state

    state = tiny_vgg16[1]
    assert set(UNUSED) <= set(state)  # the ImageNet head: the only keys left out
    _, params = convert_state(state)
    assert sorted(params) == [f"classifier_{i}" for i in (0, 3)] + sorted(
        f"features_{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28))
    with pytest.raises(ConversionError, match="unexpected keys.*extra"):
        convert_state({**state, "extra": state["features.0.bias"]})
    with pytest.raises(ConversionError, match="missing keys.*features.28.weight"):
        convert_state({k: v for k, v in state.items() if k != "features.28.weight"})
