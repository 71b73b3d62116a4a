"""The real backbones: image preprocessing by hand, and the forward passes (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from huse.backbones import get_backbone
from huse.backbones.image import IMAGENET_MEAN, IMAGENET_STD
from huse.backbones.text import last4_mean_pool
from huse.data.images import letterbox


def test_letterbox_on_white():
    img = Image.new("RGB", (100, 50), (255, 0, 0))
    out = np.asarray(letterbox(img, 20, 20))
    assert out.shape == (20, 20, 3)
    # 100×50 → 20×10, pasted at y = 5..14; white above and below.
    assert (out[:5] == 255).all() and (out[15:] == 255).all()
    assert (out[5:15] == (255, 0, 0)).all()


def test_preprocess_normalises_with_imagenet_statistics():
    bb = get_backbone("efficientnet-lite0")
    x = bb.preprocess(Image.new("RGB", (10, 10), (255, 255, 255)))
    assert x.shape == (3, 224, 224)
    assert x.dtype == torch.float32
    expected = (1.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(x[:, 0, 0].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(x[:, 100, 100].numpy(), expected, rtol=1e-6)


def test_preprocess_is_the_normalisation_by_hand_in_channel_order():
    bb = get_backbone("efficientnet-lite0")
    rgb = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    x = bb.preprocess(Image.fromarray(rgb)).numpy()
    want = ((rgb / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    np.testing.assert_allclose(x, want, atol=2e-6)


def test_load_decodes_alike_from_a_path_bytes_or_a_pil_image(tmp_path):
    """Extraction reads paths, uploads are bytes, ``encode_image`` takes PIL images: the
    same pixels from each, and what ``load_image_for`` then ``preprocess`` give."""
    from huse.backbones.base import load_pixels
    from huse.data.images import load_image_for

    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (900, 1700, 4), dtype=np.uint8)
    path = tmp_path / "wide.png"
    Image.fromarray(rgba, "RGBA").save(path)
    bb = get_backbone("efficientnet-lite2")
    from_path = bb.load(path)
    assert from_path.shape == (3, 260, 260)
    torch.testing.assert_close(bb.load(path.read_bytes()), from_path, rtol=0, atol=0)
    with Image.open(path) as im:
        torch.testing.assert_close(bb.load(im), from_path, rtol=0, atol=0)
    torch.testing.assert_close(load_pixels(bb, path), from_path, rtol=0, atol=0)
    by_hand = bb.preprocess(load_image_for(path, 260))
    torch.testing.assert_close(by_hand, from_path, rtol=0, atol=0)
    # The crop fit decodes by the short side: 900 // 780 = 1, not reduced.
    crop = get_backbone("efficientnet-lite2", image_fit="crop")
    by_hand = crop.preprocess(load_image_for(path, 260, by="short"))
    torch.testing.assert_close(crop.load(path), by_hand, rtol=0, atol=0)


def test_a_backbone_without_load_gets_load_image_then_preprocess(tmp_path):
    from huse.backbones.base import load_pixels
    from huse.data.images import load_image

    class Plain:
        def preprocess(self, img):
            assert img.mode == "RGB"
            return torch.from_numpy(np.asarray(img, dtype=np.float32).copy())

    path = tmp_path / "a.png"
    Image.new("RGBA", (30, 20), (255, 0, 0, 0)).save(path)
    want = torch.from_numpy(np.asarray(load_image(path), dtype=np.float32).copy())
    torch.testing.assert_close(load_pixels(Plain(), path), want)
    with Image.open(path) as im:
        torch.testing.assert_close(load_pixels(Plain(), im), want)


@pytest.fixture(scope="module")
def minilm():
    return get_backbone("minilm-l6", "text")


@pytest.mark.slow
def test_minilm_pooling_ignores_padding(minilm):
    short, long = "a red dress", "a long blue denim jacket with silver buttons and two pockets"
    alone = minilm.forward([short])
    batched = minilm.forward([short, long])
    assert alone.shape == (1, 1536) and batched.shape == (2, 1536)
    torch.testing.assert_close(batched[0], alone[0], atol=1e-4, rtol=1e-4)
    # The same numbers as pooling the model's hidden states by hand.
    enc = minilm.tokenizer([long], return_tensors="pt")
    with torch.no_grad():
        hs = minilm.model(**enc, output_hidden_states=True).hidden_states
    assert len(hs) == 7  # embeddings + 6 layers
    manual = torch.cat([h[0] for h in hs[-4:]], dim=-1).mean(dim=0)
    torch.testing.assert_close(batched[1], manual, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        last4_mean_pool(hs, enc["attention_mask"])[0], manual, atol=1e-5, rtol=1e-5
    )


@pytest.mark.slow
def test_minilm_long_text_keeps_salient_sentences(minilm):
    filler = " ".join(["It is nice."] * 150)
    text = filler + " Vintage silk maxi dress with floral print."
    prepared = minilm.prepare(text)
    assert minilm.count_tokens(prepared) <= minilm.max_tokens - 2
    assert "Vintage silk maxi dress with floral print." in prepared  # the tail survives


@pytest.mark.slow
def test_efficientnet_forward():
    bb = get_backbone("efficientnet-lite0")
    x = torch.stack([bb.preprocess(Image.new("RGB", (64, 48), c)) for c in ("white", "red")])
    out = bb.forward(x)
    assert out.shape == (2, 1280)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])
    torch.testing.assert_close(bb.forward(x[1:]), out[1:], atol=1e-4, rtol=1e-4)
