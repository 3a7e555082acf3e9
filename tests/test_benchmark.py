"""experiments.benchmark: FLOPs from the un-optimised HLO against analytic counts, MFU, the persistent compilation
cache (cold miss, warm hit) and the CLI (table, JSON, flags) on a tiny ADM."""
import argparse
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import benchmark
from jtaba import compilation_cache
from jtaba.diffusion import DiffusionConfig
from jtaba.model import Model, build
from jtaba.precision import compute_dtype


@pytest.fixture
def restore_cache_config():
    """The compilation-cache settings are process-global: put them back after the test."""
    names = ("jax_enable_compilation_cache", "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {n: getattr(jax.config, n) for n in names}
    yield
    for n, v in saved.items():
        jax.config.update(n, v)
    compilation_cache._jax_cache.reset_cache()


def constant_params(net, *inputs):
    """Params of ``net`` filled with a constant, without compiling an initialiser (FLOPs and timings do not depend
    on the values)."""
    shapes = jax.eval_shape(net.init, jax.random.key(0), *inputs)["params"]
    return jax.tree.map(lambda s: jnp.asarray(np.full(s.shape, 0.02, s.dtype)), shapes)


class ConvDense(nn.Module):
    """A network with the (x, t, cond) signature of jtaba's: 3x3 VALID conv, ReLU, dense head."""
    features: int = 16
    outputs: int = 10

    @nn.compact
    def __call__(self, x, t, cond=None):
        h = nn.relu(nn.Conv(self.features, (3, 3), padding="VALID")(x))
        return nn.Dense(self.outputs)(h.reshape(h.shape[0], -1))


def test_known_answer_matmul():
    m, k, n = 64, 96, 48
    lowered = jax.jit(jnp.matmul).lower(jnp.ones((m, k)), jnp.ones((k, n)))
    assert benchmark.hlo_flops(lowered) == 2 * m * k * n


def test_network_flops_match_analytic_count():
    b, h, w, cin, cout, out = 3, 10, 12, 8, 16, 10
    net = ConvDense(cout, out)
    x, t = jnp.ones((b, h, w, cin)), jnp.zeros((b,))
    params = constant_params(net, x, t)
    ho, wo = h - 2, w - 2
    conv = 2 * b * ho * wo * cout * 3 * 3 * cin  # 2 FLOPs per multiply-add
    dense = 2 * b * (ho * wo * cout) * out
    analytic = conv + dense
    flops = benchmark.network_flops(net, params, x, t)
    assert abs(flops - analytic) / analytic < 0.03, (flops, analytic)  # the rest: bias adds, ReLU
    assert flops >= analytic


def test_mfu_from_flops():
    achieved, mfu = benchmark.throughput(flops_per_call=2.5e11, calls=40, seconds=2.0, peak_tflops=10.0)
    assert achieved == pytest.approx(5.0) and mfu == pytest.approx(0.5)
    assert benchmark.throughput(1e12, 1, 1.0, None) == (pytest.approx(1.0), None)
    assert benchmark.peak_tflops("bfloat16", device_kind="NVIDIA H200") == 989.0
    assert benchmark.peak_tflops("tf32", device_kind="NVIDIA H100 80GB HBM3") == 494.0
    assert benchmark.peak_tflops("float32", device_kind="NVIDIA H100 PCIe") == 51.0
    assert benchmark.peak_tflops("float32", device_kind="cpu") is None
    assert benchmark.peak_tflops("float32", override=12.0, device_kind="cpu") == 12.0


def test_compilation_cache_cold_then_warm(tmp_path, monkeypatch, restore_cache_config):
    monkeypatch.setenv("JTABA_HOME", str(tmp_path / "home"))
    assert compilation_cache.default_directory() == str(tmp_path / "home" / "compilation_cache")
    path = compilation_cache.enable()
    assert path == compilation_cache.directory() == compilation_cache.default_directory()
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0

    def f(a):
        return jnp.tanh(a @ a.T).sum(0) * 3.0

    x = jnp.ones((32, 32))
    for expected in ({"hits": 0, "misses": 1}, {"hits": 1, "misses": 0}):
        jax.clear_caches()
        with compilation_cache.count_events() as events:
            jax.jit(f).lower(x).compile()
        assert dict(events) == expected
    assert os.listdir(path)

    other = compilation_cache.enable(str(tmp_path / "other"))  # moving the cache takes effect at once
    jax.clear_caches()
    with compilation_cache.count_events() as events:
        jax.jit(f).lower(x).compile()
    assert events["misses"] == 1 and os.listdir(other)

    compilation_cache.disable()
    assert compilation_cache.directory() is None
    jax.clear_caches()
    with compilation_cache.count_events() as events:
        jax.jit(f).lower(x).compile()
    assert dict(events) == {"hits": 0, "misses": 0}


def tiny_adm(arch: str, precision: str) -> Model:
    flags = {"image_size": 8, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1",
             "attention_resolutions": "8", "learn_sigma": True}  # attention at 8x8: every block kind
    from jtaba.models import adm

    config, net = build("adm", adm.Config.from_flags(flags).to_dict(), compute_dtype(precision))
    params = constant_params(net, jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)))
    return Model("adm", config, net, params, DiffusionConfig.from_adm_flags(flags))


def test_cli_tiny_adm(tmp_path, monkeypatch, capsys, restore_cache_config):
    monkeypatch.setenv("JTABA_HOME", str(tmp_path))
    monkeypatch.setattr(benchmark, "random_model", tiny_adm)
    doc = benchmark.main(["--arch", "adm32", "--batch", "2", "--steps", "2", "--repeats", "1",
                          "--peak-tflops", "0.5", "--json"])
    printed = json.loads(capsys.readouterr().out)  # --json alone: the document on stdout, no table
    assert printed["rows"] == json.loads(json.dumps(doc["rows"]))
    (row,) = doc["rows"]
    assert doc["meta"]["compilation_cache"] == str(tmp_path / "compilation_cache")
    model = tiny_adm("adm32", "float32")
    assert row["params"] == benchmark.count_params(model.params)
    assert row["warm_cache_hits"] == 2 and row["compile_warm_s"] > 0 and row["compile_cold_s"] > 0
    assert row["network_calls_per_image"] == 4
    x, t, cond = benchmark.network_inputs(model, 2)
    per_call = benchmark.network_flops(model.network, model.params, x, t, cond)
    assert row["flop_per_batch"] == pytest.approx(per_call * 4)
    assert row["tflops_per_s"] == pytest.approx(row["flop_per_batch"] / row["seconds_per_batch"] / 1e12)
    assert row["mfu"] == pytest.approx(row["tflops_per_s"] / 0.5)
    table = benchmark.format_table(doc)
    assert "adm32" in table and "MFU" in table and "compile cold" in table
    assert compilation_cache.directory() == str(tmp_path / "compilation_cache")  # the benchmark's cache stays on


def test_flags_kebab_case_with_defaults_in_help():
    parser = benchmark.build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        for opt in action.option_strings:
            assert "_" not in opt, opt
        assert "default" in formatter._get_help_string(action), action.option_strings
    assert parser.parse_args([]).json is None
    assert parser.parse_args(["--json"]).json == "-"
    assert parser.parse_args(["--json=out.json"]).json == "out.json"
    args = parser.parse_args(["--arch", "adm32", "dit-s2", "--dtype", "bfloat16", "float32", "--batch", "4"])
    assert len(benchmark.configurations(args)) == 4
    assert [c.name for c in benchmark.configurations(parser.parse_args([]))] == ["default"]
