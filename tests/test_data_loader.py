"""BatchIterator: seeded epoch permutations, drop_last, exact continuation from a saved state; tfds sources
through tfds.testing.mock_data (never downloads)."""
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jtaba.data import BatchIterator, TfdsImages, open_dataset, to_model_range
from jtaba.data.tfds_source import center_crop_arr


class IndexImages:
    """Image i is filled with the value i (so batches reveal their indices)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return np.full((2, 2, 3), i, np.uint8)


def _indices(batch):
    return np.rint((batch[:, 0, 0, 0] + 1) * 127.5).astype(int).tolist()


def test_epochs_are_seeded_permutations_with_drop_last():
    it = BatchIterator(IndexImages(10), batch_size=3, seed=5)
    epoch0 = sum((_indices(next(it)) for _ in range(3)), [])
    assert epoch0 == np.random.default_rng([5, 0]).permutation(10)[:9].tolist()
    assert it.state() == {"epoch": 0, "position": 9}
    first_of_epoch1 = _indices(next(it))
    assert first_of_epoch1 == np.random.default_rng([5, 1]).permutation(10)[:3].tolist()
    assert it.state() == {"epoch": 1, "position": 3}
    other = BatchIterator(IndexImages(10), batch_size=3, seed=6)
    assert _indices(next(other)) != epoch0[:3]


def test_resume_continues_the_same_sequence():
    it = BatchIterator(IndexImages(10), batch_size=4, seed=0)
    for _ in range(3):
        next(it)
    saved = it.state()
    rest = [next(it) for _ in range(4)]
    resumed = BatchIterator(IndexImages(10), batch_size=4, seed=0, state=saved)
    for want in rest:
        np.testing.assert_array_equal(next(resumed), want)
    assert next(it).dtype == np.float32


def test_model_range():
    np.testing.assert_allclose(to_model_range(np.array([0, 255, 128], np.uint8)), [-1.0, 1.0, 0.5 / 127.5], atol=1e-7)


def test_center_crop_matches_guided_diffusion():
    arr = np.random.default_rng(0).integers(0, 256, (150, 100, 3), dtype=np.uint8)
    got = center_crop_arr(arr, 32)
    # guided_diffusion: BOX-halve 100x150 -> 50x75, BICUBIC to 32x48, crop rows 8:40
    pil = Image.fromarray(arr).resize((50, 75), resample=Image.BOX).resize((32, 48), resample=Image.BICUBIC)
    np.testing.assert_array_equal(got, np.asarray(pil)[8:40])
    assert center_crop_arr(arr[:32, :32], 32).tolist() == arr[:32, :32].tolist()


def test_tfds_sources_with_mock_data():
    with tfds.testing.mock_data(num_examples=12):
        cifar = open_dataset("cifar10", 32)
        assert len(cifar) == 12
        raw = tfds.data_source("cifar10", split="train", download=False)[3]["image"]
        np.testing.assert_array_equal(cifar[3], raw)
        imnet = TfdsImages("imagenet64", 64)  # mock images have random sizes: centre-cropped / resized
        assert all(imnet[i].shape == (64, 64, 3) and imnet[i].dtype == np.uint8 for i in range(3))
        batch = next(BatchIterator(cifar, batch_size=4, seed=0))
        assert batch.shape == (4, 32, 32, 3) and batch.min() >= -1 and batch.max() <= 1


def test_tfds_never_downloads(tmp_path):
    with pytest.raises(Exception):  # noqa: B017 (tfds raises a different error type in each version)
        TfdsImages("cifar10", 32, data_dir=str(tmp_path))
