"""The perception networks the analyses score with, by role: which converted checkpoint each role loads, the convert
command that makes it, and batched scoring over sample files.

Roles and their default checkpoints (names in the jtaba model home, ``jtaba.home``):

====================  =================  ==============================================================
role                  default name       module (``load(name)`` -> (config, params))
====================  =================  ==============================================================
``inception``         ``inception_fid``  ``jtaba.metrics.inception`` (FID / precision / recall features)
``lpips``             ``lpips_alex``     ``jtaba.metrics.lpips``
``dreamsim``          ``dreamsim``       ``jtaba.metrics.dreamsim``
``dino``              ``dino_vits16``    ``jtaba.metrics.dino``
``clip``              ``clip_vitb32``    ``jtaba.metrics.clip`` (CLIP-I, CLIP-T)
``vgg16``             ``vgg16``          ``jtaba.metrics.vgg16`` (torch-fidelity's precision / recall features)
====================  =================  ==============================================================

An analysis asks ``missing(roles)`` first and names the convert commands of what is absent (before any work), or
runs without those metrics and lists them as skipped. ``map_batches`` scores N pairs in fixed-size batches (the
last one padded, so one compilation serves every batch).
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Iterable

import numpy as np

from jtaba import home

ROLES = {
    "inception": ("inception_fid", "jtaba.metrics.inception"),
    "lpips": ("lpips_alex", "jtaba.metrics.lpips"),
    "dreamsim": ("dreamsim", "jtaba.metrics.dreamsim"),
    "dino": ("dino_vits16", "jtaba.metrics.dino"),
    "clip": ("clip_vitb32", "jtaba.metrics.clip"),
    "vgg16": ("vgg16", "jtaba.metrics.vgg16"),
}


class MissingNetwork(FileNotFoundError):
    """A perception network's converted checkpoint is not there; the message names the convert command."""


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown perception network role {role!r}; choose from {', '.join(ROLES)}")


def default_name(role: str) -> str:
    _check_role(role)
    return ROLES[role][0]


def convert_command(role: str, name: str | None = None) -> str:
    """The command that writes the checkpoint ``name`` (default: the role's) into the model home."""
    name = name or default_name(role)
    command = home.CONVERT_COMMANDS.get(name) or home.CONVERT_COMMANDS[default_name(role)]
    return f"{command} --out {os.path.join(home.models_home(), name)}"


def present(role: str, name: str | None = None) -> bool:
    """Whether the role's checkpoint resolves (a model-home name or a checkpoint folder)."""
    try:
        home.resolve(name or default_name(role))
    except home.UnknownModel:
        return False
    return True


def missing(roles: Iterable[str], names: dict | None = None) -> dict[str, str]:
    """{role: convert command} for each role in ``roles`` whose checkpoint (``names[role]`` or the default) is not
    there."""
    names = names or {}
    return {r: convert_command(r, names.get(r)) for r in roles if not present(r, names.get(r))}


def missing_message(absent: dict[str, str], what: str) -> str:
    """One message naming every absent network of ``what`` and the commands that make them."""
    lines = [f"{what} needs converted perception networks that are not in {home.models_home()}:"]
    lines += [f"  {role}: {command}" for role, command in absent.items()]
    return "\n".join(lines)


def read_checkpoint(name_or_path: str, family: str, config_class, dtype: Any = None) -> tuple[Any, Any]:
    """(``config_class`` config, params) of a converted checkpoint of ``family``: a folder or a model-home name;
    ValueError naming the folder when it holds another family. Each network module's ``load`` is this."""
    from jtaba.checkpoint import load_params, read_config

    directory = home.resolve(name_or_path).path
    cfg = read_config(directory)
    if cfg.get("family") != family:
        raise ValueError(f"{directory}: family {cfg.get('family')!r} is not a {family!r} checkpoint")
    return config_class.from_dict(cfg["model"]), load_params(directory, dtype=dtype)


def load(role: str, name: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
    """(config, params) of the role's checkpoint; ``MissingNetwork`` naming the convert command if absent."""
    _check_role(role)
    if not present(role, name):
        raise MissingNetwork(missing_message({role: convert_command(role, name)}, f"the {role} metric"))
    module = importlib.import_module(ROLES[role][1])
    return module.load(name or default_name(role), dtype=dtype)


def map_batches(fn: Callable, *arrays, batch: int = 64) -> np.ndarray:
    """``fn(*blocks)`` over aligned leading-axis blocks of ``arrays`` (N, ...) (memory maps are read one block at a
    time), concatenated to a float32 numpy array (N, ...). Every call gets ``batch`` rows: the last block is padded
    by repeating its final row, and the padding's outputs are dropped."""
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"arrays must have the same length, got {[len(a) for a in arrays]}")
    if n == 0:
        raise ValueError("nothing to score: the arrays are empty")
    batch = min(batch, n)
    out = []
    for start in range(0, n, batch):
        blocks = [np.asarray(a[start:start + batch], np.float32) for a in arrays]
        rows = len(blocks[0])
        if rows < batch:
            blocks = [np.concatenate([b, np.repeat(b[-1:], batch - rows, axis=0)]) for b in blocks]
        out.append(np.asarray(fn(*blocks), np.float32)[:rows])
    return np.concatenate(out)
