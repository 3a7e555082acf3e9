"""Open finished runs for analysis: ``Run`` (arrays memory-mapped) and ``find_run`` (reuse a run that serves)."""
from __future__ import annotations

import glob
import os
import sys

import numpy as np

from jtaba import io
from jtaba.runs.fingerprint import settings_digest
from jtaba.runs.settings import serves
from jtaba.runs.store import MANIFEST, final_file_problem

METRICS = "metrics.json"


class RunNotFinished(FileNotFoundError):
    """A folder holds no finished run."""


class RunDamaged(RunNotFinished):
    """A finished run's final file is missing or differs from what was written (size / sha256)."""


class Run:
    """A finished run folder: ``run["latents"]`` is the (N, C, H, W) memory map of latents.npy, trajectories
    ``run["all_t_samples"]`` are (T, N, C, H, W); ``identity`` is what the run was computed from (model and input
    fingerprints and every setting), ``fingerprint`` its digest, ``metrics`` the core metrics of metrics.json.

    The final files are verified against the sizes and sha256 recorded when they were written (``verify``; cached
    against file size and mtime) unless ``verify=False``; ``RunDamaged`` names a file that differs."""

    def __init__(self, path: str, verify: bool = True):
        self.path = os.path.abspath(path)
        manifest = os.path.join(self.path, MANIFEST)
        if not os.path.exists(manifest):
            raise RunNotFinished(f"{self.path}: not a jtaba run (no {MANIFEST})")
        m = io.read_json(manifest)
        if not m.get("complete"):
            raise RunNotFinished(f"{self.path}: the run is not finished; rerun its command to resume it")
        self.identity: dict = m["params"]
        self.files: dict = m.get("files", {})
        self.n: int = int(m["n"])
        self.fingerprint = settings_digest(self.identity)
        if verify:
            self.verify()

    @property
    def steps(self) -> int:
        return int(self.identity["steps"])

    @property
    def names(self) -> list[str]:
        return sorted(f[:-4] for f in os.listdir(self.path) if f.endswith(".npy") and not f.startswith("."))

    def __contains__(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.path, name + ".npy"))

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self:
            raise KeyError(f"{self.path} has no {name}.npy (it has: {', '.join(self.names)})")
        return np.load(os.path.join(self.path, name + ".npy"), mmap_mode="r")

    def get(self, name: str) -> np.ndarray | None:
        return self[name] if name in self else None  # noqa: SIM401 (this is get)

    def verify(self) -> None:
        """Check every final file against the size and sha256 recorded when it was written (a file unchanged since
        its last successful check, same size, mtime and inode, is not hashed again)."""
        problem = final_file_problem(self.path, self.files)
        if problem is not None:
            raise RunDamaged(f"{problem[0]} is damaged ({problem[1]}); rerun the command that computed "
                             f"{self.path} to compute it again")

    def _metrics_file(self) -> dict:
        path = os.path.join(self.path, METRICS)
        return io.read_json(path) if os.path.exists(path) else {}

    @property
    def metrics(self) -> dict:
        """The core metrics of metrics.json."""
        return self._metrics_file().get("metrics", {})

    @property
    def nfe_per_image(self) -> dict:
        """The network evaluations per image of each stage, as metrics.json records them ({} without inversion)."""
        return self._metrics_file().get("nfe_per_image", {})

    def __repr__(self) -> str:
        return f"Run({self.path!r}, n={self.n}, steps={self.steps})"


def open_run(path: str) -> Run:
    """The finished, verified run in ``path`` (``RunNotFinished`` / ``RunDamaged`` otherwise)."""
    return Run(path)


def find_run(root: str, identity: dict) -> Run | None:
    """A finished run anywhere under ``root`` that serves ``identity``, else None; of several, the one that holds
    the least beyond the request. Only runs that serve are verified; a damaged one is named on stderr and passed
    over."""
    found = []
    for manifest in sorted(glob.glob(os.path.join(glob.escape(root), "**", MANIFEST), recursive=True)):
        try:
            run = Run(os.path.dirname(manifest), verify=False)
            if not serves(run.identity, identity):
                continue
            run.verify()
        except RunDamaged as e:
            print(f"jtaba: not reused: {e}", file=sys.stderr, flush=True)
            continue
        except (RunNotFinished, ValueError, KeyError):
            continue
        found.append(run)
    return min(found, key=lambda r: sum(bool(r.identity[k]) for k in ("record", "inversion", "reconstruction")),
               default=None)
