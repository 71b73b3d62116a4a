"""Updating an index in place and filtering a search to a branch of the class tree, both
against a fresh build and brute force."""

from __future__ import annotations

import functools
import json
import os

import numpy as np
import pandas as pd
import pytest

faiss = pytest.importorskip("faiss")

from huse.index import IndexConfig, build_index, load_index  # noqa: E402

CLASSES = ["a<b", "a<b<x", "a<bc", "a<c", "d", "d<e"]


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@functools.cache
def item_vector(i: int, seed: int, modality: int, d: int = 16) -> np.ndarray:
    v = np.random.default_rng((seed, i, modality)).normal(size=d)
    return (v / np.linalg.norm(v)).astype(np.float32)


def catalogue(ids: list[int], d: int = 16, seed: int = 0):
    """Items with vectors that depend on the id only: the same item, the same vector."""
    vec = {
        m: np.vstack([item_vector(i, seed, j, d) for i in ids])
        for j, m in enumerate(("image", "text"))
    }
    items = pd.DataFrame(
        {
            "row": np.arange(1, len(ids) + 1),
            "id": [f"item{i}" for i in ids],
            "image": [f"/img{i}.png" for i in ids],
            "text": [f"text {i}" for i in ids],
            "classes": [CLASSES[i % len(CLASSES)] for i in ids],
            "split": "train",
        }
    )
    return items, vec


def brute(items, vectors, q: np.ndarray, k: int, modality: str, mask=None) -> list[list[str]]:
    """Top-k item ids by exact cosine (an item at its better modality's score)."""
    ids = items["id"].to_numpy()
    out = []
    for qq in q:
        s = np.full(len(ids), -np.inf)
        for m in ("image", "text") if modality == "both" else (modality,):
            s = np.maximum(s, vectors[m] @ qq)
        if mask is not None:
            s = np.where(mask, s, -np.inf)
        order = np.argsort(-s, kind="stable")[:k]
        out.append([ids[r] for r in order if np.isfinite(s[r])])
    return out


def found_ids(index, q, k, modality, allowed=None) -> list[list[str]]:
    _, rows, _ = index.search(q, k, modality, allowed=allowed)
    ids = index.items["id"].to_numpy()
    return [[ids[r] for r in row if r >= 0] for row in rows]


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "HNSW16"])
def test_update_equals_a_fresh_build(factory, tmp_path):
    cfg = IndexConfig(factory=factory)
    items0, v0 = catalogue(list(range(300)))
    index = build_index(v0, items0, cfg)
    index.save(tmp_path / "ix")
    index = load_index(tmp_path / "ix")
    # Remove 40 items (every 7th), change 10 (new vectors: another seed), add 60 new.
    removed = list(range(0, 300, 7))
    changed = [1, 2, 3, 4, 5, 8, 9, 10, 11, 12]
    rows_removed = [index.row_of(f"item{i}") for i in removed + changed]
    new_ids = changed + list(range(300, 360))
    new_items, new_v = catalogue(new_ids)
    changed_items, changed_v = catalogue(changed, seed=1)
    new_v = {m: np.vstack([changed_v[m], new_v[m][len(changed) :]]) for m in new_v}
    updated, warnings = index.updated(np.array(rows_removed), new_items, new_v, cfg)
    assert warnings == []
    updated.save(tmp_path / "ix")
    updated = load_index(tmp_path / "ix")

    final = sorted((set(range(300)) - set(removed)) | set(range(300, 360)))
    assert sorted(updated.items["id"]) == sorted(f"item{i}" for i in final)
    assert len(updated) == updated.indexes["image"].ntotal == updated.indexes["text"].ntotal
    # Every row's vector is its item's: kept rows their old one, changed rows the new one.
    for m in ("image", "text"):
        if factory == "HNSW16" or factory == "Flat":
            got = updated.indexes[m].reconstruct_n(0, len(updated))
            for r, item_id in enumerate(updated.items["id"]):
                i = int(item_id[4:])
                want = item_vector(i, 1 if i in changed else 0, ("image", "text").index(m))
                np.testing.assert_allclose(got[r], want, atol=1e-6)

    # Search results match a fresh build of the final catalogue.
    fresh_items, fresh_v = catalogue(final)
    for i in changed:
        fresh_v = {
            m: np.where(
                (fresh_items["id"] == f"item{i}").to_numpy()[:, None],
                item_vector(i, 1, ("image", "text").index(m)),
                fresh_v[m],
            )
            for m in fresh_v
        }
    fresh = build_index(fresh_v, fresh_items, IndexConfig(factory="Flat"))
    q = unit(np.random.default_rng(9).normal(size=(20, 16)))
    want = found_ids(fresh, q, 10, "image")
    got = found_ids(updated, q, 10, "image")
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)])
    if factory == "Flat":
        assert got == want
    else:  # IVF probes 8 of 8 lists by default here, HNSW is near exact at this size
        assert recall >= 0.95, recall


