"""The built-in procedural dataset: deterministic per index, plain and textured regions in every image."""
import numpy as np

from jtaba.data import ProceduralImages, open_dataset
from jtaba.data.procedural import PALETTE, procedural_image


def test_deterministic_per_index():
    ds = ProceduralImages(16)
    a = [ds[i] for i in (0, 7, 123)]
    b = [procedural_image(0, i, 16) for i in (0, 7, 123)]
    for x, y in zip(a, b):
        assert x.shape == (16, 16, 3) and x.dtype == np.uint8
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(ds[0], ds[1])
    assert not np.array_equal(ds[0], ProceduralImages(16, seed=1)[0])
    np.testing.assert_array_equal(open_dataset("procedural", 24)[5], ProceduralImages(24)[5])


def test_plain_and_textured_regions():
    palette = {tuple(c) for c in PALETTE.astype(int)}
    for i in range(40):
        img = procedural_image(0, i, 24).astype(int)
        colours, counts = np.unique(img.reshape(-1, 3), axis=0, return_counts=True)
        bg = tuple(colours[np.argmax(counts)])
        assert bg in palette and counts.max() >= 0.25 * 24 * 24  # a large flat background (plain region)
        # texture: some 3x3 neighbourhoods with several distinct palette colours alternating pixel to pixel
        diff = np.abs(np.diff(img, axis=0)).sum(-1)[:, :-1] + np.abs(np.diff(img, axis=1)).sum(-1)[:-1]
        assert (diff > 60).sum() >= 6, i
        flat = (diff == 0).mean()
        assert flat > 0.25, (i, flat)
