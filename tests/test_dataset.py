"""From a manifest to a feature set: the checks before any backbone runs, and notes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from huse.data.manifest import ManifestConfig
from huse.dataset import DataConfig, FeatureSet, NoUsableRowsError, build_feature_set
from huse.errors import DataError, HuseError


class MeanColour:
    """A fake image backbone: the mean RGB of the image."""

    name, kind, dim, version = "mean-colour", "image", 3, "mean-colour/v1"

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(img, dtype=np.float32).mean(axis=(0, 1)) / 255.0)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch


class WordCount:
    """A fake text backbone: (words, characters)."""

    name, kind, dim, version = "word-count", "text", 2, "word-count/v1"

    def prepare(self, text: str) -> str:
        return text

    def forward(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([[len(t.split()), len(t)] for t in texts], dtype=torch.float32)


@pytest.fixture
def loaded(monkeypatch) -> list[str]:
    """Fake backbones; the list records each one asked for."""
    asked: list[str] = []

    def get_backbone(name, kind, **kw):
        asked.append(kind)
        return MeanColour() if kind == "image" else WordCount()

    monkeypatch.setattr("huse.backbones.get_backbone", get_backbone)
    return asked


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for i, colour in enumerate(["red", "green", "blue", "white"]):
        Image.new("RGB", (4, 4), colour).save(tmp_path / f"{i}.png")
    return tmp_path


def config(tmp_path: Path, **manifest) -> DataConfig:
    return DataConfig(manifest=ManifestConfig(**manifest), cache_dir=str(tmp_path / "cache"))


def test_header_only_manifest_stops_before_any_backbone(folder, loaded):
    path = folder / "m.csv"
    path.write_text("image,text,classes\n", encoding="utf-8")
    with pytest.raises(NoUsableRowsError) as e:
        build_feature_set(path, config(folder), progress=False)
    assert isinstance(e.value, DataError) and isinstance(e.value, HuseError)
    assert str(e.value).startswith(f"{path}: the manifest has no data rows")
    assert len(e.value.skipped) == 0
    assert loaded == []


@pytest.mark.parametrize(
    ("column", "values", "reason"),
    [
        ("text", [1, 2, 3, 4], "text is missing or not a string"),
        ("classes", [["a", "b"]] * 4, "empty class"),
        ("image", [b"0.png"] * 4, "empty image path"),
    ],
)
def test_parquet_of_wrong_types_names_the_reason_not_tfidf(folder, loaded, column, values, reason):
    frame = {
        "image": [f"{i}.png" for i in range(4)],
        "text": ["a red one", "a green one", "a blue one", "a white one"],
        "classes": ["k"] * 4,
    }
    frame[column] = values
    path = folder / "m.parquet"
    pd.DataFrame(frame).to_parquet(path)
    with pytest.raises(NoUsableRowsError) as e:
        build_feature_set(path, config(folder), progress=False)
    msg = str(e.value)
    assert msg.startswith(f"{path}: no usable row: all 4 rows were skipped")
    assert f"{reason!r} x4" in msg
    assert f"first: row 1, column {column!r}: {reason}" in msg
    assert "skipped.csv" in msg
    assert e.value.skipped["row"].tolist() == [1, 2, 3, 4]
    assert set(e.value.skipped["reason"]) == {reason}
    assert loaded == []


def test_every_class_unknown_to_the_model_stops_before_any_backbone(folder, loaded):
    path = folder / "m.csv"
    rows = [[f"{i}.png", f"item {i}", "new<class"] for i in range(3)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["image", "text", "classes"], *rows])
    with pytest.raises(NoUsableRowsError, match=r"'unknown class' x3"):
        build_feature_set(path, config(folder), classes=["old<class"], progress=False)
    assert loaded == []


def test_no_image_decodes_stops_before_tfidf(folder, loaded, monkeypatch):
    for i in range(3):
        (folder / f"bad{i}.png").write_bytes(b"not an image at all")
    path = folder / "m.csv"
    rows = [[f"bad{i}.png", f"item {i}", "k"] for i in range(3)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["image", "text", "classes"], *rows])

    def no_tfidf(*a, **k):
        raise AssertionError("TF-IDF must not run on zero rows")

    monkeypatch.setattr("huse.dataset.TfidfFeatures.fit", no_tfidf)
    with pytest.raises(NoUsableRowsError) as e:
        build_feature_set(path, config(folder), progress=False)
    assert "no usable row: all 3 rows were skipped" in str(e.value)
    assert e.value.skipped["column"].tolist() == ["image"] * 3


def test_a_truncated_text_is_kept_and_noted_through_save_and_load(folder, loaded):
    path = folder / "m.csv"
    texts = ["red " * 50, "green one", "blue one", "white one"]  # 200 characters
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "text", "classes"])
        w.writerows([f"{i}.png", t, "k"] for i, t in enumerate(texts))
    fs = build_feature_set(path, config(folder, max_text_chars=40), progress=False)
    assert len(fs) == 4 and len(fs.skipped) == 0
    assert fs.items["text"][0] == ("red " * 10).strip()
    np.testing.assert_array_equal(fs.text[0], [10, 39])  # the backbone saw the cut text
    assert fs.notes.values.tolist() == [
        [1, "1", "text", "text truncated to 40 characters (was 200)"]
    ]
    assert fs.stats["texts_truncated"] == 1
    fs.save(folder / "out")
    back = pd.read_csv(folder / "out" / "notes.csv", dtype=str, keep_default_na=False)
    assert back["reason"].tolist() == ["text truncated to 40 characters (was 200)"]
    again = FeatureSet.load(folder / "out")
    assert again.notes["row"].tolist() == ["1"] and again.config.manifest.max_text_chars == 40
