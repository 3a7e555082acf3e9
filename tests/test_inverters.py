"""Inversion methods beyond DDIM (``jtaba.inverters`` in ``jtaba.engine.run_method``) against re-typed oracles of
their reference implementations' loops (numpy float64, the same tiny network's ε), on a tiny random ADM and the
golden tiny DiT with a diffusers DDIM schedule whose levels and labels come from diffusers' own scheduler; and the
exactness of edict / bdia / belm / ddpm round trips (sample -> invert -> sample) against DDIM on the same model.

Oracles (upstream function names): EDICT ``coupled_stablediffusion`` with ``forward_step`` / ``reverse_step``
(leapfrog on), BELM ``samplers/BELM.py`` and ``samplers/BDIA.py`` ``intermediate_to_latent`` /
``latent_to_intermediate``, ReNoise ``inversion_step`` (averaging, no noise regularisation / correction), Anderson
acceleration in the Walker-Ni difference form, DDPM_inversion ``inversion_forward_process`` / ``reverse_step``
(η = 1). Where jtaba deviates (the first BDIA / BELM inversion step's label, the ddpm map of a σ = 0 step), the
oracle states it."""
import dataclasses
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtaba
from jtaba import inverters
from jtaba.diffusion import DiffusionConfig
from jtaba.inverters import Method
from jtaba.model import Model
from jtaba.models import adm, dit
from jtaba.runs import RunSettings
from jtaba.runs.settings import identity
from tests.test_dit import tiny as dit_tiny  # noqa: F401  (golden dit_tiny with recipe weights)

T, B = 3, 2
DDIM_SCHED = dict(beta_schedule="linear", clip_sample=False, set_alpha_to_one=True)


def _draw(shapes, seed=0):
    rng = np.random.default_rng(seed)

    def one(path, s):
        name = path[-1].key
        if name == "scale":
            return (1 + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)
        if name == "bias":
            return (0.05 * rng.standard_normal(s.shape)).astype(np.float32)
        return (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)

    return jax.tree_util.tree_map_with_path(one, shapes)


@pytest.fixture(scope="module")
def adm_model():
    flags = dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1", attention_resolutions="16",
                 learn_sigma=True, diffusion_steps=1000, noise_schedule="cosine")
    config = adm.Config.from_flags(flags)
    net = adm.Network(config)
    shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)), None)
    params = jax.tree.map(jnp.asarray, _draw(shapes["params"]))
    return Model("adm", config, net, params, DiffusionConfig.from_adm_flags(flags))


@pytest.fixture(scope="module")
def dit_model(dit_tiny):  # noqa: F811
    config, params = dit_tiny
    params = jax.tree.map(jnp.asarray, params)
    return Model("dit", config, dit.Network(config), params,
                 DiffusionConfig.from_diffusers_scheduler(DDIM_SCHED, learned_sigma=True))


def _setup(model):
    """(eps(x NCHW float64, label) -> float64, labels, ᾱ levels (T+1,), cond) for the oracles. The DiT's levels and
    labels are read from diffusers' DDIMScheduler, the ADM's from guided-diffusion's spacing (jtaba.schedules)."""
    cond = jnp.asarray([207, 88], jnp.int32) if model.conditional else None
    if model.family == "dit":
        from diffusers import DDIMScheduler

        sched = DDIMScheduler(**DDIM_SCHED)
        sched.set_timesteps(T)
        ts = sched.timesteps.numpy()
        ac = sched.alphas_cumprod.numpy().astype(np.float64)
        labels = ts.astype(np.float32)
        abar = np.concatenate([ac[ts], [float(sched.final_alpha_cumprod)]])
    else:
        labels, abar = inverters.levels(model.diffusion, T)
    channels = model.sample_shape[0]
    net = jax.jit(lambda x, t: model.network.apply({"params": model.params}, x, jnp.full((B,), t, jnp.float32),
                                                   cond)[..., :channels])

    def eps(x, label):
        out = net(jnp.asarray(np.moveaxis(x, 1, -1), jnp.float32), float(label))
        return np.moveaxis(np.asarray(out, np.float64), -1, 1)

    return eps, labels, abar, cond


def _image(model, seed=1):
    return np.random.default_rng(seed).uniform(-0.9, 0.9, (B, *model.sample_shape)).astype(np.float32)


