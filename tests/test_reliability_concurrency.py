"""Two commands on one run folder (issue "Integrity everywhere"): the folder lock is taken before anything is read or
written, so a refused command changes nothing and two runs never mix; a command wanting the same run waits for it;
an empty lock (a process killed while creating it) is stale."""
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from jtaba.runs import store
from tests.test_store import PARAMS, N, batch


@pytest.fixture
def live_pid():
    """The pid of a live process of this host that is not this one (holds a lock as a running command would)."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p.pid
    p.kill()
    p.wait()


def _hold(directory, params, pid):
    """The folder as a running command leaves it: its manifest, one chunk, and its lock."""
    st = store.RunStore(directory, params, N)
    st.write(0, 4, batch(0, 4))
    st.close()
    with open(os.path.join(directory, store.LOCK), "w") as f:
        f.write(f"{pid} {socket.gethostname()} {store.run_key(params, N)}")


def _snapshot(directory):
    return {os.path.relpath(os.path.join(d, f), directory): open(os.path.join(d, f), "rb").read()
            for d, _, fs in os.walk(directory) for f in fs}


def test_a_refused_command_changes_nothing(tmp_path, live_pid):
    """seed 7 running in X; the seed-8 command on X is refused and leaves X's manifest and chunks as they were."""
    d = str(tmp_path / "X")
    seed7, seed8 = {**PARAMS, "seed": 7}, {**PARAMS, "seed": 8}
    _hold(d, seed7, live_pid)
    before = _snapshot(d)
    with pytest.raises(store.RunMismatch, match=f"in use by process {live_pid}"):
        store.RunStore(d, seed8, N)
    assert _snapshot(d) == before
    # the seed-7 command, once the first is gone, resumes its own chunk
    os.remove(os.path.join(d, store.LOCK))
    st = store.RunStore(d, seed7, N)
    assert st.done_mask().sum() == 4
    st.close()


def test_a_refused_command_does_not_take_an_unstarted_folder(tmp_path, live_pid):
    """Even with nothing computed yet, the manifest of the running command is not rewritten."""
    d = str(tmp_path / "X")
    os.makedirs(d)
    seed7 = {**PARAMS, "seed": 7}
    store.RunStore(d, seed7, N).close()
    with open(os.path.join(d, store.LOCK), "w") as f:
        f.write(f"{live_pid} {socket.gethostname()} {store.run_key(seed7, N)}")
    before = _snapshot(d)
    with pytest.raises(store.RunMismatch, match="in use"):
        store.RunStore(d, {**PARAMS, "seed": 8}, N)
    assert _snapshot(d) == before


def test_the_same_run_is_waited_for(tmp_path, live_pid, capsys):
    """A command wanting the run another process computes waits (one message) and then finds it."""
    d = str(tmp_path / "X")
    _hold(d, PARAMS, live_pid)

    def finish():  # the other process completes the run and releases its lock
        time.sleep(0.6)
        for a, b in store.pending_ranges(st_other.done_mask(), 4):
            st_other.write(a, b, batch(a, b))
        st_other.finalize()
        os.remove(os.path.join(d, store.LOCK))

    os.rename(os.path.join(d, store.LOCK), os.path.join(d, "held"))
    st_other = store.RunStore(d, PARAMS, N)  # this process plays the other one: its lock, then the live pid's
    os.replace(os.path.join(d, "held"), os.path.join(d, store.LOCK))
    t = threading.Thread(target=finish)
    t.start()
    st = store.RunStore(d, PARAMS, N, wait_s=30)
    t.join()
    assert st.complete and st.done_mask().all()
    st.close()
    assert capsys.readouterr().err.count("waiting") == 1
    with open(os.path.join(d, store.LOCK), "w") as f:  # without waiting, or for another run: refused
        f.write(f"{live_pid} {socket.gethostname()} {store.run_key(PARAMS, N)}")
    with pytest.raises(store.RunMismatch, match="this same run"):
        store.RunStore(d, PARAMS, N)


def test_an_empty_lock_is_stale(tmp_path):
    d = str(tmp_path / "X")
    os.makedirs(d)
    lock = os.path.join(d, store.LOCK)
    open(lock, "w").close()
    os.utime(lock, (time.time() - 10, time.time() - 10))
    st = store.RunStore(d, PARAMS, N)
    with open(lock) as f:
        assert f.read().split(" ")[0] == str(os.getpid())
    st.close()
    assert not os.path.exists(lock)
