"""Every analysis of the paper on every family of the paper (Tab. 1's columns): ``python -m experiments.reproduce``
end to end on a tiny random checkpoint of ADM, LDM (pixel-space UNet2D on VQ latents), DiT (class-conditional, on
VAE latents, taba's class draw) and IF (text-conditioned, prompt embeddings), each with its conditioning. Every
table that family has in the paper is written (none skipped for conditioning), latent models are measured on the
latents (each table says which space), and the input flags reach the runs: an analysis given ``--noise F`` reuses
the run ``sample_invert --noise F`` made.
"""
import functools
import os
import random
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import reproduce, sample_invert
from jtaba import io
from jtaba.checkpoint import save_checkpoint
from jtaba.diffusion import DiffusionConfig
from jtaba.models import if_unet, unet2d, vq
from jtaba.runs import open_run
from jtaba.runs.fingerprint import array_digest
from tests.perception import random_params
from tests.test_exp_diversity import ID2LABEL, save_tiny_dit_checkpoint
from tests.test_exp_triangles import oracle_vertex_cosines, save_tiny_checkpoint

# diffusers-style configs of the converters' tests (tests/test_unet2d.py "ldm_like", tests/test_convert_ldm.py
# TINY_VQ / LDM_SCHEDULER, tests/test_if_unet.py IF_TINY), repeated here so this file does not import torch.
LDM_UNET = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                norm_num_groups=4, attention_head_dim=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D"))
LDM_VQ = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=3,
              num_vq_embeddings=16, down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2)
LDM_SCHEDULER = dict(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear", clip_sample=False,
                     num_train_timesteps=1000)
IF_TINY = dict(
    sample_size=8, in_channels=3, out_channels=6, block_out_channels=(16, 32),
    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn", layers_per_block=1, attention_head_dim=8,
    cross_attention_dim=32, encoder_hid_dim=24, encoder_hid_dim_type="text_proj", addition_embed_type="text",
    addition_embed_type_num_heads=4, cross_attention_norm="group_norm", norm_num_groups=8, act_fn="gelu",
    resnet_time_scale_shift="scale_shift")
IF_SCHEDULER = dict(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000, prediction_type="epsilon",
                    variance_type="learned_range", clip_sample=True, clip_sample_range=1.0)
PROMPT_LENGTH = 7


@functools.lru_cache(maxsize=None)
def _ldm_shapes():
    net, dec = unet2d.Config.from_diffusers(LDM_UNET), vq.Config.from_diffusers(LDM_VQ)
    net_shapes = jax.eval_shape(lambda: unet2d.Network(net).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)),
                                                                 jnp.zeros((1,)))["params"])
    dec_shapes = jax.eval_shape(lambda: vq.Network(dec).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"])
    return net, dec, net_shapes, dec_shapes


def save_tiny_ldm_checkpoint(directory, seed: int = 0) -> str:
    """A tiny random LDM as convert/ldm.py lays it out: a UNet2D on 3 x 8 x 8 VQ latents, the VQ decoder beside."""
    net, dec, net_shapes, dec_shapes = _ldm_shapes()
    diffusion = DiffusionConfig.from_diffusers_scheduler(LDM_SCHEDULER, learned_sigma=False)
    save_checkpoint(str(directory), {"family": "unet2d", "model": net.to_dict(), "diffusion": diffusion.to_dict(),
                                     "extras": {"decoder": "decoder"}}, random_params(net_shapes, seed))
    save_checkpoint(os.path.join(str(directory), "decoder"), {"family": "vq", "model": dec.to_dict(), "extras": {}},
                    random_params(dec_shapes, seed + 1))
    return str(directory)


@functools.lru_cache(maxsize=None)
def _if_shapes():
    net = if_unet.Config.from_diffusers(IF_TINY)
    shapes = jax.eval_shape(lambda: if_unet.Network(net).init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)), jnp.zeros((1, PROMPT_LENGTH, 24)))["params"])
    return net, shapes