def _close(got, want, what, tol=2e-4):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = float(np.max(np.abs(got - want)))
    assert err <= tol * max(1.0, float(np.max(np.abs(want)))), f"{what}: max-abs {err:.3e}"


# ---- re-typed reference loops (numpy float64; ᾱ index k = sampling level, k = T the clean end) ------------------

def _ddim_coefs(abar, k, j):
    """DDIM from level k to level j: x' = A·x + B·ε."""
    a = np.sqrt(abar[j] / abar[k])
    return a, np.sqrt(1 - abar[j]) - np.sqrt(1 - abar[k]) * a


def edict_oracle(eps, labels, abar, pair, p, reverse):
    """EDICT ``coupled_stablediffusion`` (leapfrog_steps=True), forward_step / reverse_step in its alpha-quotient
    form."""
    pair = [np.asarray(v, np.float64) for v in pair]

    def forward_step(e, k, s):
        aq = np.sqrt(abar[k] / abar[k + 1])
        return s / aq - (1 / aq) * np.sqrt(1 - abar[k]) * e + np.sqrt(1 - abar[k + 1]) * e

    def reverse_step(e, k, s):
        aq = np.sqrt(abar[k] / abar[k + 1])
        return aq * s + np.sqrt(1 - abar[k]) * e - aq * np.sqrt(1 - abar[k + 1]) * e

    ks = list(range(T))[::-1] if reverse else list(range(T))
    for i, k in enumerate(ks):
        if reverse:
            pair[1] = (pair[1] - (1 - p) * pair[0]) / p
            pair[0] = (pair[0] - (1 - p) * pair[1]) / p
        for latent_i in range(2):
            offset = ((T - (i + 1)) + 1) % 2 if reverse else i % 2
            latent_i = (latent_i + offset) % 2
            e = eps(pair[(latent_i + 1) % 2], labels[k])
            pair[latent_i] = (reverse_step if reverse else forward_step)(e, k, pair[latent_i])
        if not reverse:
            pair[0] = p * pair[0] + (1 - p) * pair[1]
            pair[1] = (1 - p) * pair[0] + p * pair[1]
    return pair


def multistep_sample_oracle(eps, labels, abar, x0, x1, name, gamma=0.5):
    """BELM / BDIA ``intermediate_to_latent`` from the pair (x_0, x_1) (freeze_step 0, intermediate_second)."""
    xis = [np.asarray(x0, np.float64), np.asarray(x1, np.float64)]
    al, sg = np.sqrt(abar), np.sqrt(1 - abar)
    for i in range(1, T):
        e = eps(xis[-1], labels[i])
        p, t, s = i - 1, i, i + 1
        if name == "belm":
            tp, tt, ts = sg[p] / al[p], sg[t] / al[t], sg[s] / al[s]
            d1, d2, d3 = tt - tp, ts - tt, ts - tp
            new = (d2 * d3 * al[s] / d1 * e + (d2 / d1) ** 2 * (al[s] / al[p]) * xis[-2]
                   + (d1 - d2) * d3 / d1 ** 2 * (al[s] / al[t]) * xis[-1])
        else:
            coef_xt, coef_eps = al[s] / al[t], sg[s] - sg[t] * al[s] / al[t]
            coef_xt = coef_xt - gamma * al[p] / al[t]
            coef_eps = coef_eps - gamma * (sg[p] - sg[t] * al[p] / al[t])
            new = gamma * xis[-2] + coef_xt * xis[-1] + coef_eps * e
        xis.append(new)
    return xis[-1]


