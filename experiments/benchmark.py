"""Benchmark DDIM sample + invert (the paper's main loop) on one device: one table row per configuration (model x
dtype x batch x T).

What is measured, per configuration:
* images/s: a batch of noise is sampled over T DDIM steps and the result inverted over T steps (2T network calls
  per image, both compiled ``lax.scan`` loops of ``jtaba.engine``); median wall time of ``--repeats`` runs after
  one warm-up run.
* compile time of the two loops (trace + lower + XLA compile): "cold" into a fresh, empty persistent compilation
  cache, "warm" a second compile after ``jax.clear_caches()`` that is served from that cache (the number of cache
  hits is checked and recorded). With ``--no-compilation-cache`` only the cold time, without a disk cache.
* peak memory: XLA's buffer assignment of the larger of the two loops (arguments + outputs + temporaries); the
  JSON also carries the device allocator's process peak where the device reports one (GPUs): that is the peak of
  the whole process, so measure one configuration per process when comparing memory (``.ci/gpu`` does).
* cuDNN attention: whether the compiled loops call cuDNN's fused attention (``__cudnn$fmha``; JSON
  ``cudnn_attention``), as ``jax.nn.dot_product_attention`` picks it for bfloat16 on GPUs.
* FLOPs per network call from the *un-optimised* HLO (``jax.jit(network).lower(...).cost_analysis()``, 2 FLOPs per
  multiply-add of every dot and convolution). The compiled (optimised) HLO is not used: on GPUs it hides the
  cuDNN / cuBLAS custom calls (an H200 reported 0.9 instead of 15.75 GFLOP per ADM-32 call), which made MFU
  17-43x too low. The DDIM arithmetic between calls (a few elementwise ops per pixel) is not counted.
* TFLOP/s achieved = FLOPs per call x 2T x batch / seconds per batch; MFU = achieved / the device's dense peak for
  the compute precision (built-in table for H100 / H200 / A100, else ``--peak-tflops``; none on CPUs).
* with ``--torch``, the PyTorch peer running the same loop on the same device: diffusers
  ``DiTTransformer2DModel`` + ``DDIMScheduler`` / ``DDIMInverseScheduler`` for DiT, guided-diffusion's
  ``UNetModel`` + ``ddim_sample_loop`` / ``ddim_reverse_sample`` for ADM (``pip install --no-deps
  guided-diffusion-sdk``); random weights of the same architecture.

Precision (``--dtype``): "float32" = float32 with matmuls / convolutions at precision HIGHEST (the numbers of the
original code; the peer with TF32 off), "tf32" = float32 storage with TF32 matmuls / convolutions on GPUs (the peer
with TF32 on), "bfloat16" = network compute in bfloat16 (params and DDIM arithmetic float32; the ADM peer runs
guided-diffusion's fp16 torso, ``use_fp16``, the DiT peer bfloat16).

    python -m experiments.benchmark                                    # the built-in default model
    python -m experiments.benchmark --arch adm32 --batch 256 --steps 50 --dtype bfloat16 tf32 float32 --torch
    python -m experiments.benchmark --arch dit-xl2 --batch 64 --steps 50 --dtype bfloat16 --torch
    python -m experiments.benchmark --ckpt DIR --batch 64 --steps 100 --json=results.json

Weights are random for ``--arch`` (speed does not depend on them). Output: a table on stdout (progress on stderr);
``--json`` prints a JSON document instead of the table, ``--json=PATH`` writes it to PATH and still prints the table.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import itertools
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp

import jtaba
from jtaba import compilation_cache, engine, home
from jtaba import precision as precision_lib
from jtaba.cli import HelpFormatter, entry_point, program_name
from jtaba.diffusion import DiffusionConfig
from jtaba.model import Model, build
from jtaba.precision import PRECISIONS

# The custom call of cuDNN's fused (flash) attention in a compiled GPU HLO.
CUDNN_ATTENTION = "__cudnn$fmha"
# Dense peak TFLOP/s by device kind (substring of jax's device_kind, most specific first) and precision.
PEAK_TFLOPS = {
    "H100 PCIe": {"bfloat16": 756.0, "tf32": 378.0, "float32": 51.0},
    "H100": {"bfloat16": 989.0, "tf32": 494.0, "float32": 67.0},
    "H200": {"bfloat16": 989.0, "tf32": 494.0, "float32": 67.0},
    "A100": {"bfloat16": 312.0, "tf32": 156.0, "float32": 19.5},
}

ARCHS = ("adm32", "adm64", "adm256", "dit-xl2", "dit-s2")
DEFAULT_MODEL = home.default_model_dir()

DIT_HUB_DDIM = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000,
                    clip_sample=False, set_alpha_to_one=True, steps_offset=0)
DIT_XL2 = dict(input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
               mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True)
DIT_S2 = dict(DIT_XL2, hidden_size=384, depth=12, num_heads=6)


# ----------------------------------------------------------------------------------------------------- models
def random_model(arch: str, precision: str) -> Model:
    """A paper architecture with random weights (params float32, network computing in ``precision``'s dtype)."""
    if arch.startswith("adm"):
        from jtaba.models import adm

        family, config = "adm", adm.Config.from_flags(adm.PRESETS[arch])
        diffusion = DiffusionConfig.from_adm_flags(adm.PRESETS[arch])
    else:
        from jtaba.models import dit

        family, config = "dit", dit.Config.from_facebook({"dit-xl2": DIT_XL2, "dit-s2": DIT_S2}[arch])
        diffusion = DiffusionConfig.from_diffusers_scheduler(DIT_HUB_DDIM, learned_sigma=True)
    config, net = build(family, config.to_dict(), precision_lib.compute_dtype(precision))
    c, h, w = Model(family, config, net, None, diffusion).sample_shape
    cond = jnp.zeros((1,), jnp.int32) if getattr(config, "num_classes", None) else None
    params = jax.jit(lambda k: net.init(k, jnp.zeros((1, h, w, c)), jnp.zeros((1,)), cond)["params"])(
        jax.random.key(0))
    return Model(family, config, net, params, diffusion)


def load_model(spec: "Config") -> Model:
    if spec.arch:
        return random_model(spec.arch, spec.precision)
    return jtaba.load(spec.ckpt, "bfloat16" if spec.precision == "bfloat16" else "float32")


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


# ------------------------------------------------------------------------------------------------ FLOPs, MFU
def hlo_flops(lowered) -> float:
    """FLOPs of a ``jax.jit(f).lower(...)`` result from XLA's cost analysis of the un-optimised HLO. JAX returns one
    dict (current versions) or a list of dicts, one per HLO module (older versions): summed. NaN when unknown."""
    analysis = lowered.cost_analysis()
    if analysis is None:
        return float("nan")
    if isinstance(analysis, dict):
        analysis = [analysis]
    values = [float(a["flops"]) for a in analysis if a and "flops" in a]
    return float(sum(values)) if values else float("nan")


def network_inputs(model: Model, batch: int):
    """(x, t, cond) of one network call at ``batch`` (NHWC float32 noise, float32 labels, class labels or None)."""
    c, h, w = model.sample_shape
    x = jax.random.normal(jax.random.key(1), (batch, h, w, c), jnp.float32)
    t = jnp.full((batch,), 500.0, jnp.float32)
    cond = jnp.zeros((batch,), jnp.int32) if model.num_classes else None
    return x, t, cond


def network_flops(network, params, x, t, cond=None) -> float:
    """FLOPs of one call of a flax ``network(x, t, cond)`` at the batch of x (un-optimised HLO, nothing compiled)."""
    fn = jax.jit(lambda p, x, t, c: network.apply({"params": p}, x, t, c))
    return hlo_flops(fn.lower(params, x, t, cond))


def throughput(flops_per_call: float, calls: int, seconds: float, peak_tflops: Optional[float]):
    """(achieved TFLOP/s, MFU) of ``calls`` network calls of ``flops_per_call`` FLOPs each in ``seconds``; MFU is
    achieved / ``peak_tflops`` (None without a peak)."""
    achieved = flops_per_call * calls / seconds / 1e12
    return achieved, (achieved / peak_tflops if peak_tflops else None)


def peak_tflops(precision: str, override: Optional[float] = None, device_kind: Optional[str] = None):
    """The device's dense peak TFLOP/s at ``precision``: ``override`` when given, else the built-in table by device
    kind (None when the device is not in it, e.g. CPUs)."""
    if override:
        return float(override)
    kind = device_kind if device_kind is not None else jax.devices()[0].device_kind
    for name, peaks in PEAK_TFLOPS.items():
        if name in kind:
            return peaks[precision]
    return None


# --------------------------------------------------------------------------------------------- measurements
def xla_peak_bytes(compiled) -> int:
    mem = compiled.memory_analysis()
    if mem is None:
        return 0
    peak = int(getattr(mem, "peak_memory_in_bytes", 0) or 0)
    planned = int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                  - mem.alias_size_in_bytes)
    return max(peak, planned)


