"""One line instead of JAX's fatal abort when a process of a multi-process run dies.

When a peer stops sending heartbeats, the JAX distributed service aborts every other process with a C++ fatal
error: two or three ``E...`` log records, an ``F... Terminating process because the JAX distributed service detected
fatal errors`` record and a stack trace (about 20 lines, then SIGABRT). That abort cannot be caught in Python (the
client's error callback takes an ``absl::Status`` the bindings cannot pass to Python), so ``install`` routes this
process's stderr (fd 2) through a small filter process running this file: it passes everything through as it comes,
holds C++ ``E`` / ``F`` log records for a moment, and, when they end in that abort, writes one line naming the
processes that went silent instead. Held records that do not end in the abort are written unchanged.

Stdlib only: the filter runs as ``python -I -S <this file> HEARTBEAT_S`` without importing jtaba.
"""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys

# an absl log record's prefix: level, MMDD hh:mm:ss.micros, thread, file:line]
RECORD = re.compile(rb"^[EF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [^\]\s]+:\d+\] ")
ABORT = b"Terminating process because the JAX distributed service detected fatal errors"
SILENT = re.compile(rb"stopped sending heartbeats\):\s*\n((?:\s*\d+\s*\n)+)")
LEADER = b"Failed to send RPC to coordination service"
STATUS = re.compile(rb"absl::Status: ([^\n]*)")
_filter: subprocess.Popen | None = None  # kept alive (and reaped) with this process
HOLD_S = 2.0  # held records not followed by the abort within this long are written as they were


def summary(held: bytes, heartbeat_s: int) -> str:
    """The one line for a fatal abort whose log records (and stack trace) are ``held``."""
    silent = SILENT.search(held)
    if silent:
        ids = [t.decode() for t in silent.group(1).split()]
        who = f"process{'es' if len(ids) > 1 else ''} {', '.join(ids)}"
        cause = (f"{who} stopped sending heartbeats for --heartbeat-timeout={heartbeat_s} s (it died or cannot be "
                 f"reached)")
    elif LEADER in held:
        cause = "process 0 (the coordinator) stopped answering (it died or cannot be reached)"
    else:
        status = STATUS.search(held)
        cause = "the JAX distributed service failed" + (f" ({status.group(1).decode(errors='replace').strip()})"
                                                         if status else "")
    return (f"error: {cause}; this process ends too. Start every process again with the same command: "
            f"finished work is kept\n")


def filter_stream(read_fd: int, write_fd: int, heartbeat_s: int) -> None:
    """Copy ``read_fd`` to ``write_fd`` until EOF, replacing a JAX distributed fatal abort by ``summary``."""
    held, aborted, pending = b"", False, b""
    while True:
        ready, _, _ = select.select([read_fd], [], [], HOLD_S if held and not aborted else None)
        if not ready:  # the held records were not an abort: let them through
            os.write(write_fd, held)
            held = b""
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        if aborted:
            held += chunk
            continue
        lines = (pending + chunk).splitlines(keepends=True)
        # a partial last line that may start a record waits for its end; any other partial text (progress bars) goes
        pending = lines.pop() if lines and not lines[-1].endswith(b"\n") and re.match(rb"^[EF]\d", lines[-1]) else b""
        for line in lines:
            if held or RECORD.match(line):
                held += line
                aborted = aborted or (line.startswith(b"F") and ABORT in line)
            else:
                os.write(write_fd, line)
    if aborted:
        os.write(write_fd, summary(held, heartbeat_s).encode())
    else:
        os.write(write_fd, held + pending)


def install(heartbeat_s: int) -> None:
    """Route this process's stderr through the filter (call before ``jax.distributed.initialize``)."""
    global _filter
    sys.stderr.flush()
    original = os.dup(2)
    _filter = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__), str(heartbeat_s)],
                               stdin=subprocess.PIPE, stdout=original, stderr=subprocess.DEVNULL)
    os.close(original)
    os.dup2(_filter.stdin.fileno(), 2)


def main(argv: list[str]) -> None:
    # Ctrl-C / SIGTERM reach the whole process group: the filter keeps copying until the run's last word (EOF)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    filter_stream(0, 1, int(argv[0]))


if __name__ == "__main__":
    main(sys.argv[1:])
