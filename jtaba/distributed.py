"""Multi-process runs: an explicit opt-in wrapper around ``jax.distributed.initialize``.

Call ``initialize`` before any other JAX call (it must run before the backends start). Every process then sees all
devices of all processes in ``jax.devices()``; ``jtaba.sharding`` builds the data mesh over them. On CPU the
cross-process collectives go through gloo (``jax_cpu_collectives_implementation``: the default of JAX 0.10, set
explicitly for older versions that had none); the localhost tests run two CPU processes this way.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading

import jax


def initialize(coordinator: str, num_processes: int, process_id: int, *, local_device_ids=None,
               cpu_collectives: str = "gloo", timeout_s: int = 300) -> None:
    """Join the run coordinated at ``coordinator`` ("host:port"; process 0 serves it) as ``process_id`` of
    ``num_processes``."""
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids, initialization_timeout=timeout_s)


def is_main() -> bool:
    """True on the process that writes files (process 0)."""
    return jax.process_index() == 0


def add_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("multi-process (all three flags, or none for a single process)")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="address of process 0's coordination service; enables jax.distributed")
    g.add_argument("--num-processes", type=int, default=None, help="total number of processes of the run")
    g.add_argument("--process-id", type=int, default=None, help="this process's index, 0 .. num-processes-1")
    g.add_argument("--init-timeout", type=int, default=300,
                   help="seconds to wait for every process to join before giving up with an error")


def initialize_from_flags(args: argparse.Namespace) -> None:
    """``initialize`` when ``--coordinator`` was given (then the other two flags are required); else nothing."""
    if args.coordinator is None:
        if args.num_processes not in (None, 1) or args.process_id not in (None, 0):
            raise SystemExit("--num-processes/--process-id need --coordinator")
        return
    if args.num_processes is None or args.process_id is None:
        raise SystemExit("--coordinator needs --num-processes and --process-id")
    message = (f"error: process {args.process_id} of {args.num_processes} could not join the run at "
               f"{args.coordinator} within --init-timeout={args.init_timeout} s (are all processes started, with the "
               f"same --coordinator?)")
    # JAX aborts the process (a C++ fatal error) when its own deadline passes: end first, with a one-line message.
    watchdog = threading.Timer(args.init_timeout, lambda: (print(message, file=sys.stderr, flush=True), os._exit(2)))
    watchdog.daemon = True
    watchdog.start()
    try:
        initialize(args.coordinator, args.num_processes, args.process_id, timeout_s=args.init_timeout + 30)
    except Exception as e:  # jax raises XlaRuntimeError / RuntimeError with a long service trace
        raise SystemExit(f"{message}: {str(e).splitlines()[0] if str(e) else e}") from None
    finally:
        watchdog.cancel()
