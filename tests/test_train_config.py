"""Save schedules (the paper's dense-early steps), presets and CLI overrides; EMA update, flips, AdamW."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtaba.diffusion import DiffusionConfig
from jtaba.models import adm
from jtaba.train import export
from jtaba.train.__main__ import build_parser, config_from_args, parse_args
from jtaba.train.presets import PRESETS, TrainConfig
from jtaba.train.save_schedule import parse_save_schedule
from jtaba.train.state import ema_update, make_optimizer
from jtaba.train.step import random_flip


def test_paper_save_schedules():
    cifar = parse_save_schedule("every:2500+paper_cifar10")
    saved = [s for s in range(0, 45001) if cifar(s)]
    assert saved[:12] == [0, 5, 10, 25, 50, 100, 150, 200, 250, 300, 350, 390]
    assert all(cifar(s) for s in (39000, 39390, 41340, 499590, 700000))
    assert not cifar(39390 + 390) and not cifar(40)
    imnet = parse_save_schedule("every:2500+paper_imagenet64")
    assert all(imnet(s) for s in (5, 50, 100, 250, 10250, 10307, 20614, 1123463, 1500000))
    assert not imnet(10500) and not imnet(1)
    at = parse_save_schedule("at:3,7")
    assert [s for s in range(10) if at(s)] == [3, 7]
    for bad in ("every:0", "paper_mnist", "at:", "every:x"):
        with pytest.raises(ValueError):
            parse_save_schedule(bad)


def test_presets_define_the_paper_models():
    c = PRESETS["cifar10_adm32"]
    mc = adm.Config.from_flags(c.flags_dict)
    assert (mc.image_size, mc.model_channels, mc.num_res_blocks, mc.channel_mult, mc.attention_ds) == \
        (32, 128, 3, (1, 2, 2, 2), (2, 4))
    assert mc.out_channels == 6 and mc.dropout == 0.3 and c.batch_size == 128 and c.lr == 1e-4
    assert c.weight_decay == 0.0 and c.ema_rate == 0.9999
    d = DiffusionConfig.from_adm_flags(c.flags_dict)
    assert (d.beta_schedule, d.num_train_timesteps, d.rescale_timesteps, d.learned_sigma) == \
        ("cosine", 4000, True, True)
    mi = adm.Config.from_flags(PRESETS["imagenet64_adm64"].flags_dict)
    assert (mi.image_size, mi.channel_mult, mi.attention_ds, mi.dropout) == (64, (1, 2, 3, 4), (4, 8), 0.0)
    b = PRESETS["builtin"]
    assert DiffusionConfig.from_adm_flags(b.flags_dict) == d  # same diffusion as ADM-32
    for p in PRESETS.values():
        assert TrainConfig.from_dict(p.to_dict()) == p and hash(p)


def test_cli_overrides():
    args = parse_args(["--preset=cifar10_adm32", "--out=/tmp/x", "--steps=10", "--batch=8", "--seed=42",
                       "--dtype=bfloat16", "--save=every:5", "--flag", "dropout=0.1", "--flag", "num_channels=64"])
    cfg = config_from_args(args)
    assert (cfg.steps, cfg.batch_size, cfg.seed, cfg.compute_dtype, cfg.save) == (10, 8, 42, "bfloat16", "every:5")
    assert cfg.flags_dict["dropout"] == 0.1 and cfg.flags_dict["num_channels"] == 64
    assert cfg.flags_dict["noise_schedule"] == "cosine" and cfg.lr == 1e-4


def test_cli_kebab_flags_and_deprecated_snake_case(capsys):
    kebab = ["--preset=builtin", "--out=/tmp/x", "--weight-decay=0.01", "--log-every", "7", "--data-dir=/d",
             "--no-flip", "--cpu-devices=3", "--no-progress"]
    snake = ["--preset=builtin", "--out=/tmp/x", "--weight_decay=0.01", "--log_every", "7", "--data_dir=/d",
             "--no_flip", "--cpu_devices=3", "--no_progress"]
    new = parse_args(kebab)
    assert capsys.readouterr().err == ""
    old = parse_args(snake)
    notes = capsys.readouterr().err.splitlines()
    assert vars(old) == vars(new)
    assert (new.weight_decay, new.log_every, new.data_dir, new.no_flip, new.cpu_devices, new.no_progress) == \
        (0.01, 7, "/d", True, 3, True)
    assert notes == [f"python -m jtaba.train: {s} is deprecated, use {s.replace('_', '-')}" for s in
                     ("--weight_decay", "--log_every", "--data_dir", "--no_flip", "--cpu_devices", "--no_progress")]
    cfg = config_from_args(old)
    assert (cfg.weight_decay, cfg.log_every, cfg.random_flip) == (0.01, 7, False)
    help_text = build_parser().format_help()
    assert "--weight-decay" in help_text and "_decay" not in help_text  # the old spellings are hidden
    for action in build_parser()._actions:  # every flag has a help text stating its default
        assert action.help and ("default" in action.help or action.dest == "help"), action.dest

    e_new = export.parse_args(["--run=r", "--out=o", "--grid-scale=4", "--grid-rows", "2", "--grid-steps=5",
                               "--grid-seed=1"])
    assert capsys.readouterr().err == ""
    e_old = export.parse_args(["--run=r", "--out=o", "--grid_scale=4", "--grid_rows", "2", "--grid_steps=5",
                               "--grid_seed=1"])
    assert vars(e_old) == vars(e_new) and (e_new.grid_scale, e_new.grid_rows, e_new.grid_steps) == (4, 2, 5)
    assert capsys.readouterr().err.splitlines()[0] == \
        "python -m jtaba.train.export: --grid_scale is deprecated, use --grid-scale"


def test_ema_flip_and_adamw():
    ema = ema_update({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 0.0])}, 0.9)
    np.testing.assert_allclose(ema["w"], [1.2, 1.8], rtol=1e-6)
    x = jnp.arange(2 * 1 * 3 * 1, dtype=jnp.float32).reshape(2, 1, 3, 1)
    keys = [jax.random.PRNGKey(i) for i in range(8)]
    outs = {tuple(np.asarray(random_flip(k, x)).ravel()) for k in keys}
    assert outs <= {(0, 1, 2, 3, 4, 5), (2, 1, 0, 3, 4, 5), (0, 1, 2, 5, 4, 3), (2, 1, 0, 5, 4, 3)} and len(outs) > 1
    # AdamW (torch defaults), two steps by hand
    opt = make_optimizer(1e-2, 0.1)
    p, g1, g2 = np.array([1.0, -2.0]), np.array([0.5, -1.0]), np.array([0.1, 0.3])
    state = opt.init(jnp.float32(p))
    params = jnp.float32(p)
    for g in (g1, g2):
        upd, state = opt.update(jnp.float32(g), state, params)
        params = params + upd
    m, v, q = np.zeros(2), np.zeros(2), p.copy()
    for t, g in enumerate((g1, g2), 1):
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        q = q - 1e-2 * (m / (1 - 0.9 ** t) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8) + 0.1 * q)
    np.testing.assert_allclose(params, q, rtol=1e-5)


def test_train_config_is_a_config_base():
    """TrainConfig shares ConfigBase's JSON form: an unknown run.json key is named; flags stay an object."""
    from jtaba.config import ConfigBase

    cfg = PRESETS["builtin"]
    assert isinstance(cfg, ConfigBase)
    d = cfg.to_dict()
    assert isinstance(d["flags"], dict) and d["flags"]["image_size"] == 16
    with pytest.raises(ValueError, match=r"unknown presets.TrainConfig keys: \['batch'\]"):
        TrainConfig.from_dict({**d, "batch": 3})
    changed = cfg.replace(flags={**cfg.flags_dict, "dropout": 0.5}, steps=7)
    assert changed.flags_dict["dropout"] == 0.5 and changed.steps == 7 and hash(changed)
    assert TrainConfig.from_dict(changed.to_dict()) == changed
