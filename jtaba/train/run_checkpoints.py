"""Training-run directory: ``run.json`` (the TrainConfig) and orbax checkpoints ``<step>/{state,data}``.

``state`` = TrainState (params, EMA params, optimizer state, step, rng); ``data`` = the BatchIterator state
(JSON). Saves are synchronous and atomic (orbax writes to a temporary directory and renames), so a run killed at
any moment resumes from its last complete checkpoint. After each save the sha256 of every file of the step is
recorded in ``checkpoint_digests.json``; a checkpoint whose files differ is damaged: training falls back to the
newest good one, and reading its EMA weights (export, analyses) fails with one line naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

import jax
import orbax.checkpoint as ocp

from jtaba import io
from jtaba.checkpoint import error_cause, quiet_orbax
from jtaba.train.presets import RESUMABLE_CHANGES, TrainConfig
from jtaba.train.state import TrainState

RUN_CONFIG = "run.json"
DIGESTS = "checkpoint_digests.json"


def _file_digests(root: str) -> dict[str, str]:
    """{path relative to ``root``: sha256} of every file under ``root``."""
    out = {}
    for d, _, files in os.walk(root):
        for name in files:
            path = os.path.join(d, name)
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
            out[os.path.relpath(path, root)] = h.hexdigest()
    return dict(sorted(out.items()))


def read_run_config(directory: str) -> TrainConfig | None:
    path = os.path.join(directory, RUN_CONFIG)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return TrainConfig.from_dict(json.load(f))


def require_run_config(directory: str) -> TrainConfig:
    """The run's TrainConfig; ValueError when ``directory`` is not a training run (no ``run.json``)."""
    cfg = read_run_config(directory)
    if cfg is None:
        raise ValueError(f"{directory} is not a jtaba training run (no {RUN_CONFIG}; see python -m jtaba.train)")
    return cfg


def saved_steps(directory: str) -> list[int]:
    """Steps with a complete checkpoint in the training run ``directory``, ascending (no array is read);
    ValueError when it is not a training run."""
    require_run_config(directory)
    ckpts = RunCheckpoints(directory)
    try:
        return sorted(ckpts.all_steps())
    finally:
        ckpts.close()


def write_run_config(directory: str, cfg: TrainConfig) -> None:
    """Record ``cfg``; a resumed run must agree with the recorded one except for ``RESUMABLE_CHANGES``."""
    os.makedirs(directory, exist_ok=True)
    old = read_run_config(directory)
    if old is not None:
        a, b = old.to_dict(), cfg.to_dict()
        diff = sorted(k for k in a if k not in RESUMABLE_CHANGES and a[k] != b.get(k))
        if diff:
            raise ValueError(f"{directory} holds a run with different settings ({', '.join(diff)}: "
                             f"{[a[k] for k in diff]} vs {[b.get(k) for k in diff]}); use another --out")
    tmp = os.path.join(directory, RUN_CONFIG + ".tmp")
    with open(tmp, "w") as f:
        json.dump(cfg.to_dict(), f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(directory, RUN_CONFIG))


class RunCheckpoints:
    """Orbax CheckpointManager over ``directory`` keeping ``keep`` newest checkpoints (None = all)."""

    def __init__(self, directory: str, keep: int | None = None):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self.directory = os.path.abspath(directory)
        self.digest_path = os.path.join(self.directory, DIGESTS)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, state: TrainState, data_state: dict) -> None:
        step = int(state.step)
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         data=ocp.args.JsonSave(data_state)), force=True)
        self.manager.wait_until_finished()
        digests = self._digests()
        digests[str(step)] = _file_digests(self._step_dir(step))
        steps = {str(s) for s in self.manager.all_steps()}
        io.write_json(self.digest_path, {k: v for k, v in digests.items() if k in steps}, sort_keys=True)

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _digests(self) -> dict:
        try:
            return io.read_json(self.digest_path) if os.path.exists(self.digest_path) else {}
        except ValueError:  # a damaged digest file: every checkpoint counts as unchecked
            return {}

    def damage(self, step: int) -> str | None:
        """What is wrong with checkpoint ``step``'s files against the digests recorded when it was saved (a file
        missing, added or changed), else None (also for a checkpoint saved before digests were recorded)."""
        want = self._digests().get(str(step))
        if want is None:
            return None
        root = self._step_dir(step)
        if not os.path.isdir(root):
            return f"{root} is missing"
        have = _file_digests(root)
        for rel in sorted(set(want) | set(have)):
            if rel not in have:
                return f"{os.path.join(root, rel)} is missing"
            if have[rel] != want.get(rel):
                what = "changed since it was saved (checksum)" if rel in want else "was not part of the save"
                return f"{os.path.join(root, rel)} {what}"
        return None

    def restore(self, step: int, like: TrainState) -> tuple[TrainState, dict]:
        """``like``: a TrainState of arrays or ``jax.ShapeDtypeStruct`` (with shardings) giving the structure."""
        abstract = jax.tree.map(
            lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else
            jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), like)
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                  data=ocp.args.JsonRestore()))
        return out["state"], out["data"]

    def restore_newest_readable(self, like: TrainState) -> tuple[int, TrainState, dict] | None:
        """(step, state, data state) of the newest checkpoint that restores; None when there is none. An unreadable
        newer checkpoint (truncated, partly deleted) is named on stderr and moved aside to
        ``unreadable-<step>`` (kept for inspection; the step is trained and saved again)."""
        steps = sorted(self.all_steps(), reverse=True)
        for step in steps:
            try:
                problem = self.damage(step)
                if problem is not None:
                    raise ValueError(problem)
                with quiet_orbax():
                    state, data = self.restore(step, like)
                return step, state, data
            except Exception as e:  # orbax / tensorstore raise many types for damaged files
                src = os.path.join(self.directory, str(step))
                dst = os.path.join(self.directory, f"unreadable-{step}")
                print(f"jtaba: checkpoint {step} in {self.directory} is damaged or unreadable ({error_cause(e)}); "
                      f"moved to {dst}, falling back to the previous checkpoint", file=sys.stderr, flush=True)
                if os.path.isdir(src):
                    shutil.rmtree(dst, ignore_errors=True)
                    os.replace(src, dst)
                self.manager.reload()
        if steps:
            raise ValueError(f"no checkpoint of {self.directory} is readable (tried steps {steps}); their folders "
                             f"were moved to unreadable-<step>")
        return None

    def restore_ema(self, step: int, like: TrainState) -> dict:
        """Only the EMA params of checkpoint ``step`` (``like`` as in ``restore``; only its ``ema_params`` are
        used): the optimizer state and params are not read. ValueError in one line naming a damaged file."""
        problem = self.damage(step)
        if problem is not None:
            raise ValueError(f"checkpoint {step} of {self.directory} is damaged: {problem}")
        try:
            with quiet_orbax():
                return self._restore_ema(step, like)
        except Exception as e:  # orbax / tensorstore raise many types (often wrapped) for damaged files
            raise ValueError(f"checkpoint {step} of {self.directory} cannot be read ({error_cause(e)}); it is damaged "
                             f"or incomplete") from e

    def _restore_ema(self, step: int, like: TrainState) -> dict:
        abstract = jax.tree.map(
            lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else
            jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), like.ema_params)
        item = {"ema_params": abstract}
        restore_args = jax.tree.map(
            lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape, dtype=s.dtype), item)
        try:
            args = ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
        except TypeError:  # an orbax without partial restore: read the whole state
            return self.restore(step, like)[0].ema_params
        return self.manager.restore(step, args=ocp.args.Composite(state=args))["state"]["ema_params"]

    def close(self) -> None:
        self.manager.close()