def multistep_invert_oracle(eps, labels, abar, image, name, gamma=0.5):
    """BELM / BDIA ``latent_to_intermediate``; returns (x_0, x_1). Deviations kept by jtaba: the first step's ε is
    evaluated at the label of sampling step T−1 (upstream: training timestep 1), and BDIA's first step uses ε (the
    BELM repo's BDIA.py drops it there; BELM.py and the BDIA repository keep it)."""
    xis = [np.asarray(image, np.float64)]
    al, sg = np.sqrt(abar), np.sqrt(1 - abar)
    for i in range(T):
        index = T - i - 1
        e = eps(xis[-1], labels[min(index + 1, T - 1)])
        a_i, s_i, a_1, s_1 = al[index], sg[index], al[index + 1], sg[index + 1]
        if i == 0:
            new = (a_i / a_1) * xis[-1] + (s_i - (a_i / a_1) * s_1) * e
        else:
            a_2, s_2 = al[index + 2], sg[index + 2]
            if name == "belm":
                h_i, h_1 = s_i / a_i - s_1 / a_1, s_1 / a_1 - s_2 / a_2
                new = ((a_i / a_2) * h_i ** 2 / h_1 ** 2 * xis[-2] + (a_i / a_1) * (h_1 ** 2 - h_i ** 2) / h_1 ** 2
                       * xis[-1] + a_i * (h_1 + h_i) * h_i / h_1 * e)
            else:
                new = ((1 / gamma) * xis[-2] + (a_i / a_1 - (1 / gamma) * (a_2 / a_1)) * xis[-1]
                       + ((s_i - (a_i / a_1) * s_1) - (1 / gamma) * (s_2 - (a_2 / a_1) * s_1)) * e)
        xis.append(new)
    return xis[-1], xis[-2]


def fixed_point_oracle(eps, labels, abar, image, iterations, average=0, anderson=0):
    """ReNoise ``inversion_step`` per step (the last ``average`` ε averaged; one more inv_step with the mean), or
    Anderson acceleration (Walker-Ni: x ← g_j − ΔG·γ, γ = lstsq(ΔF, f_j), window m) of the same map."""
    z = np.asarray(image, np.float64)
    for k in range(T - 1, -1, -1):
        a, b = _ddim_coefs(abar, k, k + 1)
        inv_step = lambda e, z=z, a=a, b=b: (z - b * e) / a  # noqa: E731
        x, eps_sum, fs, gs = z, 0.0, [], []
        for i in range(iterations):
            e = eps(x, labels[k])
            if i >= iterations - average:
                eps_sum = eps_sum + e
            g = inv_step(e)
            if not anderson:
                x = g
                continue
            fs, gs = (fs + [g - x])[-anderson:], (gs + [g])[-anderson:]
            if len(fs) == 1:
                x = g
                continue
            flat = lambda v: v.reshape(B, -1)  # noqa: E731
            df = np.stack([flat(fs[j + 1] - fs[j]) for j in range(len(fs) - 1)], -1)
            dg = np.stack([flat(gs[j + 1] - gs[j]) for j in range(len(gs) - 1)], -1)
            gam = np.stack([np.linalg.lstsq(df[s], flat(fs[-1])[s], rcond=None)[0] for s in range(B)])
            x = (flat(g) - np.einsum("bdj,bj->bd", dg, gam)).reshape(g.shape)
        z = inv_step(eps_sum / average) if average else x
    return z


def ddpm_invert_oracle(eps, labels, abar, image, draws):
    """DDPM_inversion ``inversion_forward_process`` (η = 1) with xts from ``draws`` (k = 0..T−1); returns
    (x_0, zs in sampling order). Deviation kept by jtaba: a σ = 0 step's map is its residual, not 0."""
    x0 = np.asarray(image, np.float64)
    xts = [np.sqrt(abar[k]) * x0 + np.sqrt(1 - abar[k]) * draws[k] for k in range(T)] + [x0]
    zs, xt = [], xts[0]
    for k in range(T):
        e = eps(xt, labels[k])
        pred = (xt - np.sqrt(1 - abar[k]) * e) / np.sqrt(abar[k])
        var = (1 - abar[k + 1]) / (1 - abar[k]) * (1 - abar[k] / abar[k + 1])
        mu = np.sqrt(abar[k + 1]) * pred + np.sqrt(max(1 - abar[k + 1] - var, 0.0)) * e
        z = (xts[k + 1] - mu) / np.sqrt(var) if var > 0 else xts[k + 1] - mu
        zs.append(z)
        xt = mu + (np.sqrt(var) if var > 0 else 1.0) * z
    return xts[0], np.stack(zs)


def ddpm_sample_oracle(eps, labels, abar, x, zs):
    """DDPM_inversion ``reverse_step`` (η = 1) with the given maps."""
    x = np.asarray(x, np.float64)
    for k in range(T):
        e = eps(x, labels[k])
        pred = (x - np.sqrt(1 - abar[k]) * e) / np.sqrt(abar[k])
        var = (1 - abar[k + 1]) / (1 - abar[k]) * (1 - abar[k] / abar[k + 1])
        x = (np.sqrt(abar[k + 1]) * pred + np.sqrt(max(1 - abar[k + 1] - var, 0.0)) * e
             + (np.sqrt(var) if var > 0 else 1.0) * zs[k])
    return x


