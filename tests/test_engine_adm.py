"""The DDIM engine on the tiny golden ADMs against the original guided_diffusion / taba code (golden ``adm/<name>/``
vectors): teacher-forced single steps, free-running trajectories, reconstruction, forward_before=3 and both swaps."""
import functools

import jax.numpy as jnp
import numpy as np
import pytest

import jtaba
from jtaba import engine
from jtaba.diffusion import DiffusionConfig
from jtaba.model import Model, build
from tests.golden import load_json, load_npz, recipe_state_dict, report

NAMES = ["adm32_tiny", "adm256_tiny", "adm_cond_tiny"]


@functools.lru_cache(maxsize=None)
def golden_model(name: str) -> Model:
    from convert.adm import convert

    cfg = load_json("adm", name, "config.json")
    state = recipe_state_dict(cfg["manifest"], cfg["weight_recipe"]["seed"], cfg["weight_recipe"]["embedding_scale"])
    config_dict, params = convert(state, cfg["flags"])
    config, network = build("adm", config_dict["model"])
    return Model("adm", config, network, jnp_tree(params), DiffusionConfig.from_dict(config_dict["diffusion"]))


def jnp_tree(params):
    import jax

    return jax.tree.map(jnp.asarray, params)


def golden(name):
    return load_json("adm", name, "config.json"), load_npz("adm", name, "ddim.npz")


def close(name, got, ref, atol):
    err, _ = report(name, got, ref)
    assert err <= atol, f"{name}: max-abs {err:.3e} > {atol}"


@pytest.mark.parametrize("name", NAMES)
def test_teacher_forced_steps(name):
    """Each sampling / inversion step from the golden previous state reproduces the golden next state, ε, x0."""
    cfg, ref = golden(name)
    model = golden_model(name)
    T = cfg["spaced"]["T"]
    y = jnp.asarray(ref["y"], jnp.int32) if "y" in ref else None
    nhwc = lambda a: jnp.asarray(np.moveaxis(a, 1, -1))  # noqa: E731
    for invert, start, key in ((False, "noise", "samples"), (True, "samples", "latents")):
        spec = engine.LoopSpec(network=model.network, diffusion=model.diffusion, steps=T, invert=invert)
        prev = ref[start]
        for i in range(T):
            x, eps, x0 = engine.run_step(spec, model.params, nhwc(prev), i, y)
            tag = f"{name} {'inv' if invert else 'smp'} step {i}"
            close(tag + " x", np.moveaxis(np.asarray(x), -1, 1), ref[f"all_t_{key}"][i], 1e-4)
            eps_tol = 3e-3 if (not invert and i == T - 1) else 1e-4
            close(tag + " eps", np.moveaxis(np.asarray(eps), -1, 1), ref[f"all_t_eps_{key}"][i], eps_tol)
            close(tag + " x0", np.moveaxis(np.asarray(x0), -1, 1), ref[f"all_t_pred_xstart_{key}"][i], 1e-3)
            prev = ref[f"all_t_{key}"][i]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_free_running_trajectories(name):
    cfg, ref = golden(name)
    model = golden_model(name)
    T = cfg["spaced"]["T"]
    y = ref.get("y")
    s = jtaba.sample(model, ref["noise"], steps=T, cond=y, record=True)
    close(f"{name} samples", s.x, ref["samples"], 1e-3)
    close(f"{name} all_t_samples", s.xs, ref["all_t_samples"], 1e-3)
    close(f"{name} all_t_eps_samples[:-1]", s.eps[:-1], ref["all_t_eps_samples"][:-1], 1e-3)
    close(f"{name} all_t_eps_samples[-1]", s.eps[-1], ref["all_t_eps_samples"][-1], 3e-3)
    close(f"{name} all_t_pred_xstart_samples", s.x0, ref["all_t_pred_xstart_samples"], 1e-3)

    z = jtaba.invert(model, ref["samples"], steps=T, cond=y, record=True)
    close(f"{name} latents", z.x, ref["latents"], 1e-3)
    close(f"{name} all_t_latents", z.xs, ref["all_t_latents"], 1e-3)
    close(f"{name} all_t_eps_latents", z.eps, ref["all_t_eps_latents"], 1e-3)
    close(f"{name} all_t_pred_xstart_latents", z.x0, ref["all_t_pred_xstart_latents"], 1e-3)
    np.testing.assert_array_equal(np.asarray(z.x), np.asarray(z.xs[-1]))

    r = jtaba.sample(model, ref["latents"], steps=T, cond=y, record=True)  # the first call's program: no compile
    close(f"{name} samples2", r.x, ref["samples2"], 1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_forward_and_swaps(name):
    cfg, ref = golden(name)
    model = golden_model(name)
    T = cfg["spaced"]["T"]
    y = ref.get("y")
    K = int(ref["forward_before_t"])
    f = jtaba.invert(model, ref["samples"], steps=T, cond=y, forward_before=K, forward_noise=ref["forward_noise"])
    close(f"{name} latents_forward{K}", f.x, ref["latents_forward3"], 1e-3)

    source = {k: ref[k] for k in ("all_t_samples", "all_t_eps_samples")}
    np.testing.assert_array_equal(engine.mirror_indices(model.diffusion, T, "eps", 2), ref["swap_eps_src_j"])
    np.testing.assert_array_equal(engine.mirror_indices(model.diffusion, T, "xt", 2), ref["swap_xt_src_j"])
    e = jtaba.invert(model, ref["samples"], steps=T, cond=y, swap=jtaba.Swap("eps", 2, source))
    close(f"{name} latents_swap2", e.x, ref["latents_swap2"], 1e-3)
    x = jtaba.invert(model, ref["samples"], steps=T, cond=y, swap=jtaba.Swap("xt", 2, source))
    close(f"{name} latents_swapxt2", x.x, ref["latents_swapxt2"], 1e-3)


def test_bad_inputs_raise_clear_errors():
    _, ref = golden("adm32_tiny")
    model = golden_model("adm32_tiny")
    x = ref["samples"]
    with pytest.raises(ValueError, match="forward_before"):
        jtaba.invert(model, x, steps=10, forward_before=11, forward_noise=ref["forward_noise"])
    with pytest.raises(ValueError, match="NCHW"):
        jtaba.invert(model, x[:, :2], steps=10)
    with pytest.raises(TypeError, match="float32"):
        jtaba.sample(model, x.astype(np.float64), steps=10)
    with pytest.raises(ValueError, match="swap_before"):
        jtaba.invert(model, x, steps=10, swap=jtaba.Swap("eps", 10, {"all_t_eps_samples": ref["all_t_eps_samples"]}))
    with pytest.raises(ValueError, match="forward_noise"):
        jtaba.invert(model, x, steps=10, forward_before=2, forward_noise=ref["forward_noise"][:2])
