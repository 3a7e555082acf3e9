"""Chunked, atomic, resumable result files of a run: ``DIR/<name>.npy`` written batch by batch.

A run over N samples writes each finished batch [start, stop) as one chunk ``DIR/.chunks/<start>-<stop>/<name>.npy``,
atomically (a temporary directory renamed into place), so a killed run leaves only whole chunks. Reopening the
directory with the same parameters resumes: ``done_mask`` says which samples exist and ``pending_ranges`` yields the
missing ones in batches (the batch size may change between runs). Reopening it with other parameters is refused
(``DIR/.jtaba_run.json`` holds the manifest). ``finalize`` concatenates the chunks into ``DIR/<name>.npy`` through a
memory map (a (T, N, C, H, W) trajectory never sits in RAM), renames each file into place and removes the chunks.

The store checks itself: each chunk records the size and sha256 of its files (``chunk.json``, files fsynced before
the rename); on resume a chunk that is truncated, zeroed or altered is named on stderr and recomputed; the final
files' sizes and sha256 go into the manifest (hashed while they are concatenated, no second pass) and are verified
before a finished run is reused (a damaged file is named and the run computed again); free space is checked before
the final files are written. A lock file (``DIR/.lock``: pid, host and the run's key) is taken before anything in
the folder is read or written, so a second command never touches a folder while a run writes it: one computing
the same run waits for it, any other is refused and changes nothing.

Verification is cached outside the run folder (``$JTABA_HOME/verified/``) against each file's size, mtime and
inode, so a large finished run is hashed once, not on every read; the final files' mtimes are set a few seconds
into the past when written, so that a change within the file system's clock resolution still changes the mtime.

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
import time

import numpy as np

from jtaba import home, io

MANIFEST = ".jtaba_run.json"
CHUNKS = ".chunks"
CHUNK_INDEX = "chunk.json"
LOCK = ".lock"
# A finished run's final files get mtime = now - MTIME_BACKDATE_NS, so any later write gives them another mtime.
MTIME_BACKDATE_NS = 3_000_000_000
# A command that finds its run being computed by another process waits this long for it (then it is refused).
SAME_RUN_WAIT_S = 12 * 3600.0


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


class FolderLock:
    """``DIR/.lock`` holding "pid host key" while a run writes the folder. A lock left by a dead process of this host
    (kill -9), by this process, or an empty / unreadable one older than a second (a process killed while creating
    it) is taken over. A live holder computing the same run (same ``key``) is waited for, polling, up to
    ``wait_s`` seconds (with one message on stderr); any other live holder is refused with its pid and host."""

    POLL_S = 0.5

    def __init__(self, directory: str, key: str = "", wait_s: float = 0.0):
        self.path = os.path.join(directory, LOCK)
        me = f"{os.getpid()} {socket.gethostname()} {key}".strip()
        deadline = time.monotonic() + wait_s
        waiting = False
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder is None:  # released meanwhile
                    continue
                pid, host, theirs = holder
                if pid is None:  # empty or garbled: being written right now, or left by a killed process
                    if self._age() > 1.0:
                        self._remove()
                    else:
                        time.sleep(0.05)
                    continue
                if host == socket.gethostname() and (pid == os.getpid() or not io.pid_alive(pid)):
                    self._remove()
                    continue
                if key and theirs == key and time.monotonic() < deadline:
                    if not waiting:
                        print(f"jtaba: process {pid} on {host} is computing this same run in {directory}; waiting "
                              f"for it to finish (then its result is used)", file=sys.stderr, flush=True)
                        waiting = True
                    time.sleep(self.POLL_S)
                    continue
                what = "this same run" if key and theirs == key else "another run"
                raise RunMismatch(f"{directory} is in use by process {pid} on {host} ({what} is writing it); wait "
                                  f"for it, or delete {self.path} if no run is active") from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            return

    def _age(self) -> float:
        try:
            return time.time() - os.path.getmtime(self.path)
        except FileNotFoundError:
            return 0.0

    def _remove(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    def _holder(self):
        """(pid, host, key) of the lock; (None, None, None) when it is empty or garbled; None when it is gone."""
        try:
            with open(self.path) as f:
                parts = f.read().split(" ")
            return int(parts[0]), parts[1], (parts[2] if len(parts) > 2 else "")
        except FileNotFoundError:
            return None
        except (ValueError, IndexError):
            return None, None, None

    def release(self) -> None:
        holder = self._holder()
        if holder is not None and holder[0] == os.getpid():
            self._remove()


def _canonical(params: dict) -> dict:
    return json.loads(json.dumps(params, sort_keys=True))


def run_key(params: dict, n: int) -> str:
    """A short digest of (params, n): what a run folder's lock says it computes."""
    text = json.dumps({"params": _canonical(params), "n": int(n)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _verified_cache(directory: str) -> str:
    key = hashlib.sha256(os.path.realpath(directory).encode()).hexdigest()[:32]
    return os.path.join(home.jtaba_home(), "verified", key + ".json")


def final_file_problem(directory: str, files: dict) -> tuple[str, str] | None:
    """(path, what is wrong) of the first final file of a finished run whose size or sha256 differs from
    ``files`` ({name: {"size", "sha256"}}, the manifest's), else None. A file whose (size, mtime, inode) match an
    earlier successful check (cached under the jtaba home) is not hashed again."""
    cache_path = _verified_cache(directory)
    try:
        cache = io.read_json(cache_path)
    except (OSError, ValueError):
        cache = {}
    cache = cache if isinstance(cache, dict) else {}
    changed = False
    for name, rec in sorted(files.items()):
        path = os.path.join(directory, name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return path, "missing"
        if st.st_size != rec["size"]:
            return path, f"{st.st_size} bytes, {rec['size']} were written"
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino, rec["sha256"]]
        if cache.get(name) == stamp:
            continue
        if file_record(path)["sha256"] != rec["sha256"]:
            return path, "changed since it was written: checksum differs"
        if time.time_ns() - st.st_mtime_ns > MTIME_BACKDATE_NS // 2:  # a later write changes the mtime
            cache[name], changed = stamp, True
    if changed:
        try:
            io.write_json(cache_path, cache)
        except OSError:  # a read-only home: verify again next time
            pass
    return None


def _remember_verified(directory: str, files: dict) -> None:
    """Cache the check of final files just written (their content is what was hashed)."""
    cache = {}
    for name, rec in files.items():
        st = os.stat(os.path.join(directory, name))
        cache[name] = [st.st_size, st.st_mtime_ns, st.st_ino, rec["sha256"]]
    try:
        io.write_json(_verified_cache(directory), cache)
    except OSError:
        pass


def byte_size(n: int) -> str:
    """``n`` bytes in words: "512 bytes", "3.4 MiB", "1.25 GiB"."""
    if n < 1 << 20:
        return f"{n:,} bytes"
    return f"{n / 2**20:.1f} MiB" if n < 1 << 30 else f"{n / 2**30:.2f} GiB"


class RunStore:
    """Result files of one run of ``n`` samples in ``directory``, identified by ``params`` (JSON-able: everything
    that changes the results; not the batch size, device count or output path).

    The folder lock is taken first (``wait_s``: how long to wait for another process computing this same run). A
    finished run whose final files fail verification is named on stderr and computed again, as is any finished run
    with ``recompute``; chunks of an unfinished run are kept (resumed) either way."""

    def __init__(self, directory: str, params: dict, n: int, *, wait_s: float = 0.0, recompute: bool = False):
        self.directory = os.path.abspath(directory)
        self.n = int(n)
        self.params = _canonical(params)
        self.chunk_dir = os.path.join(self.directory, CHUNKS)
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise RunMismatch(f"{self.directory} is a file, not a run folder")
        os.makedirs(self.directory, exist_ok=True)
        self.lock = FolderLock(self.directory, run_key(self.params, self.n), wait_s)
        try:
            self._open(recompute)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, recompute: bool) -> None:
        """Read or write the manifest (the lock is held) and clean the chunks."""
        manifest = os.path.join(self.directory, MANIFEST)
        if os.path.exists(manifest):
            old = io.read_json(manifest)
            same = old["params"] == self.params and old["n"] == self.n
            if not same and (old["complete"] or self._chunks()):
                diff = sorted(k for k in set(old["params"]) | set(self.params)
                              if old["params"].get(k) != self.params.get(k))
                raise RunMismatch(f"{self.directory} holds a run with other parameters (differs in "
                                  f"{diff + (['n'] if old['n'] != self.n else [])}); use another output directory")
            self.complete = same and bool(old["complete"])
            self.files = old.get("files", {}) if self.complete else {}
            if self.complete:
                problem = final_file_problem(self.directory, self.files)
                if problem is not None:
                    print(f"jtaba: {problem[0]} is damaged ({problem[1]}); the run is computed again",
                          file=sys.stderr, flush=True)
                if problem is not None or recompute:
                    self._discard_final_files()
            if not same:  # nothing was written under the old parameters: start over
                self._write_manifest()
        else:
            if set(os.listdir(self.directory)) - {LOCK}:
                raise RunMismatch(f"{self.directory} is not empty and holds no jtaba run; use another directory")
            self.complete, self.files = False, {}
            self._write_manifest()
        if self.complete:
            shutil.rmtree(self.chunk_dir, ignore_errors=True)
            return
        os.makedirs(self.chunk_dir, exist_ok=True)
        for name in os.listdir(self.chunk_dir):  # debris of a chunk being written when the run died
            if name.startswith(".tmp"):
                shutil.rmtree(os.path.join(self.chunk_dir, name))
        self._drop_bad_chunks()

    def _write_manifest(self) -> None:
        io.write_json(os.path.join(self.directory, MANIFEST),
                      {"params": self.params, "n": self.n, "complete": self.complete,
                       **({"files": self.files} if self.complete else {})}, sort_keys=True)

    def _discard_final_files(self) -> None:
        """Back to an unfinished run with no samples: the final files and metrics.json go (chunks were removed when
        the run was finalized)."""
        self.complete, self.files = False, {}
        self._write_manifest()
        for name in os.listdir(self.directory):
            if name.endswith(".npy") or name == "metrics.json":
                os.remove(os.path.join(self.directory, name))

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

    def verify(self) -> None:
        """Check the final files of a finished run against the manifest (sizes and sha256); raise naming one that
        differs."""
        problem = final_file_problem(self.directory, self.files)
        if problem is not None:
            raise RunMismatch(f"{problem[0]} is damaged ({problem[1]}); rerun its command to compute it again")

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
            raise OSError(f"not enough free space in {self.directory} for the final files: {byte_size(need)} "
                          f"needed, {byte_size(free)} free (the chunks are kept: free space and rerun)")
        for name in names:
            self.files[name + ".npy"] = self._concatenate(name, chunks, dirs)
        self.complete = True
        self._write_manifest()
        _remember_verified(self.directory, self.files)
        shutil.rmtree(self.chunk_dir)
        self.close()
        return names

    def _concatenate(self, name: str, chunks, dirs) -> dict:
        """One chunk at a time into a memory-mapped ``.npy`` (one open map: any number of chunks), hashed as it is
        written (in file order: for each index before the sample axis, the chunks in order); returns the file's
        {"size", "sha256"}. The file's mtime is set ``MTIME_BACKDATE_NS`` back and its check is cached."""
        axis = sample_axis(name)
        first = np.load(os.path.join(dirs[0], name + ".npy"), mmap_mode="r")
        shape = first.shape[:axis] + (self.n,) + first.shape[axis + 1:]
        tmp = os.path.join(self.directory, f".{name}.npy.tmp")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype, shape=shape)
        del first
        h = hashlib.sha256()
        with open(tmp, "rb") as f:
            h.update(f.read(out.offset))  # the .npy header
        parts = [np.load(os.path.join(d, name + ".npy"), mmap_mode="r") for d in dirs]
        for lead in np.ndindex(*shape[:axis]):
            for (start, stop), part in zip(chunks, parts, strict=True):
                block = np.ascontiguousarray(part[lead])
                out[lead + (slice(start, stop),)] = block
                h.update(block)
        del parts
        out.flush()
        del out
        _fsync(tmp)
        final = os.path.join(self.directory, name + ".npy")
        os.replace(tmp, final)
        backdated = time.time_ns() - MTIME_BACKDATE_NS
        os.utime(final, ns=(backdated, backdated))
        return {"size": os.path.getsize(final), "sha256": h.hexdigest()}
