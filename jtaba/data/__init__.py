"""Training data: tfds datasets (``cifar10``, ``imagenet64``) and the built-in ``procedural`` images, served as
deterministic, resumable batches (``BatchIterator``)."""
from __future__ import annotations

from jtaba.data.loader import BatchIterator, ImageSource, to_model_range
from jtaba.data.procedural import ProceduralImages
from jtaba.data.tfds_source import TfdsImages

DATASET_NAMES = ("procedural", "cifar10", "imagenet64")


def open_dataset(name: str, size: int, data_dir: str | None = None) -> ImageSource:
    """uint8 (size, size, 3) images: "procedural" (built in) or a tfds name ("cifar10", "imagenet64" or any
    prepared tfds image dataset with an "image" feature), train split."""
    if name == "procedural":
        return ProceduralImages(size)
    return TfdsImages(name, size, data_dir=data_dir)


__all__ = ["BatchIterator", "ImageSource", "ProceduralImages", "TfdsImages", "open_dataset", "to_model_range",
           "DATASET_NAMES"]
