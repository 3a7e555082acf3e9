"""taba's DiT class sampling (upstream ``load_cond``) against the upstream procedure re-typed (global ``random``)."""
import random

import numpy as np

from jtaba.class_labels import class_names, label_ids, upstream_class_labels

ID2LABEL = {"0": "tench, Tinca tinca", "1": "goldfish", "2": "crane", "3": "polecat, fitch", "4": "skunk, polecat",
            "5": "crane", "6": "hen", "7": "ostrich, Struthio camelus"}


def upstream(id2label, cond_seed, n_prompts, per_prompt):
    mapping = {int(k): v.split(",")[0].strip() for k, v in id2label.items()}  # DIT_IMAGENET_MAP
    lookup = {}
    for key, value in id2label.items():
        for name in value.split(","):
            lookup[name.strip()] = int(key)
    random.seed(cond_seed)
    names = random.choices(list(mapping.values()), k=n_prompts)
    names = [n for n in names for _ in range(per_prompt)]
    return np.array([lookup[n] for n in names])


def test_matches_upstream_sampling_and_collisions():
    got = upstream_class_labels(ID2LABEL, 10, 50, 3)
    np.testing.assert_array_equal(got, upstream(ID2LABEL, 10, 50, 3))
    assert got.dtype == np.int64 and len(got) == 150
    assert 2 not in got and 3 not in got  # crane -> 5, polecat -> 4: ids never drawn, as upstream
    assert set(got) <= {0, 1, 4, 5, 6, 7}
    np.testing.assert_array_equal(got[0:3], [got[0]] * 3)


def test_names_and_lookup():
    assert class_names(ID2LABEL)[:3] == ["tench", "goldfish", "crane"]
    np.testing.assert_array_equal(label_ids(ID2LABEL, ["fitch", "Struthio camelus"]), [3, 7])
