"""Checkpoint round trip: config + params, float16 storage restored as float32, sharded restore targets."""
import jax
import jax.numpy as jnp
import numpy as np

import jtaba
from jtaba import checkpoint
from jtaba.diffusion import DiffusionConfig
from jtaba.models import adm
from tests.perception import random_params

FLAGS = dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="4",
             learn_sigma=True, noise_schedule="cosine", diffusion_steps=400)


def _save(tmp_path, dtype):
    config = adm.Config.from_flags(FLAGS)
    net = adm.Network(config)
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)))["params"])
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), random_params(shapes, 0))  # an eager init takes 17 s
    cfg = {"family": "adm", "model": config.to_dict(),
           "diffusion": DiffusionConfig.from_adm_flags(FLAGS).to_dict(), "extras": {}}
    checkpoint.save_checkpoint(str(tmp_path), cfg, params)
    return params


def test_float16_checkpoint_loads_as_float32(tmp_path):
    saved = _save(tmp_path, jnp.float16)
    model = jtaba.load(str(tmp_path))
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(saved)):
        assert a.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b, np.float32))
    assert model.sample_shape == (3, 8, 8) and model.diffusion.kind == "adm"


def test_load_onto_a_mesh(tmp_path):
    saved = _save(tmp_path, jnp.float32)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    model = jtaba.load(str(tmp_path), mesh=mesh)
    leaf = jax.tree.leaves(model.params)[0]
    assert isinstance(leaf.sharding, jax.sharding.NamedSharding) and leaf.sharding.mesh.shape == mesh.shape
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
