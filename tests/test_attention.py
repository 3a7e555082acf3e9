"""jtaba.models.ops.attention: jax.nn.dot_product_attention with the numerics every model computed by hand before
(logits in float32, then scaled; float32 softmax; probabilities in v's dtype), XLA on CPUs, cuDNN's flash kernel
chosen only for half-precision inputs and head dims it takes on a CUDA GPU."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtaba.models import ops


def manual(q, k, v, scale):
    """The einsum/softmax the models used before ops.attention."""
    w = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) * scale
    w = jax.nn.softmax(w, axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bshd->bthd", w, v)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matches_the_manual_attention_on_cpu(dtype):
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal(s), dtype) for s in ((2, 5, 3, 8), (2, 7, 3, 8), (2, 7, 3, 8)))
    assert ops.attention_implementation(q, k, v) is None  # CPU: XLA
    got, want = ops.attention(q, k, v, 8 ** -0.5), manual(q, k, v, 8 ** -0.5)
    assert got.dtype == dtype and got.shape == (2, 5, 3, 8)
    # float32: the same math to the last ulp (bit for bit where XLA fuses both alike; on some CPUs, AMD EPYC with
    # JAX 0.10.2, its fusion reorders the softmax sums: 1.2e-7 measured); the parity tests against torch keep theirs
    rtol, atol = (1e-6, 3e-7) if dtype == jnp.float32 else (1e-2, 1e-2)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=atol, rtol=rtol)


def test_cudnn_only_where_it_runs(monkeypatch):
    bf16, f16, f32 = jnp.bfloat16, jnp.float16, jnp.float32
    assert ops.cudnn_eligible((bf16,) * 3, 64, 64, 128) and ops.cudnn_eligible((f16,) * 3, 128, 128, 128)
    assert ops.cudnn_eligible((bf16,) * 3, 256, 256, 256)  # Hopper and later
    assert not ops.cudnn_eligible((bf16,) * 3, 256, 256, 128)
    assert not ops.cudnn_eligible((f32,) * 3, 64, 64, 256)  # float32 stays on XLA (parity)
    assert not ops.cudnn_eligible((bf16, bf16, f32), 64, 64, 256)
    assert not ops.cudnn_eligible((bf16,) * 3, 72 + 4, 76, 256)  # not a multiple of 8
    assert not ops.cudnn_eligible((bf16,) * 3, 64, 64, None)  # no CUDA GPU
    q = jnp.zeros((1, 4, 2, 64), bf16)
    monkeypatch.setattr(ops, "_cuda_head_dim_max", lambda: 256)
    assert ops.attention_implementation(q, q, q) == "cudnn"
    monkeypatch.setenv(ops.ATTENTION_ENV, "xla")
    assert ops.attention_implementation(q, q, q) is None
