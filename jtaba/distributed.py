"""Multi-process runs: ``jax.distributed.initialize``, explicit (``--coordinator``) or detected from the cluster.

Call ``initialize_from_flags`` before any other JAX call (it must run before the backends start). Every process then
sees all devices of all processes in ``jax.devices()``; ``jtaba.sharding`` builds the data mesh over them. On CPU
the cross-process collectives go through gloo (``jax_cpu_collectives_implementation``: the default of JAX 0.10, set
explicitly for older versions that had none); the localhost tests run two CPU processes this way.

``--distributed=auto`` (the default) joins the processes of a cluster that says who is who: a TPU pod, a SLURM job
step of several tasks, an Open MPI job of several ranks, a Kubernetes JobSet; JAX's own auto-detection then finds
the coordinator, the process count and the process index. ``cluster_name`` reads only environment variables and
files, so a plain machine never calls into JAX (nor waits on a metadata server) to learn it is alone.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import threading

from jtaba import distributed_stderr

MODES = ("auto", "off")
HEARTBEAT_S = 10  # a dead peer is noticed after this long (JAX's default, 100 s, left the others waiting)


def _int_env(name: str) -> int:
    try:
        return int(os.environ.get(name, "") or 0)
    except ValueError:
        return 0


def _several(value: str | None) -> bool:
    return bool(value) and len([h for h in value.split(",") if h.strip()]) > 1


def cluster_name() -> str | None:
    """The multi-process cluster this process runs in, by its environment, or None on a plain machine / a job of
    one process: "tpu" (several TPU workers: TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES with several hosts, or
    MEGASCALE_COORDINATOR_ADDRESS), "slurm" (SLURM_JOB_ID with SLURM_NTASKS > 1, a step of more than one task and
    the step's node list), "ompi"
    (OMPI_COMM_WORLD_SIZE > 1 with its ORTE URI) or "kubernetes" (a JobSet / indexed Job with the kubernetes package
    JAX needs)."""
    env = os.environ
    if (_several(env.get("TPU_WORKER_HOSTNAMES")) or _several(env.get("TPU_PROCESS_ADDRESSES"))
            or env.get("MEGASCALE_COORDINATOR_ADDRESS")):
        return "tpu"
    # a job step (srun) of several tasks; sbatch's batch script (one task of its own step) runs alone
    if env.get("SLURM_JOB_ID") and _int_env("SLURM_NTASKS") > 1 and _int_env("SLURM_STEP_NUM_TASKS") != 1 and all(
            k in env for k in ("SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")):
        return "slurm"
    if _int_env("OMPI_COMM_WORLD_SIZE") > 1 and "OMPI_MCA_orte_hnp_uri" in env:
        return "ompi"
    if env.get("KUBERNETES_SERVICE_HOST") and (env.get("JOBSET_NAME") or env.get("JOB_COMPLETION_INDEX")):
        from importlib.util import find_spec

        if find_spec("kubernetes") is not None:
            return "kubernetes"
    return None


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None, *,
               local_device_ids=None, cpu_collectives: str = "gloo", timeout_s: int = 300,
               heartbeat_s: int = HEARTBEAT_S) -> None:
    """Join the run coordinated at ``coordinator`` ("host:port"; process 0 serves it) as ``process_id`` of
    ``num_processes``; all three None: JAX detects them from the cluster. A peer silent for ``heartbeat_s`` seconds
    ends the others (JAX aborts them); core dumps are off for this process, so such an abort leaves no core file."""
    import jax

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids, initialization_timeout=timeout_s,
                               heartbeat_timeout_seconds=heartbeat_s)


def is_main() -> bool:
    """True on the process that writes files (process 0)."""
    import jax

    return jax.process_index() == 0


def topology() -> dict:
    """The processes and devices this run ran on (recorded beside a run's results, never in its fingerprint)."""
    import jax

    return {"processes": jax.process_count(), "process_index": jax.process_index(), "devices": jax.device_count(),
            "local_devices": jax.local_device_count(), "backend": jax.default_backend()}


def add_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("multi-process (detected on a TPU pod, a SLURM job, Open MPI or a Kubernetes "
                                  "JobSet; elsewhere all three flags, or none for a single process)")
    g.add_argument("--distributed", choices=MODES, default="auto",
                   help="auto: join the other processes when the cluster says who is who (TPU pod, SLURM job step "
                        "of several tasks, Open MPI, Kubernetes JobSet), else run alone; off: always run alone")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="address of process 0's coordination service; enables jax.distributed")
    g.add_argument("--num-processes", type=int, default=None, help="total number of processes of the run")
    g.add_argument("--process-id", type=int, default=None, help="this process's index, 0 .. num-processes-1")
    g.add_argument("--init-timeout", type=int, default=300,
                   help="seconds to wait for every process to join before giving up with an error")
    g.add_argument("--heartbeat-timeout", type=int, default=HEARTBEAT_S,
                   help="seconds after which a silent (dead) process ends the run on the others")


def initialize_from_flags(args: argparse.Namespace) -> str | None:
    """``initialize`` with the flags when ``--coordinator`` was given (then the other two are required), with the
    cluster's detection when ``--distributed=auto`` finds one; else nothing. Returns how the processes joined
    ("flags", the cluster name) or None (a single process)."""
    mode = getattr(args, "distributed", "auto")
    if args.coordinator is None:
        if args.num_processes not in (None, 1) or args.process_id not in (None, 0):
            raise SystemExit("--num-processes/--process-id need --coordinator")
        cluster = cluster_name() if mode == "auto" else None
        if cluster is None:
            return None
        who = f"this process of the {cluster} cluster"
        flags = (None, None, None)
    else:
        if args.num_processes is None or args.process_id is None:
            raise SystemExit("--coordinator needs --num-processes and --process-id")
        cluster, who = "flags", f"process {args.process_id} of {args.num_processes}"
        flags = (args.coordinator, args.num_processes, args.process_id)
    where = f"at {args.coordinator}" if args.coordinator else "(coordinator detected from the cluster)"
    message = (f"error: {who} could not join the run {where} within --init-timeout={args.init_timeout} s (are all "
               f"processes started, with the same command?)")
    # JAX aborts the process (a C++ fatal error) when a peer dies: its ~20 lines become one (before any thread starts)
    distributed_stderr.install(args.heartbeat_timeout)
    # JAX aborts the process (a C++ fatal error) when its own deadline passes: end first, with a one-line message.
    watchdog = threading.Timer(args.init_timeout, lambda: (print(message, file=sys.stderr, flush=True), os._exit(2)))
    watchdog.daemon = True
    watchdog.start()
    try:
        initialize(*flags, timeout_s=args.init_timeout + 30, heartbeat_s=args.heartbeat_timeout)
    except Exception as e:  # jax raises XlaRuntimeError / RuntimeError with a long service trace
        raise SystemExit(f"{message}: {str(e).splitlines()[0] if str(e) else e}") from None
    finally:
        watchdog.cancel()
    return cluster
