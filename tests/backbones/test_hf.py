"""Hub backbones (``hf:``) on tiny, randomly initialised models saved to a temp folder.

Nothing is downloaded: CLIP, SigLIP, DINOv2 and BERT are built by transformers from small
configs and written with ``save_pretrained``, exactly as a folder from
``huggingface-cli download`` looks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from huse.backbones import ImageBackbone, TextBackbone, get_backbone
from huse.backbones.hf import FIT_VERSIONS, HEAD_VERSIONS
from huse.errors import ConfigError, RunError

transformers = pytest.importorskip("transformers")

WORDS = ["a", "red", "dress", "blue", "denim", "jacket", "with", "silver", "buttons"]
WORDS += ["and", "two", "pockets", "bird", "cat", "dog"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
TOWER = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
# Three layers: the paper's pooling concatenates four hidden states (embeddings + 3).
TEXT = dict(TOWER, num_hidden_layers=3, vocab_size=len(VOCAB), max_position_embeddings=16)
TEXT_IDS = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)
VISION = dict(TOWER, image_size=32, patch_size=8)


def _tokenizer(folder: Path) -> None:
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tok = transformers.BertTokenizer(str(folder / "vocab.txt"), model_max_length=16)
    tok.save_pretrained(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny model folders: clip, siglip, dino, bert, st (bert + sentence-transformers files)."""
    root = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    out = {k: root / k for k in ("clip", "siglip", "dino", "bert", "st")}
    T = transformers
    T.CLIPModel(
        T.CLIPConfig(text_config=dict(TEXT, **TEXT_IDS), vision_config=VISION, projection_dim=24)
    ).save_pretrained(out["clip"])
    T.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(out["clip"])
    T.SiglipModel(
        T.SiglipConfig(text_config=dict(TEXT, **TEXT_IDS), vision_config=VISION)
    ).save_pretrained(out["siglip"])
    T.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out["siglip"])
    T.Dinov2Model(T.Dinov2Config(**VISION)).save_pretrained(out["dino"])
    T.BitImageProcessor(
        size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(out["dino"])
    bert = T.BertModel(T.BertConfig(**TEXT, **TEXT_IDS))
    for k in ("clip", "siglip", "bert", "st"):
        out[k].mkdir(exist_ok=True)
        _tokenizer(out[k])
    bert.save_pretrained(out["bert"])
    bert.save_pretrained(out["st"])
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (out["st"] / "modules.json").write_text(json.dumps(modules))
    (out["st"] / "1_Pooling").mkdir()
    (out["st"] / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_cls_token": True})
    )
    return out


def _images() -> list[Image.Image]:
    wide = Image.new("RGB", (60, 20), (200, 30, 30))
    tall = Image.new("RGB", (20, 50), (20, 40, 220))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    return [wide, tall, noise]


def _own_features(kind: str, folder: Path, pixels: torch.Tensor) -> torch.Tensor:
    """The model family's own feature call, written out here independently of huse."""
    T = transformers
    with torch.no_grad():
        if kind == "clip":
            return (
                T.CLIPModel.from_pretrained(folder)
                .eval()
                .get_image_features(pixel_values=pixels)
                .pooler_output
            )
        if kind == "siglip":
            return (
                T.SiglipModel.from_pretrained(folder)
                .eval()
                .get_image_features(pixel_values=pixels)
                .pooler_output
            )
        h = T.Dinov2Model.from_pretrained(folder).eval()(pixel_values=pixels).last_hidden_state
        return torch.cat([h[:, 0], h[:, 1:].mean(1)], dim=-1)


@pytest.mark.parametrize(("kind", "dim"), [("clip", 24), ("siglip", 32), ("dino", 64)])
def test_image_features_are_the_familys_own(models, kind, dim):
    bb = get_backbone(f"hf:{models[kind]}", "image")
    assert isinstance(bb, ImageBackbone)
    assert bb.dim == dim  # from the config, before any weights load
    assert "model" not in vars(bb)
    x = torch.stack([bb.preprocess(im) for im in _images()])
    assert x.shape == (3, 3, 32, 32)
    out = bb.forward(x)
    assert out.shape == (3, dim) and out.dtype == torch.float32
    torch.testing.assert_close(out, _own_features(kind, models[kind], x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[0], out[2])


def test_pad_letterboxes_on_white_and_crop_is_the_processor(models):
    proc = transformers.AutoImageProcessor.from_pretrained(models["clip"], backend="pil")
    wide = _images()[0]  # 60×20 → 32×11 pasted at rows 10..20 of a 32×32 canvas
    pad = get_backbone(f"hf:{models['clip']}", "image", image_fit="pad").preprocess(wide)
    mean, std = np.array(proc.image_mean), np.array(proc.image_std)
    white = (1.0 - mean) / std
    np.testing.assert_allclose(pad[:, 0, 16].numpy(), white, rtol=1e-5)
    np.testing.assert_allclose(pad[:, 31, 16].numpy(), white, rtol=1e-5)
    red = (np.array([200, 30, 30]) / 255.0 - mean) / std
    np.testing.assert_allclose(pad[:, 16, 16].numpy(), red, rtol=1e-4, atol=1e-4)
    crop = get_backbone(f"hf:{models['clip']}", "image", image_fit="crop").preprocess(wide)
    expected = proc(images=wide, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(crop, expected)
    # The crop fills the frame with red: no white rows.
    np.testing.assert_allclose(crop[:, 0, 16].numpy(), red, rtol=1e-4, atol=1e-4)


def test_load_decodes_for_the_fit(models, tmp_path):
    """pad: decoded for one resize to the input, composited after it; crop: the processor
    gets the picture as load_image opens it (RGB on white)."""
    from huse.data.images import load_image, load_image_for

    path = tmp_path / "half-transparent.png"
    Image.new("RGBA", (300, 100), (0, 0, 255, 128)).save(path)
    pad = get_backbone(f"hf:{models['clip']}", "image", image_fit="pad")
    got = pad.load(path)
    torch.testing.assert_close(got, pad.preprocess(load_image_for(path, 32)), rtol=0, atol=0)
    # Half-transparent blue on white: (127, 127, 255) or a level off, as composited first.
    first = pad.preprocess(load_image(path))
    torch.testing.assert_close(got, first, rtol=0, atol=0.02)
    crop = get_backbone(f"hf:{models['clip']}", "image", image_fit="crop")
    torch.testing.assert_close(crop.load(path), crop.preprocess(load_image(path)), rtol=0, atol=0)
    with Image.open(path) as im:
        torch.testing.assert_close(crop.load(im), crop.preprocess(load_image(path)), atol=0, rtol=0)


def test_versions_name_the_weights_head_and_fit(models, tmp_path):
    versions = {
        (k, fit): get_backbone(f"hf:{models[k]}", "image", image_fit=fit).version
        for k in ("clip", "siglip", "dino")
        for fit in ("pad", "crop")
    }
    assert len(set(versions.values())) == 6
    assert HEAD_VERSIONS["dinov2"] in versions[("dino", "pad")]
    assert FIT_VERSIONS["crop"] in versions[("clip", "crop")]
    assert get_backbone(f"hf:{models['clip']}", "image", bf16=True).version.endswith("/bf16")
    # A copy of a folder is the same model: the key does not depend on where it lives...
    copy = shutil.copytree(models["clip"], tmp_path / "elsewhere")
    assert get_backbone(f"hf:{copy}", "image").version == versions[("clip", "pad")]
    # ...but changing its preprocessing changes it.
    cfg = json.loads((copy / "preprocessor_config.json").read_text())
    cfg["image_mean"] = [0.5, 0.5, 0.5]
    (copy / "preprocessor_config.json").write_text(json.dumps(cfg))
    assert get_backbone(f"hf:{copy}", "image").version != versions[("clip", "pad")]


def test_a_hub_snapshot_folder_is_keyed_like_its_id(models, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = tmp_path / "hub" / "models--org--tiny-clip" / "snapshots" / commit
    shutil.copytree(models["clip"], snap)
    bb = get_backbone(f"hf:{snap}", "image")
    assert bb.version.startswith(f"hf:org/tiny-clip@{commit}/")


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_dual_encoder_text_defaults_to_the_models_own_features(models, kind):
    enc = get_backbone(f"hf:{models[kind]}", "text")
    assert isinstance(enc, TextBackbone)
    assert enc.pooling == "model" and enc.max_tokens == 16
    texts = ["a red dress", "blue denim jacket with silver buttons"]
    out = enc.forward([enc.prepare(t) for t in texts])
    tok = transformers.AutoTokenizer.from_pretrained(models[kind])
    padding = "max_length" if kind == "siglip" else True  # SigLIP pools the last position
    batch = tok(texts, padding=padding, max_length=16, truncation=True, return_tensors="pt")
    cls = transformers.CLIPModel if kind == "clip" else transformers.SiglipModel
    with torch.no_grad():
        own = (
            cls.from_pretrained(models[kind])
            .eval()
            .get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            .pooler_output
        )
    assert out.shape == (2, enc.dim) == (2, 24 if kind == "clip" else 32)
    torch.testing.assert_close(out, own, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc.embed_sentences(texts), F.normalize(own, dim=-1))
    # The paper's pooling is still there on request, with its own key and size.
    last4 = get_backbone(f"hf:{models[kind]}", "text", text_pooling="last4")
    assert last4.dim == 128 and last4.forward(texts).shape == (2, 128)
    assert last4.version != enc.version


def test_bert_defaults_to_last4_and_st_folder_has_its_own_pooling(models, tmp_path):
    texts = ["a red dress", "two pockets"]
    bert = get_backbone(f"hf:{models['bert']}", "text")
    assert (bert.pooling, bert.dim) == ("last4", 128)
    assert bert.forward(texts).shape == (2, 128)
    two = transformers.BertConfig(**dict(TEXT, num_hidden_layers=2))
    two.save_pretrained(tmp_path / "two-layers")  # a config alone: dim loads no weights
    with pytest.raises(ConfigError, match="has 2 layers; the last-four-layer pooling needs 3"):
        get_backbone(f"hf:{tmp_path / 'two-layers'}", "text").dim  # noqa: B018
    with pytest.raises(ConfigError, match="text_pooling='model' needs a CLIP/SigLIP"):
        get_backbone(f"hf:{models['bert']}", "text", text_pooling="model").dim  # noqa: B018
    st = get_backbone(f"hf:{models['st']}", "text", text_pooling="model")
    assert st.dim == 32 and "model-st-cls-norm-v1" in st.version
    tok = transformers.AutoTokenizer.from_pretrained(models["st"])
    with torch.no_grad():
        h = (
            transformers.BertModel.from_pretrained(models["st"])
            .eval()(**tok(texts, padding=True, return_tensors="pt"))
            .last_hidden_state
        )
    torch.testing.assert_close(st.forward(texts), F.normalize(h[:, 0], dim=-1))
    mean = get_backbone(f"hf:{models['st']}", "text", text_pooling="mean")
    cls = get_backbone(f"hf:{models['st']}", "text", text_pooling="cls")
    torch.testing.assert_close(cls.forward(texts), h[:, 0])
    assert mean.dim == 32 and not torch.allclose(mean.forward(texts), h[:, 0])


def test_wrong_modality_says_so(models):
    with pytest.raises(ConfigError, match=r"is a text model \(bert\), not an image model"):
        get_backbone(f"hf:{models['bert']}", "image").version  # noqa: B018
    with pytest.raises(ConfigError, match=r"is an image model \(dinov2\), not a text model"):
        get_backbone(f"hf:{models['dino']}", "text").dim  # noqa: B018


def test_unreachable_hub_id_says_how_to_use_a_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RunError) as e:
        get_backbone("hf:org/never-downloaded-model", "image").version  # noqa: B018
    msg = str(e.value)
    assert "hub model 'org/never-downloaded-model' cannot be reached" in msg
    assert "huggingface-cli download org/never-downloaded-model --local-dir DIR" in msg
    assert "hf:DIR" in msg and "\n" not in msg


def test_bad_folders_say_what_is_missing(models, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        get_backbone(f"hf:{tmp_path / 'nope'}", "image")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        get_backbone(f"hf:{tmp_path / 'empty'}", "image").dim  # noqa: B018
    no_proc = shutil.copytree(models["dino"], tmp_path / "dino-no-proc")
    (no_proc / "preprocessor_config.json").unlink()
    with pytest.raises(ConfigError, match=r"has no usable image processor"):
        get_backbone(f"hf:{no_proc}", "image").preprocess(_images()[0])


def test_extract_end_to_end_with_a_hub_backbone(models, tmp_path):
    from huse.features import ExtractStats, FeatureStore, extract_images, extract_texts

    demo = Path(__file__).parents[2] / "data" / "openclipart-demo" / "images"
    paths = [str(p) for p in sorted(demo.glob("*.jpg"))[:4]]
    assert len(paths) == 4
    img_bb = get_backbone(f"hf:{models['clip']}", "image")
    txt_bb = get_backbone(f"hf:{models['clip']}", "text")
    stats = ExtractStats()
    store = FeatureStore(tmp_path / "cache", img_bb.version)
    feats, errors = extract_images(paths, img_bb, store, batch_size=3, progress=False, stats=stats)
    assert errors == {} and feats.shape == (4, 24)
    assert np.isfinite(feats).all() and np.abs(feats).sum(1).min() > 0
    texts = ["a red bird", "a blue cat", "a red bird"]
    tstore = FeatureStore(tmp_path / "cache", txt_bb.version)
    tfeats = extract_texts(texts, txt_bb, tstore, batch_size=2, progress=False, stats=stats)
    assert tfeats.shape == (3, 24)
    np.testing.assert_array_equal(tfeats[0], tfeats[2])
    assert (stats.images_computed, stats.texts_computed) == (4, 2)
    # A second pass over the same inputs computes nothing.
    again = ExtractStats()
    feats2, _ = extract_images(paths, img_bb, store, progress=False, stats=again)
    np.testing.assert_array_equal(feats, feats2)
    assert again.images_computed == 0