def test_ivf_warns_when_the_catalogue_outgrew_its_lists():
    items0, v0 = catalogue(list(range(200)))
    index = build_index(v0, items0, IndexConfig(factory="IVF4,Flat"))
    new_items, new_v = catalogue(list(range(200, 1100)))
    updated, warnings = index.updated(np.array([], np.int64), new_items, new_v)
    assert len(updated) == 1100
    assert len(warnings) == 1 and "--retrain" in warnings[0] and "200" in warnings[0]


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "IVF8,SQ8", "HNSW16"])
@pytest.mark.parametrize("modality", ["image", "both"])
def test_filtered_search_is_the_branch_top_k(factory, modality):
    items, v = catalogue(list(range(600)))
    index = build_index(v, items, IndexConfig(factory=factory))  # IVF: all 8 lists probed
    mask = index.filter_mask(under=["a<b"])
    want_classes = {"a<b", "a<b<x"}  # not a<bc: a branch ends at the separator
    assert set(items["classes"][mask]) == want_classes
    assert mask.sum() == 200
    q = unit(np.random.default_rng(5).normal(size=(12, 16)))
    got = found_ids(index, q, 10, modality, allowed=mask)
    allowed_ids = set(items["id"][mask])
    assert all(len(g) == 10 and set(g) <= allowed_ids for g in got)
    truth = brute(items, v, q, 10, modality, mask)
    if factory in ("Flat", "IVF8,Flat"):
        assert got == truth
    else:
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)])
        assert recall >= 0.8, recall


def test_filter_of_exact_classes_and_a_small_branch():
    items, v = catalogue(list(range(60)))
    index = build_index(v, items, IndexConfig(factory="IVF4,Flat"))
    faiss.extract_index_ivf(index.indexes["image"]).nprobe = 1
    exact = index.filter_mask(classes=["a<b"])
    assert set(items["classes"][exact]) == {"a<b"}
    assert exact.sum() == 10
    q = unit(np.random.default_rng(2).normal(size=(5, 16)))
    # A branch of 10 items asked for 20 while one list of four is probed: the search
    # widens until all 10 come back, nothing else.
    got = found_ids(index, q, 20, "image", allowed=exact)
    assert all(sorted(g) == sorted(items["id"][exact]) for g in got)
    both = index.filter_mask(under=["d"], classes=["a<c"])
    assert set(items["classes"][both]) == {"d", "d<e", "a<c"}
    assert index.filter_mask(under=["zzz"]).sum() == 0
    scores, rows, _ = index.search(q, 5, "image", allowed=index.filter_mask(under=["zzz"]))
    assert (rows == -1).all() and np.isneginf(scores).all()


@pytest.mark.parametrize("factory", ["Flat", "IVF8,SQ8", "HNSW16"])
def test_saved_updates_append_segments_then_compact(factory, tmp_path):
    from huse.index import COMPACT_FRACTION, load_items, update_folder

    folder = tmp_path / "ix"
    ids = list(range(400))
    items, v = catalogue(ids)
    build_index(v, items, IndexConfig(factory=factory)).save(folder)
    base_inode = (folder / "image.faiss").stat().st_ino
    rng = np.random.default_rng(3)
    next_id, rounds = 400, 0
    seeds: dict[int, int] = {}  # items changed so far: the seed of their vectors
    while True:
        rounds += 1
        old_items, _ = load_items(folder)
        # Each round: remove 4 items, change 2 (new vectors: seed = round), add 6.
        rows = rng.choice(len(old_items), 6, replace=False)
        gone, changed = rows[:4], rows[4:]
        changed_ids = [int(old_items["id"].iloc[r][4:]) for r in changed]
        new_ids = list(range(next_id, next_id + 6))
        next_id += 6
        ch_items, ch_v = catalogue(changed_ids, seed=rounds)
        add_items, add_v = catalogue(new_ids)
        delta = pd.concat([ch_items, add_items], ignore_index=True)
        dv = {m: np.vstack([ch_v[m], add_v[m]]) for m in ch_v}
        for i in [int(old_items["id"].iloc[r][4:]) for r in gone]:
            ids.remove(i)
        ids += new_ids
        seeds |= {i: rounds for i in changed_ids}
        _, warnings = update_folder(folder, rows, delta, dv)
        assert warnings == []
        info = json.loads((folder / "index.json").read_text())
        index = load_index(folder)
        assert sorted(index.items["id"]) == sorted(f"item{i}" for i in ids)
        # Row r of every FAISS index is the vector of row r's item: an exact search of
        # each item's own vector finds it first.
        own = np.vstack(
            [item_vector(int(i[4:]), seeds.get(int(i[4:]), 0), 0) for i in index.items["id"]]
        )
        if factory != "HNSW16":
            found = index.search(own, 1, "image")[1][:, 0]
            assert (found == np.arange(len(index))).mean() >= (1.0 if factory == "Flat" else 0.97)
        if factory == "HNSW16":
            assert "segments" not in info  # a graph cannot append: written whole
            break
        if "segments" not in info:  # compacted: one segment again, every vector rewritten
            assert info["version"] == 2 and rounds > 2
            assert (folder / "image.faiss").stat().st_ino != base_inode
            break
        # Appended: the built segment's file is the same file (linked, not rewritten).
        assert info["version"] == 3 and len(info["segments"]) == rounds + 1
        assert (folder / "image.faiss").stat().st_ino == base_inode
        assert rounds * 8 + rounds * 4 <= COMPACT_FRACTION * len(index)
    assert sorted(p.name for p in folder.iterdir()) == sorted(["index.json", *info["files"]])


