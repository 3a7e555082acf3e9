"""ADM UNet (jtaba.models.adm) vs the golden outputs of the taba fork's guided_diffusion UNetModel."""
from __future__ import annotations

import collections.abc
import functools
import gc
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convert.adm import convert, target_shapes
from convert.common import unflatten
from jtaba.models.adm import Config, Network
from tests.golden import load_json, load_npz, recipe_state_dict, recipe_tensor, report

TINY = ["adm32_tiny", "adm256_tiny", "adm_cond_tiny"]
FULL = ["adm32", "adm64", "adm256"]
ATOL = 5e-5


def tiny_model(name: str):
    cfg = load_json("adm", name, "config.json")
    recipe = cfg["weight_recipe"]
    state = recipe_state_dict(cfg["manifest"], recipe["seed"], recipe["embedding_scale"])
    config_dict, params = convert(state, cfg["flags"])
    return Config.from_dict(config_dict["model"]), params


@functools.partial(jax.jit, static_argnames=("config", "dtype", "train"))
def _apply(params, x, t, cond, rng, *, config, dtype, train):
    rngs = {"dropout": rng} if train else None
    return Network(config, dtype=dtype).apply({"params": params}, x, t, cond, train=train, rngs=rngs)


def forward(config: Config, params, x_nchw, t, y=None, dtype=jnp.float32, train=False, rng=None) -> np.ndarray:
    """Run the network (jit, compiled once per config/dtype/train) on NCHW numpy inputs; NCHW numpy output."""
    x = jnp.asarray(np.transpose(x_nchw, (0, 2, 3, 1)))
    cond = None if y is None else jnp.asarray(y, jnp.int32)
    out = _apply(params, x, jnp.asarray(t, jnp.float32), cond, rng, config=config, dtype=dtype, train=train)
    assert out.dtype == jnp.float32
    return np.asarray(out).transpose(0, 3, 1, 2)


@pytest.fixture(scope="module")
def adm32_tiny():
    return tiny_model("adm32_tiny")


@pytest.mark.parametrize("name", TINY)
def test_forward_matches_golden(name):
    config, params = tiny_model(name)
    f = load_npz("adm", name, "forward.npz")
    out = forward(config, params, f["x"], f["t"], f.get("y"))
    err, _ = report(f"adm/{name} forward", out, f["out"])
    assert err < ATOL


@pytest.mark.parametrize("name", TINY)
def test_config_from_flags_matches_golden(name):
    cfg = load_json("adm", name, "config.json")
    config = Config.from_flags(cfg["flags"])
    assert list(config.channel_mult) == cfg["channel_mult_resolved"]
    assert sorted(config.attention_ds) == sorted(cfg["attention_ds"])
    assert config.out_channels == cfg["out_channels"]
    assert config.num_classes == (cfg["num_classes"] if cfg["flags"]["class_cond"] else None)
    assert Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("name", FULL)
def test_default_channel_mult_matches_golden(name):
    m = load_json("adm", "manifests", f"{name}.json")
    assert m["flags"]["channel_mult"] == ""
    assert list(Config.from_flags(m["flags"]).channel_mult) == m["channel_mult_resolved"]


def test_class_cond_requires_labels():
    config = Config.from_flags({"image_size": 32, "num_channels": 32, "num_res_blocks": 1, "class_cond": True})
    x, t = jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,))
    with pytest.raises(ValueError, match="class-conditional"):
        jax.eval_shape(lambda: Network(config).init(jax.random.key(0), x, t))


def test_bf16_close_to_fp32(adm32_tiny):
    """Reduced-precision compute (params fp32, norms/softmax fp32) stays close to the fp32 forward."""
    config, params = adm32_tiny
    f = load_npz("adm", "adm32_tiny", "forward.npz")
    ref = forward(config, params, f["x"], f["t"])
    out = forward(config, params, f["x"], f["t"], dtype=jnp.bfloat16)
    err, rel = report("adm32_tiny bf16 vs fp32", out, ref)
    assert np.all(np.isfinite(out))
    assert 0 < rel < 0.05  # bf16 has 8 mantissa bits: differs, but by percent-level at most
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.999


def test_dropout_only_in_train():
    """Dropout is the identity in eval; in train it uses the "dropout" rng stream (deterministic per key)."""
    flags = {"image_size": 8, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2",
             "attention_resolutions": "4"}
    config = Config.from_flags({**flags, "dropout": 0.0})
    dropped = Config.from_flags({**flags, "dropout": 0.3})
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    t = np.array([10.0], np.float32)
    rng = np.random.default_rng(1)
    params = unflatten({path: (0.2 * rng.standard_normal(shape)).astype(np.float32)
                        for path, shape in target_shapes(config).items()})
    ref = forward(config, params, x, t)
    np.testing.assert_array_equal(forward(dropped, params, x, t), ref)
    train = [forward(dropped, params, x, t, train=True, rng=jax.random.key(s)) for s in (0, 0, 1)]
    np.testing.assert_array_equal(train[0], train[1])
    assert np.max(np.abs(train[0] - ref)) > 1e-2 and np.max(np.abs(train[0] - train[2])) > 1e-2


# ---- full-size models (ADM-32 / ADM-64 / ADM-256) with recipe weights --------------------------------------------
class RecipeState(collections.abc.Mapping):
    """The golden recipe state dict, generated tensor by tensor on access (never held whole)."""

    def __init__(self, rows, seed: int, embedding_scale: float):
        self._rows = {row[0]: (i, row) for i, row in enumerate(rows)}
        self._seed, self._scale = seed, embedding_scale

    def __getitem__(self, key):
        i, (_, shape, _, kind) = self._rows[key]
        return recipe_tensor(self._seed, i, shape, kind, self._scale)

    def __iter__(self):
        return iter(self._rows)

    def __len__(self):
        return len(self._rows)


def to_device_inplace(tree: dict) -> dict:
    """numpy leaves -> jax arrays one at a time, dropping each numpy copy as soon as it is moved."""
    for k, v in tree.items():
        tree[k] = to_device_inplace(v) if isinstance(v, dict) else jnp.asarray(v)
        del v
    return tree


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL)
def test_full_size_forward_matches_golden(name):
    m = load_json("adm", "manifests", f"{name}.json")
    f = load_npz("adm", "manifests", m["check"]["file"])
    start = time.perf_counter()
    config_dict, params = convert(RecipeState(m["state_dict"], m["recipe"]["seed"], m["recipe"]["embedding_scale"]),
                                  m["flags"])
    params = to_device_inplace(params)
    built = time.perf_counter()
    out = forward(Config.from_dict(config_dict["model"]), params, f["x"], f["t"])
    print(f"[timing] {name}: weights+convert {built - start:.1f} s, forward (incl. compile) "
          f"{time.perf_counter() - built:.1f} s")
    del params
    gc.collect()
    err, _ = report(f"adm/manifests/{name} forward", out, f["out"])
    assert err < ATOL