# ---- tests ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["adm", "dit"])
def test_steps_match_reference_loops(family, adm_model, dit_model):
    """Every method's inversion and its sampling from the result against the re-typed reference loop; the exact
    methods' round trips return the image where DDIM's does not."""
    model = adm_model if family == "adm" else dit_model
    eps, labels, abar, cond = _setup(model)
    image = _image(model)
    kw = dict(steps=T, cond=cond)
    errors = {}
    for name, opts in (("edict", {}), ("bdia", {"gamma": 0.7}), ("belm", {}), ("ddpm", {"seed": 3})):
        inv = jtaba.invert(model, image, method=name, **kw, **opts)
        back = jtaba.sample(model, inv, **kw)
        if name == "edict":
            want = edict_oracle(eps, labels, abar, [image, image], 0.93, reverse=True)
            _close(inv.x, want[0], f"{family} edict latent x")
            _close(inv.paired, want[1], f"{family} edict latent y")
            _close(back.x, edict_oracle(eps, labels, abar, [inv.x, inv.paired], 0.93, reverse=False)[0],
                   f"{family} edict sample")
        elif name == "ddpm":
            draws = np.asarray(inverters.ddpm_draws(3, jnp.arange(B), tuple(model.sample_shape), T), np.float64)
            x0, zs = ddpm_invert_oracle(eps, labels, abar, image, draws)
            _close(inv.x, x0, f"{family} ddpm latent")
            _close(inv.paired, zs, f"{family} ddpm noise maps")
            _close(back.x, ddpm_sample_oracle(eps, labels, abar, inv.x, inv.paired), f"{family} ddpm sample")
        else:
            x0, x1 = multistep_invert_oracle(eps, labels, abar, image, name, **opts)
            _close(inv.x, x0, f"{family} {name} latent x_0", tol=1e-3)  # 1/γ and BELM's 1/prev amplify
            _close(inv.paired, x1, f"{family} {name} latent x_1", tol=1e-3)
            _close(back.x, multistep_sample_oracle(eps, labels, abar, inv.x, inv.paired, name, **opts),
                   f"{family} {name} sample")
        assert inv.nfe == Method.of(name, **opts).network_calls(T, True)
        errors[name] = float(np.max(np.abs(np.asarray(back.x) - image)))
    ddim = jtaba.sample(model, jtaba.invert(model, image, **kw), **kw).x
    errors["ddim"] = float(np.max(np.abs(np.asarray(ddim) - image)))
    print(f"{family} round-trip max-abs errors (float32):", {k: f"{v:.2e}" for k, v in errors.items()})
    for name in ("edict", "bdia", "belm", "ddpm"):
        assert errors[name] < 1e-4 < errors["ddim"], (name, errors)


@pytest.mark.parametrize("opts", [{"iterations": 4, "average": 2}, {"iterations": 4, "anderson": 3}],
                         ids=["renoise", "anderson"])
def test_fixed_point_matches_reference(adm_model, opts):
    """ReNoise's averaging (over the last 2 of 4 iterations: the first 2 are plain iteration, whose result the
    averaged step starts from) and Anderson acceleration against their re-typed loops."""
    eps, labels, abar, cond = _setup(adm_model)
    image = _image(adm_model)
    inv = jtaba.invert(adm_model, image, steps=T, method="fixed-point", **opts)
    tol = 2e-3 if opts.get("anderson") else 2e-4  # lstsq vs the constrained normal equations near convergence
    _close(inv.x, fixed_point_oracle(eps, labels, abar, image, **opts), f"fixed-point {opts}", tol=tol)
    assert inv.nfe == 4 * T