def device_peak_bytes() -> Optional[int]:
    stats = jax.devices()[0].memory_stats() or {}
    return int(stats["peak_bytes_in_use"]) if "peak_bytes_in_use" in stats else None


def compile_loops(specs, params, x, cond) -> tuple[list, float]:
    """Trace, lower and compile the loops after dropping JAX's in-memory caches; (executables, seconds)."""
    jax.clear_caches()
    t0 = time.perf_counter()
    compiled = [engine.run_loop.lower(s, params, x, cond).compile() for s in specs]
    return compiled, time.perf_counter() - t0


def timed_compiles(specs, params, x, cond, use_cache: bool) -> tuple[list, dict]:
    """Compile the loops cold (a fresh, empty persistent cache) and, with the cache, warm (again, served from it).
    Restores the cache setting found on entry. Returns (executables, timing dict)."""
    if not use_cache:
        compiled, cold = compile_loops(specs, params, x, cond)
        return compiled, {"compile_cold_s": cold, "compile_warm_s": None, "warm_cache_hits": None}
    before = compilation_cache.directory()
    fresh = tempfile.mkdtemp(prefix="jtaba-benchmark-cache-")
    try:
        compilation_cache.enable(fresh)
        with compilation_cache.count_events() as cold_events:
            _, cold = compile_loops(specs, params, x, cond)
        with compilation_cache.count_events() as warm_events:
            compiled, warm = compile_loops(specs, params, x, cond)
    finally:
        if before:
            compilation_cache.enable(before)
        else:
            compilation_cache.disable()
        shutil.rmtree(fresh, ignore_errors=True)
    if warm_events["hits"] < len(specs):
        print(f"warning: the warm compile hit the persistent cache {warm_events['hits']} of {len(specs)} times "
              f"(cold: {cold_events['misses']} misses)", file=sys.stderr)
    return compiled, {"compile_cold_s": cold, "compile_warm_s": warm, "warm_cache_hits": warm_events["hits"]}


