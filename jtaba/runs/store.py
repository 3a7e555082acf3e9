"""Chunked, atomic, resumable result files of a run: ``DIR/<name>.npy`` written batch by batch.

A run over N samples writes each finished batch [start, stop) as one chunk ``DIR/.chunks/<start>-<stop>/<name>.npy``,
atomically (a temporary directory renamed into place), so a killed run leaves only whole chunks. Reopening the
directory with the same parameters resumes: ``done_mask`` says which samples exist and ``pending_ranges`` yields the
missing ones in batches (the batch size may change between runs). Reopening it with other parameters is refused
(``DIR/.jtaba_run.json`` holds the manifest). ``finalize`` concatenates the chunks into ``DIR/<name>.npy`` through a
memory map (a (T, N, C, H, W) trajectory never sits in RAM), renames each file into place and removes the chunks.

The per-sample axis of an array is 1 for trajectories (names starting with ``all_t_``: (T, N, C, H, W)) and 0 for
everything else ((N, C, H, W), (N,)); arrays keep the dtype they are written with.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

from jtaba import io

MANIFEST = ".jtaba_run.json"
CHUNKS = ".chunks"


class RunMismatch(ValueError):
    """The run directory holds a run with other parameters."""


def sample_axis(name: str) -> int:
    return 1 if name.startswith("all_t_") else 0


def pending_ranges(done: np.ndarray, batch: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most ``batch`` samples covering every ``False`` entry of ``done`` in order."""
    out = []
    n = len(done)
    i = 0
    while i < n:
        if done[i]:
            i += 1
            continue
        j = i
        while j < n and not done[j] and j - i < batch:
            j += 1
        out.append((i, j))
        i = j
    return out


def _canonical(params: dict) -> dict:
    return json.loads(json.dumps(params, sort_keys=True))


class RunStore:
    """Result files of one run of ``n`` samples in ``directory``, identified by ``params`` (JSON-able: everything
    that changes the results; not the batch size, device count or output path)."""

    def __init__(self, directory: str, params: dict, n: int):
        self.directory = os.path.abspath(directory)
        self.n = int(n)
        self.params = _canonical(params)
        self.chunk_dir = os.path.join(self.directory, CHUNKS)
        manifest = os.path.join(self.directory, MANIFEST)
        if os.path.exists(manifest):
            old = io.read_json(manifest)
            same = old["params"] == self.params and old["n"] == self.n
            if not same and (old["complete"] or self._chunks()):
                diff = sorted(k for k in set(old["params"]) | set(self.params)
                              if old["params"].get(k) != self.params.get(k))
                raise RunMismatch(f"{self.directory} holds a run with other parameters (differs in "
                                  f"{diff + (['n'] if old['n'] != self.n else [])}); use another output directory")
            if not same:  # nothing was written under the old parameters: start over
                io.write_json(manifest, {"params": self.params, "n": self.n, "complete": False}, sort_keys=True)
            self.complete = same and bool(old["complete"])
        else:
            if os.path.isdir(self.directory) and os.listdir(self.directory):
                raise RunMismatch(f"{self.directory} is not empty and holds no jtaba run; use another directory")
            os.makedirs(self.directory, exist_ok=True)
            self.complete = False
            io.write_json(manifest, {"params": self.params, "n": self.n, "complete": False}, sort_keys=True)
        os.makedirs(self.chunk_dir, exist_ok=True)
        for name in os.listdir(self.chunk_dir):  # debris of a chunk being written when the run died
            if name.startswith(".tmp"):
                shutil.rmtree(os.path.join(self.chunk_dir, name))
        if self.complete:
            shutil.rmtree(self.chunk_dir)

    def _chunks(self) -> list[tuple[int, int]]:
        if not os.path.isdir(self.chunk_dir):
            return []
        return sorted(tuple(int(v) for v in name.split("-")) for name in os.listdir(self.chunk_dir)
                      if not name.startswith("."))

    def done_mask(self) -> np.ndarray:
        """(n,) bool: samples already written (all True once finalized)."""
        done = np.full(self.n, self.complete)
        for start, stop in self._chunks():
            done[start:stop] = True
        return done

    def write(self, start: int, stop: int, arrays: dict[str, np.ndarray]) -> None:
        """Store samples [start, stop) of every named array (sample axis per ``sample_axis``) as one atomic chunk."""
        for name, a in arrays.items():
            if a.shape[sample_axis(name)] != stop - start:
                raise ValueError(f"{name}: {a.shape[sample_axis(name)]} samples on axis {sample_axis(name)}, "
                                 f"expected {stop - start} for [{start}, {stop})")
        final = os.path.join(self.chunk_dir, f"{start:09d}-{stop:09d}")
        tmp = os.path.join(self.chunk_dir, f".tmp-{start:09d}-{stop:09d}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for name, a in arrays.items():
            np.save(os.path.join(tmp, name + ".npy"), np.asarray(a))
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)

    def finalize(self) -> list[str]:
        """Concatenate the chunks into ``DIR/<name>.npy`` (each renamed into place), mark the run complete and remove
        the chunks. Returns the written names. Raises if samples are missing."""
        if self.complete:
            return sorted(f[:-4] for f in os.listdir(self.directory) if f.endswith(".npy"))
        chunks = self._chunks()
        covered = 0
        for start, stop in chunks:
            if start != covered:
                raise ValueError(f"samples [{covered}, {start}) are missing; resume the run before finalizing")
            covered = stop
        if covered != self.n:
            raise ValueError(f"samples [{covered}, {self.n}) are missing; resume the run before finalizing")
        dirs = [os.path.join(self.chunk_dir, f"{a:09d}-{b:09d}") for a, b in chunks]
        names = sorted(f[:-4] for f in os.listdir(dirs[0]) if f.endswith(".npy")) if dirs else []
        for name in names:
            self._concatenate(name, chunks, dirs)
        io.write_json(os.path.join(self.directory, MANIFEST), {"params": self.params, "n": self.n, "complete": True}, sort_keys=True)
        self.complete = True
        shutil.rmtree(self.chunk_dir)
        return names

    def _concatenate(self, name: str, chunks, dirs) -> None:
        """One chunk at a time into a memory-mapped ``.npy`` (one open map: any number of chunks)."""
        axis = sample_axis(name)
        first = np.load(os.path.join(dirs[0], name + ".npy"), mmap_mode="r")
        shape = first.shape[:axis] + (self.n,) + first.shape[axis + 1:]
        tmp = os.path.join(self.directory, f".{name}.npy.tmp")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype, shape=shape)
        del first
        for (start, stop), d in zip(chunks, dirs):
            out[(slice(None),) * axis + (slice(start, stop),)] = np.load(os.path.join(d, name + ".npy"),
                                                                        mmap_mode="r")
        out.flush()
        del out
        os.replace(tmp, os.path.join(self.directory, name + ".npy"))
