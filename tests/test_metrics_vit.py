"""DINO / CLIP features (jtaba.metrics.vit_features, dino, clip; convert/dino.py, convert/clip.py) against
transformers on tiny random configs built here (nothing is downloaded), and the Pillow-exact preprocessing against
PIL + torchvision."""
import json

import numpy as np
import pytest

from convert.common import import_torchvision
from tests.golden import report

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

RTOL = 1e-5
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)


def _perturb(model, seed):
    """Non-trivial random weights (transformers' init leaves biases 0 and LayerNorms identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def tiny_vit(seed=0, pooler=True):
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_act="gelu", layer_norm_eps=1e-12, **TINY)
    torch.manual_seed(seed)
    return _perturb(transformers.ViTModel(cfg, add_pooling_layer=pooler), seed)


def tiny_clip(seed=0, eos_token_id=2, vocab_size=60):
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=vocab_size, max_position_embeddings=16, eos_token_id=eos_token_id,
                         bos_token_id=vocab_size - 2, pad_token_id=vocab_size - 1, **TINY),
        vision_config=dict(image_size=32, patch_size=8, **TINY), projection_dim=24)
    torch.manual_seed(seed)
    return _perturb(transformers.CLIPModel(cfg), seed)


def pixels(seed=0, b=3, size=32):
    return np.random.default_rng(seed).normal(0, 1, (b, 3, size, size)).astype(np.float32)


def test_dino_vit_parity(tmp_path):
    import jax.numpy as jnp

    from convert import dino as CD
    from jtaba.metrics import dino as D
    from jtaba.metrics import vit_features as V

    model = tiny_vit()
    x = pixels()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).last_hidden_state.numpy()
    # transformers 5's in-memory layout, and the hub layout save_pretrained writes (safetensors)
    config = CD.config_from_hf(model.config.to_dict())
    cfg, params = CD.convert_state(model.state_dict(), config)
    assert cfg["extras"]["dropped"] == ["pooler.dense.bias", "pooler.dense.weight"]
    out = V.VisionTransformer(config).apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert report("vit last_hidden_state", out["last_hidden_state"], ref)[1] < RTOL
    model.save_pretrained(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "vit"
    CD.main(["--src", str(tmp_path / "hf"), "--out", str(tmp_path / "ck")])
    config2, params2 = D.load(str(tmp_path / "ck"))
    assert config2 == config
    feats = D.features(config2, params2, x, preprocess=False)
    assert report("dino CLS (converted folder)", feats, ref[:, 0])[1] < RTOL


def test_dino_preprocessed_224():
    """The full DINO path at the real input size (224, tiny width): preprocess + ViT + per-pair cosine."""
    import jax.numpy as jnp

    from convert import dino as CD
    from jtaba.metrics import dino as D
    from jtaba.metrics import vit_features as V

    cfg = transformers.ViTConfig(image_size=224, patch_size=56, hidden_act="gelu", **TINY)
    torch.manual_seed(1)
    model = _perturb(transformers.ViTModel(cfg, add_pooling_layer=False), 1)
    config = CD.config_from_hf(cfg.to_dict())
    _, params = CD.convert_state(model.state_dict(), config)
    rng = np.random.default_rng(3)
    img0 = rng.uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    img1 = np.clip(img0 + rng.normal(0, 0.5, img0.shape), -1, 1).astype(np.float32)
    ref_in = np.stack([torch_preprocess(i, 256, 224, V.IMAGENET_MEAN, V.IMAGENET_STD) for i in
                       np.concatenate([img0, img1])])
    with torch.no_grad():
        cls = model(torch.from_numpy(ref_in)).last_hidden_state[:, 0]
    ref = torch.nn.functional.cosine_similarity(cls[:2], cls[2:]).numpy()
    got = D.similarity(config, params, jnp.asarray(img0), jnp.asarray(img1))
    assert got.shape == (2,)
    assert report("dino similarity (preprocessed 64 -> 256 -> 224)", got, ref)[1] < RTOL


@pytest.mark.parametrize("eos_token_id", [2, 40])
def test_clip_parity(eos_token_id):
    import jax.numpy as jnp

    from convert import clip as CC
    from jtaba.metrics import clip as C
    from jtaba.metrics.vit_features import eos_positions

    model = tiny_clip(eos_token_id=eos_token_id)
    config = CC.config_from_hf(model.config.to_dict())
    assert config.text.eos_token_id == eos_token_id and config.vision.hidden_act == "quick_gelu"
    cfg, params = CC.convert_state(model.state_dict(), config)
    assert "logit_scale" in cfg["extras"]["dropped"]
    x = pixels(seed=1)
    # bos 58; the legacy rule (eos_token_id 2) pools at argmax(ids), the other at the first id == eos (40 here):
    # different positions in every row, a padding mask covering everything after them
    ids = np.array([[58, 5, 2, 9, 40, 59, 59, 59, 59, 59],
                    [57, 11, 40, 0, 0, 0, 0, 0, 0, 0],
                    [56, 3, 4, 5, 6, 7, 8, 9, 10, 40]], np.int64)
    pos = np.asarray(eos_positions(ids, eos_token_id))
    assert pos.tolist() == ([5, 0, 0] if eos_token_id == 2 else [4, 2, 9])
    mask = (np.arange(ids.shape[1])[None] <= pos[:, None]).astype(np.int64)
    with torch.no_grad():
        img_ref = model.visual_projection(model.vision_model(torch.from_numpy(x)).pooler_output).numpy()
        txt_ref = model.text_projection(model.text_model(torch.from_numpy(ids)).pooler_output).numpy()
        txt_ref_masked = model.text_projection(
            model.text_model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).pooler_output).numpy()
    img = C.image_embeds(config, params, x, preprocess=False)
    txt = C.text_embeds(config, params, ids)
    assert report("clip image_embeds", img, img_ref)[1] < RTOL
    assert report(f"clip text_embeds (eos {eos_token_id})", txt, txt_ref)[1] < RTOL
    assert report("clip text_embeds vs masked", txt, txt_ref_masked)[1] < RTOL
    # CLIPScore: w * max(cos, 0) of the normalised features, and the raw cosine
    score, cos = C.clip_score(img, txt)
    a = img_ref / np.linalg.norm(img_ref, axis=1, keepdims=True)
    b = txt_ref / np.linalg.norm(txt_ref, axis=1, keepdims=True)
    ref_cos = np.sum(a * b, axis=1)
    np.testing.assert_allclose(np.asarray(cos), ref_cos, atol=2e-6)
    np.testing.assert_allclose(np.asarray(score), 2.5 * np.clip(ref_cos, 0, None), atol=5e-6)
    # CLIP-I is the cosine of image embeddings
    ii = np.array(C.image_embeds(config, params, jnp.asarray(x[::-1].copy()), preprocess=False))
    ref_ii = torch.nn.functional.cosine_similarity(torch.from_numpy(img_ref), torch.from_numpy(ii)).numpy()
    from jtaba.metrics.vit_features import cosine
    np.testing.assert_allclose(np.asarray(cosine(img, ii)), ref_ii, atol=2e-6)


def test_clip_scores_preprocessed_224():
    """CLIP-I and CLIP-T through the full path at the real input size (224, tiny width)."""
    from convert import clip as CC
    from jtaba.metrics import clip as C
    from jtaba.metrics import vit_features as V

    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=60, max_position_embeddings=16, **TINY),
        vision_config=dict(image_size=224, patch_size=56, **TINY), projection_dim=24)
    torch.manual_seed(4)
    model = _perturb(transformers.CLIPModel(cfg), 4)
    config = CC.config_from_hf(cfg.to_dict())
    _, params = CC.convert_state(model.state_dict(), config)
    rng = np.random.default_rng(5)
    img0 = rng.uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    img1 = np.clip(img0 + rng.normal(0, 0.5, img0.shape), -1, 1).astype(np.float32)
    ids = np.array([[58, 5, 9, 59, 0, 0], [58, 11, 12, 13, 14, 59]], np.int64)
    ref_in = np.stack([torch_preprocess(i, 224, 224, V.CLIP_MEAN, V.CLIP_STD) for i in np.concatenate([img0, img1])])
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(torch.from_numpy(ref_in)).pooler_output)
        txt = model.text_projection(model.text_model(torch.from_numpy(ids)).pooler_output)
    cos = torch.nn.functional.cosine_similarity
    assert report("clip-i (preprocessed)", C.image_similarity(config, params, img0, img1),
                  cos(img[:2], img[2:]).numpy())[1] < RTOL
    assert report("clip-t cosine (preprocessed)", C.text_similarity(config, params, img0, input_ids=ids),
                  cos(img[:2], txt).numpy())[1] < RTOL
    t = C.text_embeds(config, params, ids)
    got = C.text_similarity(config, params, img0, prompt_embeds=t)
    np.testing.assert_allclose(np.asarray(got), cos(img[:2], txt).numpy(), rtol=RTOL, atol=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        C.text_similarity(config, params, img0)


# ---- preprocessing -------------------------------------------------------------------------------------------
def torch_preprocess(img, resize, crop, mean, std):
    """Upstream: diffusers pt_to_pil, then torchvision Resize(bicubic) / CenterCrop / ToTensor / Normalize."""
    from PIL import Image

    import_torchvision()
    from torchvision import transforms as T

    arr = np.clip(torch.from_numpy(img).div(2).add(0.5).numpy(), 0, 1).transpose(1, 2, 0)
    pil = Image.fromarray((arr * 255).round().astype("uint8"))
    tf = T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(crop), T.ToTensor(),
                    T.Normalize(mean, std)])
    return tf(pil).numpy()


@pytest.mark.parametrize("shape,resize,crop", [((40, 57), 32, 24), ((20, 20), 33, 27), ((64, 64), 256, 224),
                                               ((64, 64), 224, 224), ((31, 48), 31, 31)])
def test_preprocess_is_pillow_exact(shape, resize, crop):
    import jax

    from jtaba.metrics import vit_features as V

    rng = np.random.default_rng(sum(shape) + resize)
    imgs = np.clip(rng.normal(0, 0.7, (2, 3) + shape), -1.1, 1.1).astype(np.float32)
    imgs[0, :, :4] = np.linspace(-1, 1, shape[1], dtype=np.float32)  # smooth ramps next to noise and clipping
    pre = V.Preprocess(resize, crop, V.CLIP_MEAN, V.CLIP_STD)
    got = np.asarray(jax.jit(pre)(imgs)).transpose(0, 3, 1, 2)
    ref = np.stack([torch_preprocess(i, resize, crop, V.CLIP_MEAN, V.CLIP_STD) for i in imgs])
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)  # identical uint8 pixels; float32 normalise only
    # the uint8 stage itself is bit-exact
    u8 = np.asarray(V.to_uint8(imgs))
    from PIL import Image
    sz = V.resized_size(shape[0], shape[1], resize)
    pil = np.stack([np.asarray(Image.fromarray(u.astype(np.uint8)).resize(sz[::-1], Image.BICUBIC)) for u in u8])
    np.testing.assert_array_equal(np.asarray(V.resize_bicubic_pil_uint8(u8, sz)), pil)


# ---- converters ------------------------------------------------------------------------------------------------
def test_vit_key_accounting():
    from convert import dino as CD
    from convert.common import ConversionError

    model = tiny_vit(pooler=False)
    config = CD.config_from_hf(model.config.to_dict())
    # a ViTForImageClassification layout: vit. prefix, classifier dropped by name
    state = {f"vit.{k}": v for k, v in model.state_dict().items()}
    state["classifier.weight"] = torch.zeros(10, 32)
    cfg, _ = CD.convert_state(state, config)
    assert cfg["extras"]["dropped"] == ["classifier.weight"]
    state = dict(model.state_dict())
    del state["layers.1.mlp.fc2.bias"]
    state["layers.0.attention.extra.weight"] = torch.zeros(2)
    state["layernorm.weight"] = torch.zeros(33)
    with pytest.raises(ConversionError) as e:
        CD.convert_state(state, config)
    msg = str(e.value)
    assert "missing keys (1): encoder.layer.1.output.dense.bias" in msg
    assert "unexpected keys (1): encoder.layer.0.attention.extra.weight" in msg
    assert "layernorm.weight: (33,)" in msg


def test_clip_key_accounting():
    from convert import clip as CC
    from convert.common import ConversionError

    model = tiny_clip()
    config = CC.config_from_hf(model.config.to_dict())
    state = dict(model.state_dict())
    state["text_model.embeddings.position_ids"] = torch.arange(16)[None]
    cfg, _ = CC.convert_state(state, config)
    assert cfg["extras"]["dropped"] == ["logit_scale", "text_model.embeddings.position_ids"]
    del state["text_projection.weight"]
    state["vision_model.embeddings.position_ids"] = torch.arange(17)[None] + 1
    state["vision_model.head.weight"] = torch.zeros(3)
    with pytest.raises(ConversionError) as e:
        CC.convert_state(state, config)
    msg = str(e.value)
    assert "missing keys (1): text_projection.weight" in msg and "vision_model.head.weight" in msg
    state = dict(model.state_dict())
    state["vision_model.embeddings.position_ids"] = torch.arange(17)[None] + 1
    with pytest.raises(ConversionError, match="position_ids is not 0..16"):
        CC.convert_state(state, config)


def _tiny_tokenizer(folder):
    """A character-level CLIP BPE (no merges): letters, letters + </w>, then <|startoftext|>, <|endoftext|>."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {t: i for i, t in enumerate(letters + [c + "</w>" for c in letters])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return vocab


