"""Shared converter machinery: read a PyTorch/safetensors state dict, map it onto a Flax params tree with
strict key accounting (every source key used exactly once; missing, unexpected and wrong-shape keys named).

A converter describes its mapping as ``rules``: flat Flax path (tuple of str) -> ``Rule(source_key, transform)``.
``transform`` turns the numpy source tensor into the Flax layout (see ``conv2d``, ``dense``, ``conv1x1_as_dense``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import json
import os
import shutil
import sys
import types
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from jtaba import io


def import_torchvision():
    """torchvision, importable even where its compiled ops do not load (PyPI's CUDA torchvision wheel beside a CPU
    torch fails in ``torchvision._meta_registrations``: "operator torchvision::nms does not exist"); the converters
    and oracles use only its pure-Python model definitions, so that module is stubbed out then. transformers and
    diffusers import torchvision whenever it is installed, hence the call below."""
    try:
        return importlib.import_module("torchvision")
    except RuntimeError:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        return importlib.import_module("torchvision")


if importlib.util.find_spec("torchvision") is not None:
    import_torchvision()


class ConversionError(ValueError):
    """Raised with every missing, unexpected and wrong-shape key listed."""


# ---- layout transforms (torch -> flax) -------------------------------------------------------------------
def identity(w: np.ndarray) -> np.ndarray:
    return w


def dense(w: np.ndarray) -> np.ndarray:
    """nn.Linear (out, in) -> flax Dense kernel (in, out)."""
    return np.ascontiguousarray(w.T)


def conv2d(w: np.ndarray) -> np.ndarray:
    """nn.Conv2d (O, I, kh, kw) -> flax Conv kernel (kh, kw, I, O)."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def conv1d_as_dense(w: np.ndarray) -> np.ndarray:
    """nn.Conv1d with kernel 1 (O, I, 1) -> Dense kernel (I, O)."""
    return np.ascontiguousarray(w[..., 0].T)


def conv1x1_as_dense(w: np.ndarray) -> np.ndarray:
    """nn.Conv2d with kernel 1x1 (O, I, 1, 1) -> Dense kernel (I, O)."""
    return np.ascontiguousarray(w[..., 0, 0].T)


@dataclasses.dataclass(frozen=True)
class Rule:
    source: str
    transform: Callable[[np.ndarray], np.ndarray] = identity


