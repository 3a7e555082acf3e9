"""convert/if.py: strict key accounting (the real IF-I-XL layout and a save_pretrained folder), broken state dicts,
IF's schedule, the prompt-embedding files, the CLI end to end with a stub text encoder, and a sharded restore of the
float16 checkpoint on 8 fake CPU devices."""
import copy
import importlib
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from convert.common import ConversionError, apply_rules, flatten
from jtaba.checkpoint import load_params, read_config
from jtaba.models import if_unet
from tests.golden import report
from tests.test_if_unet import IF_I_XL, IF_TINY, inputs, jax_forward, tiny_torch, torch_forward

convert_if = importlib.import_module("convert.if")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# DeepFloyd/IF-I-XL-v1.0 scheduler/scheduler_config.json (verified against the public 16-bit mirror
# ckpt/IF-I-XL-v1.0-16bit and diffusers' scripts/convert_if.py, which builds it with these arguments).
IF_SCHEDULER = {"_class_name": "DDPMScheduler", "_diffusers_version": "0.15.0.dev0", "beta_end": 0.02,
                "beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001, "clip_sample": True,
                "clip_sample_range": 1.0, "dynamic_thresholding_ratio": 0.95, "num_train_timesteps": 1000,
                "prediction_type": "epsilon", "sample_max_value": 1.5, "thresholding": True, "trained_betas": None,
                "variance_type": "learned_range", "lambda_min_clipped": -5.1}


class StubEncoder:
    """Deterministic stand-in for T5: embedding row j of a prompt = hash-free function of its characters."""

    def __init__(self, dim: int):
        self.dim, self.seen = dim, []

    def __call__(self, prompts):
        self.seen.append(list(prompts))
        out = np.zeros((len(prompts), convert_if.MAX_LENGTH, self.dim), np.float32)
        for i, p in enumerate(prompts):
            codes = np.array([ord(c) for c in p] or [0], np.float32)
            out[i] = np.sin(np.arange(convert_if.MAX_LENGTH * self.dim).reshape(out.shape[1:]) * 0.01
                            + codes.sum() * 1e-3 + len(p))
        return out


