"""tensorflow-datasets images through ``tfds.data_source`` (array_record files, random access, no tensorflow).

Datasets must already be prepared in array_record format (``prepare`` does that once, with network access);
reading never downloads. Images are centre-cropped to a square and resized like guided-diffusion's
``center_crop_arr`` (BOX halving, then BICUBIC), so e.g. ``downsampled_imagenet/64x64`` and ``cifar10`` pass through
unchanged at their native size.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

DATASETS = {"cifar10": "cifar10", "imagenet64": "downsampled_imagenet/64x64"}


def center_crop_arr(image: np.ndarray, size: int) -> np.ndarray:
    """guided_diffusion ``center_crop_arr``: (H, W, 3) uint8 -> (size, size, 3) uint8."""
    pil = Image.fromarray(image)
    while min(*pil.size) >= 2 * size:
        pil = pil.resize(tuple(x // 2 for x in pil.size), resample=Image.BOX)
    scale = size / min(*pil.size)
    pil = pil.resize(tuple(round(x * scale) for x in pil.size), resample=Image.BICUBIC)
    arr = np.asarray(pil.convert("RGB"))
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


class TfdsImages:
    """Indexable uint8 (size, size, 3) images of a prepared tfds dataset split."""

    def __init__(self, name: str, size: int, split: str = "train", data_dir: str | None = None):
        import tensorflow_datasets as tfds

        self.name, self.size = DATASETS.get(name, name), size
        self.source = tfds.data_source(self.name, split=split, data_dir=data_dir, download=False)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> np.ndarray:
        image = np.asarray(self.source[int(index)]["image"])
        if image.shape[:2] == (self.size, self.size):
            return image
        return center_crop_arr(image, self.size)


def prepare(name: str, data_dir: str | None = None) -> None:
    """Download and convert a dataset to array_record once (needs network, and whatever the builder needs)."""
    import tensorflow_datasets as tfds

    tfds.builder(DATASETS.get(name, name), data_dir=data_dir, file_format="array_record").download_and_prepare()
