import os

import numpy as np
import pytest

from jtaba.runs import store

N, T = 11, 3
PARAMS = {"model": "toy", "seed": 1}


def batch(start, stop):
    """Deterministic fake results of samples [start, stop): per-sample rows and a (T, b, ...) trajectory."""
    i = np.arange(start, stop, dtype=np.float32)
    x = i[:, None, None, None] + np.linspace(0, 1, 12, dtype=np.float32).reshape(1, 3, 2, 2)
    return {"samples": x, "all_t_samples": np.stack([x * (t + 1) for t in range(T)]),
            "conds": np.arange(start, stop, dtype=np.int64)}


def run(directory, batch_size, stop_after=None):
    st = store.RunStore(directory, PARAMS, N)
    for k, (a, b) in enumerate(store.pending_ranges(st.done_mask(), batch_size)):
        if stop_after is not None and k == stop_after:
            raise KeyboardInterrupt
        st.write(a, b, batch(a, b))
    return st.finalize()


def files(directory):
    return {f: open(os.path.join(directory, f), "rb").read() for f in sorted(os.listdir(directory))}


def test_pending_ranges():
    done = np.array([0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1], bool)
    assert store.pending_ranges(done, 2) == [(0, 2), (2, 3), (5, 7), (7, 9), (9, 10)]
    assert store.pending_ranges(np.ones(4, bool), 3) == []


def test_uninterrupted_run_keeps_every_sample(tmp_path):
    names = run(tmp_path / "a", batch_size=4)  # 11 = 4 + 4 + 3
    assert names == ["all_t_samples", "conds", "samples"]
    ref = batch(0, N)
    for name in names:
        got = np.load(tmp_path / "a" / f"{name}.npy")
        assert got.dtype == ref[name].dtype
        np.testing.assert_array_equal(got, ref[name])
    assert not os.path.exists(tmp_path / "a" / store.CHUNKS)
    assert sorted(os.listdir(tmp_path / "a")) == [store.MANIFEST, "all_t_samples.npy", "conds.npy", "samples.npy"]


def test_killed_run_resumes_to_identical_files(tmp_path):
    run(tmp_path / "ref", batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", batch_size=4, stop_after=2)
    os.makedirs(tmp_path / "b" / store.CHUNKS / ".tmp-000000008-000000011")  # a chunk cut mid-write
    st = store.RunStore(tmp_path / "b", PARAMS, N)
    assert st.done_mask().tolist() == [True] * 8 + [False] * 3
    run(tmp_path / "b", batch_size=2)  # resuming with another batch size is fine
    assert files(tmp_path / "b") == files(tmp_path / "ref")
    assert run(tmp_path / "b", batch_size=4) == ["all_t_samples", "conds", "samples"]  # complete: nothing to do
    assert files(tmp_path / "b") == files(tmp_path / "ref")


def test_refuses_other_parameters_and_foreign_directories(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "c", batch_size=4, stop_after=1)
    with pytest.raises(store.RunMismatch, match="seed"):
        store.RunStore(tmp_path / "c", {"model": "toy", "seed": 2}, N)
    with pytest.raises(store.RunMismatch, match="'n'"):
        store.RunStore(tmp_path / "c", PARAMS, N + 1)
    store.RunStore(tmp_path / "f", PARAMS, N)  # opened, nothing written: other parameters may take it over
    assert store.RunStore(tmp_path / "f", {"model": "toy", "seed": 2}, N).done_mask().sum() == 0
    with pytest.raises(store.RunMismatch, match="seed"):
        run(tmp_path / "ref", batch_size=4)
        store.RunStore(tmp_path / "ref", {"model": "toy", "seed": 2}, N)  # complete runs are kept too
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "noise.npy").write_bytes(b"x")
    with pytest.raises(store.RunMismatch, match="not empty"):
        store.RunStore(tmp_path / "d", PARAMS, N)


def test_finalize_refuses_missing_samples_and_checks_chunk_sizes(tmp_path):
    st = store.RunStore(tmp_path / "e", PARAMS, N)
    st.write(0, 4, batch(0, 4))
    with pytest.raises(ValueError, match=r"\[4, 11\) are missing"):
        st.finalize()
    with pytest.raises(ValueError, match="all_t_samples"):
        st.write(4, 6, {"all_t_samples": np.zeros((2, 3, 1))})


def test_bad_chunks_are_named_and_recomputed(tmp_path, capsys):
    d = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        run(d, 3, stop_after=3)
    chunks = sorted(os.listdir(os.path.join(d, store.CHUNKS)))
    first, second, third = (os.path.join(d, store.CHUNKS, c, "samples.npy") for c in chunks)
    with open(first, "r+b") as f:  # truncated
        f.truncate(100)
    with open(second, "r+b") as f:  # one flipped byte, same size
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    os.remove(os.path.join(os.path.dirname(third), store.CHUNK_INDEX))  # a chunk from before the index existed
    st = store.RunStore(d, PARAMS, N)
    err = capsys.readouterr().err
    assert err.count("is bad") == 3 and "bytes" in err and "checksum" in err and store.CHUNK_INDEX in err
    assert not st.done_mask().any()
    st.close()
    ref = str(tmp_path / "ref")
    run(ref, 3)
    run(d, 3)
    assert files(d) == files(ref)


def test_final_files_are_checked_and_the_folder_is_locked(tmp_path):
    d = str(tmp_path / "run")
    run(d, 4)
    store.RunStore(d, PARAMS, N).verify()
    with open(os.path.join(d, "samples.npy"), "r+b") as f:
        f.truncate(64)
    st = store.RunStore(d, PARAMS, N)  # named on stderr and computed again
    assert not st.done_mask().any() and not os.path.exists(os.path.join(d, "samples.npy"))
    st.close()
    other = str(tmp_path / "other")
    os.makedirs(other)
    with open(os.path.join(other, store.LOCK), "w") as f:
        f.write("1 some-other-host")
    with pytest.raises(store.RunMismatch, match="in use by process 1 on some-other-host"):
        store.RunStore(other, PARAMS, N)
    with pytest.raises(store.RunMismatch, match="is a file"):
        store.RunStore(os.path.join(d, store.MANIFEST), PARAMS, N)


def test_full_disk_keeps_the_chunks_and_says_so(tmp_path, monkeypatch):
    import collections
    import shutil

    d = str(tmp_path / "run")
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 100))
    with pytest.raises(OSError, match=r"not enough free space .* needed, 100 bytes free"):
        run(d, 4)
    assert store.RunStore(d, PARAMS, N).done_mask().all()  # every chunk kept
    monkeypatch.undo()
    ref = str(tmp_path / "ref")
    run(ref, 4)
    run(d, 4)
    assert files(d) == files(ref)