def median_seconds(once: Callable[[], float], repeats: int) -> float:
    once()  # warm-up
    return statistics.median(once() for _ in range(max(1, repeats)))


def bench_jax(model: Model, batch: int, steps: int, repeats: int, use_cache: bool = True) -> dict:
    """Time sample + invert of ``batch`` images over ``steps`` DDIM steps (see the module docstring)."""
    x, t, cond = network_inputs(model, batch)
    flops_call = network_flops(model.network, model.params, x, t, cond)
    specs = [engine.LoopSpec(network=model.network, diffusion=model.diffusion, steps=steps, invert=inv)
             for inv in (False, True)]
    compiled, compile_times = timed_compiles(specs, model.params, x, cond, use_cache)

    def once():
        t0 = time.perf_counter()
        z, _ = compiled[0](model.params, x, cond)
        out, _ = compiled[1](model.params, z, cond)
        out.block_until_ready()
        return time.perf_counter() - t0

    seconds = median_seconds(once, repeats)
    device_peak = device_peak_bytes()
    fused_attention = any(CUDNN_ATTENTION in c.as_text() for c in compiled)
    return {"images_per_s": batch / seconds, "seconds_per_batch": seconds, **compile_times,
            "network_calls_per_image": 2 * steps, "gflop_per_call_per_image": flops_call / batch / 1e9,
            "flop_per_batch": flops_call * 2 * steps,
            "peak_memory_gib": max(xla_peak_bytes(c) for c in compiled) / 2 ** 30,
            "device_peak_memory_gib": None if device_peak is None else device_peak / 2 ** 30,
            "cudnn_attention": fused_attention}