def test_npi_and_refusals(adm_model, dit_model):
    y = jnp.asarray([207, 88], jnp.int32)
    image = _image(dit_model)
    inv = jtaba.invert(dit_model, image, steps=T, cond=y, guidance=4.0, method="npi")
    plain = jtaba.invert(dit_model, image, steps=T, cond=y)  # npi inverts with the condition alone (w = 1)
    np.testing.assert_array_equal(np.asarray(inv.x), np.asarray(plain.x))
    np.testing.assert_array_equal(np.asarray(inv.null_cond), np.asarray(y))
    guided = jtaba.sample(dit_model, inv, steps=T, cond=y, guidance=4.0)  # null = the source condition: ε_c
    np.testing.assert_allclose(np.asarray(guided.x), np.asarray(jtaba.sample(dit_model, plain.x, steps=T,
                                                                              cond=y).x), atol=1e-5)
    assert guided.nfe == 2 * T
    with pytest.raises(ValueError, match="npi .* needs a conditional model"):
        jtaba.invert(adm_model, _image(adm_model), steps=T, method="npi")
    with pytest.raises(ValueError, match="takes no option gamma"):
        Method.of("edict", gamma=0.3)
    with pytest.raises(ValueError, match="noise maps"):
        jtaba.sample(adm_model, _image(adm_model), steps=T, method="ddpm")
    with pytest.raises(ValueError, match="DDIM's"):
        jtaba.invert(adm_model, _image(adm_model), steps=T, method="edict", forward_before=1,
                     forward_key=jax.random.key(0))


def test_run_identity_names_method_only_when_not_ddim():
    plain = identity(RunSettings(n=4, steps=3), 4, "m")
    assert "method" not in plain  # DDIM runs keep their fingerprints
    edict = identity(RunSettings(n=4, steps=3, method="edict"), 4, "m")
    assert edict["method"] == {"name": "edict", "mix": 0.93}
    assert edict == identity(RunSettings(n=4, steps=3, method="edict", method_options=(("mix", 0.93),)), 4, "m")
    with pytest.raises(ValueError, match="DDIM's"):
        RunSettings(steps=3, method="bdia", forward_before=1).check()


class _FakeRun:
    """The arrays of a finished run and its network evaluations per image, in memory."""

    def __init__(self, arrays, nfe_per_image):
        self.arrays, self.n, self.nfe_per_image = arrays, len(arrays["noise"]), nfe_per_image

    def __getitem__(self, name):
        return self.arrays[name]

    def __contains__(self, name):
        return name in self.arrays


def test_comparison_rows_and_tables():
    """``jtaba.analyses.inverters`` on arrays with known answers, and the command's table writers."""
    from experiments import inverters as command
    from jtaba.analyses import inverters as analysis

    assert analysis.parse_method("fixed-point:iterations=8:anderson=3") == ("fixed-point", (("anderson", 3),
                                                                                           ("iterations", 8)))
    assert analysis.parse_method("edict:mix=0.9") == ("edict", (("mix", 0.9),))
    with pytest.raises(ValueError, match="not one of edict's options"):
        analysis.parse_method("edict:gamma=0.3")
    assert command.parse_methods("ddim, fixed-point:average=2") == ("ddim", "fixed-point:average=2")
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((6, 3, 8, 8)).astype(np.float32)
    samples = np.clip(rng.standard_normal((6, 3, 8, 8)), -1, 1).astype(np.float32)
    samples[:, :, :4] = 0.5  # a plain top half
    latents = (0.6 * noise + 0.8 * rng.standard_normal(noise.shape)).astype(np.float32)
    run = _FakeRun({"noise": noise, "samples": samples, "latents": latents, "samples2": samples + 1e-3},
                   {"sample": 5, "invert": 10, "reconstruct": 10})
    row = analysis.method_row(run, "edict", (("mix", 0.9),), 0.5)
    assert row.label == "edict (mix 0.9)" and (row.nfe_invert, row.nfe_reconstruct) == (10, 10)
    assert row.reconstruction_max_abs == pytest.approx(1e-3, rel=1e-3)
    assert row.noise_correlation == pytest.approx(0.6, abs=0.05)  # latent = 0.6 noise + 0.8 independent
    assert row.noise_mae == pytest.approx(np.abs(noise - latents).mean(), rel=1e-6)
    assert row.kl_to_standard_normal < 0.01
    assert row.mae_plain == pytest.approx(np.abs(noise - latents)[:, :, :3].mean(), rel=0.05)
    result = {"model": "fake", "n": 6, "steps": 5, "rows": [row.to_json()], "skipped": {"npi": "unconditional"},
              "runs": {}}
    assert "| edict (mix 0.9) | 10 + 10 | 0.500 |" in command.markdown(result)
    assert command.csv_rows(result)[0]["pixel_correlation_mean"] == row.pixel_correlation["mean"]


