"""A loaded model: its Flax network, params, diffusion conventions and (latent models) decoder."""
from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jtaba import checkpoint, home, precision
from jtaba.diffusion import DiffusionConfig

DECODER_DIR = "decoder"
NULL_PROMPT_FILE = "null_prompt.npy"


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """``network`` is a flax.linen Module (NHWC); ``params`` its parameter tree; ``decoder`` maps diffusion-space
    latents to images for latent models (family "vae" / "vq"); ``null_prompt`` the unconditional prompt embedding
    for text-conditioned models (CFG); ``name`` what ``jtaba.load`` was given, as a folder name (``"default"``,
    ``"adm32"``, a checkpoint folder's name): runs of the model are stored under it."""
    family: str
    config: Any
    network: Any
    params: Any
    diffusion: Optional[DiffusionConfig]
    decoder: Optional["Model"] = None
    extras: dict = dataclasses.field(default_factory=dict)
    null_prompt: Optional[np.ndarray] = None
    name: str = "model"

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the diffusion space."""
        fn = getattr(family_module(self.family), "sample_shape", None)
        if fn is not None:
            return tuple(fn(self.config))
        c = self.config
        channels = getattr(c, "in_channels", 3)
        for name in ("image_size", "sample_size", "input_size"):
            if getattr(c, name, None):
                size = getattr(c, name)
                return (channels, size, size)
        raise AttributeError(f"cannot tell the sample shape of a {self.family} model")

    @property
    def num_classes(self) -> Optional[int]:
        return getattr(self.config, "num_classes", None)

    @property
    def conditional(self) -> bool:
        """Whether the network needs ``cond`` (class labels or prompt embeddings): class-conditional configs,
        models with a null prompt, and those a converter marked ``extras["text_conditioned"]`` (an IF checkpoint
        converted without a text encoder stores no null prompt)."""
        if self.null_prompt is not None or self.extras.get("text_conditioned"):
            return True
        return bool(getattr(self.config, "class_cond", self.num_classes is not None))

    def null_cond(self, batch: int):
        """Unconditional conditioning for classifier-free guidance."""
        if self.null_prompt is not None:
            return jnp.broadcast_to(jnp.asarray(self.null_prompt), (batch,) + self.null_prompt.shape[-2:])
        fn = getattr(family_module(self.family), "null_cond", None)
        if fn is None:
            raise ValueError(f"a {self.family} model has no unconditional input: guidance is not available")
        return fn(self.config, batch)


def family_module(family: str):
    try:
        return importlib.import_module(f"jtaba.models.{family}")
    except ModuleNotFoundError as e:
        raise ValueError(f"unknown model family {family!r} (no module jtaba.models.{family})") from e


def build(family: str, model_config: dict, dtype=jnp.float32):
    """(config, network) of a family from its config dict."""
    mod = family_module(family)
    config = mod.Config.from_dict(model_config)
    return config, mod.Network(config=config, dtype=dtype)


def load(model: str, dtype: str = "float32", mesh: Optional[jax.sharding.Mesh] = None) -> Model:
    """Load a jtaba checkpoint written by a converter or the trainer. ``model``: ``"default"`` (the built-in
    model), a name in the model home (``"adm32"``) or a checkpoint path (``jtaba.home.resolve``). ``dtype``:
    compute dtype, a ``jtaba.precision`` name ("float32", "tf32" or "bfloat16"); params are always restored as
    float32 (checkpoints may store float16, e.g. IF). ``mesh``: restore
    the params sharded by the family's ``param_shardings(shapes, mesh)`` rule when it has one (models larger than
    one accelerator), else replicated over the mesh."""
    ref = home.resolve(model)
    directory = ref.path
    cfg = checkpoint.read_config(directory)
    compute = precision.compute_dtype(dtype)
    config, network = build(cfg["family"], cfg["model"], compute)
    sharding = None
    if mesh is not None:
        rule = getattr(family_module(cfg["family"]), "param_shardings", None)
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        sharding = (lambda shapes: rule(shapes, mesh, mesh.axis_names[-1])) if rule else (lambda shapes: jax.tree.map(
            lambda _: replicated, shapes))
    params = checkpoint.load_params(directory, dtype=jnp.float32, sharding=sharding)
    decoder = None
    if os.path.isdir(os.path.join(directory, DECODER_DIR)):
        decoder = load(os.path.join(directory, DECODER_DIR), dtype, mesh)
    null_path = os.path.join(directory, NULL_PROMPT_FILE)
    diffusion = DiffusionConfig.from_dict(cfg["diffusion"]) if cfg.get("diffusion") else None
    return Model(cfg["family"], config, network, params, diffusion, decoder, cfg.get("extras", {}),
                 np.load(null_path) if os.path.exists(null_path) else None, ref.tag)


def replicate(model: Model, sharding: jax.sharding.Sharding) -> Model:
    """The same model with params (and decoder params) placed with ``sharding`` (e.g. replicated over a mesh)."""
    decoder = replicate(model.decoder, sharding) if model.decoder is not None else None
    return dataclasses.replace(model, params=jax.device_put(model.params, sharding), decoder=decoder)
