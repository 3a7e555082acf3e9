"""``model_digest``: the same values as the fingerprint runs were made with (re-typed here), each params tree hashed
once while its arrays live (a latent model's decoder separately), entries gone with their arrays."""
import gc
import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np

from jtaba.diffusion import DiffusionConfig
from jtaba.model import Model
from jtaba.runs import fingerprint


def reference_digest(model) -> str:
    """The fingerprint as defined: sha256 of (sha256 over path-sorted (keystr, [dtype, shape], bytes)), the family,
    config and diffusion as sorted JSON, the decoder's digest, the null prompt's [dtype, shape] and bytes."""
    def array(h, a):
        a = np.asarray(a)
        h.update(json.dumps([str(a.dtype), list(a.shape)]).encode())
        h.update(np.ascontiguousarray(a).tobytes())

    h = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(model.params)[0],
                             key=lambda kv: jax.tree_util.keystr(kv[0])):
        h.update(jax.tree_util.keystr(path).encode())
        array(h, leaf)
    out = hashlib.sha256(h.hexdigest().encode())
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else repr(model.config)
    out.update(json.dumps([model.family, config, model.diffusion.to_dict() if model.diffusion else None],
                          sort_keys=True, default=str).encode())
    if model.decoder is not None:
        out.update(reference_digest(model.decoder).encode())
    if model.null_prompt is not None:
        array(out, model.null_prompt)
    return out.hexdigest()


def latent_model(seed=0):
    rng = np.random.default_rng(seed)
    decoder = Model("vae", {"ch": 4}, None, {"dec": {"kernel": jnp.asarray(rng.standard_normal((3, 4)), jnp.bfloat16),
                                                      "bias": jnp.zeros((4,))}}, None)
    params = {"blocks": [{"w": jnp.asarray(rng.standard_normal((5, 2)), jnp.float32)} for _ in range(3)],
              "embed": jnp.arange(6, dtype=jnp.int32).reshape(2, 3).T}
    diffusion = DiffusionConfig(kind="diffusers", beta_schedule="linear")
    return Model("dit", {"depth": 3}, None, params, diffusion, decoder=decoder, null_prompt=np.ones((2, 3), np.float32))


def test_values_unchanged_and_each_tree_hashed_once(monkeypatch):
    model = latent_model()
    calls = []
    host = fingerprint._host
    monkeypatch.setattr(fingerprint, "_host", lambda leaf: calls.append(leaf) or host(leaf))
    first = fingerprint.model_digest(model)
    assert first == reference_digest(model)
    assert len(calls) == 6  # 4 leaves of the model, 2 of its decoder, each copied to the host once
    calls.clear()
    assert fingerprint.model_digest(model) == first
    assert fingerprint.model_digest(model.decoder) == reference_digest(model.decoder)
    assert calls == []  # neither tree hashed again, the decoder's digest not evicted by the model's
    other = latent_model(seed=1)
    assert fingerprint.model_digest(other) != first and len(calls) == 6
    calls.clear()
    assert fingerprint.model_digest(model) == first and calls == []  # two models cached side by side


def test_an_entry_goes_with_its_arrays():
    before = set(fingerprint._PARAMS_DIGESTS)  # other tests' entries may be collected meanwhile: track ours
    model = latent_model(seed=2)
    fingerprint.model_digest(model)
    ours = set(fingerprint._PARAMS_DIGESTS) - before
    assert len(ours) == 2  # the model's tree and its decoder's
    del model
    gc.collect()
    assert not ours & set(fingerprint._PARAMS_DIGESTS)