def save_tiny_if_checkpoint(directory, n_prompts: int, seed: int = 0) -> tuple[str, str]:
    """A tiny random IF stage I as convert/if.py --no-text-encoder lays it out (text-conditioned, no null prompt:
    guidance 1), and prompt embeddings (n_prompts, 7, 24) in CKPT/prompts/tiny.npy: (checkpoint, prompts file)."""
    net, shapes = _if_shapes()
    diffusion = DiffusionConfig.from_diffusers_scheduler(IF_SCHEDULER, learned_sigma=True)
    save_checkpoint(str(directory), {"family": "if_unet", "model": net.to_dict(), "diffusion": diffusion.to_dict(),
                                     "extras": {"text_conditioned": True}}, random_params(shapes, seed))
    prompts = os.path.join(str(directory), "prompts", "tiny.npy")
    os.makedirs(os.path.dirname(prompts), exist_ok=True)
    np.save(prompts, np.random.RandomState(seed).randn(n_prompts, PROMPT_LENGTH, 24).astype(np.float32))
    return str(directory), prompts


# ---- every table of the family on its tiny checkpoint ----------------------------------------------------------------
N, STEPS, PER_CLASS = 16, 3, 8  # assignment's 8 chunks of 2 pairs; approximation error's teacher-forced step (T >= 3)
STANDARD_RUN = ("triangles", "correlations", "variances", "normality", "plain", "assignment")
# The analyses each family's test runs, to stay near a minute and a half on 2 CPU cores: the standard-run tables on
# every family, and on each the analyses whose extra runs its conditioning or latent space changes most (ADM: a
# given noise file shared with sample_invert, steps; DiT: interpolation's labels (diversity's class draw on the tiny
# DiT is tests/test_exp_diversity.py's); IF: swap's
# prompt embeddings). Each of the others costs 10-60 s more per family; `python -m experiments.reproduce --sizes report`
# runs all of them on every family (measured: ADM, LDM, DiT, IF each 2-2.5 min on the shared 2 cores), and the
# tests/test_exp_*.py files run each on ADM.
RUN = {"adm": STANDARD_RUN + ("steps",),
       "ldm": STANDARD_RUN,
       "dit": STANDARD_RUN + ("interpolation",),
       "if": STANDARD_RUN + ("swap",)}
SPACE = {"adm": "pixels", "ldm": "VQ-VAE latents (3 x 8 x 8)", "dit": "VAE latents (4 x 16 x 16)", "if": "pixels"}


