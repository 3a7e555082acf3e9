import jax
import jax.numpy as jnp
import numpy as np

from jtaba import noise


def test_row_is_normal_of_folded_key():
    key = noise.stream_key(7, "noise")
    got = noise.normal_per_index(key, jnp.array([0, 5, 2], jnp.int32), (2, 3, 3))
    for row, i in zip(got, [0, 5, 2]):
        np.testing.assert_array_equal(row, jax.random.normal(jax.random.fold_in(key, i), (2, 3, 3)))
    assert got.dtype == jnp.float32


def test_same_values_whatever_the_batching():
    full = noise.noise_for_run(11, 10, (3, 4, 4))
    assert full.shape == (10, 3, 4, 4) and full.dtype == np.float32
    parts = [noise.noise_for_indices(11, np.arange(a, b), (3, 4, 4)) for a, b in [(0, 5), (5, 10)]]
    np.testing.assert_array_equal(np.concatenate(parts), full)
    np.testing.assert_array_equal(noise.noise_for_indices(11, [9, 0, 4, 2, 7], (3, 4, 4)), full[[9, 0, 4, 2, 7]])
    assert abs(full.mean()) < 0.2 and abs(full.std() - 1) < 0.1


def test_streams_and_seeds_are_independent():
    a = noise.noise_for_run(1, 4, (8,), "noise")
    b = noise.noise_for_run(1, 4, (8,), "forward")
    c = noise.noise_for_run(2, 4, (8,), "noise")
    assert not np.allclose(a, b) and not np.allclose(a, c)
    assert np.abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.5


def test_labels_per_index():
    lab = np.asarray(noise.labels_for_indices(3, np.arange(200), 10))
    assert lab.dtype == np.int32 and lab.min() >= 0 and lab.max() <= 9 and len(set(lab.tolist())) == 10
    np.testing.assert_array_equal(noise.labels_for_indices(3, [150, 7], 10), lab[[150, 7]])
