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


# --- reliability: long texts, damaged quoting, duplicate columns, JSON types, ids ------


def test_a_50_mb_text_is_cut_to_the_limit_and_the_row_is_kept_with_a_note(folder):
    huge = "abcdefghij" * 5_000_000  # 50 MB, no spaces: the cut lands exactly on the limit
    rows = [GOOD[0], ["big", "img/b.png", huge, "k"], GOOD[2]]
    m = read_manifest(write_csv(folder / "m.csv", rows))
    assert m.items["id"].tolist() == ["x1", "big", "x3"]
    text = m.items.set_index("id").loc["big", "text"]
    assert len(text) == ManifestConfig().max_text_chars == 20_000
    assert text == huge[:20_000]
    assert m.skipped == []
    assert [(n.row, n.id, n.column) for n in m.notes] == [(2, "big", "text")]
    assert m.notes[0].reason == "text truncated to 20000 characters (was 50000000)"
    assert m.notes_frame()[["row", "id"]].values.tolist() == [[2, "big"]]


def test_text_limit_applies_to_every_format_and_can_be_set(folder):
    long = "word " * 1000  # 5,000 characters
    cfg = ManifestConfig(max_text_chars=100)
    records = [{"id": "j", "image": "img/a.png", "text": long, "classes": "k"}]
    m = read_manifest(write_jsonl(folder / "m.jsonl", records), cfg)
    assert m.items["text"].tolist() == [("word " * 20).strip()]
    assert [n.row for n in m.notes] == [1]
    path = folder / "m.parquet"
    pd.DataFrame(records).to_parquet(path)
    assert len(read_manifest(path, cfg).items["text"][0]) == 99  # cut, then the space dropped
    # A text over the limit before cleaning but under it after is not cut, and no note.
    spaced = "a" + " " * 150 + "b"
    m = read_manifest(write_csv(folder / "s.csv", [["s", "img/a.png", spaced, "k"]]), cfg)
    assert m.items["text"].tolist() == ["a b"] and m.notes == []


@pytest.mark.parametrize("bad", [0, -5, 2.5])
def test_text_limit_must_be_a_positive_integer(folder, bad):
    from huse.errors import ConfigError

    with pytest.raises(ConfigError, match="max_text_chars"):
        read_manifest(write_csv(folder / "m.csv", GOOD), ManifestConfig(max_text_chars=bad))


def test_unterminated_quote_is_reported_and_later_rows_are_kept(folder):
    path = folder / "m.csv"
    path.write_text(
        "id,image,text,classes\n"
        "1,img/a.png,one,k\n"
        "2,img/a.png,two,k\n"
        "3,img/a.png,three,k\n"
        '4,img/a.png,"four is broken,k\n'  # the quote is never closed ...
        '5,img/b.png,"five",k\n'  # ... until this row's opening quote
        "6,img/c.png,six,k\n",
        encoding="utf-8",
    )
    m = read_manifest(path)
    # Row 4 alone is lost; row 5, which its open quote would have swallowed, is read again.
    assert m.items["id"].tolist() == ["1", "2", "3", "5", "6"]
    assert m.items["row"].tolist() == [1, 2, 3, 5, 6]  # numbering stays on the file's rows
    assert m.items["text"].tolist()[3] == "five"
    assert [(s.row, s.id, s.column) for s in m.skipped] == [(4, "", "")]
    assert m.skipped[0].reason.startswith(
        "unterminated quote in row 4 (it would have swallowed rows 5-5"
    )


def test_unterminated_quote_to_the_end_of_the_file(folder):
    path = folder / "m.csv"
    path.write_text(
        'id,image,text,classes\n1,img/a.png,one,k\n2,img/a.png,"two,k\n'
        "3,img/a.png,three,k\n4,img/a.png,four,k\n",
        encoding="utf-8",
    )
    m = read_manifest(path)
    assert m.items["id"].tolist() == ["1", "3", "4"]
    assert [s.row for s in m.skipped] == [2]
    assert m.skipped[0].reason.startswith(
        "unterminated quote in row 2 (it would have swallowed rows 3-4"
    )