# ------------------------------------------------------------------------------------------------ PyTorch peer
@contextlib.contextmanager
def torch_precision(precision: str):
    """TF32 on for "tf32", off otherwise (restored afterwards)."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def torch_timing(once: Callable[[], None], batch: int, repeats: int, device: str) -> dict:
    import torch

    def timed():
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        once()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = median_seconds(timed, repeats)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else None
    return {"images_per_s": batch / seconds, "seconds_per_batch": seconds, "peak_memory_gib": peak,
            "torch": torch.__version__, "device": device}


def bench_torch_dit(model: Model, batch: int, steps: int, precision: str, repeats: int) -> dict:
    """diffusers DiTTransformer2DModel + DDIMScheduler / DDIMInverseScheduler: the same sample + invert loop."""
    import torch
    from diffusers import DDIMInverseScheduler, DDIMScheduler, DiTTransformer2DModel

    cfg = model.config
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    net = DiTTransformer2DModel(num_attention_heads=cfg.num_heads, attention_head_dim=cfg.hidden_size // cfg.num_heads,
                                in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_layers=cfg.depth,
                                sample_size=cfg.input_size, patch_size=cfg.patch_size,
                                num_embeds_ada_norm=cfg.num_classes).to(device, tdtype).eval()
    fwd, inv = DDIMScheduler(**DIT_HUB_DDIM), DDIMInverseScheduler(**DIT_HUB_DDIM)
    fwd.set_timesteps(steps)
    inv.set_timesteps(steps)
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, device=device, dtype=tdtype)
    y = torch.zeros(batch, dtype=torch.long, device=device)

    @torch.no_grad()
    def loop(sched, z):
        for t in sched.timesteps:
            eps = net(z, timestep=t.expand(batch).to(device), class_labels=y).sample[:, :cfg.in_channels]
            z = sched.step(eps, t, z).prev_sample
        return z

    with torch_precision(precision):
        res = torch_timing(lambda: loop(inv, loop(fwd, x)), batch, repeats, device)
    return {**res, "peer": "diffusers DiTTransformer2DModel", "params": sum(p.numel() for p in net.parameters())}


def bench_torch_adm(model: Model, batch: int, steps: int, precision: str, repeats: int) -> dict:
    """guided-diffusion UNetModel + ddim_sample_loop then ddim_reverse_sample over every step (clip_denoised)."""
    import torch
    from guided_diffusion.script_util import create_gaussian_diffusion
    from guided_diffusion.unet import UNetModel

    cfg, diff = model.config, model.diffusion
    device = "cuda" if torch.cuda.is_available() else "cpu"
    fp16 = precision == "bfloat16"
    net = UNetModel(image_size=cfg.image_size, in_channels=cfg.in_channels, model_channels=cfg.model_channels,
                    out_channels=cfg.out_channels, num_res_blocks=cfg.num_res_blocks,
                    attention_resolutions=tuple(cfg.attention_ds), dropout=0.0, channel_mult=tuple(cfg.channel_mult),
                    num_classes=cfg.num_classes, use_fp16=fp16, num_heads=cfg.num_heads,
                    num_head_channels=cfg.num_head_channels, num_heads_upsample=cfg.num_heads_upsample,
                    use_scale_shift_norm=cfg.use_scale_shift_norm, resblock_updown=cfg.resblock_updown,
                    use_new_attention_order=cfg.use_new_attention_order).to(device).eval()
    if fp16:
        net.convert_to_fp16()
    diffusion = create_gaussian_diffusion(steps=diff.num_train_timesteps, learn_sigma=diff.learned_sigma,
                                          noise_schedule=diff.beta_schedule, rescale_timesteps=diff.rescale_timesteps,
                                          timestep_respacing=f"ddim{steps}")
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
    kwargs = {"y": torch.zeros(batch, dtype=torch.long, device=device)} if cfg.num_classes else {}

    @torch.no_grad()
    def once():
        z = diffusion.ddim_sample_loop(net, x.shape, noise=x, clip_denoised=True, model_kwargs=kwargs,
                                       device=device)
        for i in range(steps):
            t = torch.full((batch,), i, dtype=torch.long, device=device)
            z = diffusion.ddim_reverse_sample(net, z, t, clip_denoised=True, model_kwargs=kwargs)["sample"]
        return z

    with torch_precision(precision):
        res = torch_timing(once, batch, repeats, device)
    return {**res, "peer": "guided-diffusion UNetModel" + (" (use_fp16)" if fp16 else ""),
            "params": sum(p.numel() for p in net.parameters())}


def bench_torch(model: Model, batch: int, steps: int, precision: str, repeats: int) -> dict:
    """The PyTorch peer of ``model``'s family, or {"error": why} when there is none here."""
    runners = {"dit": bench_torch_dit, "adm": bench_torch_adm}
    if model.family not in runners:
        return {"error": f"no PyTorch peer for the {model.family} family"}
    try:
        import convert.common  # noqa: F401  (an installed torchvision importable before diffusers imports it)

        return runners[model.family](model, batch, steps, precision, repeats)
    except ImportError as e:
        need = "guided-diffusion-sdk (pip install --no-deps)" if model.family == "adm" else "torch and diffusers"
        return {"error": f"{e} (the {model.family} peer needs {need})"}


