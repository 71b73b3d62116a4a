"""The real backbones: image preprocessing by hand, and the forward passes (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from huse.backbones import get_backbone
from huse.backbones.image import IMAGENET_MEAN, IMAGENET_STD, pad_to_square
from huse.backbones.text import last4_mean_pool


def test_pad_to_square_letterboxes_on_white():
    img = Image.new("RGB", (100, 50), (255, 0, 0))
    out = np.asarray(pad_to_square(img, 20))
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
