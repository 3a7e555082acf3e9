"""Schedules and respacing against the reference numbers (upstream ``guided_diffusion/respace.py``), the golden
spaced schedules of the original guided_diffusion, and diffusers' DDIMScheduler / DDIMInverseScheduler."""
import numpy as np
import pytest

from jtaba.diffusion import DiffusionConfig
from jtaba.schedules import adm_labels, adm_spaced, alphas_cumprod, diffusers_timesteps, space_timesteps, step_tables
from tests.golden import load_json, load_npz

COS4000 = DiffusionConfig(kind="adm", beta_schedule="cosine", num_train_timesteps=4000, rescale_timesteps=True)
LIN1000 = DiffusionConfig(kind="adm", beta_schedule="linear", num_train_timesteps=1000)


@pytest.mark.parametrize("cfg,T,stride,a0,a1,alast", [
    (COS4000, 100, 40, 0.99999013, 0.999347, 2.309e-4),
    (COS4000, 50, 80, 0.99999013, 0.998218, 9.471e-4),
    (COS4000, 10, 400, 0.99999013, 0.971964, 2.397e-2),
    (LIN1000, 100, 10, 0.9999, 0.997807, 4.837e-5),
])
def test_adm_respacing_reference_numbers(cfg, T, stride, a0, a1, alast):
    tmap, a = adm_spaced(cfg, T)
    np.testing.assert_array_equal(tmap, np.arange(0, cfg.num_train_timesteps, stride))
    np.testing.assert_allclose([a[0], a[1], a[-1]], [a0, a1, alast], rtol=2e-4)


def test_space_timesteps_smallest_stride_and_errors():
    ts = space_timesteps(1000, "ddim30")
    assert len(ts) == 30 and ts[1] == 34 and ts[-1] == 986
    with pytest.raises(ValueError, match="exactly"):
        space_timesteps(1000, "ddim999")
    assert space_timesteps(100, "10") == list(range(0, 100, 11))[:9] + [99]


def test_adm_labels_rescaled_and_integer():
    tmap, _ = adm_spaced(COS4000, 100)
    np.testing.assert_array_equal(adm_labels(COS4000, tmap)[:3], [0.0, 10.0, 20.0])
    tmap, _ = adm_spaced(LIN1000, 100)
    np.testing.assert_array_equal(adm_labels(LIN1000, tmap)[-1], 990.0)


@pytest.mark.parametrize("name", ["adm32_tiny", "adm256_tiny", "adm_cond_tiny"])
def test_adm_tables_match_golden(name):
    cfg = load_json("adm", name, "config.json")
    ref = load_npz("adm", name, "ddim.npz")
    diff = DiffusionConfig.from_adm_flags(cfg["flags"])
    T = cfg["spaced"]["T"]
    tmap, a = adm_spaced(diff, T)
    np.testing.assert_array_equal(tmap, ref["timestep_map"])
    np.testing.assert_allclose(a, ref["alphas_cumprod"], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(adm_labels(diff, tmap), ref["t_model"].astype(np.float32))
    tab = step_tables(diff, T)
    np.testing.assert_allclose(tab.sample.sqrt_a_dst ** 2, ref["alphas_cumprod_prev"][::-1], rtol=1e-6)
    np.testing.assert_allclose(tab.invert.sqrt_a_dst ** 2, ref["alphas_cumprod_next"], rtol=1e-6, atol=1e-12)
    assert tab.invert.sqrt_a_dst[-1] == 0.0  # last inversion step goes to ᾱ = 0 (upstream ``alphas_cumprod_next``)


DIFFUSERS_CONFIGS = [
    dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, set_alpha_to_one=True, steps_offset=0),  # DiT
    dict(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195, set_alpha_to_one=True),  # LDM
    dict(beta_schedule="squaredcos_cap_v2", clip_sample=True, set_alpha_to_one=True),  # IF
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False,
         steps_offset=1),  # SDXL
    dict(beta_schedule="linear", timestep_spacing="trailing", set_alpha_to_one=False),
]


@pytest.mark.parametrize("kw", DIFFUSERS_CONFIGS)
@pytest.mark.parametrize("T", [10, 50])
def test_diffusers_tables_match_schedulers(kw, T):
    """Run both diffusers schedulers for one step at every timestep on a probe and compare with the table step."""
    torch = pytest.importorskip("torch")
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    kw = dict(kw, clip_sample=False)
    fwd, inv = DDIMScheduler(**kw), DDIMInverseScheduler(**kw)
    fwd.set_timesteps(T)
    inv.set_timesteps(T)
    cfg = DiffusionConfig.from_diffusers_scheduler(dict(fwd.config), learned_sigma=False)
    np.testing.assert_array_equal(alphas_cumprod(cfg), fwd.alphas_cumprod.numpy())
    np.testing.assert_array_equal(diffusers_timesteps(cfg, T, False), fwd.timesteps.numpy())
    np.testing.assert_array_equal(diffusers_timesteps(cfg, T, True), inv.timesteps.numpy())
    tab = step_tables(cfg, T)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    eps = rng.standard_normal((2, 3)).astype(np.float32)
    for table, sched in ((tab.sample, fwd), (tab.invert, inv)):
        for i, t in enumerate(sched.timesteps):
            assert table.label[i] == float(t)
            ref = sched.step(torch.from_numpy(eps), t, torch.from_numpy(x)).prev_sample.numpy()
            x0 = table.c_x[i] * x - table.c_eps[i] * eps
            got = table.sqrt_a_dst[i] * x0 + table.sqrt_1m_a_dst[i] * eps
            np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-6 * max(1.0, float(table.c_x[i])))


def test_forward_levels_exact_vs_upstream():
    """Forward replacement (paper Sec. 5): exact level of K replaced steps = where inversion step K
    starts; upstream (taba diffusers) = one step further, K = T at training step 999; ADM's upstream is exact."""
    dit = DiffusionConfig(kind="diffusers", beta_schedule="linear")
    tab = step_tables(dit, 10)
    ac = alphas_cumprod(dit)
    np.testing.assert_allclose(tab.invert.fwd_sqrt_a[[0, 2]] ** 2, [1.0, ac[100]], rtol=1e-6)
    np.testing.assert_allclose(tab.invert_upstream.fwd_sqrt_a[[2, 10]] ** 2, [ac[200], ac[999]], rtol=1e-6)
    adm = step_tables(COS4000, 10)
    np.testing.assert_array_equal(adm.invert.fwd_sqrt_a, adm.invert_upstream.fwd_sqrt_a)
    _, a = adm_spaced(COS4000, 10)
    np.testing.assert_allclose(adm.invert.fwd_sqrt_a[3] ** 2, a[3], rtol=1e-6)