# ------------------------------------------------------------------------------------------------------ CLI
@dataclasses.dataclass(frozen=True)
class Config:
    """One table row: a model (``arch`` with random weights or a checkpoint ``ckpt``), precision, batch, T."""
    arch: Optional[str]
    ckpt: Optional[str]
    precision: str
    batch: int
    steps: int

    @property
    def name(self) -> str:
        if self.arch:
            return self.arch
        return "default" if os.path.abspath(self.ckpt) == DEFAULT_MODEL else os.path.basename(
            os.path.normpath(self.ckpt))


def configurations(args: argparse.Namespace) -> list[Config]:
    models = [(a, None) for a in args.arch or ()] + [(None, c) for c in args.ckpt or ()]
    models = models or [(None, DEFAULT_MODEL)]
    return [Config(a, c, p, b, s) for (a, c), p, b, s in itertools.product(models, args.dtype, args.batch, args.steps)]


def run_config(spec: Config, args: argparse.Namespace, peak: Optional[float]) -> dict:
    with precision_lib.scope(spec.precision):
        model = load_model(spec)
        row = {"model": spec.name, "family": model.family, "params": count_params(model.params),
               "dtype": spec.precision, "matmul_precision": precision_lib.MATMUL[spec.precision], "batch": spec.batch,
               "steps": spec.steps}
        row.update(bench_jax(model, spec.batch, spec.steps, args.repeats, not args.no_compilation_cache))
    row["tflops_per_s"], row["mfu"] = throughput(row["flop_per_batch"], 1, row["seconds_per_batch"], peak)
    row["peak_tflops"] = peak
    if args.torch:
        row["torch"] = bench_torch(model, spec.batch, spec.steps, spec.precision, args.repeats)
    return row


