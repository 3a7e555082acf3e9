"""Atomic file writes (JSON, CSV, NPY, any file) and the settings manifest that refuses a mismatching rerun.

Every writer goes through ``atomic_path``: the content is written to a temporary file beside the target, flushed
and fsynced, then renamed into place, so a killed process leaves either the old file or the new one, never half;
the temporary file a killed process left (``<name>.tmp-<pid>.<ext>``, the pid dead) goes at the next write.
JSON is written with NaN / Inf replaced by ``null`` (strict JSON that every reader accepts).
"""
from __future__ import annotations

import contextlib
import csv
import glob
import json
import math
import os
import shutil
from typing import Any, Iterator, Mapping, Sequence

import numpy as np


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(prefix: str, suffix: str = "") -> list[str]:
    """Remove the files or folders ``<prefix><pid><suffix>`` whose process is dead (left by a killed process of
    this host); returns their paths."""
    removed = []
    for path in glob.glob(glob.escape(prefix) + "*" + glob.escape(suffix)):
        pid = path[len(prefix):len(path) - len(suffix)]
        if pid.isdigit() and not pid_alive(int(pid)):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path`` to write to; on success it is fsynced and renamed onto ``path``.
    The temporary name keeps the extension (tools that pick a format from it keep working)."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    root, ext = os.path.splitext(path)
    remove_stale(f"{root}.tmp-", ext)
    tmp = f"{root}.tmp-{os.getpid()}{ext}"
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def finite_json(obj: Any) -> Any:
    """``obj`` with numpy scalars / arrays made plain and non-finite floats made ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str, obj: Any, sort_keys: bool = False) -> str:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(finite_json(obj), f, indent=1, sort_keys=sort_keys, allow_nan=False)
    return path


def write_text(path: str, text: str) -> str:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
    return path


def read_json(path: str) -> Any:
    """The JSON document in ``path``; ValueError naming the file when it is not valid JSON."""
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as CSV with a header (the union of the keys, in first-seen order); missing cells are empty."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows([{k: finite_json(v) for k, v in row.items()} for row in rows])
    return path


class SettingsMismatch(ValueError):
    """A folder holds results made with other settings."""


def claim_settings(path: str, settings: Mapping[str, Any]) -> None:
    """Record ``settings`` (JSON-able) in the manifest file ``path``, or check that an existing manifest holds the
    same ones; raise ``SettingsMismatch`` naming the settings that differ."""
    settings = json.loads(json.dumps(finite_json(settings), sort_keys=True))
    if os.path.exists(path):
        old = read_json(path)
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            shown = ", ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now" for k in diff)
            raise SettingsMismatch(f"{os.path.dirname(os.path.abspath(path))} holds results made with other "
                                   f"settings ({shown}); use another output folder")
        return
    write_json(path, settings, sort_keys=True)
