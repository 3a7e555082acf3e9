"""Which training steps get a checkpoint: named schedules, combined with "+".

Items: ``every:N`` (steps divisible by N, including 0), ``at:S1,S2,...``, ``paper_cifar10`` / ``paper_imagenet64``
(the dense-early extra steps of the paper's runs, ``guided_diffusion/ckpts_utils.py`` ADDITIONAL_SAVESTEPS).
The paper's runs used ``every:2500+paper_cifar10`` and ``every:2500+paper_imagenet64``.

Steps are absolute numbers of optimizer updates (a checkpoint at step k holds the model after k updates; step 0 is
the initialisation). Upstream compared the extra steps with the step count *since the last resume* (upstream
``train_util.TrainLoop``) and names files one update early (it saves after update k+1 as ``k``); neither quirk is
reproduced.
"""
from __future__ import annotations

from typing import Callable

ADDITIONAL_SAVESTEPS_CIFAR = frozenset(
    {5, 10, 25} | set(range(50, 401, 50)) | set(range(0, 39001, 390)) | set(range(39390, 500001, 1950)))
ADDITIONAL_SAVESTEPS_IMAGENET = frozenset(
    {5, 10, 25, 50, 100} | set(range(0, 10308, 250)) | set(range(0, 1500001, 10307)))
NAMED = {"paper_cifar10": ADDITIONAL_SAVESTEPS_CIFAR, "paper_imagenet64": ADDITIONAL_SAVESTEPS_IMAGENET}


def parse_save_schedule(spec: str) -> Callable[[int], bool]:
    """``spec`` like "every:2500+paper_cifar10" -> predicate step -> bool."""
    every: list[int] = []
    steps: set[int] = set()
    for item in filter(None, spec.split("+")):
        kind, _, arg = item.partition(":")
        if kind in NAMED and not arg:
            steps |= NAMED[kind]
        elif kind == "every" and arg.isdigit() and int(arg) > 0:
            every.append(int(arg))
        elif kind == "at" and arg and all(a.strip().isdigit() for a in arg.split(",")):
            steps |= {int(a) for a in arg.split(",")}
        else:
            raise ValueError(f"bad save schedule item {item!r} in {spec!r}: use every:N, at:S1,S2,... or one of "
                             f"{sorted(NAMED)}, joined with '+'")
    frozen = frozenset(steps)
    return lambda step: step in frozen or any(step % n == 0 for n in every)
