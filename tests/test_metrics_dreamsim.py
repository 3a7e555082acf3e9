"""DreamSim (jtaba.metrics.dreamsim, convert/dreamsim.py) against the ``dreamsim`` package 0.2.1 itself.

The oracle is ``dreamsim.dreamsim(pretrained=True, cache_dir=CACHE)``, run unmodified on a cache folder written here
with random weights (nothing is downloaded): the three backbone files in dreamsim's layout, a stand-in torch-hub
``facebookresearch/dino`` repo (its ``hubconf.py`` loads ``checkpoints/dino_vitbase16_pretrain.pth``, as the real one
does), and a LoRA adapter saved by peft from dreamsim's own ``PerceptualModel`` with random non-zero A and B. The
backbones are dreamsim's ``VisionTransformer`` at width 128 (2 heads of 64), patch 16 on the 224 input; the DINO
member keeps 12 blocks because upstream hooks block 11, the CLIP members have 2 (dreamsim's hard-coded ``vit_base``
is swapped for that size). The converter reads the same folder.
"""
import contextlib
import dataclasses
import functools
import json
import os

import numpy as np
import pytest

from tests.golden import report

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("open_clip")

RTOL = 1e-5
WIDTH, HEADS, MLP, DINO_DEPTH, CLIP_DEPTH, PROJ, RANK = 128, 2, 192, 12, 2, 24, 4

HUBCONF = f'''import functools, os, torch
from dreamsim.feature_extraction.vision_transformer import VisionTransformer
dependencies = ["torch"]


def dino_vitb16(pretrained=True, **kwargs):
    model = VisionTransformer(img_size=[224], patch_size=16, embed_dim={WIDTH}, depth={DINO_DEPTH},
                              num_heads={HEADS}, mlp_ratio={MLP / WIDTH}, qkv_bias=True,
                              norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6))
    model.load_state_dict(torch.load(os.path.join(torch.hub.get_dir(), "checkpoints", "dino_vitbase16_pretrain.pth")))
    return model
'''


def _vit(depth):
    from dreamsim.feature_extraction.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=[224], patch_size=16, embed_dim=WIDTH, depth=depth, num_heads=HEADS,
                             mlp_ratio=MLP / WIDTH, qkv_bias=True,
                             norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6))


