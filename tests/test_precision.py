"""Precision is an explicit choice that reaches every matmul and convolution (the lowered HLO's precision config)
and changes the network's compute dtype; runs record it and a run folder refuses another one."""
import re

import jax.numpy as jnp
import numpy as np
import pytest

import jtaba
from jtaba import engine, precision, runs
from tests.test_sample_invert import SHAPE, N, T, tiny_adm

# jax's names in the lowered StableHLO for each choice (default_matmul_precision "highest" / "tensorfloat32" /
# "default"); bfloat16 also computes in bfloat16.
EXPECTED = {"float32": "HIGHEST", "tf32": "HIGH", "bfloat16": "DEFAULT"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return jtaba.load(tiny_adm(tmp_path_factory.mktemp("ckpt") / "adm"))


def lowered_ops(model, choice):
    m = precision.with_precision(model, choice)
    spec = engine.LoopSpec(network=m.network, diffusion=m.diffusion, steps=2, invert=False)
    x = jnp.zeros((2, 8, 8, 3), jnp.float32)
    with precision.scope(choice):
        text = engine.run_loop.lower(spec, m.params, x).as_text()
    return [line for line in text.splitlines() if re.search(r"stablehlo\.(dot_general|convolution)", line)]


@pytest.mark.parametrize("choice", precision.PRECISIONS)
def test_precision_reaches_every_matmul_and_convolution(model, choice):
    ops = lowered_ops(model, choice)
    assert sum("convolution" in op for op in ops) > 5 and sum("dot_general" in op for op in ops) > 2
    want = EXPECTED[choice]
    for op in ops:
        if want == "DEFAULT":
            assert "HIGH" not in op, op
        else:
            assert f"precision = [{want}, {want}]" in op or f"precision_config = [#stablehlo<precision {want}>" \
                f", #stablehlo<precision {want}>]" in op, op
    convs = [op for op in ops if "convolution" in op]
    if choice == "bfloat16":  # every convolution but ADM's float32 output layer (guided-diffusion's fp16 mode too)
        assert sum("bf16" in op for op in convs) == len(convs) - 1
    else:
        assert not any("bf16" in op for op in ops)


def test_api_precision_and_run_records(model, tmp_path):
    noise = np.random.default_rng(0).standard_normal((2, *SHAPE)).astype(np.float32)
    full = np.asarray(jtaba.sample(model, noise, steps=T).x)
    np.testing.assert_array_equal(np.asarray(jtaba.sample(model, noise, steps=T, precision="float32").x), full)
    half = np.asarray(jtaba.sample(model, noise, steps=T, precision="bfloat16").x)
    assert 0 < np.abs(half - full).max() < 0.5  # bf16 compute: close, not equal
    out = str(tmp_path / "run")
    r = runs.run(model, runs.RunSettings(n=N, steps=T, batch=2, precision="bfloat16", reconstruction=False), out)
    assert r.identity["precision"] == "bfloat16"
    with pytest.raises(runs.RunMismatch, match="precision"):
        runs.run(model, runs.RunSettings(n=N, steps=T, batch=2, reconstruction=False), out)