# ---- loading ------------------------------------------------------------------------------------------------
def load_state_dict(path: str) -> Mapping[str, Any]:
    """Load a state dict lazily where possible: ``.safetensors`` (numpy, memory-mapped), a diffusers folder's
    ``diffusion_pytorch_model.safetensors``, or a torch ``.pt/.pth/.bin`` (``torch.load(mmap=True)``). Values
    may be torch tensors; ``to_numpy`` converts one at a time so the model is never held twice."""
    if os.path.isdir(path):
        for name in ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin"):
            if os.path.exists(os.path.join(path, name)):
                return load_state_dict(os.path.join(path, name))
        raise FileNotFoundError(f"{path}: no diffusion_pytorch_model.safetensors / .bin inside")
    if not os.path.exists(path):
        raise FileNotFoundError(f"source checkpoint {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        f = safe_open(path, framework="np")
        return {k: _LazySafetensor(f, k) for k in f.keys()}
    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:  # legacy (pre-zip) torch files cannot be memory-mapped
        if "mmap" not in str(e) and "zip" not in str(e):
            raise
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and not any(hasattr(v, "shape") for v in sd.values()):
        for key in ("state_dict", "model", "ema"):
            if key in sd and isinstance(sd[key], dict):
                return sd[key]
    return sd


class _LazySafetensor:
    def __init__(self, f, key):
        self._f, self._key = f, key

    @property
    def shape(self):
        return tuple(self._f.get_slice(self._key).get_shape())

    def numpy(self):
        return self._f.get_tensor(self._key)


def to_numpy(v: Any) -> np.ndarray:
    """One tensor -> float32/int numpy (fp16/bf16 sources are upcast to float32)."""
    if isinstance(v, _LazySafetensor):
        a = v.numpy()
    elif hasattr(v, "detach"):
        import torch

        t = v.detach()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        a = t.numpy()
    else:
        a = np.asarray(v)
    if a.dtype.kind == "f" and a.dtype != np.float32:
        a = a.astype(np.float32)
    return a


def source_shape(v: Any) -> tuple:
    return tuple(v.shape)


# ---- the mapping ------------------------------------------------------------------------------------------
def flatten(tree: Mapping, prefix: tuple = ()) -> dict[tuple, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten(flat: Mapping[tuple, Any]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return tree


def apply_rules(state: Mapping[str, Any], target_shapes: Mapping[tuple, tuple], rules: Mapping[tuple, Rule],
                ignore: Iterable[str] = (), source_name: str = "source") -> dict:
    """Build the flat Flax params dict from ``state`` (consumed tensor by tensor).

    ``target_shapes``: flat Flax path -> expected shape (from ``jax.eval_shape`` of the module's init).
    ``ignore``: source keys that are known and deliberately unused (e.g. buffers); they do not count as unexpected.
    Raises ``ConversionError`` naming every problem at once.
    """
    unmapped = sorted(set(target_shapes) - set(rules))
    if unmapped:
        raise ConversionError("converter bug: no rule for Flax params " + ", ".join("/".join(p) for p in unmapped))
    missing, wrong, out, used = [], [], {}, set()
    for path, rule in rules.items():
        if path not in target_shapes:
            raise ConversionError(f"converter bug: rule for unknown Flax param {'/'.join(path)}")
        if rule.source not in state:
            missing.append(rule.source)
            continue
        used.add(rule.source)
        arr = rule.transform(to_numpy(state[rule.source]))
        if tuple(arr.shape) != tuple(target_shapes[path]):
            wrong.append(f"{rule.source}: {source_shape(state[rule.source])} -> {tuple(arr.shape)}, "
                         f"expected {tuple(target_shapes[path])} for {'/'.join(path)}")
            continue
        out[path] = arr
    unexpected = sorted(set(state) - used - set(ignore))
    if missing or unexpected or wrong:
        lines = [f"{source_name} does not match the model configuration:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(sorted(missing)))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        if wrong:
            lines.append(f"  wrong shapes ({len(wrong)}):\n    " + "\n    ".join(wrong))
        raise ConversionError("\n".join(lines))
    return unflatten(out)


def eval_shapes(init_fn: Callable[[], Any]) -> dict[tuple, tuple]:
    """Flat path -> shape of a params tree, without allocating it."""
    import jax

    shapes = jax.eval_shape(init_fn)
    return {p: tuple(v.shape) for p, v in flatten(shapes).items()}


def read_flags_file(path: str) -> dict:
    try:
        with open(path) as f:
            flags = json.load(f)
    except OSError as e:
        fail(f"--flags {path}: cannot read it ({e.strerror})")
    except ValueError as e:
        fail(f"--flags {path}: not valid JSON ({e})")
    if not isinstance(flags, dict):
        raise SystemExit(f"--flags {path}: expected a JSON object")
    return flags.get("flags", flags)


def fail(msg: str) -> "NoReturn":  # noqa: F821
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory for the jtaba checkpoint (config.json + params)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a checkpoint (or anything else) already in --out; without it a non-empty --out is "
                        "refused before any weights are read")


@contextlib.contextmanager
def staged_output(args: argparse.Namespace) -> Iterator[None]:
    """Refuse a non-empty ``args.out`` without ``args.overwrite`` (before any work), let the converter write into a
    staging folder beside it (``args.out`` points there meanwhile), and rename it into place only when the whole
    conversion succeeded: a failed or killed conversion leaves the old checkpoint as it was."""
    final = os.path.abspath(args.out)
    if os.path.exists(final) and not os.path.isdir(final):
        fail(f"--out {final} is a file, not a folder")
    if os.path.isdir(final) and os.listdir(final) and not args.overwrite:
        fail(f"--out {final} is not empty (it holds {', '.join(sorted(os.listdir(final))[:4])}); pass --overwrite "
             f"to replace it, or choose another --out")
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    if not os.access(parent, os.W_OK):
        fail(f"--out {final}: {parent} is not writable")
    for left in io.remove_stale(f"{final}.converting-") + io.remove_stale(f"{final}.replaced-"):
        print(f"removed {left}, left by a killed conversion", file=sys.stderr)
    staging = f"{final}.converting-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    args.out = staging
    try:
        try:
            yield
        except KeyboardInterrupt:
            print(f"\ninterrupted: {final} is as it was; run the same command again to convert", file=sys.stderr,
                  flush=True)
            raise SystemExit(130) from None
        old = f"{final}.replaced-{os.getpid()}"
        if os.path.exists(final):
            os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
        print(f"wrote {final}")
    finally:
        args.out = final
        shutil.rmtree(staging, ignore_errors=True)
