"""Manifest reading: formats, path resolution, each bad-row kind, and fatal errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from huse.data.manifest import ManifestConfig, ManifestError, read_manifest

HEADER = ["id", "image", "text", "classes"]


@pytest.fixture
def folder(tmp_path: Path, monkeypatch) -> Path:
    """A manifest folder with img/ holding three tiny images; cwd is somewhere else."""
    d = tmp_path / "set"
    (d / "img").mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (4, 4), "red").save(d / "img" / name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths must not resolve against the cwd
    return d


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path: Path, records: list[dict | str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = [
    ["x1", "img/a.png", "A red dress", "clothing<dresses"],
    ["x2", "img/b.png", "Blue jeans HASH(0x5f3a)", "clothing < trousers"],
    ["x3", "img/c.png", "An apple", "food"],
]


def check_good(m, folder: Path) -> None:
    items = m.items
    assert list(items.columns) == ["row", "id", "image", "text", "classes"]
    assert items["id"].tolist() == ["x1", "x2", "x3"]
    assert items["row"].tolist() == [1, 2, 3]
    assert items["image"].tolist() == [
        str((folder / "img" / n).resolve()) for n in ("a.png", "b.png", "c.png")
    ]
    # Text cleaned, class levels stripped.
    assert items["text"].tolist() == ["A red dress", "Blue jeans", "An apple"]
    assert items["classes"].tolist() == ["clothing<dresses", "clothing<trousers", "food"]
    assert m.skipped == []
    assert not m.has_split


def test_csv(folder):
    m = read_manifest(write_csv(folder / "m.csv", GOOD))
    check_good(m, folder)


def test_jsonl(folder):
    records = [dict(zip(HEADER, r)) for r in GOOD]
    m = read_manifest(write_jsonl(folder / "m.jsonl", records))
    check_good(m, folder)


def test_parquet(folder):
    path = folder / "m.parquet"
    pd.DataFrame(GOOD, columns=HEADER).to_parquet(path)
    m = read_manifest(path)
    check_good(m, folder)


def test_relative_paths_resolve_against_the_manifest_folder(folder):
    sub = folder / "lists"
    sub.mkdir()
    rows = [
        ["1", "../img/a.png", "one", "k"],
        ["2", str(folder / "img" / "b.png"), "two", "k"],  # absolute paths stay
        ["3", "img/c.png", "three", "k"],  # would exist only relative to folder, not sub
    ]
    m = read_manifest(write_csv(sub / "m.csv", rows))
    images = [Path(p) for p in m.items["image"]]
    assert all(p.is_absolute() for p in images)
    assert [p.resolve() for p in images] == [
        (folder / "img" / "a.png").resolve(),
        (folder / "img" / "b.png").resolve(),
    ]
    assert [(s.row, s.column) for s in m.skipped] == [(3, "image")]
    assert str(sub / "img" / "c.png") in m.skipped[0].reason


def test_without_id_the_row_number_is_the_id(folder):
    rows = [r[1:] for r in GOOD]
    m = read_manifest(write_csv(folder / "m.csv", rows, header=HEADER[1:]))
    assert m.items["id"].tolist() == ["1", "2", "3"]


def test_custom_columns_and_separator(folder):
    rows = [["img/a.png", "red dress", "clothing/dresses"]]
    path = write_csv(folder / "m.csv", rows, header=["picture", "caption", "path"])
    cfg = ManifestConfig(image_col="picture", text_col="caption", classes_col="path", sep="/")
    m = read_manifest(path, cfg)
    assert m.items["classes"].tolist() == ["clothing/dresses"]
    assert m.items["text"].tolist() == ["red dress"]


def test_split_column(folder):
    rows = [r + [s] for r, s in zip(GOOD, ["train", " TEST ", "val"])]
    m = read_manifest(write_csv(folder / "m.csv", rows, header=HEADER + ["split"]))
    assert m.has_split
    assert m.items["split"].tolist() == ["train", "test", "val"]


# --- bad rows: (row, id, column, reason) ----------------------------------------------

BAD_CSV = [
    ["g1", "img/a.png", "good one", "k<a"],  # row 1: kept
    ["m1", "img/missing.png", "text", "k"],  # 2
    ["e1", "img/a.png", "   ", "k"],  # 3
    ["n1", "img/a.png", "12345", "k"],  # 4
    ["n2", "img/a.png", "!!! ???", "k"],  # 5
    ["h1", "img/a.png", "HASH(0x7ffd12)", "k"],  # 6: nothing left after cleaning
    ["c1", "img/a.png", "text", ""],  # 7
    ["c2", "img/a.png", "text", "a<<b"],  # 8
    ["c3", "img/a.png", "text", "a< "],  # 9
    ["g1", "img/b.png", "same id", "k"],  # 10
    ["w1", "img/a.png", "too few fields"],  # 11: 3 fields
    ["w2", "img/a.png", "too", "many", "fields"],  # 12: 5 fields
    ["i1", "", "no image", "k"],  # 13
    ["g2", "img/b.png", "good two", "k<b"],  # 14: kept
]


def test_each_bad_csv_row_is_skipped_with_column_and_reason(folder):
    m = read_manifest(write_csv(folder / "m.csv", BAD_CSV))
    assert m.items["id"].tolist() == ["g1", "g2"]
    assert m.items["row"].tolist() == [1, 14]
    got = [(s.row, s.id, s.column, s.reason) for s in m.skipped]
    missing = str((folder / "img" / "missing.png").resolve())
    assert got == [
        (2, "m1", "image", f"image file not found: {missing}"),
        (3, "e1", "text", "empty text"),
        (4, "n1", "text", "text has no words (no letters)"),
        (5, "n2", "text", "text has no words (no letters)"),
        (6, "h1", "text", "empty text"),
        (7, "c1", "classes", "empty class"),
        (8, "c2", "classes", "invalid class path 'a<<b': empty level"),
        (9, "c3", "classes", "invalid class path 'a<': empty level"),
        (10, "g1", "id", "duplicate id (first seen at row 1)"),
        (11, "", "", "malformed row: 3 fields, header has 4"),
        (12, "", "", "malformed row: 5 fields, header has 4"),
        (13, "i1", "image", "empty image path"),
    ]
    frame = m.skipped_frame()
    assert list(frame.columns) == ["row", "id", "column", "reason"]
    assert len(frame) == 12


def test_blank_csv_lines_are_ignored_but_counted(folder):
    path = folder / "m.csv"
    path.write_text("id,image,text,classes\nx1,img/a.png,one,k\n\nx2,img/missing.png,two,k\n")
    m = read_manifest(path)
    assert m.items["row"].tolist() == [1]
    assert [(s.row, s.id) for s in m.skipped] == [(3, "x2")]


def test_bad_jsonl_rows(folder):
    records = [
        {"id": "g1", "image": "img/a.png", "text": "good", "classes": "k"},  # line 1
        '{"id": "j1", "image": "img/a.png", "text": "cut',  # 2
        "[1, 2, 3]",  # 3
        {"id": "t1", "image": "img/a.png", "text": 12345, "classes": "k"},  # 4
        {"id": "t2", "image": "img/a.png", "text": None, "classes": "k"},  # 5
        {"id": "t3", "image": "img/a.png", "classes": "k"},  # 6: no text key
        {"id": "c1", "image": "img/a.png", "text": "x", "classes": ["a", "b"]},  # 7
        {"id": "p1", "image": 7, "text": "x", "classes": "k"},  # 8
    ]
    m = read_manifest(write_jsonl(folder / "m.jsonl", records))
    assert m.items["id"].tolist() == ["g1"]
    got = [(s.row, s.id, s.column, s.reason) for s in m.skipped]
    assert got[0][:3] == (2, "", "")
    assert got[0][3].startswith("malformed JSON: ")
    assert got[1:] == [
        (3, "", "", "malformed row: not a JSON object"),
        (4, "t1", "text", "text is missing or not a string"),
        (5, "t2", "text", "text is missing or not a string"),
        (6, "t3", "text", "text is missing or not a string"),
        (7, "c1", "classes", "empty class"),
        (8, "p1", "image", "empty image path"),
    ]


def test_bad_split_value(folder):
    rows = [
        ["s1", "img/a.png", "one", "k", "train"],
        ["s2", "img/a.png", "two", "k", "dev"],
        ["s3", "img/a.png", "three", "k", ""],
    ]
    m = read_manifest(write_csv(folder / "m.csv", rows, header=HEADER + ["split"]))
    assert m.items["id"].tolist() == ["s1"]
    assert [(s.row, s.id, s.column, s.reason) for s in m.skipped] == [
        (2, "s2", "split", "split 'dev' is not one of ['train', 'val', 'test']"),
        (3, "s3", "split", "split '' is not one of ['train', 'val', 'test']"),
    ]


def test_parquet_nan_and_non_text_cells(folder):
    path = folder / "m.parquet"
    pd.DataFrame(
        {
            "image": ["img/a.png", "img/b.png", "img/c.png"],
            "text": ["good", None, "fine"],
            "classes": ["k", "k", None],
        }
    ).to_parquet(path)
    m = read_manifest(path)
    assert m.items["id"].tolist() == ["1"]
    assert [(s.row, s.column, s.reason) for s in m.skipped] == [
        (2, "text", "text is missing or not a string"),
        (3, "classes", "empty class"),
    ]


# --- fatal errors ---------------------------------------------------------------------


def test_missing_column_names_the_file_and_the_fix(folder):
    path = write_csv(
        folder / "m.csv", [["img/a.png", "x", "k"]], header=["image", "caption", "classes"]
    )
    with pytest.raises(ManifestError) as e:
        read_manifest(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "missing column(s) ['text']" in msg
    assert "['image', 'caption', 'classes']" in msg  # what the file has
    assert "--text-col NAME" in msg
    assert "--image-col" not in msg


def test_several_missing_columns(folder):
    path = write_jsonl(
        folder / "m.jsonl", [{"picture": "img/a.png", "caption": "x", "classes": "k"}]
    )
    with pytest.raises(ManifestError, match="--image-col NAME, --text-col NAME"):
        read_manifest(path)


def test_missing_file(tmp_path):
    with pytest.raises(ManifestError, match=r"nope\.csv: manifest not found"):
        read_manifest(tmp_path / "nope.csv")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ManifestError, match="is a directory"):
        read_manifest(tmp_path)


def test_unknown_format(tmp_path):
    path = tmp_path / "m.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(ManifestError, match=r"unknown manifest format '\.xlsx'"):
        read_manifest(path)


def test_empty_csv(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("")
    with pytest.raises(ManifestError, match="the file is empty"):
        read_manifest(path)


def test_not_utf8_csv(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes("image,text,classes\na.png,caf\xe9,k\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="not UTF-8"):
        read_manifest(path)


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "m.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(ManifestError, match=r"m\.parquet: unreadable Parquet file"):
        read_manifest(path)


def test_unreadable_file(tmp_path, monkeypatch):
    # Permission bits do not stop root, so simulate the OS refusing the read.
    path = write_csv(tmp_path / "m.csv", [])
    real_open = open

    def deny(file, *a, **kw):
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **kw)

    monkeypatch.setattr("builtins.open", deny)
    with pytest.raises(ManifestError, match=r"m\.csv: cannot read manifest: .*Permission denied"):
        read_manifest(path)