def _perturb(params, seed, std=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(std * torch.randn(p.shape, generator=g))


def _write_cache(cache, seed=0):
    """dreamsim's ensemble cache folder with random tiny backbones (no adapter yet)."""
    (cache / "checkpoints").mkdir(parents=True)
    (cache / "facebookresearch_dino_main").mkdir()
    (cache / "facebookresearch_dino_main" / "hubconf.py").write_text(HUBCONF)
    torch.manual_seed(seed)
    dino = _vit(DINO_DEPTH)
    _perturb(dino.parameters(), seed + 1)
    torch.save(dino.state_dict(), cache / "checkpoints" / "dino_vitbase16_pretrain.pth")
    # the DINO training checkpoint: upstream copies its projection head (unused by the "cls" feature)
    head = {f"module.head.mlp.{i}.{k}": torch.zeros(3) for i in (0, 2, 4) for k in ("weight", "bias")}
    torch.save({"student": head | {"module.head.last_layer.weight": torch.zeros(3)}},
               cache / "dino_vitb16_pretrain.pth")
    for i, name in enumerate(("clip_vitb16", "open_clip_vitb16")):
        m = _vit(CLIP_DEPTH)
        m.pos_drop = torch.nn.LayerNorm(WIDTH)  # ln_pre, as load_clip_as_dino builds it
        _perturb(m.parameters(), seed + 2 + i)
        sd = dict(m.state_dict())
        sd["proj"] = 0.1 * torch.randn(WIDTH, PROJ)
        torch.save({"state_dict": sd}, cache / f"{name}_pretrain.pth.tar")


@contextlib.contextmanager
def _dreamsim_env():
    """dreamsim's CLIP loaders build our small ViT; torch hub's folder (which dreamsim sets) is restored after."""
    from dreamsim.feature_extraction import load_clip_as_dino, load_open_clip_as_dino

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(load_clip_as_dino, "vit_base", lambda patch_size: _vit(CLIP_DEPTH))
        mp.setattr(load_open_clip_as_dino, "vit_base", lambda patch_size: _vit(CLIP_DEPTH))
        mp.setattr(torch.hub, "_hub_dir", torch.hub._hub_dir)
        yield


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """(cache folder, the dreamsim model, its preprocess) with random LoRA adapters saved by peft."""
    import dreamsim
    import peft
    from dreamsim.config import dreamsim_args

    cache = tmp_path_factory.mktemp("dreamsim") / "cache"
    _write_cache(cache)
    with _dreamsim_env():
        model = dreamsim.PerceptualModel(**dreamsim_args["model_config"]["ensemble"], device="cpu",
                                         load_dir=str(cache), normalize_embeds=True)
        lora = peft.get_peft_model(model, peft.LoraConfig(r=RANK, lora_alpha=0.5, lora_dropout=0.3, bias="none",
                                                          target_modules=["qkv"]))
        _perturb([p for n, p in lora.named_parameters() if "lora_" in n], 7, std=0.5)
        lora.save_pretrained(str(cache / "ensemble_lora"))
        ref, preprocess = dreamsim.dreamsim(pretrained=True, device="cpu", cache_dir=str(cache))
    return cache, ref, preprocess


def _upstream_input(images, preprocess):
    """diffusers pt_to_pil then dreamsim's preprocess (Resize((224, 224), bicubic), ToTensor), batched."""
    from PIL import Image

    x = np.clip(np.asarray(images, np.float32) / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    return torch.cat([preprocess(Image.fromarray((i * 255).round().astype("uint8"))) for i in x])


def test_dreamsim_parity(upstream, tmp_path):
    from convert import dreamsim as CD
    from convert.common import load_state_dict
    from jtaba.metrics import dreamsim as S

    cache, ref, preprocess = upstream
    CD.main(["--src", str(cache), "--out", str(tmp_path / "ck")])
    config, params = S.load(str(tmp_path / "ck"))
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["extras"]["lora"] == {"r": RANK, "lora_alpha": 0.5, "scale": 0.5 / RANK,
                                     "merged_modules": DINO_DEPTH + 2 * CLIP_DEPTH, "targets": ["blocks.{i}.attn.qkv"]}
    assert [(m.name, m.vision.num_layers, m.vision.num_heads, m.dim) for m in config.members] == [
        ("dino_vitb16", DINO_DEPTH, HEADS, WIDTH), ("clip_vitb16", CLIP_DEPTH, HEADS, PROJ),
        ("open_clip_vitb16", CLIP_DEPTH, HEADS, PROJ)]

    raw_qkv = load_state_dict(str(cache / "checkpoints" / "dino_vitbase16_pretrain.pth"))["blocks.0.attn.qkv.weight"]
    merged_q = params["dino_vitb16"]["encoder"]["layer_0"]["attn"]["q"]["kernel"]
    assert np.abs(np.asarray(merged_q) - raw_qkv[:WIDTH].numpy().T).max() > 0.05  # the LoRA delta is not negligible

    # [-1, 1] images (64 px -> 224): embeddings and distances
    rng = np.random.default_rng(1)
    img0 = rng.uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    img1 = np.clip(img0 + rng.normal(0, 0.6, img0.shape), -1, 1).astype(np.float32)
    x0, x1 = _upstream_input(img0, preprocess), _upstream_input(img1, preprocess)
    with torch.no_grad():
        want_embed, want = ref.embed(x0).numpy(), ref(x0, x1).numpy()
    got = S.embed(config, params, img0)
    assert got.shape == (2, WIDTH + 2 * PROJ)
    assert report("dreamsim embed", got, want_embed)[1] < RTOL
    got = S.distance(config, params, img0, img1)
    assert got.shape == (2,) and np.all(want > 0.05)
    assert report("dreamsim distance (64 px, [-1, 1])", got, want)[1] < RTOL


def test_key_accounting(upstream, tmp_path, capsys):
    from convert import dreamsim as CD
    from convert.common import ConversionError, load_state_dict

    cache = upstream[0]
    files = CD.source_files(str(cache))
    adapter_config = json.loads((cache / "ensemble_lora" / "adapter_config.json").read_text())
    adapter = dict(load_state_dict(files["adapter"]))

    def convert(backbones=None, adapter_=adapter, adapter_config_=adapter_config):
        backbones = backbones or {n: dict(load_state_dict(files[n])) for n in CD.BACKBONE_FILES}
        return CD.convert_states(backbones, adapter_, adapter_config_)

    backbones = {n: dict(load_state_dict(files[n])) for n in CD.BACKBONE_FILES}
    del backbones["clip_vitb16"]["blocks.1.mlp.fc2.bias"]
    backbones["open_clip_vitb16"]["blocks.0.attn.extra"] = torch.zeros(2)
    backbones["dino_vitb16"]["norm.weight"] = torch.zeros(WIDTH + 1)
    with pytest.raises(ConversionError) as e:
        convert(backbones)
    msg = str(e.value)
    assert "missing keys (1): clip_vitb16.blocks.1.mlp.fc2.bias" in msg
    assert "unexpected keys (1): open_clip_vitb16.blocks.0.attn.extra" in msg
    assert f"dino_vitb16.norm.weight: ({WIDTH + 1},)" in msg

    key = "base_model.model.extractor_list.1.model.blocks.0.attn.qkv.lora_B.weight"
    with pytest.raises(ConversionError, match="lora_B missing"):
        convert(adapter_={k: v for k, v in adapter.items() if k != key})
    with pytest.raises(ConversionError, match="not LoRA A/B weights.*blocks.0.attn.qkv.bias"):
        convert(adapter_=adapter | {key.replace("lora_B.weight", "bias"): torch.zeros(3)})
    with pytest.raises(ConversionError, match="targets blocks.5.attn.qkv, which the backbone lacks"):
        convert(adapter_=adapter | {k.replace("blocks.0.", "blocks.5."): v for k, v in adapter.items()
                                    if ".extractor_list.1." in k and ".blocks.0." in k})
    for option in ({"use_dora": True}, {"bias": "all"}, {"rank_pattern": {"qkv": 8}}):
        with pytest.raises(ConversionError, match="not supported"):
            convert(adapter_config_=adapter_config | option)
    # rsLoRA scales by alpha / sqrt(r)
    assert CD.lora_scale(adapter_config | {"use_rslora": True}) == 0.5 / np.sqrt(RANK)

    # an incomplete cache: one error naming the files and where to fetch them; --out left untouched
    (tmp_path / "partial" / "ensemble_lora").mkdir(parents=True)
    with pytest.raises(SystemExit):
        CD.main(["--src", str(tmp_path / "partial"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "clip_vitb16_pretrain.pth.tar" in err and os.path.join("checkpoints", "dino_vitbase16_pretrain.pth") in err
    assert CD.ZIP_URL in err and CD.DINO_URL in err
    assert not (tmp_path / "out").exists()


def test_config_is_dreamsims_ensemble():
    """The default Config against what dreamsim builds: its member list, feature types, normalisations, embedding
    sizes and ``vit_base`` (on torch's meta device: nothing allocated)."""
    import jax
    from dreamsim.config import dreamsim_args
    from dreamsim.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from dreamsim.feature_extraction import vision_transformer
    from dreamsim.model import EMBED_DIMS

    from jtaba.metrics import dreamsim as S

    c = S.Config()
    ensemble = dreamsim_args["model_config"]["ensemble"]
    assert [m.name for m in c.members] == ensemble["model_type"].split(",")
    assert [m.feature for m in c.members] == ensemble["feat_type"].split(",")
    assert [m.vision.patch_size for m in c.members] == [int(s) for s in ensemble["stride"].split(",")]
    assert [m.dim for m in c.members] == [EMBED_DIMS[m.name][m.feature] for m in c.members] and c.dim == 1792
    assert (c.members[0].mean, c.members[0].std) == (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    assert all((m.mean, m.std) == (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD) for m in c.members[1:])
    with pytest.MonkeyPatch.context() as mp:  # the arguments dreamsim's vit_base builds its ViT with
        mp.setattr(vision_transformer, "VisionTransformer", lambda **kw: kw)
        vit = vision_transformer.vit_base(patch_size=16)
    for m in c.members:
        v = m.vision
        assert (v.hidden_size, v.num_layers, v.num_heads, v.intermediate_size, v.qkv_bias, v.image_size) == (
            vit["embed_dim"], vit["depth"], vit["num_heads"], vit["embed_dim"] * vit["mlp_ratio"], vit["qkv_bias"],
            dreamsim_args["img_size"])
    # DINO keeps vit_base's LayerNorm and GELU; load_(open_)clip_as_dino set eps 1e-5, CLIP swaps in QuickGELU
    assert [(m.vision.layer_norm_eps, m.vision.hidden_act) for m in c.members] == [
        (vit["norm_layer"].keywords["eps"], "gelu"), (1e-5, "quick_gelu"), (1e-5, "gelu")]
    assert S.Config.from_dict(json.loads(json.dumps(c.to_dict()))) == c

    tiny = S.tiny_config()
    assert S.Config.from_dict(json.loads(json.dumps(tiny.to_dict()))) == tiny
    images = np.zeros((3, 3, 16, 16), np.float32)
    out = jax.eval_shape(lambda: S.distance(tiny, S.init_params(tiny, 0), images, images))
    assert out.shape == (3,)
    with pytest.raises(ValueError, match="unique"):
        S.Config((c.members[0], c.members[0]))
    with pytest.raises(ValueError, match="needs a ViT of kind 'clip'"):
        dataclasses.replace(c.members[0], feature="embedding")