def test_quoted_fields_with_newlines_are_not_mistaken_for_broken_quotes(folder):
    rows = [
        ["1", "img/a.png", 'line one\n2,img/b.png,"quoted",k\nend', "k"],  # looks like a row
        ["2", "img/b.png", 'he said ""hi""\n\n, and, more, commas', "k"],
        ["3", "img/c.png", "plain", "k"],
    ]
    m = read_manifest(write_csv(folder / "m.csv", rows))
    assert m.items["id"].tolist() == ["1", "2", "3"]
    assert m.skipped == []


def test_duplicate_column_is_refused_naming_it_and_the_file(folder):
    path = write_csv(folder / "m.csv", [r + [""] for r in GOOD], header=HEADER + ["text"])
    with pytest.raises(ManifestError) as e:
        read_manifest(path)
    msg = str(e.value)
    assert str(path) in msg and "'text' appears 2 times" in msg
    # Empty names (trailing commas of a spreadsheet export) are not columns anyone reads.
    path.write_text("id,image,text,classes,,\nx1,img/a.png,red,k,,\n", encoding="utf-8")
    assert read_manifest(path).items["id"].tolist() == ["x1"]


def test_duplicate_parquet_column_is_refused(folder, monkeypatch):
    path = folder / "m.parquet"
    pd.DataFrame(GOOD, columns=HEADER).to_parquet(path)
    dup = pd.DataFrame([r + ["x"] for r in GOOD], columns=HEADER + ["classes"])
    monkeypatch.setattr(pd, "read_parquet", lambda *a, **k: dup)  # pyarrow may keep both
    with pytest.raises(ManifestError, match="'classes' appears 2 times"):
        read_manifest(path)


def test_a_non_text_split_skips_that_row_only(folder):
    records = [dict(zip(HEADER, r)) for r in GOOD]
    records[1]["split"] = 123  # the only record with a split key
    m = read_manifest(write_jsonl(folder / "m.jsonl", records))
    assert m.items["id"].tolist() == ["x1", "x3"]
    assert not m.has_split  # no usable split value anywhere: split automatically
    assert [(s.row, s.id, s.column, s.reason) for s in m.skipped] == [
        (2, "x2", "split", "split 123 is not one of ['train', 'val', 'test']")
    ]
    # With valid split values elsewhere the column is used and the bad one still skipped.
    records[0]["split"], records[2]["split"] = "train", "test"
    m = read_manifest(write_jsonl(folder / "m.jsonl", records))
    assert m.items["split"].tolist() == ["train", "test"]
    assert [s.row for s in m.skipped] == [2]


def test_an_empty_split_column_is_ignored(folder):
    rows = [r + [""] for r in GOOD]
    m = read_manifest(write_csv(folder / "m.csv", rows, header=HEADER + ["split"]))
    assert m.items["id"].tolist() == ["x1", "x2", "x3"] and not m.has_split


def test_jsonl_with_a_byte_order_mark(folder):
    records = [dict(zip(HEADER, r)) for r in GOOD]
    path = folder / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8-sig")
    check_good(read_manifest(path), folder)


def test_parquet_float_ids_with_nan_take_the_row_number(folder):
    path = folder / "m.parquet"
    pd.DataFrame(
        {
            "id": [1.0, float("nan"), 3.0, None, 2.5],
            "image": ["img/a.png"] * 5,
            "text": ["one", "two", "three", "four", "five"],
            "classes": ["k"] * 5,
        }
    ).to_parquet(path)
    m = read_manifest(path)
    # Integer-valued floats (an integer column that held a NaN) read as integers.
    assert m.items["id"].tolist() == ["1", "2", "3", "4", "2.5"]
    assert m.skipped == []


def test_missing_id_in_jsonl_and_csv_takes_the_row_number(folder):
    records = [
        {"id": None, "image": "img/a.png", "text": "one", "classes": "k"},
        {"id": " ", "image": "img/a.png", "text": "two", "classes": "k"},
        {"id": 7, "image": "img/a.png", "text": "three", "classes": "k"},
    ]
    m = read_manifest(write_jsonl(folder / "m.jsonl", records))
    assert m.items["id"].tolist() == ["1", "2", "7"]