def test_real_if_i_xl_layout_converts_exactly():
    """Every key of the real 4.3B-param IF-I-XL state dict (a meta-device diffusers model: nothing allocated)
    maps onto the Flax tree with its transposed shape, none missing or left over."""
    kw = {k: v for k, v in IF_I_XL.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = UNet2DConditionModel(**kw)
    state = {k: np.empty(tuple(v.shape), np.dtype([])) for k, v in model.state_dict().items()}
    shapes = convert_if.target_shapes(if_unet.Config.from_diffusers(IF_I_XL))
    params = flatten(apply_rules(state, shapes, convert_if.unet_rules(shapes)))
    assert len(params) == len(state) == 775
    assert sum(int(np.prod(s)) for s in shapes.values()) == 4_304_695_110


def test_broken_state_dicts_name_the_keys():
    model = tiny_torch(IF_TINY)
    good = model.state_dict()
    cfg = dict(model.config)
    missing = {k: v for k, v in good.items() if k != "mid_block.attentions.0.add_k_proj.weight"}
    with pytest.raises(ConversionError, match=r"missing keys \(1\): mid_block\.attentions\.0\.add_k_proj\.weight"):
        convert_if.convert_unet(missing, cfg)
    extra = {**good, "add_embedding.pool.c_proj.weight": torch.zeros(3)}
    with pytest.raises(ConversionError, match=r"unexpected keys \(1\): add_embedding\.pool\.c_proj\.weight"):
        convert_if.convert_unet(extra, cfg)
    wrong = {**good, "encoder_hid_proj.weight": torch.zeros(32, 25)}
    with pytest.raises(ConversionError, match=r"wrong shapes \(1\):\n    encoder_hid_proj\.weight"):
        convert_if.convert_unet(wrong, cfg)
    # a state dict of another configuration: the errors list every mismatch at once
    other = tiny_torch({**IF_TINY, "only_cross_attention": True}).state_dict()
    with pytest.raises(ConversionError, match=r"missing keys \(\d+\): .*down_blocks\.1\.attentions\.0\.to_k\.bias"):
        convert_if.convert_unet(other, cfg)


def test_if_schedule():
    d = convert_if.diffusion_config(IF_SCHEDULER, if_unet.Config())
    assert (d.kind, d.beta_schedule, d.num_train_timesteps) == ("diffusers", "squaredcos_cap_v2", 1000)
    assert (d.sample_clip, d.invert_clip, d.clip_range) == ("threshold", "clip", 1.0)
    assert (d.threshold_ratio, d.threshold_max) == (0.95, 1.5)
    assert (d.learned_sigma, d.set_alpha_to_one, d.steps_offset, d.timestep_spacing) == (True, True, 0, "leading")


def test_prompt_embedding_files(tmp_path):
    enc = StubEncoder(dim=6)
    prompts = ["  A Hobbit standing next to its House ", "", "x", "second LINE", "e"]
    path = convert_if.write_prompt_set(str(tmp_path), "set", prompts, enc, {"encoder_dtype": "float16"},
                                       batch_size=2)
    assert path == str(tmp_path / "prompts" / "set.npy")
    assert enc.seen == [["a hobbit standing next to its house", ""], ["x", "second line"], ["e"]]
    emb = np.load(path)
    assert emb.dtype == np.float32 and emb.shape == (5, 77, 6)
    np.testing.assert_array_equal(emb, enc(["a hobbit standing next to its house", "", "x", "second line", "e"]))
    meta = json.loads((tmp_path / "prompts" / "set.json").read_text())
    assert meta == {"prompts": prompts, "encoder_dtype": "float16"}
    null = np.load(convert_if.write_null_prompt(str(tmp_path), enc))
    np.testing.assert_array_equal(null, enc([""])[0])
    (tmp_path / "p.txt").write_text("one\n\nThree\n")
    assert convert_if.read_prompts(str(tmp_path / "p.txt")) == ["one", "", "Three"]


def test_t5_encoder_tiny(tmp_path):
    """t5_encoder on a tiny random T5 saved as an IF pipeline's text_encoder/ + tokenizer/ (no fp16 variant files:
    the float16 load falls back to the float32 files): tokens padded to 77 with </s> and the attention mask, as
    IFPipeline.encode_prompt; compared with the model run on hand-written ids."""
    transformers = pytest.importorskip("transformers")
    words = "a cat dog house hobbit standing next to its".split()
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [("\u2581" + w, -3.0) for w in words]
    transformers.T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(tmp_path / "tokenizer")
    torch.manual_seed(0)
    model = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(vocab), d_model=16, d_kv=4, num_heads=4, d_ff=32, num_layers=2,
        feed_forward_proj="gated-gelu")).eval()
    model.save_pretrained(tmp_path / "text_encoder")
    got = convert_if.t5_encoder(str(tmp_path), "cpu", "float32")(["a cat", ""])
    ids = torch.zeros(2, 77, dtype=torch.long)
    ids[0, :3] = torch.tensor([4, 5, 1])  # "a", "cat", </s>, then <pad> = 0
    ids[1, 0] = 1  # the empty prompt is </s> alone
    with torch.no_grad():
        ref = model(ids, attention_mask=(torch.arange(77) < torch.tensor([[3], [1]])).long())[0].numpy()
    assert got.shape == (2, 77, 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    half = convert_if.t5_encoder(str(tmp_path), "cpu", "float16")(["a cat", ""])
    assert half.dtype == np.float32 and np.max(np.abs(half - ref)) < 2e-2


def test_offline_hub_message(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr(convert_if, "require_text_encoder_deps", lambda: None)
    with pytest.raises(SystemExit):
        convert_if.main(["--src", "DeepFloyd/IF-I-XL-v1.0", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "cannot fetch 'DeepFloyd/IF-I-XL-v1.0' from the Hugging Face hub" in err, err
    assert "accept its license" in err and "HF_TOKEN" in err and "hf download DeepFloyd/IF-I-XL-v1.0 --include" in err


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A save_pretrained IF pipeline folder (unet/ + scheduler/) converted by the CLI with float16 params and a
    stub text encoder; returns (folder, out dir, torch model, stub)."""
    root = tmp_path_factory.mktemp("if")
    model = tiny_torch(IF_TINY, seed=2)
    model.save_pretrained(root / "src" / "unet")
    DDPMScheduler.from_config(IF_SCHEDULER).save_pretrained(root / "src" / "scheduler")
    (root / "prompts.txt").write_text("a cat\nA DOG \n")
    enc = StubEncoder(dim=IF_TINY["encoder_hid_dim"])
    mp = pytest.MonkeyPatch()
    mp.setattr(convert_if, "require_text_encoder_deps", lambda: None)
    mp.setattr(convert_if, "t5_encoder", lambda src, device, dtype, subfolder: enc)
    convert_if.main(["--src", str(root / "src"), "--out", str(root / "out"), "--prompts", str(root / "prompts.txt"),
                     "--encoder-dtype", "float32", "--device", "cpu"])
    mp.undo()
    return root / "src", root / "out", model, enc


def test_cli_checkpoint_matches_torch(converted):
    """The float16 checkpoint restores as float32 and reproduces torch run with the same fp16-rounded weights."""
    _, out, model, enc = converted
    cfg_dict = read_config(str(out))
    assert cfg_dict["family"] == "if_unet" and cfg_dict["extras"]["param_dtype"] == "float16"
    assert cfg_dict["diffusion"]["sample_clip"] == "threshold" and cfg_dict["diffusion"]["learned_sigma"]
    cfg = if_unet.Config.from_dict(cfg_dict["model"])
    saved = load_params(str(out))
    assert {v.dtype for v in jax.tree.leaves(saved)} == {np.dtype(np.float16)}
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32), saved)
    params = load_params(str(out), target)
    assert {v.dtype for v in jax.tree.leaves(params)} == {np.dtype(np.float32)}
    assert len(jax.tree.leaves(params)) == len(model.state_dict())
    half = copy.deepcopy(model).half().float()
    x, t, cond = inputs(cfg, seed=3)
    ref = torch_forward(half, x, t, cond)
    _, rel = report("if_unet converted fp16 checkpoint", jax_forward(cfg, params, x, t, cond), ref)
    assert rel < 1e-5
    assert np.load(out / "null_prompt.npy").shape == (77, IF_TINY["encoder_hid_dim"])
    emb = np.load(out / "prompts" / "prompts.npy")
    np.testing.assert_array_equal(emb, enc(["a cat", "a dog"]))
    assert json.loads((out / "prompts" / "prompts.json").read_text())["prompts"] == ["a cat", "A DOG "]


SHARDED = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    sys.path.insert(0, {repo!r})
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    from jtaba.checkpoint import load_params, read_config
    from jtaba.models import if_unet
    jax.config.update("jax_default_matmul_precision", "highest")
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    cfg = if_unet.Config.from_dict(read_config({out!r})["model"])
    z = np.load({io!r})
    net = if_unet.Network(cfg)
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), z["x"], z["t"], z["cond"])["params"])
    shard = if_unet.param_shardings(shapes, mesh)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, jnp.float32, sharding=sh), shapes, shard)
    params = load_params({out!r}, target)
    split = 0
    for (path, a), s in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(shapes)):
        spec = a.sharding.spec
        fits = [i for i, d in enumerate(s.shape) if d % 4 == 0]
        want = max(fits, key=lambda i: (s.shape[i], i)) if fits else None
        assert a.dtype == jnp.float32 and a.sharding.mesh.shape == mesh.shape, path
        assert tuple(spec) + (None,) * (len(s.shape) - len(spec)) == tuple(
            "model" if i == want else None for i in range(len(s.shape))), (path, spec, s.shape)
        split += want is not None
        assert a.addressable_shards[0].data.size * (4 if want is not None else 1) == a.size
    out = jax.jit(lambda p, *a: net.apply({{"params": p}}, *a))(params, z["x"], z["t"], z["cond"])
    print("SPLIT", split, len(jax.tree.leaves(params)), "MAXERR", float(np.max(np.abs(np.asarray(out) - z["ref"]))))
""")


@pytest.mark.slow
def test_param_shardings_restore_on_8_devices(converted, tmp_path):
    """param_shardings splits each leaf's largest dimension divisible by the 'model' axis (4 of a 2x4 mesh);
    load_params restores the float16 checkpoint as float32 onto it and the sharded forward matches torch."""
    src, out, model, _ = converted
    cfg = if_unet.Config.from_dict(read_config(str(out))["model"])
    x, t, cond = inputs(cfg, seed=4)
    half = copy.deepcopy(model).half().float()
    np.savez(tmp_path / "io.npz", x=x, t=t, cond=cond, ref=torch_forward(half, x, t, cond))
    script = SHARDED.format(repo=REPO, out=str(out), io=str(tmp_path / "io.npz"))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    words = res.stdout.split()
    split, total, err = int(words[1]), int(words[2]), float(words[4])
    print(f"[parity] sharded restore: {split}/{total} leaves split over 'model', max-abs {err:.3e}")
    assert split > total // 2
    assert err < 1e-5 * max(1.0, float(np.max(np.abs(np.load(tmp_path / "io.npz")["ref"]))))


def _no_t5(monkeypatch):
    """Fail loudly if the converter reaches for T5 or its dependencies."""
    def boom(*a, **k):
        raise AssertionError("T5 used")

    monkeypatch.setattr(convert_if, "t5_encoder", boom)
    monkeypatch.setattr(convert_if, "require_text_encoder_deps", boom)


def test_null_prompt_embeds_instead_of_t5(converted, tmp_path, monkeypatch):
    """--null-prompt-embeds: no T5 at all; the file ((1, L, D) accepted) becomes DIR/null_prompt.npy, guidance
    works from it."""
    import jtaba
    from jtaba import model as jmodel

    src, _, model, _ = converted
    _no_t5(monkeypatch)
    null = np.random.default_rng(0).standard_normal((1, 77, IF_TINY["encoder_hid_dim"])).astype(np.float64)
    np.save(tmp_path / "null.npy", null)
    out = tmp_path / "out"
    convert_if.main(["--src", str(src), "--out", str(out), "--null-prompt-embeds", str(tmp_path / "null.npy")])
    stored = np.load(out / "null_prompt.npy")
    assert stored.dtype == np.float32 and stored.shape == (77, IF_TINY["encoder_hid_dim"])
    np.testing.assert_array_equal(stored, null[0].astype(np.float32))
    m = jmodel.load(str(out))
    e = m.extras
    assert e["text_conditioned"] and e["text_encoder"] is None and e["null_prompt"] == "null_prompt.npy"
    assert e["null_prompt_source"] == str(tmp_path / "null.npy") and m.conditional
    cond = np.random.default_rng(1).standard_normal((2, 77, IF_TINY["encoder_hid_dim"])).astype(np.float32)
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert bool(jnp.all(jnp.isfinite(jtaba.sample(m, x, steps=2, cond=cond, guidance=3.0).x)))


def test_no_text_encoder(converted, tmp_path, monkeypatch, capsys):
    """--no-text-encoder: no T5, no null_prompt.npy, the model still text-conditioned (cond demanded) and
    guidance refused with what to do."""
    import jtaba
    from jtaba import model as jmodel

    src, _, _, _ = converted
    _no_t5(monkeypatch)
    out = tmp_path / "out"
    convert_if.main(["--src", str(src), "--out", str(out), "--no-text-encoder"])
    assert "runs need prompt embeddings" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["config.json", "params"]
    m = jmodel.load(str(out))
    assert m.null_prompt is None and m.conditional and m.extras["null_prompt"] is None
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match="conditional: pass cond"):
        jtaba.sample(m, x, steps=2)
    cond = np.zeros((1, 77, IF_TINY["encoder_hid_dim"]), np.float32)
    assert jtaba.sample(m, x, steps=2, cond=cond).x.shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="no null prompt .*--null-prompt-embeds"):
        jtaba.sample(m, x, steps=2, cond=cond, guidance=2.0)


@pytest.mark.parametrize("argv,needle", [
    (["--no-text-encoder", "--prompts", "P"], "--prompts needs the T5"),
    (["--no-text-encoder", "--null-prompt-embeds", "N"], "not allowed with argument"),
    (["--null-prompt-embeds", "missing.npy"], "missing.npy: no such file"),
    (["--null-prompt-embeds", "N"], "expected (L, 24)"),
    (["--no-text-encoder", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--device", "gpu0"], "--device 'gpu0' is not a torch device"),
    (["--param-dtype", "bfloat16"], "invalid choice: 'bfloat16'"),
])
def test_flag_values_checked_before_weights(converted, tmp_path, monkeypatch, capsys, argv, needle):
    """Bad flag values are named before any weights are read (the source here has no weights at all)."""
    src, _, _, _ = converted
    bare = tmp_path / "bare"
    for sub in ("unet", "scheduler"):
        (bare / sub).mkdir(parents=True)
        for f in os.listdir(src / sub):
            if f.endswith(".json"):
                (bare / sub / f).write_bytes((src / sub / f).read_bytes())
    (tmp_path / "P").write_text("a cat\n")
    np.save(tmp_path / "N", np.zeros((77, 5), np.float32))  # width 5, the UNet wants 24
    argv = [str(tmp_path / "N.npy") if a == "N" else str(tmp_path / "P") if a == "P" else a for a in argv]
    monkeypatch.setattr(convert_if, "require_text_encoder_deps", lambda: None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        convert_if.main(["--src", str(bare), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert needle in err and "diffusion_pytorch_model" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("part,key,value", [("unet/config.json", "time_cond_proj_dim", 256),
                                            ("unet/config.json", "time_embedding_type", "fourier"),
                                            ("unet/config.json", "attention_type", "gated"),
                                            ("scheduler/scheduler_config.json", "prediction_type", "v_prediction"),
                                            ("scheduler/scheduler_config.json", "beta_schedule", "squaredcos")])
def test_refused_options_named_before_weights(converted, tmp_path, monkeypatch, capsys, part, key, value):
    """An option if_unet does not implement (or a bad schedule) is named, with its value, before the weights are
    read: this folder has none."""
    src, _, _, _ = converted
    bare = tmp_path / "bare"
    for sub in ("unet", "scheduler"):
        (bare / sub).mkdir(parents=True)
        for f in os.listdir(src / sub):
            if f.endswith(".json"):
                (bare / sub / f).write_bytes((src / sub / f).read_bytes())
    path = bare / part
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    _no_t5(monkeypatch)
    with pytest.raises(SystemExit):
        convert_if.main(["--src", str(bare), "--out", str(tmp_path / "o"), "--no-text-encoder"])
    err = capsys.readouterr().err
    assert key in err and repr(value) in err and part in err, err


def test_time_embedding_act_fn_through_the_converter(tmp_path, monkeypatch):
    """A pipeline whose UNet sets time_embedding_act_fn converts and matches diffusers (this option used to be
    refused)."""
    from tests.test_if_unet import inputs as unet_inputs

    kw = {**IF_TINY, "time_embedding_act_fn": "silu"}
    model = tiny_torch(kw, seed=5)
    model.save_pretrained(tmp_path / "src" / "unet")
    DDPMScheduler.from_config(IF_SCHEDULER).save_pretrained(tmp_path / "src" / "scheduler")
    _no_t5(monkeypatch)
    convert_if.main(["--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--no-text-encoder",
                     "--param-dtype", "float32"])
    cfg = if_unet.Config.from_dict(read_config(str(tmp_path / "out"))["model"])
    assert cfg.time_embedding_act_fn == "silu"
    x, t, cond = unet_inputs(cfg, seed=5)
    _, rel = report("if_unet time_embedding_act_fn via CLI", jax_forward(cfg, load_params(str(tmp_path / "out")),
                                                                       x, t, cond), torch_forward(model, x, t, cond))
    assert rel < 1e-5
