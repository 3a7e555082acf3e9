"""Class labels for class-conditional latent models (DiT), including taba's class-name sampling (upstream
``taba/models/dit/dit.py``).

Upstream ``load_cond``: ``random.seed(cond_seed)``; ``names = random.choices(DIT_IMAGENET_MAP.values(), k)``
(Python's Mersenne Twister, with replacement); each name repeated ``noises_per_prompt`` times; names mapped to ids
with the pipeline's ``get_label_ids`` lookup built from the hub ``id2label`` ("a, b, c" split on commas, stripped;
later ids overwrite earlier ones). ``DIT_IMAGENET_MAP`` is the first name of each hub ``id2label`` entry, so it is
derived here from ``id2label`` (saved by ``convert/dit.py``). The lookup reproduces upstream's four collisions
(crane 134→517, polecat 358→361, maillot 638→639, missile 657→744).
"""
from __future__ import annotations

import random
from typing import Mapping

import numpy as np


def _ordered(id2label: Mapping) -> list[tuple[int, str]]:
    return sorted((int(k), v) for k, v in id2label.items())


def class_names(id2label: Mapping) -> list[str]:
    """First name of every class, in id order (upstream ``DIT_IMAGENET_MAP.values()``)."""
    return [label.split(",")[0].strip() for _, label in _ordered(id2label)]


def label_lookup(id2label: Mapping) -> dict[str, int]:
    """name -> id over every comma-separated synonym; a later id overwrites an earlier one (upstream)."""
    lookup: dict[str, int] = {}
    for idx, label in _ordered(id2label):
        for name in label.split(","):
            lookup[name.strip()] = idx
    return lookup


def label_ids(id2label: Mapping, names) -> np.ndarray:
    """Class ids of class names (int64); unknown names raise with the name."""
    lookup = label_lookup(id2label)
    unknown = [n for n in names if n not in lookup]
    if unknown:
        raise KeyError(f"unknown class names: {unknown[:5]}")
    return np.array([lookup[n] for n in names], dtype=np.int64)


def upstream_class_labels(id2label: Mapping, cond_seed: int, n_prompts: int, noises_per_prompt: int) -> np.ndarray:
    """taba's ``conds.pt`` for a DiT run: (n_prompts · noises_per_prompt,) int64."""
    names = random.Random(cond_seed).choices(class_names(id2label), k=n_prompts)
    return np.repeat(label_ids(id2label, names), noises_per_prompt)
