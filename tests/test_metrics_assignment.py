"""L2 nearest assignment (paper App. E) against the OLD upstream torch code re-typed here (float64), exact ties,
near ties below the expansion's resolution, and the 8-chunk mean ± std."""
import numpy as np
import pytest
import torch

from jtaba.metrics import assignment as A


def _closest_x_for_y(x, y):  # OLD distance_classification._find_closest_x_for_y_with_distances
    closest = torch.empty(y.shape[0], dtype=torch.long)
    dists = torch.empty((y.shape[0], len(x)), dtype=torch.float64)
    for i in range(y.shape[0]):
        d = torch.mean((x - y[i]) ** 2, dim=[1, 2, 3])
        closest[i] = torch.argmin(d)
        dists[i] = d
    return closest, dists


def _torch_accuracies(noises, samples):  # get_noise_sample_by_distance_classification(top_k=1, no plotting)
    _, d_ns = _closest_x_for_y(noises, samples)
    _, d_sn = _closest_x_for_y(samples, noises)
    top_ns = torch.topk(d_ns, k=1, dim=1, largest=False).indices
    top_sn = torch.topk(d_sn, k=1, dim=1, largest=False).indices
    m = len(samples)
    return {"img_to_noise": sum(int(i in top_ns[i]) for i in range(m)) / m,
            "noise_to_img": sum(int(i in top_sn[i]) for i in range(m)) / m}


def _pairs(m, seed, coupling=0.35):
    """Samples weakly tied to their noise, so accuracies are strictly between 0 and 1."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((m, 3, 4, 4)).astype(np.float32)
    samples = np.clip(coupling * noise + rng.standard_normal(noise.shape), -1, 1).astype(np.float32)
    return noise, samples


def test_distances_and_accuracies_match_torch():
    noise, samples = _pairs(48, seed=0)
    tn, ts = torch.from_numpy(noise).double(), torch.from_numpy(samples).double()
    closest, dists = _closest_x_for_y(tn, ts)
    np.testing.assert_allclose(A.mse_distance_matrix(noise, samples), dists.numpy(), rtol=1e-12)
    x_for_y, y_for_x = A.nearest_indices(noise, samples)
    np.testing.assert_array_equal(x_for_y, closest.numpy())
    np.testing.assert_array_equal(y_for_x, _closest_x_for_y(ts, tn)[0].numpy())
    got, ref = A.assignment_accuracy(noise, samples), _torch_accuracies(tn, ts)
    assert got == ref and 0 < got["img_to_noise"] < 1 and 0 < got["noise_to_img"] < 1


def test_divs_mean_std_percent(monkeypatch):
    monkeypatch.setattr(A, "_BLOCK_ROWS", 5)  # blocked distance matrix
    noise, samples = _pairs(8 * 20 + 3, seed=1)  # remainder 3 is dropped
    per = [_torch_accuracies(torch.from_numpy(noise[k * 20:(k + 1) * 20]).double(),
                             torch.from_numpy(samples[k * 20:(k + 1) * 20]).double()) for k in range(8)]
    got = A.assignment_accuracy_divs(noise, samples, divs=8)
    for key in ("img_to_noise", "noise_to_img"):
        acc = torch.tensor([p[key] for p in per], dtype=torch.float64) * 100
        assert got[key]["per_div"] == pytest.approx(acc.tolist(), abs=1e-12)
        assert got[key]["mean"] == pytest.approx(acc.mean().item(), abs=1e-12)
        assert got[key]["std"] == pytest.approx(acc.std().item(), abs=1e-12)
        assert got[key]["std"] > 0


def test_exact_tie_takes_lowest_index():
    rng = np.random.default_rng(2)
    y = np.round(rng.standard_normal((1, 2, 3, 3)) * 64) / 64  # dyadic: mirrored points are exact
    d = np.round(rng.standard_normal((1, 2, 3, 3)) * 64) / 64
    x = np.concatenate([rng.standard_normal((3, 2, 3, 3)) + 10, y + d, y - d])  # indices 3 and 4 tie exactly
    assert A.nearest_indices(x, y)[0][0] == 3
    assert A.nearest_indices(x[[0, 1, 2, 4, 3]], y)[0][0] == 3


def test_near_tie_below_expansion_resolution_uses_exact_distances():
    """x_far and x_near are mirror images about y except one coordinate moved 2^-40 towards y: x_near is closer by
    ~1e-12 of the squared distance, far below the |x|^2+|y|^2-2xy error (|x|^2 ~ 1e6); the exact check decides."""
    d = 192
    y = np.full((1, d), 100.0)
    x_far = y + 0.5
    x_near = y - 0.5
    x_near[0, 0] += 2.0 ** -40
    x = np.concatenate([x_far, x_near, x_far + 3.0])
    exact = np.square(x - y).sum(axis=1)
    assert exact[1] < exact[0]
    assert A.nearest_indices(x, y)[0][0] == 1
    assert A.nearest_indices(x[[1, 0, 2]], y)[0][0] == 0


def test_argmin_agrees_with_direct_float64_on_many_close_points():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((1, 3, 8, 8)) * 50
    x = base + 1e-6 * rng.standard_normal((64, 3, 8, 8))  # all candidates nearly equidistant from y
    y = base + 1e-6 * rng.standard_normal((16, 3, 8, 8))
    direct = np.array([np.square(x - yi).sum(axis=(1, 2, 3)).argmin() for yi in y])
    np.testing.assert_array_equal(A.nearest_indices(x, y)[0], direct)
    direct_t = np.array([np.square(y - xi).sum(axis=(1, 2, 3)).argmin() for xi in x])
    np.testing.assert_array_equal(A.nearest_indices(x, y)[1], direct_t)


def test_misaligned_sets_rejected():
    with pytest.raises(ValueError):
        A.assignment_accuracy(np.zeros((4, 1, 2, 2)), np.zeros((5, 1, 2, 2)))