def taba_class_labels(cond_seed: int, n: int, per: int) -> np.ndarray:
    """upstream load_cond re-typed: random.seed(cond_seed); random.choices(first class names, k); names -> ids with
    later synonyms winning; each repeated ``per`` times."""
    lookup = {name.strip(): i for i in range(len(ID2LABEL)) for name in ID2LABEL[str(i)].split(",")}
    random.seed(cond_seed)
    names = random.choices([ID2LABEL[str(i)].split(",")[0] for i in range(len(ID2LABEL))], k=n // per)
    return np.repeat([lookup[name] for name in names], per)


def family_checkpoint(family: str, folder) -> tuple[str, list[str]]:
    """(checkpoint, the family's conditioning flags)."""
    if family == "adm":
        return save_tiny_checkpoint(folder / "adm"), []
    if family == "ldm":
        return save_tiny_ldm_checkpoint(folder / "ldm"), []
    if family == "dit":
        return save_tiny_dit_checkpoint(folder / "dit"), ["--class-seed", "10", "--noises-per-class", str(PER_CLASS)]
    ckpt, _ = save_tiny_if_checkpoint(folder / "if", 6)
    io.write_json(os.path.join(ckpt, "prompts", "tiny.json"), {"prompts": [f"prompt {i}" for i in range(6)]})
    per_sample = np.random.RandomState(3).randn(N, PROMPT_LENGTH, 24).astype(np.float32)
    np.save(folder / "prompt_embeds.npy", per_sample)
    return ckpt, ["--prompt-embeds", str(folder / "prompt_embeds.npy"), "--prompts", "tiny"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["adm", "ldm", "dit", "if"])
def test_every_table_of_the_family(family, tmp_path):
    start = time.time()
    ckpt, conditioning = family_checkpoint(family, tmp_path)
    runs = str(tmp_path / "runs")
    common = ["--ckpt", ckpt, "--n", str(N), "--steps", str(STEPS), "--batch", str(N), "--runs-dir", runs]
    given = []
    if family == "adm":  # the run sample_invert made from a noise file is the one the analyses use
        noise = tmp_path / "noise.npy"
        np.save(noise, np.random.RandomState(0).randn(N, 3, 8, 8).astype(np.float32))
        given = ["--noise", str(noise)]
        shared = sample_invert.main([*common, *given])
    out = reproduce.main([*common, *conditioning, *given, "--sizes", "report", "--only", ",".join(RUN[family]),
                          "--out", str(tmp_path / "report")])
    report = io.read_json(os.path.join(out, "report.json"))
    assert [a for a, e in report["analyses"].items() if "skipped" in e] == []
    assert sorted(report["analyses"]) == sorted(RUN[family])
    assert {e["space"] for e in report["analyses"].values()} == {SPACE[family]}
    with open(os.path.join(out, "report.md")) as f:
        md = f.read()
    assert f"Measured in {SPACE[family]}." in md and "Paper settings for" in md
    tri = io.read_json(os.path.join(out, "triangles", "triangles.json"))
    run = open_run(tri["run"])
    model_shape = {"adm": (3, 8, 8), "ldm": (3, 8, 8), "dit": (4, 16, 16), "if": (3, 8, 8)}[family]
    assert run["latents"].shape == (N, *model_shape)  # latent models: the diffusion latents, not decoded images
    cos = oracle_vertex_cosines(run["noise"], run["samples"], run["latents"])
    want = np.degrees(np.arccos(np.clip(cos["latent"].mean(), -1, 1)))
    assert tri["calc_angles"]["mean_cossim_latent"] == pytest.approx(want, abs=1e-3)
    if family == "adm":
        assert tri["run"] == shared
    if family == "dit":
        np.testing.assert_array_equal(run["conds"], taba_class_labels(10, N, PER_CLASS))
        assert run.identity["class_seed"] == 10 and run.identity["noises_per_class"] == PER_CLASS
    if family == "if":  # the standard run and every swap run carry the prompts
        digest = array_digest(np.load(tmp_path / "prompt_embeds.npy"), N)
        swap = io.read_json(os.path.join(out, "swap", "swap.json"))
        swap_runs = [r["run"] for m in swap["methods"].values() for r in m["rows"] if "run" in r]
        assert swap_runs and {open_run(p).identity["prompt_embeds"] for p in [run.path, *swap_runs]} == {digest}
    print(f"{family}: {time.time() - start:.0f} s")


def test_paper_preset(tmp_path):
    """--paper: the family's settings where no flag sets them (a flag wins), the analysis's own (Tabs. 10-11's T
    list), what differs from the paper's; IF without its prompt embeddings is refused in one line."""
    from experiments import steps
    from jtaba import cli, paper

    ckpt = save_tiny_dit_checkpoint(tmp_path / "dit")
    argv = ["--ckpt", ckpt, "--paper", "--n", "64"]
    args = steps.build_parser().parse_args(argv)
    settings = cli.apply_paper(args, argv)
    assert (args.n, args.steps, args.seed, args.class_seed, args.noises_per_class, args.guidance) == \
        (64, 100, 420, 10, 8, 1.0)
    opts = cli.paper_options("steps", steps.ANALYSIS.options(args), settings, argv)
    assert opts.all_steps == (10, 50, 100, 500, 1000) and opts.class_seed == 10
    used = {k: getattr(args, k) for k in settings.run}
    assert paper.differences(used, settings) == ["n 64 (paper: 10240)"]
    ckpt_if, _ = save_tiny_if_checkpoint(tmp_path / "if", 2)
    argv = ["--ckpt", ckpt_if, "--paper"]
    with pytest.raises(ValueError, match="--paper on IF needs --prompt-embeds"):
        cli.apply_paper(steps.build_parser().parse_args(argv), argv)