# ---- every method on the latent and the text-conditioned families ---------------------------------------------------

class _HostedNetwork(nn.Module):
    """A model's network compiled once and called from every loop through a host callback, so each method's loop
    compiles only its step arithmetic (a UNet compiled into each of ~30 loops took minutes on 2 cores); the ε are
    the network's own, the engine's conditioning, guidance and schedule paths unchanged."""
    call: Callable
    channels: int
    dtype: Any = jnp.float32  # what jtaba.precision reads

    @nn.compact
    def __call__(self, x, t, cond):
        return jax.pure_callback(self.call, jax.ShapeDtypeStruct(x.shape[:-1] + (self.channels,), jnp.float32),
                                 x, t, cond)


def _hosted(model, cond):
    apply = jax.jit(model.network.apply)
    c, h, w = model.sample_shape
    out = jax.eval_shape(apply, {"params": model.params}, jax.ShapeDtypeStruct((1, h, w, c), jnp.float32),
                         jax.ShapeDtypeStruct((1,), jnp.float32), None if cond is None else cond[:1])

    def call(x, t, cond):
        return np.asarray(apply({"params": model.params}, x, t, cond), np.float32)

    return dataclasses.replace(model, network=_HostedNetwork(call, out.shape[-1]), params={})


def _ready(traj):
    """``traj`` once computed. Every loop over a hosted network is waited for before the next one is queued: the
    callback's own XLA execution needs one of the CPU client's in-flight computation slots, and queued loops would
    hold them all (a deadlock)."""
    jax.block_until_ready((traj.x, traj.paired))
    return traj


@pytest.fixture(scope="module")
def latent_and_text_models(tmp_path_factory):
    """The tiny random LDM (UNet2D on 3 x 8 x 8 VQ latents, its VQ decoder beside) and IF (text-conditioned, with
    a null prompt so guidance applies) of tests/test_families.py, loaded as ``jtaba.load`` reads converted
    checkpoints, their networks hosted (``_HostedNetwork``); the IF's (B, 7, 24) prompt embeddings."""
    from tests.test_families import PROMPT_LENGTH, save_tiny_if_checkpoint, save_tiny_ldm_checkpoint

    folder = tmp_path_factory.mktemp("families")
    ldm = jtaba.load(save_tiny_ldm_checkpoint(folder / "ldm"))
    if_dir, prompts = save_tiny_if_checkpoint(folder / "if", B)
    np.save(os.path.join(if_dir, "null_prompt.npy"), np.zeros((PROMPT_LENGTH, 24), np.float32))
    prompts = np.load(prompts)
    return _hosted(ldm, None), _hosted(jtaba.load(if_dir), prompts), prompts


# Every method and option family (the step rules are checked against the reference loops on ADM and DiT above)
EVERY = (("ddim", {}), ("edict", {}), ("bdia", {"gamma": 0.8}), ("belm", {}), ("ddpm", {"seed": 3}),
         ("fixed-point", {"iterations": 3}), ("fixed-point", {"iterations": 3, "anderson": 2}),
         ("fixed-point", {"iterations": 3, "average": 2}))
STEPS = 2


def _round_trips(model, x, methods=EVERY, **kw):
    """{Method: (inversion, its reconstruction)} of each (name, options) of ``methods``."""
    out = {}
    for name, opts in methods:
        inv = _ready(jtaba.invert(model, x, method=name, **kw, **opts))
        out[inverters.Method.of(name, **opts)] = inv, _ready(jtaba.sample(model, inv, **kw))
    return out


