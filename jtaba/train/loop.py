"""The training loop: resume-or-init, jitted data-parallel steps, scheduled checkpoints, logging.

Running ``train`` again on the same directory continues from its newest checkpoint; since the data order and
every step's randomness are functions of (seed, step), the continued run is bit-identical to an uninterrupted
one. SIGTERM / SIGINT stop the run cleanly after the current step with a checkpoint (a second SIGINT aborts).
Losses are appended to ``DIR/log.jsonl`` (strict JSON: means over ``log_every`` steps; a resumed run appends only
steps after the last logged one). The losses are checked finite before every checkpoint and log line: a NaN / Inf
loss stops training with an error naming its step, and no checkpoint after it is written.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import threading
import time
from typing import Callable

import jax
import numpy as np
from tqdm import tqdm

from jtaba import io, precision
from jtaba.checkpoint import quiet_orbax
from jtaba.data import BatchIterator, open_dataset
from jtaba.sharding import batch_sharding, data_mesh, replicated
from jtaba.train.presets import TrainConfig
from jtaba.train.run_checkpoints import RunCheckpoints, write_run_config
from jtaba.train.save_schedule import parse_save_schedule
from jtaba.train.state import TrainState, init_state, make_optimizer
from jtaba.train.step import make_train_step, network_for

LOG_NAME = "log.jsonl"


@contextlib.contextmanager
def _stop_signals():
    """Yields a dict whose "stop" turns True on SIGTERM / the first SIGINT (main thread only)."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, _frame):
        if flag["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = True

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@functools.lru_cache(maxsize=8)
def _jitted_init(cfg: TrainConfig, mesh):
    init = functools.partial(init_state, network_for(cfg), cfg.seed, make_optimizer(cfg.lr, cfg.weight_decay))
    return jax.jit(init, out_shardings=replicated(mesh))


def initial_state(cfg: TrainConfig, mesh) -> TrainState:
    """Freshly initialised TrainState, replicated over ``mesh``."""
    # The length, save / log schedule and batch size do not change the state: one compilation for runs differing there.
    return _jitted_init(cfg.replace(steps=1, save="", keep=None, log_every=1, batch_size=1), mesh)()


def abstract_state(cfg: TrainConfig, mesh) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of the TrainState, without computing it."""
    repl = replicated(mesh)
    shapes = jax.eval_shape(lambda: initial_state(cfg, mesh))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), shapes)


def train(cfg: TrainConfig, out_dir: str, *, data_dir: str | None = None,
          on_step: Callable[[int], None] | None = None, progress: bool = True) -> TrainState:
    """Train until ``cfg.steps`` updates (or a stop signal), resuming from ``out_dir``; returns the final state.
    Matmuls and convolutions run at ``cfg.compute_dtype``'s precision (``jtaba.precision``: float32 = highest).

    ``on_step(step)`` is called after every update (before any checkpoint of that step).
    """
    with precision.scope(cfg.compute_dtype):
        return _train(cfg, out_dir, data_dir, on_step, progress)


def _last_logged_step(log_path: str) -> int:
    """The step of the last whole line of ``log_path`` (0 when none); a line cut by a kill is removed."""
    if not os.path.exists(log_path):
        return 0
    with open(log_path) as f:
        text = f.read()
    lines, last = [], 0
    for line in text.splitlines(keepends=True):
        try:
            last = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            break
        if not line.endswith("\n"):
            break
        lines.append(line)
    if len("".join(lines)) != len(text):
        io.write_text(log_path, "".join(lines))
    return last


def _check_losses(pending: list[tuple[int, dict]], last_saved: int | None) -> None:
    """ValueError naming the first step of ``pending`` ((step, loss terms)) whose loss is not finite."""
    for step, terms in pending:
        if not all(np.isfinite(float(v)) for v in terms.values()):
            kept = f"step {last_saved}" if last_saved is not None else "none"
            raise ValueError(f"the loss is not finite (NaN / Inf) at step {step}: training stopped (last good "
                             f"checkpoint: {kept}); lower --lr or check the data")


def _dataset(name: str, size: int, data_dir: str | None):
    """``open_dataset``; a tfds dataset that is not prepared (tfds raises many kinds) is one ValueError."""
    try:
        with quiet_orbax():  # tfds logs through absl too
            return open_dataset(name, size, data_dir)
    except Exception as e:  # its causes mislead ("TFRECORD is not supported" for a dataset that is not there)
        where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
        raise ValueError(f"--dataset={name} is not prepared as array_record under {where} ({type(e).__name__}); "
                         f"prepare it once with network access: python -c \"from jtaba.data.tfds_source import "
                         f"prepare; prepare('{name}')\" (or give --data-dir)") from None


def _train(cfg: TrainConfig, out_dir: str, data_dir, on_step, progress) -> TrainState:
    cfg.check()
    mesh = data_mesh()
    if cfg.batch_size % mesh.size:
        raise ValueError(f"batch size {cfg.batch_size} is not divisible by the {mesh.size} devices")
    write_run_config(out_dir, cfg)
    ckpts = RunCheckpoints(out_dir, keep=cfg.keep)
    try:
        should_save = parse_save_schedule(cfg.save)
        restored = ckpts.restore_newest_readable(abstract_state(cfg, mesh))
        if restored is None:
            state, data_state = initial_state(cfg, mesh), None
        else:
            _, state, data_state = restored
        size = network_for(cfg).config.image_size
        data = BatchIterator(_dataset(cfg.dataset, size, data_dir), cfg.batch_size, cfg.seed, data_state)
        train_step = make_train_step(cfg, mesh)
        if int(state.step) == 0 and should_save(0):
            ckpts.save(state, data.state())
        return _loop(cfg, out_dir, ckpts, should_save, state, data, train_step, batch_sharding(mesh), on_step,
                     progress)
    finally:
        ckpts.close()


def _loop(cfg, out_dir, ckpts, should_save, state, data, train_step, batched, on_step, progress) -> TrainState:
    step = int(state.step)
    last_saved = ckpts.latest_step()
    pending: list[tuple[int, dict]] = []
    t_log = time.time()
    log_path = os.path.join(out_dir, LOG_NAME)
    logged = _last_logged_step(log_path)  # a run killed right after a log line logs those steps again: skipped
    with _stop_signals() as signals, tqdm(total=cfg.steps, initial=step, disable=not progress,
                                          desc=cfg.name, dynamic_ncols=True) as bar:
        while step < cfg.steps:
            batch = jax.device_put(next(data), batched)
            state, terms = train_step(state, batch)
            step += 1
            pending.append((step, terms))
            if on_step is not None:
                on_step(step)
            stop = signals["stop"] or step == cfg.steps
            log = step % cfg.log_every == 0 or stop
            if should_save(step) or stop or log:
                _check_losses(pending, last_saved)
            if should_save(step) or stop:
                ckpts.save(state, data.state())
                last_saved = step
            if log:
                means = {k: float(np.mean([float(t[k]) for _, t in pending])) for k in pending[0][1]}
                rate = len(pending) / max(time.time() - t_log, 1e-9)
                if step > logged:
                    with open(log_path, "a") as f:
                        f.write(json.dumps(io.finite_json({"step": step, **means, "steps_per_s": rate}),
                                           allow_nan=False) + "\n")
                bar.set_postfix(loss=f"{means['loss']:.4f}", mse=f"{means['mse']:.4f}", vb=f"{means['vb']:.4f}")
                pending, t_log = [], time.time()
            bar.update(1)
            if stop:  # the flag as read above: a signal arriving later stops after the next step
                break
    return state
