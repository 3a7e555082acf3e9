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
from typing import Any, Callable, Iterable, Iterator, Mapping, NoReturn, Sequence

import numpy as np

from jtaba import io
from jtaba.checkpoint import save_checkpoint
from jtaba.cli import program_name


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
    may be torch tensors; ``to_numpy`` converts one at a time so the model is never held twice. A file that is not
    a whole safetensors / torch file (truncated, damaged) is a ``ValueError`` naming it."""
    if os.path.isdir(path):
        for name in ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin"):
            if os.path.exists(os.path.join(path, name)):
                return load_state_dict(os.path.join(path, name))
        raise FileNotFoundError(f"{path}: no diffusion_pytorch_model.safetensors / .bin inside")
    if not os.path.exists(path):
        raise FileNotFoundError(f"source checkpoint {path!r} does not exist")
    if path.endswith(".safetensors"):
        require("safetensors")
        from safetensors import SafetensorError, safe_open

        try:
            f = safe_open(path, framework="np")
        except SafetensorError as e:  # its own exception type (not an OSError / ValueError): a truncated header
            raise ValueError(f"cannot read {path}: not a whole safetensors file ({e})") from None
        return {k: _LazySafetensor(f, k) for k in f.keys()}
    require("torch")
    import pickle

    import torch

    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (pre-zip) torch files cannot be memory-mapped
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:  # truncated, not a torch file, not tensors only
        raise ValueError(f"cannot read {path} as a torch state dict ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'empty or truncated'})") from None
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


def fail(msg: str) -> NoReturn:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def usage_name(converter: str) -> str:
    """What ``usage:`` shows for ``convert/<converter>.py``: ``python convert/<converter>.py``, ``python -m
    convert.<converter>`` or the console script ``jtaba-convert-<converter>``, as invoked."""
    return program_name(f"python convert/{converter}.py", f"convert.{converter}")


# ---- sources: the convert extra, local paths, the hub ------------------------------------------------------------
CONVERT_EXTRA = ('pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu  (a CPU torch; '
                 'skip it where a torch is installed), then  pip install -e ".[convert]"')
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def require(*modules: str) -> None:
    """Exit naming the ``convert`` extra when any of ``modules`` (torch, safetensors, huggingface_hub, transformers,
    sentencepiece: what the extra installs) cannot be imported."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        fail(f"{' and '.join(missing)} not installed: the converters need the convert extra:\n  {CONVERT_EXTRA}")


def looks_local(src: str) -> bool:
    """Whether ``src`` is meant as a path rather than a hub id ("org/name"): absolute, relative (``.``) or home
    (``~``), nested deeper than org/name, a weights file name (.pt .pth .bin .safetensors .ckpt) or inside a folder
    that exists here."""
    parent = os.path.dirname(src)
    return (src.startswith((".", "~", "/", os.sep)) or src.count("/") > 1 or src.lower().endswith(WEIGHT_SUFFIXES)
            or bool(parent) and os.path.isdir(os.path.expanduser(parent)))


def check_source(src: str, flag: str = "--src") -> None:
    """Exit with "no such file" when a local-looking ``src`` (``looks_local``) does not exist, before it could be
    taken for a hub id."""
    if not os.path.exists(src) and looks_local(src):
        fail(f"{flag} {src}: no such file or folder")


def hub_download(repo_id: str, patterns: Sequence[str], src_note: str = "") -> str:
    """``huggingface_hub.snapshot_download`` of the files of ``repo_id`` matching ``patterns``: the local snapshot
    folder. Without the hub (offline, no network, an unknown repo): exit with the commands that fetch the same files
    on a connected machine (``hub_message``)."""
    require("huggingface_hub")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, allow_patterns=list(patterns))
    except Exception as e:  # offline mode (HF_HUB_OFFLINE=1), no network, unknown repo: all end here
        fail(hub_message(repo_id, patterns, e, src_note))


def hub_message(repo_id: str, patterns: Sequence[str], error: BaseException | None = None,
                src_note: str = "") -> str:
    """Why ``repo_id`` could not be fetched and how to fetch ``patterns`` (file names or globs) of it on a connected
    machine: huggingface_hub's CLI (``hf download``) and the same in Python, into a folder to pass as --src."""
    name = repo_id.split("/")[-1]
    reason = "" if error is None else f" ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    globbed = any(c in p for p in patterns for c in "*?[")
    files = " ".join(f"--include '{p}'" for p in patterns) if globbed else " ".join(patterns)
    return (f"cannot fetch {repo_id!r} from the Hugging Face hub{reason}.\n"
            f"On a connected machine run\n  hf download {repo_id} {files} --local-dir {name}\n"
            f"or, in Python,\n  python -c \"import huggingface_hub; huggingface_hub.snapshot_download("
            f"'{repo_id}', allow_patterns={list(patterns)!r}, local_dir='{name}')\"\n"
            f"and pass --src {name}{src_note}.")


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


@contextlib.contextmanager
def source_errors() -> Iterator[None]:
    """Exit with the one-line error of a source that does not convert: ``ConversionError`` (its keys),
    ``ValueError`` (a damaged file, a bad config) or ``FileNotFoundError`` (a missing file)."""
    try:
        yield
    except (ConversionError, ValueError, FileNotFoundError) as e:
        fail(str(e))


def save_converted(out: str, convert: Callable[[], tuple[dict, Any]],
                   extras: Mapping[str, Any] | None = None) -> tuple[dict, Any]:
    """A converter's last step, inside ``staged_output``: ``convert()`` -> (config dict, params tree) (a source that
    does not convert exits with its one-line error), ``extras`` added to the config's "extras", saved as a jtaba
    checkpoint in ``out``; returns (config, params)."""
    with source_errors():
        config, params = convert()
    if extras:
        config["extras"].update(extras)
    save_checkpoint(out, config, params)
    return config, params
