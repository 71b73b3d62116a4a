"""Hub backbones end to end, offline: tiny random CLIP and DINOv2 folders saved by
transformers go through `huse fit` → `huse index` → `huse search` as ``hf:/folder``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from huse.cli import main

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

DEMO = Path(__file__).resolve().parents[1] / "data" / "openclipart-demo"
WORDS = [
    "a",
    "red",
    "blue",
    "bird",
    "cat",
    "dog",
    "apple",
    "boat",
    "sea",
    "house",
    "car",
    "tree",
    "flower",
    "music",
    "food",
]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
TOWER = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
TEXT = dict(TOWER, num_hidden_layers=3, vocab_size=len(VOCAB), max_position_embeddings=32)
VISION = dict(TOWER, image_size=32, patch_size=8)


def _tokenizer(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizer(str(folder / "vocab.txt"), model_max_length=32).save_pretrained(
        folder
    )


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    T = transformers
    clip, dino, bert = root / "clip", root / "dino", root / "bert"
    T.CLIPModel(
        T.CLIPConfig(
            text_config=dict(TEXT, pad_token_id=0, bos_token_id=2, eos_token_id=3),
            vision_config=VISION,
            projection_dim=24,
        )
    ).save_pretrained(clip)
    T.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(clip)
    _tokenizer(clip)
    T.Dinov2Model(T.Dinov2Config(**VISION)).save_pretrained(dino)
    T.BitImageProcessor(
        size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(dino)
    T.BertModel(T.BertConfig(**TEXT, pad_token_id=0)).save_pretrained(bert)
    _tokenizer(bert)
    return {"clip": clip, "dino": dino, "bert": bert}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    m = pd.read_csv(DEMO / "manifest_stripped.csv")
    big = m["classes"].value_counts()
    m = m[m["classes"].isin(big[big >= 8].index[:5])].groupby("classes").head(8).copy()
    m["image"] = [str(DEMO / p) for p in m["image"]]
    path = tmp_path_factory.mktemp("m") / "m.csv"
    m.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("image", "text", "dims"), [("clip", "clip", (24, 24)), ("dino", "bert", (64, 128))]
)
def test_fit_index_search_through_hub_folders(hub, manifest, tmp_path, capsys, image, text, dims):
    run = tmp_path / "run"
    argv = ["fit", str(manifest), "--out", str(run), "--cache", str(tmp_path / "cache"),
            "--image-backbone", f"hf:{hub[image]}", "--text-backbone", f"hf:{hub[text]}",
            "--epochs", "3", "--embed-dim", "16", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads((run / "data_config.json").read_text())
    assert data["image_backbone"] == f"hf:{hub[image]}"
    card = json.loads((run / "model" / "config.json").read_text())
    assert card["image_backbone"] == f"hf:{hub[image]}"
    assert (card["model"]["image_dim"], card["model"]["text_dim"]) == dims
    # One CLIP for both: its raw image and text features share a space, so the raw
    # backbones get cross-modal rows; DINOv2 and BERT do not share one.
    raw = json.loads((run / "metrics.json").read_text())["raw_backbones"]
    shared = image == text
    assert raw["shared_space"] is shared
    assert (raw["retrieval"]["i2t"]["R@1"] is not None) is shared
    assert raw["retrieval"]["i2i"]["R@1"] is not None
    assert ("already share a space" in (run / "report.html").read_text()) is shared
    assert main(["index", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", str(run), "--text", "a red bird", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert len(hits) == 3
    ids = set(pd.read_csv(manifest)["id"].astype(str))
    assert {h["id"] for h in hits} <= ids
    # The two models give two caches: a hub model never reuses another's features.
    versions = {p.name for p in (tmp_path / "cache" / "features").iterdir()}
    assert len(versions) == 2
