"""Chunked, atomic, resumable result files of a run: ``DIR/<name>.npy`` written batch by batch.

A run over N samples writes each finished batch [start, stop) as one chunk ``DIR/.chunks/<start>-<stop>/<name>.npy``,
atomically (a temporary directory renamed into place), so a killed run leaves only whole chunks. Reopening the
directory with the same parameters resumes: ``done_mask`` says which samples exist and ``pending_ranges`` yields the
missing ones in batches (the batch size may change between runs). Reopening it with other parameters is refused
(``DIR/.jtaba_run.json`` holds the manifest). ``finalize`` concatenates the chunks into ``DIR/<name>.npy`` through a
memory map (a (T, N, C, H, W) trajectory never sits in RAM), renames each file into place and removes the chunks.

The store checks itself: each chunk records the size and sha256 of its files (``chunk.json``, files fsynced before
the rename); on resume a chunk that is truncated, zeroed or altered is named on stderr and recomputed; the final
files' sizes and checksums go into the manifest (checked on reopening, ``verify`` re-hashes them); free space is
checked before the final files are written; a lock file (``DIR/.lock``: pid and host) keeps a second run out of
the folder while one is active.

The per-sample axis of an array is 1 for trajectories (names starting with ``all_t_``: (T, N, C, H, W)) and 0 for
everything else ((N, C, H, W), (N,)); arrays keep the dtype they are written with.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys

import numpy as np

from jtaba import io

MANIFEST = ".jtaba_run.json"
CHUNKS = ".chunks"
CHUNK_INDEX = "chunk.json"
LOCK = ".lock"


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


def file_record(path: str) -> dict:
    """{"size", "sha256"} of a file (read in blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return {"size": os.path.getsize(path), "sha256": h.hexdigest()}


def _fsync(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """``DIR/.lock`` holding "pid host" while a run writes the folder. A lock left by a dead process of this host
    (kill -9) or by this process is taken over; another live holder is refused with its pid and host."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, LOCK)
        me = f"{os.getpid()} {socket.gethostname()}"
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue
                pid, host = holder
                if host == socket.gethostname() and (pid == os.getpid() or not _pid_alive(pid)):
                    os.remove(self.path)
                    continue
                raise RunMismatch(f"{directory} is in use by process {pid} on {host} (a run is writing it); wait "
                                  f"for it, or delete {self.path} if no run is active")
            with os.fdopen(fd, "w") as f:
                f.write(me)
            return

    def _holder(self):
        try:
            with open(self.path) as f:
                pid, host = f.read().split(" ", 1)
            return int(pid), host
        except FileNotFoundError:
            return None
        except ValueError:  # a lock being written right now, or debris: treat as held by a dead process
            return -1, socket.gethostname()

    def release(self) -> None:
        holder = self._holder()
        if holder is not None and holder[0] == os.getpid():
            os.remove(self.path)


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
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise RunMismatch(f"{self.directory} is a file, not a run folder")
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
            self.files = old.get("files", {}) if self.complete else {}
        else:
            if os.path.isdir(self.directory) and set(os.listdir(self.directory)) - {LOCK}:
                raise RunMismatch(f"{self.directory} is not empty and holds no jtaba run; use another directory")
            os.makedirs(self.directory, exist_ok=True)
            self.complete, self.files = False, {}
            io.write_json(manifest, {"params": self.params, "n": self.n, "complete": False}, sort_keys=True)
        self.lock = FolderLock(self.directory)
        if self.complete:
            shutil.rmtree(self.chunk_dir, ignore_errors=True)
            self._check_final_sizes()
            return
        os.makedirs(self.chunk_dir, exist_ok=True)
        for name in os.listdir(self.chunk_dir):  # debris of a chunk being written when the run died
            if name.startswith(".tmp"):
                shutil.rmtree(os.path.join(self.chunk_dir, name))
        self._drop_bad_chunks()

    def _chunk_path(self, start: int, stop: int) -> str:
        return os.path.join(self.chunk_dir, f"{start:09d}-{stop:09d}")

    def _chunk_problem(self, d: str) -> str | None:
        index = os.path.join(d, CHUNK_INDEX)
        if not os.path.exists(index):
            return f"no {CHUNK_INDEX}"
        try:
            records = io.read_json(index)
        except ValueError:
            return f"unreadable {CHUNK_INDEX}"
        for name, rec in records.items():
            path = os.path.join(d, name)
            if not os.path.exists(path):
                return f"{name} missing"
            if os.path.getsize(path) != rec["size"]:
                return f"{name} has {os.path.getsize(path)} bytes, {rec['size']} were written"
            if file_record(path)["sha256"] != rec["sha256"]:
                return f"{name} changed since it was written (checksum)"
        return None

    def _drop_bad_chunks(self) -> None:
        """Name on stderr and delete every chunk that fails its check (it is recomputed), and chunks that overlap."""
        covered = np.zeros(self.n, bool)
        for start, stop in self._chunks():
            d = self._chunk_path(start, stop)
            problem = self._chunk_problem(d)
            if problem is None and (stop > self.n or covered[start:stop].any()):
                problem = "outside the run or overlapping another chunk"
            if problem is not None:
                print(f"jtaba: chunk {d} is bad ({problem}); its samples are recomputed", file=sys.stderr)
                shutil.rmtree(d)
            else:
                covered[start:stop] = True

    def _check_final_sizes(self) -> None:
        for name, rec in self.files.items():
            path = os.path.join(self.directory, name)
            size = os.path.getsize(path) if os.path.exists(path) else None
            if size != rec["size"]:
                raise RunMismatch(f"{path} is damaged ({size} bytes, {rec['size']} were written); delete "
                                  f"{self.directory} to compute the run again")

    def verify(self) -> None:
        """Re-hash the final files of a finished run against the manifest; raise naming a file that differs."""
        self._check_final_sizes()
        for name, rec in self.files.items():
            if file_record(os.path.join(self.directory, name))["sha256"] != rec["sha256"]:
                raise RunMismatch(f"{os.path.join(self.directory, name)} changed since it was written (checksum)")

    def close(self) -> None:
        """Release the folder lock (``finalize`` does too)."""
        self.lock.release()

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
        final = self._chunk_path(start, stop)
        tmp = os.path.join(self.chunk_dir, f".tmp-{start:09d}-{stop:09d}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        records = {}
        for name, a in arrays.items():
            path = os.path.join(tmp, name + ".npy")
            np.save(path, np.asarray(a))
            _fsync(path)
            records[name + ".npy"] = file_record(path)
        io.write_json(os.path.join(tmp, CHUNK_INDEX), records, sort_keys=True)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)

    def finalize(self) -> list[str]:
        """Concatenate the chunks into ``DIR/<name>.npy`` (each renamed into place), mark the run complete and remove
        the chunks. Returns the written names. Raises if samples are missing."""
        if self.complete:
            self.close()
            return sorted(f[:-4] for f in os.listdir(self.directory) if f.endswith(".npy"))
        chunks = self._chunks()
        covered = 0
        for start, stop in chunks:
            if start != covered:
                raise ValueError(f"samples [{covered}, {start}) are missing; resume the run before finalizing")
            covered = stop
        if covered != self.n:
            raise ValueError(f"samples [{covered}, {self.n}) are missing; resume the run before finalizing")
        dirs = [self._chunk_path(a, b) for a, b in chunks]
        names = sorted(f[:-4] for f in os.listdir(dirs[0]) if f.endswith(".npy")) if dirs else []
        need = sum(os.path.getsize(os.path.join(d, f)) for d in dirs for f in os.listdir(d))
        free = shutil.disk_usage(self.directory).free
        if need > free:
            raise OSError(f"not enough free space in {self.directory} for the final files: {need / 2**30:.2f} GiB "
                          f"needed, {free / 2**30:.2f} GiB free (the chunks are kept: free space and rerun)")
        for name in names:
            self._concatenate(name, chunks, dirs)
            self.files[name + ".npy"] = file_record(os.path.join(self.directory, name + ".npy"))
        io.write_json(os.path.join(self.directory, MANIFEST),
                      {"params": self.params, "n": self.n, "complete": True, "files": self.files}, sort_keys=True)
        self.complete = True
        shutil.rmtree(self.chunk_dir)
        self.close()
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
        _fsync(tmp)
        os.replace(tmp, os.path.join(self.directory, name + ".npy"))
