"""AutoencoderKL (family vae) and VQModel (family vq) vs diffusers 0.42.1 in torch: tiny random configs (encode and
decode), the golden DiT-pipeline VAE decode, deprecated attention names and re-quantization."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convert.autoencoders import convert_autoencoder_kl, convert_vq_model
from convert.common import load_state_dict
from jtaba.models import vae, vq
from tests.golden import golden_path, load_npz, report

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

KL_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                 up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[16, 32], layers_per_block=2,
                 latent_channels=4, norm_num_groups=8, sample_size=16, scaling_factor=0.13025)
VQ_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                 up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[16, 32], layers_per_block=1,
                 latent_channels=3, num_vq_embeddings=64, norm_num_groups=8, sample_size=16)


def randomize(model, seed):
    """Every tensor random (norm weights near 1), so zero-initialised layers and biases are exercised."""
    rng = np.random.default_rng(seed)
    state = {}
    for k, v in model.state_dict().items():
        shape = tuple(v.shape)
        if len(shape) == 1:  # GroupNorm weights near 1, biases near 0
            w = float(k.endswith("weight")) + 0.1 * rng.standard_normal(shape)
        elif k.endswith("embedding.weight"):
            w = rng.standard_normal(shape)
        else:
            w = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        state[k] = torch.from_numpy(w.astype(np.float32))
    model.load_state_dict(state)
    return {k: v.numpy() for k, v in state.items()}


def nhwc(x):
    return jnp.asarray(np.asarray(x, np.float32).transpose(0, 2, 3, 1))


def nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


def apply(module, config_dict, params, method, *args, **kw):
    net = module.Network(module.Config.from_dict(config_dict["model"]))
    return net.apply({"params": params}, *args, method=method, **kw)


def test_autoencoder_kl_matches_diffusers():
    model = diffusers.AutoencoderKL(**KL_CONFIG).eval()
    state = randomize(model, 0)
    cfg, params = convert_autoencoder_kl(state, dict(model.config))
    assert cfg["family"] == "vae" and cfg["model"]["scaling_factor"] == 0.13025
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    z = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        post = model.encode(torch.from_numpy(x)).latent_dist
        ref_dec = model.decode(torch.from_numpy(z)).sample.numpy()
    mean, logvar = apply(vae, cfg, params, "encode", nhwc(x))
    for name, got, ref in (("kl mean", mean, post.mean), ("kl logvar", logvar, post.logvar)):
        _, rel = report(name, nchw(got), ref.numpy())
        assert rel < 1e-5
    _, rel = report("kl decode", nchw(apply(vae, cfg, params, "decode", nhwc(z))), ref_dec)
    assert rel < 1e-5


def test_vq_model_matches_diffusers():
    model = diffusers.VQModel(**VQ_CONFIG).eval()
    state = randomize(model, 2)
    cfg, params = convert_vq_model(state, dict(model.config))
    assert cfg["family"] == "vq" and "scaling_factor" not in cfg["model"]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        h_ref = model.encode(torch.from_numpy(x)).latents
        # decode from latents near (not on) codebook entries: re-quantization must pick the same entries
        h = h_ref + 0.3 * torch.from_numpy(rng.standard_normal(h_ref.shape).astype(np.float32))
        dec_q = model.decode(h).sample.numpy()
        dec_raw = model.decode(h, force_not_quantize=True).sample.numpy()
    _, rel = report("vq encode", nchw(apply(vq, cfg, params, "encode", nhwc(x))), h_ref.numpy())
    assert rel < 1e-5
    got_q = nchw(apply(vq, cfg, params, "decode", nhwc(h.numpy())))
    got_raw = nchw(apply(vq, cfg, params, "decode", nhwc(h.numpy()), force_not_quantize=True))
    _, rel = report("vq decode (re-quantized)", got_q, dec_q)
    assert rel < 1e-5
    _, rel = report("vq decode (force_not_quantize)", got_raw, dec_raw)
    assert rel < 1e-5
    assert np.max(np.abs(dec_q - dec_raw)) > 1e-2  # quantization really happened


def test_quantize_nearest_entry():
    codebook = jnp.asarray([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    h = jnp.asarray([[[[0.4, 0.1], [0.6, 0.0]], [[0.1, 1.2], [5.0, 5.0]]]])
    np.testing.assert_allclose(np.asarray(vq.quantize(h, codebook)),
                               [[[[0.0, 0.0], [1.0, 0.0]], [[0.0, 2.0], [0.0, 2.0]]]], atol=1e-7)


def test_deprecated_attention_names_are_accepted():
    model = diffusers.AutoencoderKL(**KL_CONFIG).eval()
    state = randomize(model, 4)
    old = {}
    for k, v in state.items():
        for new, dep in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            k = k.replace(f"attentions.0.{new}.", f"attentions.0.{dep}.")
        old[k] = v
    assert "encoder.mid_block.attentions.0.query.weight" in old
    _, p_new = convert_autoencoder_kl(state, dict(model.config))
    _, p_old = convert_autoencoder_kl(old, dict(model.config))
    jax.tree.map(np.testing.assert_array_equal, p_new, p_old)


def test_golden_pipeline_vae_decode():
    """decoded_samples = vae.decode((1/0.18215) · samples): the reciprocal is multiplied, as upstream."""
    folder = golden_path("dit_pipeline_tiny", "vae")
    with open(os.path.join(folder, "config.json")) as f:
        cfg_json = json.load(f)
    cfg, params = convert_autoencoder_kl(load_state_dict(folder), cfg_json, source_name=folder)
    traj = load_npz("dit_pipeline_tiny", "trajectories.npz")
    scale = cfg["model"]["scaling_factor"]
    assert scale == 0.18215 and np.float32(scale) == traj["vae_scaling_factor"]
    for key, src in (("decoded_samples", "samples"), ("decoded_samples2", "samples2")):
        got = nchw(apply(vae, cfg, params, "decode", nhwc(traj[src]) * (1.0 / scale)))
        err, _ = report(f"golden {key}", got, traj[key])
        assert err < 5e-5
