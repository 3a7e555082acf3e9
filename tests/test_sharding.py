"""Data parallelism gives the single-device results bitwise: two processes of two fake CPU devices each on
localhost through jax.distributed (gloo collectives) against one device in this process, for a per-sample toy net
and per-index noise. The workers run this file as a script (``python tests/test_sharding.py OUT N BATCH [COORD
NPROC PID]``). tests/test_sample_invert.py runs the real pipeline on 8 devices and on 2 processes."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtaba import noise, sharding
from tests import processes
from tests.processes import finish, free_port

SHAPE = (3, 8, 8)


@jax.jit
def toy(x, w):
    """A per-sample jitted net: NCHW -> NHWC conv, tanh, a 3-step scan; returns (x (B,C,H,W), traj (T,B,C,H,W))."""
    def step(h, _):
        h = jnp.tanh(jax.lax.conv_general_dilated(h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
        return h, h.transpose(0, 3, 1, 2)
    h, traj = jax.lax.scan(step, x.transpose(0, 2, 3, 1), None, length=3)
    return h.transpose(0, 3, 1, 2), traj


def weights():
    return np.asarray(jax.random.normal(jax.random.key(0), (3, 3, 3, 3)) * 0.3)


def run(n, batch, mesh):
    """Results of samples 0..n-1 computed batch by batch on ``mesh``: (x (n,...), traj (T,n,...), noise (n,...))."""
    w = sharding.replicate(weights(), mesh)
    size = sharding.padded_size(batch, mesh)  # the last, shorter batch is padded alike: one compilation
    outs = []
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        idx = sharding.put_batch(np.arange(start, stop, dtype=np.int32), mesh, size=size)
        z = noise.noise_for_indices(5, idx, SHAPE)
        assert z.sharding.is_equivalent_to(sharding.batch_sharding(mesh), 4)
        x, traj = toy(z, w)
        assert traj.sharding.is_equivalent_to(sharding.batch_sharding(mesh, axis=1), 5)
        traj_back = sharding.put_batch(sharding.gather(traj, stop - start, axis=1), mesh, axis=1, size=size)
        outs.append((sharding.gather(x, stop - start), sharding.gather(traj_back, stop - start, axis=1),
                     sharding.gather(z, stop - start)))
    return (np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs], axis=1),
            np.concatenate([o[2] for o in outs]))


def worker(out, n, batch, coordinator=None, nproc=None, pid=None):
    if coordinator is not None:
        from jtaba import distributed
        distributed.initialize(coordinator, int(nproc), int(pid))
    mesh = sharding.data_mesh()
    x, traj, z = run(int(n), int(batch), mesh)
    if jax.process_index() == 0:
        np.savez(out, x=x, traj=traj, z=z, devices=len(jax.devices()), processes=jax.process_count())


def spawn(args, devices):
    return processes.spawn([os.path.abspath(__file__), *args], devices)


@pytest.fixture(scope="module")
def reference():
    """One device, one batch holding every sample."""
    return run(13, 13, sharding.data_mesh(jax.devices()[:1]))


def test_padding_and_slicing_keep_every_sample():
    mesh = sharding.data_mesh(jax.devices()[:1])
    assert sharding.padded_size(13, mesh) == 13 and sharding.process_rows(13, mesh) == slice(0, 13)
    x = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    padded = sharding.put_batch(x, mesh, axis=1, size=7)
    assert padded.shape == (2, 7, 3)
    np.testing.assert_array_equal(np.asarray(padded)[:, 5:], x[:, [4, 4]])  # padding repeats the last sample
    np.testing.assert_array_equal(sharding.gather(padded, 5, axis=1), x)
    with pytest.raises(ValueError, match="cannot pad"):
        sharding.put_batch(x, mesh, size=1)


def test_any_batch_size_gives_identical_results(reference):
    """Bitwise on most CPUs; where XLA's CPU convolution picks a batch-dependent blocking (AMD EPYC, JAX 0.10.2:
    6e-8 after three conv + tanh steps) equal to float order only. The noise is bitwise equal everywhere."""
    mesh = sharding.data_mesh(jax.devices()[:1])
    got = run(13, 5, mesh)
    np.testing.assert_array_equal(got[2], reference[2])
    for a, ref in zip(got[:2], reference[:2]):
        np.testing.assert_allclose(a, ref, rtol=1e-6, atol=2e-7)


@pytest.mark.slow
def test_two_processes_of_two_devices_equal_one_device(reference, tmp_path):
    out, coord = tmp_path / "two.npz", f"localhost:{free_port()}"
    finish([spawn([out, 13, 6, coord, 2, pid], devices=2) for pid in (0, 1)])  # 4 devices over 2 processes
    got = np.load(out)
    assert got["devices"] == 4 and got["processes"] == 2
    for name, ref in zip(["x", "traj", "z"], reference):
        np.testing.assert_array_equal(got[name], ref, err_msg=name)


if __name__ == "__main__":
    worker(*sys.argv[1:])
