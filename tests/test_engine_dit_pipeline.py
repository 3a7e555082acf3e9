"""The same DDIM engine on the diffusers conventions: golden taba ``CustomDiTPipeline`` trajectories
(golden ``dit_pipeline_tiny/``) — sampling, inversion (target-label convention), reconstruction, VAE decode, both
swaps with the diffusers mirror index and forward diffusion at the upstream level."""
import functools
import json
import os

import jax
import numpy as np
import pytest

import jtaba
from jtaba import engine
from jtaba.diffusion import DiffusionConfig
from jtaba.model import Model, build
from tests.golden import golden_path, load_npz, report


def _json(path):
    with open(path) as f:
        return json.load(f)


@functools.lru_cache(maxsize=None)
def pipeline(schedule: str) -> Model:
    from convert.common import load_state_dict
    from convert.dit import convert_diffusers, convert_vae

    root = golden_path("dit_pipeline_tiny")
    tdir = os.path.join(root, "transformer")
    config, params = convert_diffusers(load_state_dict(tdir), _json(os.path.join(tdir, "config.json")))
    vae_cfg, vae_params = convert_vae(os.path.join(root, "vae"))
    vconfig, vnet = build("vae", vae_cfg["model"])
    decoder = Model("vae", vconfig, vnet, jax.tree.map(np.asarray, vae_params), None)
    _, net = build("dit", config.to_dict())
    sched = _json(os.path.join(root, schedule, "scheduler_config.json"))
    diffusion = DiffusionConfig.from_diffusers_scheduler(sched, learned_sigma=True)
    return Model("dit", config, net, jax.tree.map(np.asarray, params), diffusion, decoder)


def data(schedule):
    return load_npz("dit_pipeline_tiny", "trajectories.npz" if schedule == "scheduler" else "trajectories_mild.npz")


def close(name, got, ref, rel=5e-5):
    """The golden set's tolerance: atol 5e-5 (latents, decoded, mild) or 2e-5·max(1, max|ref|) on the hub schedule."""
    err, _ = report(name, got, ref)
    tol = rel * max(1.0, float(np.max(np.abs(ref))))
    assert err <= tol, f"{name}: max-abs {err:.3e} > {tol:.3e}"


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["scheduler", "scheduler_mild"])
def test_sample_invert_reconstruct_decode(schedule):
    ref = data(schedule)
    m = pipeline(schedule)
    T, y = 10, ref["class_labels"]
    hub = schedule == "scheduler"
    rel_x = 2e-5 if hub else 5e-5
    s = jtaba.sample(m, ref["noise"], steps=T, cond=y, record=True)
    close(f"{schedule} samples", s.x, ref["samples"], rel_x)
    close(f"{schedule} all_t_samples", s.xs, ref["all_t_samples"], rel_x)
    close(f"{schedule} all_t_eps_samples", s.eps, ref["all_t_eps_samples"], rel_x)
    close(f"{schedule} all_t_pred_xstart_samples", s.x0, ref["all_t_pred_xstart_samples"], rel_x)
    close(f"{schedule} decoded_samples", jtaba.decode(m, ref["samples"]), ref["decoded_samples"])

    z = jtaba.invert(m, ref["samples"], steps=T, cond=y, record=True)
    close(f"{schedule} latents", z.x, ref["latents"])
    close(f"{schedule} all_t_latents", z.xs, ref["all_t_latents"])
    close(f"{schedule} all_t_eps_latents", z.eps, ref["all_t_eps_latents"])
    close(f"{schedule} all_t_pred_xstart_latents", z.x0, ref["all_t_pred_xstart_latents"], rel_x)

    r = jtaba.sample(m, ref["latents"], steps=T, cond=y)
    close(f"{schedule} samples2", r.x, ref["samples2"], 2e-5 if hub else 5e-5)
    close(f"{schedule} decoded_samples2", jtaba.decode(m, ref["samples2"]), ref["decoded_samples2"])


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["scheduler", "scheduler_mild"])
def test_swaps_and_upstream_forward(schedule):
    ref = data(schedule)
    m = pipeline(schedule)
    T, y = 10, ref["class_labels"]
    src = {k: ref[k] for k in ("all_t_samples", "all_t_eps_samples")}
    np.testing.assert_array_equal(engine.mirror_indices(m.diffusion, T, "eps", 2), [9, 8])  # [-(i+1)]
    np.testing.assert_array_equal(engine.mirror_indices(m.diffusion, T, "xt", 2), [8, 7])  # [-(i+2)]
    e = jtaba.invert(m, ref["samples"], steps=T, cond=y, record=True, swap=jtaba.Swap("eps", 2, src))
    close(f"{schedule} latents_swap_eps2", e.x, ref["latents_swap_eps2"])
    close(f"{schedule} all_t_latents_swap_eps2", e.xs, ref["all_t_latents_swap_eps2"])
    close(f"{schedule} all_t_eps_latents_swap_eps2", e.eps, ref["all_t_eps_latents_swap_eps2"])
    x = jtaba.invert(m, ref["samples"], steps=T, cond=y, record=True, swap=jtaba.Swap("xt", 2, src))
    close(f"{schedule} latents_swap_xt2", x.x, ref["latents_swap_xt2"])
    close(f"{schedule} all_t_latents_swap_xt2", x.xs, ref["all_t_latents_swap_xt2"])

    K = int(ref["forward_before_t"])
    f = jtaba.invert(m, ref["samples"], steps=T, cond=y, forward_before=K, forward_noise=ref["forward_noise"],
                     forward_level="upstream")
    close(f"{schedule} latents_forward{K}", f.x, ref["latents_forward2"])
    r = jtaba.sample(m, np.asarray(f.x), steps=T, cond=y)
    close(f"{schedule} samples2_forward{K}", r.x, ref["samples2_forward2"], 2e-5 if schedule == "scheduler" else 5e-5)
    exact = jtaba.invert(m, ref["samples"], steps=T, cond=y, forward_before=K, forward_noise=ref["forward_noise"])
    assert float(np.max(np.abs(np.asarray(exact.x) - ref["latents_forward2"]))) > 1e-3  # the conventions differ