def test_leftovers_of_a_killed_write_are_removed_and_nothing_else(tmp_path):
    from huse.index import STAGING_MARKER, remove_leftovers

    marker = json.dumps({"format": "huse-index-staging", "pid": 1})
    ix = tmp_path / "ix"
    ix.mkdir()
    tmp = tmp_path / ".ix.tmp-abc"  # a staged folder, marked
    tmp.mkdir()
    (tmp / STAGING_MARKER).write_text(marker)
    for name in ("index.json", "d1.image.faiss", "d1.items.parquet", "removed.npy"):
        (tmp / name).write_text("x")
    old = tmp_path / ".ix.old-def" / "index"  # a swapped-out index: its index.json says so
    old.mkdir(parents=True)
    (old / "image.faiss").write_text("x")
    (old / "index.json").write_text(
        json.dumps({"format": "huse-index", "files": {"image.faiss": "0"}})
    )
    mixed = tmp_path / ".ix.tmp-ghi"
    mixed.mkdir()
    (mixed / STAGING_MARKER).write_text(marker)
    (mixed / "text.faiss").write_text("x")
    (mixed / "notes.txt").write_text("the user's")  # not an index file: kept, and its folder
    unmarked = tmp_path / ".ix.tmp-jkl"  # huse's name, no marker: not huse's, untouched
    unmarked.mkdir()
    (unmarked / "text.faiss").write_text("someone else's")
    other = tmp_path / ".other.tmp-mno"  # another index's: not ours to judge
    other.mkdir()
    (other / "index.json").write_text("x")
    gone = remove_leftovers(ix)
    assert sorted(p.name for p in gone) == [".ix.old-def", ".ix.tmp-abc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".ix.tmp-ghi", ".ix.tmp-jkl", ".other.tmp-mno", "ix"
    ]  # fmt: skip
    assert sorted(p.name for p in mixed.iterdir()) == ["notes.txt"]
    assert (unmarked / "text.faiss").read_text() == "someone else's"


def test_a_file_at_the_lock_name_that_is_not_huses_is_left_alone(tmp_path):
    from huse.errors import UnsafeOutputError
    from huse.index import writer_lock

    ix = tmp_path / "ix"
    lock = tmp_path / ".ix.lock"
    lock.write_text("my notes")
    with pytest.raises(UnsafeOutputError, match="not huse's lock file"), writer_lock(ix):
        pass
    assert lock.read_text() == "my notes"
    lock.unlink()
    (tmp_path / "target").write_text("kept")
    lock.symlink_to(tmp_path / "target")
    with pytest.raises(UnsafeOutputError, match="cannot be opened as huse's lock"), writer_lock(ix):
        pass
    assert (tmp_path / "target").read_text() == "kept" and lock.is_symlink()


def test_the_writer_lock_is_reentrant_and_released(tmp_path):
    from huse.index import writer_lock

    ix = tmp_path / "ix"
    with writer_lock(ix):
        assert (tmp_path / ".ix.lock").is_file()
        info = json.loads((tmp_path / ".ix.lock").read_text())
        assert info["pid"] == os.getpid()
        with writer_lock(ix):  # the same process again (save inside an update)
            pass
        assert (tmp_path / ".ix.lock").is_file()
    assert not (tmp_path / ".ix.lock").exists()


def test_diff_items_by_hand():
    from huse.index import diff_items

    old = pd.DataFrame({"id": ["a", "b", "c", "d"], "content": ["1", "2", "3", "4"]})
    # b unchanged, c changed, a and d gone, e and f new.
    fresh, changed, changed_rows, missing = diff_items(
        old, np.array(["e", "b", "c", "f"]), ["9", "2", "x", "8"]
    )
    assert fresh.tolist() == [0, 3] and changed.tolist() == [2]
    assert changed_rows.tolist() == [2] and missing.tolist() == [0, 3]
    # An index from before content digests: every known item counts as changed.
    fresh, changed, changed_rows, missing = diff_items(
        old[["id"]], np.array(["b", "a"]), ["2", "1"]
    )
    assert fresh.tolist() == [] and changed.tolist() == [0, 1] and changed_rows.tolist() == [1, 0]
    assert missing.tolist() == [2, 3]


def test_load_items_reads_only_the_columns_asked_for(tmp_path):
    from huse.index import load_items

    items, vec = catalogue(list(range(30)))
    items["content"] = [f"digest {i}" for i in range(30)]
    build_index(vec, items, IndexConfig(factory="Flat")).save(tmp_path / "ix")
    part, info = load_items(tmp_path / "ix", ["id", "content", "no such column"])
    assert list(part.columns) == ["id", "content"] and info["count"] == 30
    assert part["id"].tolist() == items["id"].tolist()
    assert part["content"].tolist() == items["content"].tolist()
