"""The index folder as an output and an input: it never deletes what huse did not write,
refuses a bad --out or factory before any work, and reads a damaged index.json as a clear
error (never a KeyError, never a silent pass)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("faiss")

import huse.index as hix  # noqa: E402
from huse.errors import HuseError, QueryError, RunError, UnsafeOutputError  # noqa: E402
from huse.index import (  # noqa: E402
    CatalogueIndexError,
    IndexConfig,
    build_index,
    check_factory,
    check_output_dir,
    load_index,
)
from huse.runs import index_run  # noqa: E402


def small_index(n: int = 6, d: int = 8):
    x = np.eye(n, d, dtype=np.float32)
    items = pd.DataFrame(
        {
            "row": np.arange(1, n + 1),
            "id": [f"item{i}" for i in range(n)],
            "image": [f"/data/img{i}.png" for i in range(n)],
            "text": [f"text {i}" for i in range(n)],
            "classes": ["a<b"] * n,
            "split": ["train"] * n,
        }
    )
    return build_index({"image": x, "text": x}, items)


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


# -- point 1: only a folder huse wrote is ever replaced --------------------------------
def _foreign_folders():
    """(name, builder) pairs: each builder fills a folder that is not huse's own index."""

    def any_index_json(v: Path):  # the issue's reproduction
        (v / "index.json").write_text("{}")

    def real_index_plus_a_file(v: Path):
        small_index().save(v)
        (v / "notes.txt").write_text("mine")

    def marker_but_unlisted(v: Path):
        (v / "index.json").write_text(json.dumps({"format": "huse-index", "files": {}}))

    def not_json(v: Path):
        (v / "index.json").write_text("not json")

    def legacy_plus_a_subfolder(v: Path):
        (v / "index.json").write_text(json.dumps({"format": 1}))
        (v / "items.parquet").mkdir()
        (v / "items.parquet" / "part-0").write_text("mine")

    def no_index_json(v: Path):
        (v / "data.csv").write_text("a,b\n")

    return [
        any_index_json,
        real_index_plus_a_file,
        marker_but_unlisted,
        not_json,
        legacy_plus_a_subfolder,
        no_index_json,
    ]


@pytest.mark.parametrize("fill", _foreign_folders(), ids=lambda f: f.__name__)
def test_a_foreign_folder_is_never_replaced(tmp_path, fill):
    v = tmp_path / "v"
    v.mkdir()
    fill(v)
    (v / "precious.txt").write_text("keep me")
    before = tree(v)
    with pytest.raises(
        UnsafeOutputError, match=r"not an index folder huse wrote.*remove it by hand"
    ):
        small_index().save(v)
    assert tree(v) == before  # every byte still there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]  # no temp folder left


def test_the_issue_reproduction_keeps_precious(tmp_path):
    v = tmp_path / "v"
    v.mkdir()
    (v / "index.json").write_text("{}")
    (v / "precious.txt").write_text("x\n")
    with pytest.raises(UnsafeOutputError, match=str(v)):
        small_index().save(v)
    assert (v / "precious.txt").read_text() == "x\n"
    assert (v / "index.json").read_text() == "{}"


def test_own_index_empty_and_new_folders_are_fine(tmp_path):
    own = tmp_path / "own"
    small_index(6).save(own)
    info = json.loads((own / "index.json").read_text())
    assert info["format"] == "huse-index" and info["version"] == hix.FORMAT_VERSION
    assert sorted(info["files"]) == ["image.faiss", "items.parquet", "text.faiss"]
    small_index(9).save(own)  # huse's own: replaced
    assert len(load_index(own)) == 9
    (tmp_path / "empty").mkdir()
    small_index(7).save(tmp_path / "empty")
    assert len(load_index(tmp_path / "empty")) == 7
    small_index(5).save(tmp_path / "a" / "b" / "new")
    assert len(load_index(tmp_path / "a" / "b" / "new")) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "empty", "own"]


def test_a_damaged_own_index_can_be_rebuilt_in_place(tmp_path):
    own = tmp_path / "own"
    small_index(6).save(own)
    (own / "text.faiss").write_bytes(b"garbage")
    with pytest.raises(CatalogueIndexError, match="text.faiss is damaged"):
        load_index(own)
    small_index(6).save(own)  # still huse's folder: the fix the error message names
    assert len(load_index(own)) == 6