def test_every_method_on_ldm_and_if(latent_and_text_models):
    """sample -> invert -> sample (T = 2) with every method on a latent model (LDM, decoded by its VQ decoder) and
    a text-conditioned one (IF, prompt embeddings): the exact methods (edict, bdia, belm, ddpm; on the IF with
    guidance 3) return the sample to float precision where DDIM does not, each fixed-point variant (plain, Anderson,
    ReNoise; unguided: on the random IF guided iteration diverges) misses by less than DDIM; the network evaluations
    are counted; npi inverts with the prompt alone and its guided reconstruction (the prompt as the null condition)
    is the prompt-conditioned one."""
    ldm, if_model, prompts = latent_and_text_models
    exact = tuple(m for m in EVERY if m[0] in inverters.EXACT)
    fixed = tuple(m for m in EVERY if m[0] == "fixed-point")
    cases = ((ldm, None, 1.0, EVERY[1:]), (if_model, prompts, 3.0, exact), (if_model, prompts, 1.0, fixed))
    for model, cond, guidance, methods in cases:
        kw = dict(steps=STEPS, cond=cond, guidance=guidance)
        noise = np.random.default_rng(5).standard_normal((B, *model.sample_shape)).astype(np.float32)
        x = _ready(jtaba.sample(model, noise, **kw)).x
        trips = _round_trips(model, x, (("ddim", {}),) + methods, **kw)
        errors = {m: float(jnp.max(jnp.abs(back.x - x))) for m, (_, back) in trips.items()}
        print(f"{model.family} round-trip max-abs errors (float32, T = {STEPS}, guidance {guidance}):",
              {f"{m.name} {m.options()}": f"{v:.2e}" for m, v in errors.items()})
        ddim = errors[inverters.DDIM]
        for m, (inv, back) in trips.items():
            calls = 2 if guidance != 1.0 else 1
            assert (inv.nfe, back.nfe) == (m.network_calls(STEPS, True) * calls,
                                           m.network_calls(STEPS, False, inv.paired is not None) * calls), m
            if m.name in inverters.EXACT:
                assert errors[m] < 1e-4 < ddim, (model.family, m, errors)
            elif m.name == "fixed-point":
                assert errors[m] < ddim, (model.family, m, errors)
        if model.decoder is not None:  # the images the exact methods' reconstructions decode to, in one call
            exact_runs = [m for m in trips if m.name in inverters.EXACT]
            images = np.asarray(jtaba.decode(model, jnp.concatenate([x] + [trips[m][1].x for m in exact_runs])))
            for i, m in enumerate(exact_runs, 1):
                _close(images[i * B:(i + 1) * B], images[:B], f"{model.family} {m.name} decoded", 1e-4)
    kw = dict(steps=STEPS, cond=prompts)  # x: the last case's (the IF's unguided sample)
    inv = _ready(jtaba.invert(if_model, x, guidance=4.0, method="npi", **kw))
    plain = trips[inverters.DDIM][0]
    np.testing.assert_array_equal(np.asarray(inv.x), np.asarray(plain.x))  # the prompt alone (w = 1)
    np.testing.assert_array_equal(np.asarray(inv.null_cond), prompts)
    guided = _ready(jtaba.sample(if_model, inv, guidance=4.0, **kw))
    assert guided.nfe == 2 * STEPS  # the prompt as the null condition: the guided step is the prompt's
    np.testing.assert_allclose(np.asarray(guided.x), np.asarray(trips[inverters.DDIM][1].x), atol=1e-5)
    with pytest.raises(ValueError, match="npi .* needs a conditional model"):
        jtaba.invert(ldm, np.zeros((B, *ldm.sample_shape), np.float32), steps=STEPS, method="npi")


def test_float16_schedule_in_every_method(latent_and_text_models):
    """schedule_dtype="float16" (upstream's half-precision diffusers scheduler): every method's step arithmetic
    runs in float16 as DDIM's does (``jtaba.engine.ddim_step``): its reconstructions hold float16 values, near the
    float32 ones but not equal to them (the setting is honoured, not ignored)."""
    ldm = latent_and_text_models[0]
    half = dataclasses.replace(ldm, diffusion=ldm.diffusion.replace(schedule_dtype="float16"))
    x = _ready(jtaba.sample(ldm, np.random.default_rng(6).standard_normal((B, *ldm.sample_shape)).astype(
        np.float32), steps=STEPS)).x
    full, low = _round_trips(ldm, x, steps=STEPS), _round_trips(half, x, steps=STEPS)
    for m, (_, back) in low.items():
        got, want = np.asarray(back.x), np.asarray(full[m][1].x)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, got.astype(np.float16).astype(np.float32), err_msg=str(m))
        err = float(np.max(np.abs(got - want)))
        print(f"{m.name} {m.options()}: float16 vs float32 schedule max-abs {err:.2e}")
        assert 0 < err < 0.05 * max(1.0, float(np.max(np.abs(want)))), (m, err)
