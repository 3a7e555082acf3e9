"""``--distributed=auto``: the processes of a cluster that says who is who join one run without flags. Two local
processes with a simulated SLURM job step (the variables srun sets) run ``python -m experiments.triangles``: one run
folder and one result, identical to the single-process one. The detection reads only the environment."""
import json
import os

import pytest

from experiments import triangles
from jtaba import distributed
from tests.processes import finish, free_port, spawn
from tests.test_exp_triangles import save_tiny_checkpoint

N, STEPS = 8, 2
CLUSTER_VARS = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST", "SLURM_PROCID",
                "SLURM_LOCALID", "OMPI_COMM_WORLD_SIZE", "OMPI_MCA_orte_hnp_uri", "TPU_WORKER_HOSTNAMES",
                "TPU_PROCESS_ADDRESSES",
                "MEGASCALE_COORDINATOR_ADDRESS", "KUBERNETES_SERVICE_HOST", "JOBSET_NAME", "JOB_COMPLETION_INDEX")


def slurm_env(task: int, tasks: int = 2) -> dict:
    return {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": str(tasks), "SLURM_STEP_NODELIST": "localhost",
            "SLURM_STEP_NUM_NODES": "1", "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task)}


@pytest.fixture
def plain_env(monkeypatch):
    for k in CLUSTER_VARS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_cluster_detection(plain_env):
    assert distributed.cluster_name() is None  # a plain machine: nothing to join, JAX never asked
    for k, v in slurm_env(0, tasks=1).items():
        plain_env.setenv(k, v)
    assert distributed.cluster_name() is None  # a SLURM job of one task runs alone
    plain_env.setenv("SLURM_NTASKS", "4")
    assert distributed.cluster_name() == "slurm"
    plain_env.setenv("SLURM_STEP_NUM_TASKS", "1")  # sbatch's batch script in a 4-task allocation: alone
    assert distributed.cluster_name() is None
    plain_env.delenv("SLURM_STEP_NUM_TASKS")
    plain_env.setenv("SLURM_NTASKS", "2")
    plain_env.delenv("SLURM_STEP_NODELIST")  # an allocation without a job step (sbatch's shell): not a task
    assert distributed.cluster_name() is None
    for k in CLUSTER_VARS:
        plain_env.delenv(k, raising=False)
    plain_env.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert distributed.cluster_name() is None  # JAX reads the coordinator from the ORTE URI
    plain_env.setenv("OMPI_MCA_orte_hnp_uri", "1531576320.0;tcp://10.96.0.1:34911")
    assert distributed.cluster_name() == "ompi"
    plain_env.delenv("OMPI_COMM_WORLD_SIZE")
    plain_env.setenv("TPU_WORKER_HOSTNAMES", "w-0")
    assert distributed.cluster_name() is None  # a single-host TPU VM
    plain_env.setenv("TPU_WORKER_HOSTNAMES", "w-0,w-1,w-2,w-3")
    assert distributed.cluster_name() == "tpu"


def _triangles(ckpt, runs, out, extra=()):
    return ["-m", "experiments.triangles", "--ckpt", ckpt, "--n", N, "--steps", STEPS, "--batch", N,
            "--runs-dir", runs, "--out", out, "--no-compilation-cache", *extra]


def test_two_slurm_tasks_are_one_triangles_run(tmp_path, plain_env):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    port = str(free_port())
    procs = [spawn(_triangles(ckpt, tmp_path / "runs2", tmp_path / "two"), devices=1,
                   env={**slurm_env(i), "JAX_COORDINATOR_PORT": port}) for i in range(2)]
    for k, v in slurm_env(0).items():  # the reference, in this process while they run: inside the job step, but
        plain_env.setenv(k, v)  # told to run alone
    triangles.main([str(a) for a in _triangles(ckpt, tmp_path / "runs1", tmp_path / "one",
                                               ("--distributed", "off"))[2:]])
    finish(procs, timeout=240)
    runs = os.listdir(tmp_path / "runs2" / "ckpt" / "sample_invert")
    assert len(runs) == 1  # both tasks computed one run (sharded over their two devices)
    with open(tmp_path / "runs2" / "ckpt" / "sample_invert" / runs[0] / "metrics.json") as f:
        assert json.load(f)["topology"]["processes"] == 2
    with open(tmp_path / "runs1" / "ckpt" / "sample_invert" / os.listdir(tmp_path / "runs1" / "ckpt" /
                                                                         "sample_invert")[0] / "metrics.json") as f:
        assert json.load(f)["topology"]["processes"] == 1
    with open(tmp_path / "two" / "triangles.json") as f:
        two = json.load(f)
    with open(tmp_path / "one" / "triangles.json") as f:
        one = json.load(f)
    for r in (one, two):
        r.pop("run")
    assert _close(two, one)


def _close(a, b) -> bool:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert len(a) == len(b)
        return all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
        return True
    assert a == b
    return True
