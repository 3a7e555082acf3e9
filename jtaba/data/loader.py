"""Deterministic, resumable batches of training images.

Epoch ``e`` visits the dataset in the order ``np.random.default_rng([seed, e]).permutation(n)`` and yields
``n // batch_size`` full batches (drop_last, as guided-diffusion). The iterator state is two integers,
``{"epoch": e, "position": p}`` (p = examples of epoch e already consumed), stored in training checkpoints;
restoring it continues the exact same sequence.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


class ImageSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...  # (H, W, 3) uint8


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1] (x / 127.5 - 1)."""
    return images.astype(np.float32) / 127.5 - 1.0


class BatchIterator:
    """Yields (batch_size, H, W, 3) float32 batches in [-1, 1] (NHWC)."""

    def __init__(self, source: ImageSource, batch_size: int, seed: int, state: dict | None = None):
        if len(source) < batch_size:
            raise ValueError(f"dataset of {len(source)} images is smaller than one batch ({batch_size})")
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.epoch, self.position = 0, 0
        self._order_epoch, self._order = None, None
        if state is not None:
            self.restore(state)

    def state(self) -> dict:
        return {"epoch": int(self.epoch), "position": int(self.position)}

    def restore(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def _permutation(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.source))
            self._order_epoch = self.epoch
        return self._order

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        if self.position + self.batch_size > len(self.source):
            self.epoch, self.position = self.epoch + 1, 0
        idx = self._permutation()[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return to_model_range(np.stack([self.source[int(i)] for i in idx]))