def _fmt(value, spec: str, none: str = "—") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def format_table(doc: dict) -> str:
    """The results as an aligned text table (one row per configuration) with a header line about the device."""
    meta, rows = doc["meta"], doc["rows"]
    with_torch = any("torch" in r for r in rows)
    header = ["model", "params", "dtype", "batch", "T", "img/s", "compile cold", "warm", "peak mem",
              "GFLOP/call/img", "TFLOP/s", "MFU"]
    if with_torch:
        header += ["torch img/s", "torch mem", "jtaba/torch"]
    table = [header]
    for r in rows:
        line = [r["model"], _params(r["params"]), r["dtype"], str(r["batch"]), str(r["steps"]),
                _fmt(r["images_per_s"], ".3g"), _fmt(r["compile_cold_s"], ".1f") + " s",
                _fmt(r["compile_warm_s"], ".2f") + (" s" if r["compile_warm_s"] is not None else ""),
                _fmt(r["peak_memory_gib"], ".3g") + " GiB", _fmt(r["gflop_per_call_per_image"], ".4g"),
                _fmt(r["tflops_per_s"], ".3g"), _fmt(r["mfu"], ".1%")]
        if with_torch:
            t = r.get("torch") or {}
            ok = "images_per_s" in t
            line += [_fmt(t.get("images_per_s"), ".3g") if ok else "n/a",
                     _fmt(t.get("peak_memory_gib"), ".2f") + (" GiB" if t.get("peak_memory_gib") is not None else ""),
                     f"{r['images_per_s'] / t['images_per_s']:.2f}x" if ok else "—"]
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    text = [" | ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
            for row in table]
    text.insert(1, "-+-".join("-" * w for w in widths))
    peaks = meta.get("peak_tflops")
    peak = ("dense peak TFLOP/s " + ", ".join(f"{k} {v:g}" for k, v in peaks.items()) if peaks
            else "no dense peak known for this device: MFU not computed (pass --peak-tflops)")
    lines = [f"{meta['device_kind']} ({meta['platform']}), jax {meta['jax']}, {meta['date']}; sample + invert, "
             f"2T network calls per image, median of {meta['repeats']} after a warm-up; {peak}", *text]
    notes = [f"  {r['model']} {r['dtype']} b{r['batch']} T{r['steps']}: torch peer unavailable: {r['torch']['error']}"
             for r in rows if "error" in (r.get("torch") or {})]
    cache = meta.get("compilation_cache")
    lines.append("compile: trace + lower + XLA compile of both loops; cold = empty persistent cache, warm = served "
                 "from it" if cache else "compile: trace + lower + XLA compile of both loops (no persistent cache)")
    return "\n".join(lines + notes)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program_name("python -m experiments.benchmark"), description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--arch", nargs="+", choices=ARCHS, metavar="ARCH",
                   help=f"paper architectures with random weights, any of {', '.join(ARCHS)}; without --arch and "
                        f"--ckpt the built-in default model ({DEFAULT_MODEL})")
    p.add_argument("--ckpt", nargs="+", metavar="DIR", help="jtaba checkpoint directories (config.json + params)")
    p.add_argument("--batch", nargs="+", type=int, default=[64], help="images per batch (one device)")
    p.add_argument("--steps", nargs="+", type=int, default=[20],
                   help="DDIM steps T (sampling T + inversion T network calls per image)")
    p.add_argument("--dtype", nargs="+", choices=PRECISIONS, default=["float32"], metavar="DTYPE",
                   help=f"compute precisions, any of {', '.join(PRECISIONS)} (see above)")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions after one warm-up (median reported)")
    p.add_argument("--torch", action="store_true", help="also time the PyTorch peer on the same device")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense peak TFLOP/s for MFU (overrides the built-in table, which knows "
                        f"{', '.join(PEAK_TFLOPS)})")
    p.add_argument("--no-compilation-cache", action="store_true",
                   help="do not use the persistent compilation cache ($JTABA_HOME/compilation_cache); only the "
                        "cold compile time is measured")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="--json alone: print a JSON document instead of the table; --json=PATH: write it to PATH "
                        "and print the table")
    return p


@entry_point
def main(argv: Optional[list[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    if min(args.batch) < 1 or min(args.steps) < 1 or args.repeats < 1:
        raise SystemExit("--batch, --steps and --repeats must be positive")
    for ckpt in args.ckpt or ():
        if not os.path.exists(os.path.join(ckpt, "config.json")):
            raise SystemExit(f"--ckpt {ckpt}: not a jtaba checkpoint (no config.json)")
    cache_dir = None if args.no_compilation_cache else compilation_cache.enable()
    device = jax.devices()[0]
    specs = configurations(args)
    meta = {"device_kind": device.device_kind, "platform": device.platform, "jax": jax.__version__,
            "date": datetime.date.today().isoformat(), "repeats": args.repeats, "compilation_cache": cache_dir,
            "peak_tflops": {p: peak_tflops(p, args.peak_tflops) for p in args.dtype}
            if peak_tflops("float32", args.peak_tflops) else None,
            "flops": "un-optimised HLO cost analysis of one network call (jit(...).lower(...).cost_analysis())"}
    rows = []
    for i, spec in enumerate(specs, 1):
        print(f"[{i}/{len(specs)}] {spec.name} {spec.precision} batch {spec.batch} T {spec.steps} ...",
              file=sys.stderr, flush=True)
        rows.append(run_config(spec, args, peak_tflops(spec.precision, args.peak_tflops)))
    doc = {"meta": meta, "rows": rows}
    if args.json == "-":
        print(json.dumps(doc, indent=1))
    else:
        print(format_table(doc))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(doc, f, indent=1)
    return doc


if __name__ == "__main__":
    main()