def test_an_own_index_with_a_truncated_index_json_can_be_rebuilt(tmp_path):
    own = tmp_path / "own"
    small_index(6).save(own)
    info = own / "index.json"
    info.write_bytes(info.read_bytes()[:20])  # no longer JSON, nothing foreign beside it
    with pytest.raises(CatalogueIndexError, match="index.json"):
        load_index(own)
    small_index(6).save(own)
    assert len(load_index(own)) == 6
    (own / "index.json").write_text("not json")
    (own / "notes.txt").write_text("mine")  # but a file of the user's makes it theirs
    with pytest.raises(UnsafeOutputError, match="not valid JSON"):
        small_index(6).save(own)
    assert (own / "notes.txt").read_text() == "mine"


def test_an_index_of_an_older_huse_is_replaced_not_read(tmp_path):
    old = tmp_path / "old"
    small_index(6).save(old)
    info = json.loads((old / "index.json").read_text())
    del info["version"], info["files"]
    (old / "index.json").write_text(json.dumps(info | {"format": 1}))
    with pytest.raises(CatalogueIndexError, match="older huse"):
        load_index(old)
    small_index(4).save(old)
    assert len(load_index(old)) == 4


def test_a_symlinked_out_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    small_index().save(tmp_path / "real" / "index")
    (tmp_path / "link").symlink_to(tmp_path / "real" / "index")
    with pytest.raises(UnsafeOutputError, match="symbolic link"):
        small_index().save(tmp_path / "link")
    assert len(load_index(tmp_path / "real" / "index")) == 6


