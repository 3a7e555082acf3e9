"""Benchmark DDIM sample + invert: images/s, compile time, peak memory, FLOPs and MFU (from XLA's cost analysis),
optionally beside the PyTorch peer (diffusers, same algorithm, same device).

    python -m experiments.benchmark --arch=adm32 --batch=128 --steps=100 --dtype=bfloat16
    python -m experiments.benchmark --arch=dit-xl2 --batch=64 --steps=50 --torch
    python -m experiments.benchmark --ckpt=DIR --batch=64 --steps=100

Weights are random for ``--arch`` (speed does not depend on them). FLOPs are XLA's count for one network step
(a scan body is counted once by XLA, so one step is compiled and multiplied by 2·T). MFU = achieved FLOP/s over the
device's dense peak for the compute dtype (known GPUs, or ``--peak-tflops``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

import jtaba
from jtaba import engine
from jtaba.diffusion import DiffusionConfig
from jtaba.model import Model, build

# Dense peak TFLOP/s by device kind and compute dtype (fp32 matmuls run as TF32 under JAX's default precision).
PEAK_TFLOPS = {
    "H100": {"bfloat16": 989.0, "float32": 494.0},
    "H200": {"bfloat16": 989.0, "float32": 494.0},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
}

DIT_HUB_DDIM = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000,
                    clip_sample=False, set_alpha_to_one=True, steps_offset=0)
DIT_XL2 = dict(input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
               mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True)
DIT_S2 = dict(DIT_XL2, hidden_size=384, depth=12, num_heads=6)


def random_model(arch: str, dtype: str) -> Model:
    compute = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    if arch.startswith("adm"):
        from jtaba.models import adm

        family, config = "adm", adm.Config.from_flags(adm.PRESETS[arch])
        diffusion = DiffusionConfig.from_adm_flags(adm.PRESETS[arch])
    else:
        from jtaba.models import dit

        family, config = "dit", dit.Config.from_facebook({"dit-xl2": DIT_XL2, "dit-s2": DIT_S2}[arch])
        diffusion = DiffusionConfig.from_diffusers_scheduler(DIT_HUB_DDIM, learned_sigma=True)
    config, net = build(family, config.to_dict(), compute)
    c, h, w = Model(family, config, net, None, diffusion).sample_shape
    cond = jnp.zeros((1,), jnp.int32) if getattr(config, "num_classes", None) else None
    params = jax.jit(lambda k: net.init(k, jnp.zeros((1, h, w, c)), jnp.zeros((1,)), cond)["params"])(
        jax.random.key(0))
    return Model(family, config, net, params, diffusion)


def peak_tflops(dtype: str, override: float | None) -> float | None:
    if override:
        return override
    kind = jax.devices()[0].device_kind
    for name, peaks in PEAK_TFLOPS.items():
        if name in kind:
            return peaks[dtype]
    return None


def peak_memory(compiled) -> int:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    mem = compiled.memory_analysis()
    return int(mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes)


def bench_jax(model: Model, batch: int, steps: int, repeats: int) -> dict:
    c, h, w = model.sample_shape
    x = jax.random.normal(jax.random.key(1), (batch, h, w, c), jnp.float32)
    cond = jnp.zeros((batch,), jnp.int32) if model.num_classes else None
    specs = [engine.LoopSpec(network=model.network, diffusion=model.diffusion, steps=steps, invert=inv)
             for inv in (False, True)]
    t0 = time.perf_counter()
    compiled = [engine.run_loop.lower(s, model.params, x, cond).compile() for s in specs]
    compile_s = time.perf_counter() - t0
    step = engine.run_step.lower(specs[0], model.params, x, 0, cond).compile()
    flops_step = float((step.cost_analysis() or {}).get("flops", float("nan")))

    def once():
        t = time.perf_counter()
        z, _ = compiled[0](model.params, x, cond)
        out, _ = compiled[1](model.params, z, cond)
        out.block_until_ready()
        return time.perf_counter() - t

    once()  # warm-up
    seconds = statistics.median(once() for _ in range(repeats))
    flops = flops_step * 2 * steps
    return {"images_per_s": batch / seconds, "seconds_per_batch": seconds, "compile_s": compile_s,
            "flops_per_batch": flops, "tflops_per_s": flops / seconds / 1e12,
            "peak_memory_gib": max(peak_memory(c) for c in compiled) / 2 ** 30}


def bench_torch_dit(arch: str, batch: int, steps: int, dtype: str, repeats: int) -> dict:
    """diffusers DiTTransformer2DModel + DDIMScheduler / DDIMInverseScheduler, the same sample + invert loop."""
    import torch
    from diffusers import DDIMInverseScheduler, DDIMScheduler, DiTTransformer2DModel

    kw = {"dit-xl2": DIT_XL2, "dit-s2": DIT_S2}[arch]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    net = DiTTransformer2DModel(num_attention_heads=kw["num_heads"],
                                attention_head_dim=kw["hidden_size"] // kw["num_heads"], in_channels=4,
                                out_channels=8, num_layers=kw["depth"], sample_size=kw["input_size"],
                                patch_size=kw["patch_size"], num_embeds_ada_norm=1000).to(device, tdtype).eval()
    fwd, inv = DDIMScheduler(**DIT_HUB_DDIM), DDIMInverseScheduler(**DIT_HUB_DDIM)
    fwd.set_timesteps(steps)
    inv.set_timesteps(steps)
    size = kw["input_size"]
    x = torch.randn(batch, 4, size, size, device=device, dtype=tdtype)
    y = torch.zeros(batch, dtype=torch.long, device=device)

    @torch.no_grad()
    def loop(sched, z):
        for t in sched.timesteps:
            eps = net(z, timestep=t.expand(batch).to(device), class_labels=y).sample[:, :4]
            z = sched.step(eps, t, z).prev_sample
        return z

    def once():
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loop(inv, loop(fwd, x))
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    once()
    seconds = statistics.median(once() for _ in range(repeats))
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else float("nan")
    return {"images_per_s": batch / seconds, "seconds_per_batch": seconds, "peak_memory_gib": peak,
            "torch": torch.__version__, "device": device}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", choices=("adm32", "adm64", "adm256", "dit-xl2", "dit-s2"),
                       help="a paper architecture with random weights")
    which.add_argument("--ckpt", metavar="DIR", help="a jtaba checkpoint directory")
    p.add_argument("--batch", type=int, default=128, help="images per batch (one device)")
    p.add_argument("--steps", type=int, default=100, help="DDIM steps T (sampling T + inversion T network calls)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="network compute dtype")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions after one warm-up (median reported)")
    p.add_argument("--torch", action="store_true",
                   help="also time the PyTorch peer (diffusers DiT; needs torch and diffusers) on the same device")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak TFLOP/s for MFU when the device is not in the built-in table")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    model = random_model(args.arch, args.dtype) if args.arch else jtaba.load(args.ckpt, args.dtype)
    res = {"model": args.arch or args.ckpt, "batch": args.batch, "steps": args.steps, "dtype": args.dtype,
           "device": jax.devices()[0].device_kind, "jax": jax.__version__,
           "date": time.strftime("%Y-%m-%d")}
    res["jax_result"] = bench_jax(model, args.batch, args.steps, args.repeats)
    peak = peak_tflops(args.dtype, args.peak_tflops)
    res["jax_result"]["mfu"] = res["jax_result"]["tflops_per_s"] / peak if peak else None
    if args.torch:
        if not (args.arch or "").startswith("dit"):
            raise SystemExit("--torch: the PyTorch peer is available for the DiT architectures (diffusers)")
        res["torch_result"] = bench_torch_dit(args.arch, args.batch, args.steps, args.dtype, args.repeats)
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
