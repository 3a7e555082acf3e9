"""Tiny random perception networks in a jtaba model home, for the analyses' end-to-end tests.

``write_tiny_networks(models_dir, roles)`` writes checkpoints of the families the converters write, under the
default names of ``jtaba.metrics.networks.ROLES`` (point ``JTABA_HOME`` at the parent of ``models_dir``). The
networks are small (ViTs of width 32 on 224-pixel inputs with 56-pixel patches) or, where the architecture is
fixed (LPIPS AlexNet, FID Inception), full size with random weights.
"""
from __future__ import annotations

import functools
import importlib
import os

import jax
import numpy as np

from jtaba.checkpoint import save_checkpoint

TINY_VIT = dict(image_size=224, patch_size=56, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48)


def random_params(shapes, seed: int, gain: float = 1.0):
    """Random params with the structure of ``shapes`` (a pytree of shape structs, e.g. from ``jax.eval_shape`` of an
    init) drawn in numpy: fan-in scaled normal matrices (times ``gain``: sqrt(2) keeps a deep ReLU net's activations
    alive), norm scales and running variances near 1, other vectors near 0. Instant, where an eager init takes
    seconds, and without an init's zero output layers."""
    rng = np.random.default_rng(seed)

    def fill(path, s):
        if len(s.shape) >= 2:
            return (gain * rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)
        centre = 1.0 if path[-1].key in ("scale", "var") else 0.0  # norm scales, BatchNorm running variances
        return (centre + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _tiny_clip_config():
    from jtaba.metrics import clip as C
    from jtaba.metrics import vit_features as V

    return C.Config(V.VisionConfig(kind="clip", layer_norm_eps=1e-5, hidden_act="quick_gelu", projection_dim=24,
                                   **TINY_VIT),
                    V.TextConfig(vocab_size=60, max_position_embeddings=16, hidden_size=32, num_layers=2, num_heads=4,
                                 intermediate_size=48, projection_dim=24))


# role -> (module, its config for tests, the kernels' gain: sqrt(2) for Inception's 94 ReLU convolutions)
TINY = {
    "lpips": ("jtaba.metrics.lpips", lambda m: m.Config(net="alex"), 1.0),
    "dino": ("jtaba.metrics.dino", lambda m: m.Config(**TINY_VIT), 1.0),
    "clip": ("jtaba.metrics.clip", lambda m: _tiny_clip_config(), 1.0),
    "inception": ("jtaba.metrics.inception", lambda m: m.Config(), np.sqrt(2)),
    "dreamsim": ("jtaba.metrics.dreamsim", lambda m: m.tiny_config(), 1.0),
    "vgg16": ("jtaba.metrics.vgg16", lambda m: m.Config(widths=(8, 8, 16, 16, 16), hidden=32), np.sqrt(2)),
}


def write_tiny_networks(models_dir, roles=("lpips", "dino", "clip"), seed: int = 0) -> dict[str, str]:
    """{role: checkpoint folder} of tiny random networks written under ``models_dir`` by their default names."""
    from jtaba.metrics.networks import default_name

    out = {}
    for i, role in enumerate(roles):
        name, make_config, gain = TINY[role]
        module = importlib.import_module(name)
        config = make_config(module)
        shapes = jax.eval_shape(functools.partial(module.init_params, config, seed + i))
        out[role] = os.path.join(str(models_dir), default_name(role))
        save_checkpoint(out[role], {"family": module.FAMILY, "model": config.to_dict(), "diffusion": None},
                        random_params(shapes, seed + i, gain))
    return out


def write_prompt_embeds(clip_dir, name: str, prompts, seed: int = 0) -> np.ndarray:
    """clip_dir/prompts/<name>.npy: random (N, P) text embeddings standing in for ``convert/clip.py --prompts``."""
    import json

    from jtaba.checkpoint import read_config

    dim = read_config(str(clip_dir))["model"]["text"]["projection_dim"]
    emb = np.random.default_rng(seed).normal(size=(len(prompts), dim)).astype(np.float32)
    folder = os.path.join(str(clip_dir), "prompts")
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, f"{name}.npy"), emb)
    with open(os.path.join(folder, f"{name}.json"), "w") as f:
        json.dump({"prompts": list(prompts)}, f)
    return emb
