"""Reference images for FID / precision / recall: a model's training images, as the paper scored against them (App.
F.1, Tab. 12; upstream ``eval_fids.py``: torch-fidelity's ``cifar10-train``, the ImageNet and CelebA-HQ reference
folders), read through tensorflow-datasets (already prepared: nothing is downloaded here), or a folder of images.

``training_dataset(tag, extras)`` names a model's training set; ``reference_images`` returns (M, 3, H, W) uint8.
A set that is not prepared raises ``ReferenceUnavailable`` with one line saying how to prepare it.
"""
from __future__ import annotations

import os

import numpy as np

# model tag -> tensorflow-datasets name of its training images (upstream's references)
TRAINING_SETS = {"adm32": "cifar10", "adm64": "imagenet64", "adm256": "imagenet2012", "dit": "imagenet2012",
                 "ldm": "celeb_a_hq/256"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class ReferenceUnavailable(ValueError):
    """The reference images are not there; the message says how to get them."""


def training_dataset(tag: str, train_extras: dict | None = None) -> str | None:
    """The tfds name of the model's training images: a paper model by tag, a ``jtaba.train`` model by the dataset
    recorded in its checkpoint (None when unknown, e.g. the procedural toy data)."""
    if tag in TRAINING_SETS:
        return TRAINING_SETS[tag]
    dataset = (train_extras or {}).get("dataset")
    return None if dataset in (None, "procedural") else dataset


def _prepare_hint(name: str) -> str:
    return (f"prepare it once with network access: python -c \"from jtaba.data.tfds_source import prepare; "
            f"prepare('{name}')\" (ImageNet and CelebA-HQ need their manual downloads), or give --reference=FOLDER")


def tfds_images(name: str, size: int, n: int | None = None, data_dir: str | None = None) -> np.ndarray:
    """The first ``n`` (default all) training images of a prepared tfds dataset, centre-cropped / resized to
    ``size`` as ``jtaba.data.tfds_source`` does, (M, 3, size, size) uint8."""
    from jtaba.data.tfds_source import DATASETS, TfdsImages

    try:
        source = TfdsImages(name, size, split="train", data_dir=data_dir)
    except Exception as e:  # tfds raises several kinds for an absent or other-format dataset
        raise ReferenceUnavailable(f"the {DATASETS.get(name, name)} training images are not prepared for "
                                   f"tensorflow-datasets ({type(e).__name__}); {_prepare_hint(name)}") from None
    count = len(source) if n is None else min(n, len(source))
    return np.stack([source[i] for i in range(count)]).transpose(0, 3, 1, 2)


def folder_images(path: str, n: int | None = None) -> np.ndarray:
    """The first ``n`` (default all) images of a folder, sorted by name, as (M, 3, H, W) uint8 RGB (all one size,
    as torch-fidelity's image folders need)."""
    from PIL import Image

    names = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_SUFFIXES))[:n]
    if not names:
        raise ReferenceUnavailable(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    images = [np.asarray(Image.open(os.path.join(path, f)).convert("RGB")) for f in names]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ReferenceUnavailable(f"{path}: the images differ in size ({sorted(shapes)[:3]}...)")
    return np.stack(images).transpose(0, 3, 1, 2)


def reference_images(spec: str, *, tag: str, size: int, n: int | None = None, train_extras: dict | None = None,
                     data_dir: str | None = None) -> tuple[np.ndarray, str]:
    """(images (M, 3, H, W) uint8, what they are) for ``spec`` "train" (the model's training set through tfds) or
    a folder of images."""
    if spec == "train":
        name = training_dataset(tag, train_extras)
        if name is None:
            raise ReferenceUnavailable(f"no known training set for model {tag!r}: give --reference=FOLDER of images")
        return tfds_images(name, size, n, data_dir), f"{name} train"
    if not os.path.isdir(spec):
        raise ReferenceUnavailable(f"--reference {spec}: neither 'train' nor a folder of images")
    return folder_images(spec, n), os.path.basename(os.path.normpath(spec))