def test_clip_cli_with_prompts(tmp_path):
    from convert import clip as CC
    from jtaba.metrics import clip as C

    model = tiny_clip(seed=2, vocab_size=54)  # bos 52, pad/eos 53 = <|endoftext|>; config eos 2: argmax pooling
    model.save_pretrained(tmp_path / "hf")
    vocab = _tiny_tokenizer(tmp_path / "hf")
    assert vocab["<|endoftext|>"] == 53
    (tmp_path / "p.txt").write_text("a cat\nred wine\nbaseball player on a valley\n")
    CC.main(["--src", str(tmp_path / "hf"), "--out", str(tmp_path / "ck"), "--prompts", str(tmp_path / "p.txt")])
    config, params = C.load(str(tmp_path / "ck"))
    emb, prompts = C.read_prompt_embeds(str(tmp_path / "ck"), "p")
    assert prompts == ["a cat", "red wine", "baseball player on a valley"] and emb.shape == (3, 24)
    meta = json.loads((tmp_path / "ck" / "prompts" / "p.json").read_text())
    ids = np.asarray(meta["input_ids"])  # padded to the tiny model's 16 positions
    assert ids.shape == (3, 16) and ids[0, 0] == 52 and ids[0, 5] == 53
    with torch.no_grad():
        ref = model.text_projection(model.text_model(torch.from_numpy(ids)).pooler_output).numpy()
    assert report("clip prompt embeddings (converter)", emb, ref)[1] < RTOL
    assert config.text.max_position_embeddings == 16
    np.testing.assert_allclose(np.asarray(C.text_embeds(config, params, ids)), emb, rtol=1e-6, atol=1e-7)


def test_offline_messages_name_the_downloads(tmp_path, capsys):
    from convert import clip as CC
    from convert import dino as CD

    for mod, hub in ((CD, "facebook/dino-vits16"), (CC, "openai/clip-vit-base-patch32")):
        with pytest.raises(SystemExit):
            mod.main(["--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert f"hf download {hub} config.json model.safetensors" in err, err
        assert not (tmp_path / "out").exists()


def test_configs_checked():
    from jtaba.metrics import clip as C
    from jtaba.metrics import vit_features as V

    with pytest.raises(ValueError, match="kind"):
        V.VisionConfig(kind="deit")
    with pytest.raises(ValueError, match="projection_dim"):
        V.VisionConfig(kind="clip")
    with pytest.raises(ValueError, match="hidden_act"):
        V.TextConfig(hidden_act="relu6")
    c = C.Config()
    assert C.Config.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert c.vision.patch_size == 32 and c.text.eos_token_id == 2