# -- point 12: --out a file or under a file -----------------------------------------
def test_out_that_is_a_file_or_under_one_is_a_one_line_error(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("data")
    with pytest.raises(UnsafeOutputError, match="is a file, not a folder"):
        check_output_dir(f)
    with pytest.raises(UnsafeOutputError, match=rf"{f} is a file"):
        check_output_dir(f / "sub" / "index")
    with pytest.raises(UnsafeOutputError):
        small_index().save(f / "index")  # not NotADirectoryError
    assert f.read_text() == "data"


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    """A run folder whose model "loads" as a 16-dim stub; embedding fails the test."""
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    (run / "model" / "model.safetensors").write_bytes(b"")
    (run / "run.json").write_text(json.dumps({"manifest": str(tmp_path / "m.csv")}))
    stub = SimpleNamespace(info=SimpleNamespace(model=SimpleNamespace(embed_dim=16)))
    monkeypatch.setattr("huse.model.HUSEModel.load", lambda path, device=None: stub)

    def no_embedding(*a, **kw):
        raise AssertionError("the catalogue was embedded before the check")

    monkeypatch.setattr("huse.runs.embed_catalogue", no_embedding)
    return run


def test_index_run_checks_out_before_any_work(fake_run, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("data")
    with pytest.raises(UnsafeOutputError, match="is a file"):
        index_run(fake_run, out=f / "index", progress=False)
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "index.json").write_text("{}")
    with pytest.raises(UnsafeOutputError, match="not an index folder huse wrote"):
        index_run(fake_run, out=tmp_path / "v", progress=False)


# -- point 17.8: the factory string is checked before embedding ------------------------
def test_a_bad_factory_fails_before_embedding(fake_run):
    with pytest.raises(CatalogueIndexError, match="could not parse") as e:
        index_run(fake_run, config=IndexConfig(factory="Nonsense123"), progress=False)
    assert "PQ" not in str(e.value) and "16-dim" in str(e.value)
    with pytest.raises(CatalogueIndexError, match="PQm needs m to divide"):
        index_run(fake_run, config=IndexConfig(factory="IVF8,PQ5"), progress=False)
    cfg = IndexConfig(factory="HNSW32", search_params="nprobe=4")
    with pytest.raises(CatalogueIndexError, match="do not apply"):
        index_run(fake_run, config=cfg, progress=False)
    # Valid strings pass the check and reach the embedding (the stub refuses it).
    with pytest.raises(AssertionError, match="embedded"):
        index_run(fake_run, config=IndexConfig(factory="IVF4096,PQ16"), progress=False)


def test_check_factory_and_config_values():
    check_factory("auto", 7)  # registered types are sized later and always valid
    check_factory("IVF16,PQ8x4,RFlat", 32, "nprobe=4,k_factor_rf=8")
    with pytest.raises(CatalogueIndexError, match="FAISS cannot build 'Flat x'"):
        check_factory("Flat x", 32)
    with pytest.raises(HuseError, match="--train-size must be at least 1"):
        IndexConfig(train_size=0)
    with pytest.raises(HuseError, match="--factory"):
        IndexConfig(factory="  ")


def test_an_idmap_factory_is_a_clear_error():
    x = np.eye(6, 8, dtype=np.float32)
    items = small_index().items
    with pytest.raises(CatalogueIndexError, match="cannot add vectors to 'IDMap,Flat'"):
        build_index({"image": x, "text": x}, items, IndexConfig(factory="IDMap,Flat"))


# -- run folders --------------------------------------------------------------------
def test_a_missing_or_foreign_run_is_a_run_error(tmp_path):
    with pytest.raises(RunError, match="no such run folder"):
        index_run(tmp_path / "nope", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="not a huse model directory"):
        index_run(tmp_path / "empty", progress=False)


def test_a_run_without_a_readable_run_json_is_a_run_error(fake_run):
    (fake_run / "run.json").write_text("[1, 2")
    with pytest.raises(RunError, match="run.json is unreadable.*--manifest"):
        index_run(fake_run, progress=False)
    (fake_run / "run.json").write_text("{}")
    with pytest.raises(RunError, match="no run.json naming its manifest"):
        index_run(fake_run, progress=False)


# -- point 14: index.json of the wrong shape, missing checksums -----------------------
def _edits():
    def drop(key):
        return lambda info: {k: v for k, v in info.items() if k != key}

    def put(key, value):
        return lambda info: info | {key: value}

    return {
        "a list": (lambda info: [], "JSON list"),
        "empty object": (lambda info: {}, "format is None"),
        "no modalities": (drop("modalities"), "'modalities'"),
        "modalities a string": (put("modalities", "image"), "'modalities'"),
        "unknown modality": (put("modalities", ["audio"]), "'modalities'"),
        "no dim": (drop("dim"), "'dim'"),
        "dim a string": (put("dim", "8"), "'dim'"),
        "count a float": (put("count", 6.0), "'count'"),
        "no search_params": (drop("search_params"), "'search_params'"),
        "model a list": (put("model", []), "'model'"),
        "no files": (drop("files"), "no 'files' list"),
        "files a list": (put("files", []), "no 'files' list"),
        "a file unlisted": (
            lambda info: (
                info | {"files": {k: v for k, v in info["files"].items() if k != "text.faiss"}}
            ),
            "no checksum for text.faiss",
        ),
        "a checksum not hex": (
            lambda info: info | {"files": info["files"] | {"items.parquet": 5}},
            "not a SHA-256",
        ),
        "a path outside": (
            lambda info: info | {"files": info["files"] | {"../x": "0" * 64}},
            "not a file of the index folder",
        ),
        "version 99": (put("version", 99), "version 99"),
    }


@pytest.mark.parametrize("name", list(_edits()))
def test_index_json_of_the_wrong_shape_is_a_clear_error(tmp_path, name):
    edit, match = _edits()[name]
    small_index().save(tmp_path / "index")
    f = tmp_path / "index" / "index.json"
    f.write_text(json.dumps(edit(json.loads(f.read_text()))))
    with pytest.raises(CatalogueIndexError, match=match) as e:
        load_index(tmp_path / "index")
    assert str(f) in str(e.value) and "huse index RUN" in str(e.value)


def test_deleting_the_checksums_does_not_let_a_bit_flip_pass(tmp_path):
    small_index().save(tmp_path / "index")
    f = tmp_path / "index" / "index.json"
    info = json.loads(f.read_text())
    del info["files"]
    f.write_text(json.dumps(info))
    blob = bytearray((tmp_path / "index" / "image.faiss").read_bytes())
    blob[-1] ^= 0x01  # the last vector's last byte
    (tmp_path / "index" / "image.faiss").write_bytes(bytes(blob))
    with pytest.raises(CatalogueIndexError, match="no 'files' list"):
        load_index(tmp_path / "index")


def test_a_listed_file_that_is_gone_or_flipped_is_an_error(tmp_path):
    small_index().save(tmp_path / "index")
    blob = bytearray((tmp_path / "index" / "items.parquet").read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (tmp_path / "index" / "items.parquet").write_bytes(bytes(blob))
    with pytest.raises(CatalogueIndexError, match="items.parquet is damaged"):
        load_index(tmp_path / "index")
    (tmp_path / "index" / "items.parquet").unlink()
    with pytest.raises(CatalogueIndexError, match="items.parquet is missing"):
        load_index(tmp_path / "index")


# -- point 23: a query with no words -----------------------------------------------
@pytest.mark.parametrize(
    "text", ["<b></b>", "\u200b\u200b", "https://example.com/x", "   ", "HASH(0x1f2e)", "12 %"]
)
def test_a_query_with_no_words_is_refused(text):
    from huse.search import query_text

    with pytest.raises(QueryError, match="empty query"):
        query_text(text)


def test_a_query_with_words_is_kept_as_the_model_sees_it():
    from huse.search import query_text

    assert query_text("  a <b>red</b> bird https://x.org/y ") == "a red bird"
    assert query_text("Straße") == "Straße"
