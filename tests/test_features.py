"""The content-keyed feature cache, resumable extraction, and `huse extract` end to end."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
import tracemalloc
import uuid
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from huse.features import (
    DEFAULT_MAX_IMAGE_FILE_BYTES,
    CacheWarning,
    ExtractStats,
    FeatureStore,
    _shard_digest,
    content_key,
    extract_images,
    extract_texts,
    hash_image_files,
)

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "openclipart-demo" / "manifest.csv"
OPENCLIPART = Path("/usr/share/openclipart/png")


# --- FeatureStore ---------------------------------------------------------------------


def test_store_put_get_round_trip(tmp_path):
    store = FeatureStore(tmp_path, "toy/v1")
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    b = np.array([[9.5, 8.5, 7.5]])
    store.put(["k1", "k2"], a)
    store.put(["k3"], b)
    assert len(list(store.dir.glob("shard-*.npz"))) == 2
    assert not list(store.dir.glob(".*tmp"))  # atomic writes leave no temporaries
    got = store.get(["k3", "k1", "k2", "k1"])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array([b[0], a[0], a[1], a[0]], dtype=np.float32))
    # A new store over the same folder finds everything by scanning the shards.
    again = FeatureStore(tmp_path, "toy/v1")
    assert all(k in again for k in ("k1", "k2", "k3"))
    np.testing.assert_array_equal(again.get(["k2"]), a[1:2].astype(np.float32))
    # Another backbone version is another folder.
    other = FeatureStore(tmp_path, "toy/v2")
    assert other.dir != store.dir
    assert "k1" not in other


def test_store_ignores_a_damaged_shard(tmp_path):
    store = FeatureStore(tmp_path, "toy/v1")
    store.put(["k1"], np.ones((1, 2)))
    (store.dir / "shard-broken.npz").write_bytes(b"half a file")
    again = FeatureStore(tmp_path, "toy/v1")
    assert "k1" in again
    assert len(again.index) == 1


def test_content_key_depends_on_version_and_content():
    assert content_key("v1", b"abc") == content_key("v1", b"abc")
    assert content_key("v1", b"abc") != content_key("v2", b"abc")
    assert content_key("v1", b"abc") != content_key("v1", b"abd")
    # The separator keeps (version, content) pairs apart.
    assert content_key("v1", b"2abc") != content_key("v12", b"abc")


# --- extraction with cheap fake backbones ---------------------------------------------


class MeanColour:
    """A fake image backbone: the feature is 2 × the mean RGB (0..1) of the image."""

    name = "mean-colour"
    kind = "image"
    dim = 3
    version = "mean-colour/v1"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(img, dtype=np.float32).mean(axis=(0, 1)) / 255.0)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(batch))
        return 2.0 * batch


class Interrupt(MeanColour):
    """Dies (like Ctrl-C) after ``after`` batches."""

    def __init__(self, after: int = 1) -> None:
        super().__init__()
        self.after = after

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if len(self.calls) >= self.after:
            raise KeyboardInterrupt
        return super().forward(batch)


class WordCount:
    """A fake text backbone: (number of words, number of characters)."""

    name = "word-count"
    kind = "text"
    dim = 2
    version = "word-count/v1"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def prepare(self, text: str) -> str:
        return text

    def forward(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        return torch.tensor([[len(t.split()), len(t)] for t in texts], dtype=torch.float32)


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def colour_images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        c = COLOURS[i % len(COLOURS)] if i < len(COLOURS) else (i, 2 * i, 3 * i)
        p = folder / f"c{i:02d}.png"
        Image.new("RGB", (8, 6), c).save(p)
        paths.append(str(p))
    return paths


def expected_colour(path: str) -> np.ndarray:
    return 2.0 * np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).mean((0, 1)) / 255


def test_same_bytes_under_two_paths_are_computed_once(tmp_path):
    a, b = colour_images(tmp_path / "img", 2)
    copy = tmp_path / "elsewhere" / "same-as-a.png"
    copy.parent.mkdir()
    shutil.copy(a, copy)
    bb, stats = MeanColour(), ExtractStats()
    store = FeatureStore(tmp_path / "cache", bb.version)
    feats, errors = extract_images([a, str(copy), b], bb, store, progress=False, stats=stats)
    assert errors == {}
    assert bb.calls == [2]  # a and b; the copy shares a's key
    assert (stats.images_total, stats.images_computed) == (3, 2)
    np.testing.assert_allclose(feats, [[2, 0, 0], [2, 0, 0], [0, 2, 0]], atol=1e-6)


def test_image_failures_are_reported_and_zero(tmp_path):
    (good,) = colour_images(tmp_path / "img", 1)
    fake = tmp_path / "img" / "fake.png"
    fake.write_text("hello")
    bb = MeanColour()
    store = FeatureStore(tmp_path / "cache", bb.version)
    paths = [good, str(fake), str(tmp_path / "gone.png")]
    feats, errors = extract_images(paths, bb, store, progress=False)
    assert sorted(errors) == [1, 2]
    assert errors[1].startswith("not an image")
    assert errors[2].startswith("image file not readable")
    np.testing.assert_allclose(feats, [[2, 0, 0], [0, 0, 0], [0, 0, 0]], atol=1e-6)


def test_interrupted_image_extraction_resumes(tmp_path):
    paths = colour_images(tmp_path / "img", 10)
    cache = tmp_path / "cache"
    dying = Interrupt(after=1)
    with pytest.raises(KeyboardInterrupt):
        extract_images(
            paths, dying, FeatureStore(cache, dying.version), batch_size=4, progress=False
        )
    assert dying.calls == [4]  # one batch finished and was written

    bb, stats = MeanColour(), ExtractStats()
    feats, errors = extract_images(
        paths, bb, FeatureStore(cache, bb.version), batch_size=4, progress=False, stats=stats
    )
    assert errors == {}
    assert bb.calls == [4, 2]  # only the 6 remaining items
    assert stats.images_computed == 6
    np.testing.assert_allclose(feats, np.stack([expected_colour(p) for p in paths]), atol=1e-6)

    # A third run computes nothing.
    bb3, stats3 = MeanColour(), ExtractStats()
    again, _ = extract_images(
        paths, bb3, FeatureStore(cache, bb3.version), progress=False, stats=stats3
    )
    assert bb3.calls == [] and stats3.images_computed == 0
    np.testing.assert_array_equal(again, feats)


def test_texts_computed_once_per_distinct_text_and_resumed(tmp_path):
    texts = ["a b", "one two three", "a b", "x", "hello world again now"]
    bb, stats = WordCount(), ExtractStats()
    store = FeatureStore(tmp_path, bb.version)
    feats = extract_texts(texts, bb, store, batch_size=2, progress=False, stats=stats)
    assert sorted(t for call in bb.calls for t in call) == sorted(set(texts))
    assert (stats.texts_total, stats.texts_computed) == (5, 4)
    np.testing.assert_array_equal(feats, [[2, 3], [3, 13], [2, 3], [1, 1], [4, 21]])

    more = texts + ["brand new text"]
    bb2, stats2 = WordCount(), ExtractStats()
    feats2 = extract_texts(
        more, bb2, FeatureStore(tmp_path, bb2.version), progress=False, stats=stats2
    )
    assert bb2.calls == [["brand new text"]]
    assert stats2.texts_computed == 1
    np.testing.assert_array_equal(feats2[:5], feats)
    np.testing.assert_array_equal(feats2[5], [3, 14])


# --- image files: streamed hashing, header and size checked first ----------------------


def bytes_read() -> int:
    """Bytes this process has read through read(2) so far (Linux)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar"))


needs_proc_io = pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="Linux only")


@needs_proc_io
@pytest.mark.parametrize("limit", [DEFAULT_MAX_IMAGE_FILE_BYTES, 4 * 2**30])
def test_huge_non_image_is_refused_without_reading_it(tmp_path, limit):
    big = tmp_path / "huge.png"
    with open(big, "wb") as f:
        f.truncate(2 * 2**30)  # sparse: 2 GiB of zeros that take no disk
    (good,) = colour_images(tmp_path / "img", 1)
    hash_image_files([good, str(tmp_path / "warm-up")], "v")  # imports Pillow's plugins
    tracemalloc.start()
    t0, r0 = time.perf_counter(), bytes_read()
    try:
        keys, errors = hash_image_files([good, str(big)], "v", max_file_bytes=limit)
        read = bytes_read() - r0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert keys[0] == content_key("v", Path(good).read_bytes()) and keys[1] is None
    if limit == DEFAULT_MAX_IMAGE_FILE_BYTES:  # refused from its size, before any read
        assert errors == {1: f"image file too large: {2 * 2**30:,} bytes > limit "
                          f"{limit:,} bytes; shrink or re-encode the file, or raise the limit"}  # fmt: skip
    else:  # under the limit: refused from its header
        assert errors == {1: "not an image (unrecognised format)"}
    assert read < 2 * 2**20, read  # the good image and a header, not 2 GiB
    assert peak < 4 * 2**20, peak
    assert time.perf_counter() - t0 < 5


def test_streamed_key_equals_the_whole_bytes_key(tmp_path):
    rng = np.random.default_rng(0)
    big = tmp_path / "noise.png"  # ~3 MB: several 1 MiB blocks
    Image.fromarray(rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 2 * 2**20
    (small,) = colour_images(tmp_path / "img", 1)
    keys, errors = hash_image_files([str(big), small], "mean-colour/v1")
    assert errors == {}
    assert keys == [content_key("mean-colour/v1", Path(p).read_bytes()) for p in (big, small)]
    # A stable value too: existing caches keep their keys.
    data = Path(small).read_bytes()
    import hashlib

    assert keys[1] == hashlib.sha256(b"mean-colour/v1\0" + data).hexdigest()


def test_oversized_image_is_a_bad_row_and_pipes_are_refused(tmp_path):
    paths = colour_images(tmp_path / "img", 2)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it to read would block forever
    size = Path(paths[1]).stat().st_size
    bb = MeanColour()
    store = FeatureStore(tmp_path / "cache", bb.version)
    with open(paths[1], "ab") as f:
        f.write(b"\0" * 100)  # the same picture, a bigger file
    feats, errors = extract_images(
        [paths[0], paths[1], str(fifo)], bb, store, progress=False, max_file_bytes=size + 50
    )
    assert sorted(errors) == [1, 2]
    assert errors[1].startswith(f"image file too large: {size + 100:,} bytes > limit")
    assert errors[2] == "image path is not a regular file (a pipe, socket or device)"
    np.testing.assert_allclose(feats, [[2, 0, 0], [0, 0, 0], [0, 0, 0]], atol=1e-6)


# --- shards bound to their names ------------------------------------------------------


def test_a_shard_replaced_by_another_valid_shard_is_reported_and_recomputed(tmp_path):
    paths = colour_images(tmp_path / "img", 12)
    cache = tmp_path / "cache"
    bb = MeanColour()
    reference, _ = extract_images(
        paths, bb, FeatureStore(cache, bb.version), batch_size=4, progress=False
    )
    shards = sorted(FeatureStore(cache, bb.version).dir.glob("shard-*.npz"))
    assert len(shards) == 3
    victim, other = shards[:2]
    with np.load(victim) as z:
        lost = {str(k) for k in z["keys"]}
    shutil.copy(other, victim)  # valid, digest and all, but another shard's content

    bb2, stats = MeanColour(), ExtractStats()
    with pytest.warns(CacheWarning, match=f"{victim.name}.*replaced"):
        again, errors = extract_images(
            paths, bb2, FeatureStore(cache, bb2.version), batch_size=4, progress=False,
            stats=stats,
        )  # fmt: skip
    assert errors == {}
    assert stats.damaged_shards == [str(victim)]
    assert bb2.calls == [4] and len(lost) == 4  # the lost items, nothing else
    np.testing.assert_allclose(again, reference, atol=1e-6)
    assert victim.with_name(victim.name + ".damaged").exists()
    bb3 = MeanColour()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        extract_images(paths, bb3, FeatureStore(cache, bb3.version), progress=False)
    assert bb3.calls == []


def test_shards_of_the_previous_version_are_still_read(tmp_path):
    """Random names and no ``name`` member: what earlier versions wrote."""
    store = FeatureStore(tmp_path, "toy/v1")
    keys = np.asarray(["k1", "k2"], dtype="U64")
    feats = np.arange(6, dtype=np.float32).reshape(2, 3)
    old = store.dir / f"shard-{uuid.uuid4().hex}.npz"
    np.savez(old, keys=keys, features=feats, sha256=np.asarray(_shard_digest(keys, feats)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        again = FeatureStore(tmp_path, "toy/v1")
        np.testing.assert_array_equal(again.get(["k2", "k1"]), feats[::-1])
    # But an old shard under a name only the new version writes was put there by hand.
    new = store.put(["k3"], np.ones((1, 3)))
    shutil.copy(old, new)
    with pytest.warns(CacheWarning, match=new.name):
        third = FeatureStore(tmp_path, "toy/v1")
        assert "k3" not in third and "k1" in third


# --- `huse extract` end to end, real backbones and real pictures ----------------------


def real_items(per_class: int = 3, n_classes: int = 4) -> list[tuple[str, str, str]]:
    """(absolute image path, text, class path) of real pictures: the bundled demo set if
    present, else Debian's openclipart-png. Deterministic."""
    if DEMO.exists():
        with open(DEMO, newline="", encoding="utf-8") as f:
            rows = sorted(csv.DictReader(f), key=lambda r: r["id"])
        rows = [(str(DEMO.parent / r["image"]), r["text"], r["classes"]) for r in rows]
    elif OPENCLIPART.is_dir():
        rows = [
            (str(p), p.stem.replace("_", " "), "<".join(p.parent.relative_to(OPENCLIPART).parts))
            for p in sorted(OPENCLIPART.rglob("*.png"))
            if not p.is_symlink() and p.parent != OPENCLIPART
        ]
    else:
        pytest.skip("no real pictures: neither data/openclipart-demo nor openclipart-png")
    by_class: dict[str, list[tuple[str, str, str]]] = {}
    for r in rows:
        if Path(r[0]).is_file():
            by_class.setdefault(r[2], []).append(r)
    chosen = [c for c in sorted(by_class) if len(by_class[c]) >= per_class][:n_classes]
    if len(chosen) < n_classes:
        pytest.skip("not enough real pictures")
    return [r for c in chosen for r in by_class[c][:per_class]]


def read_stats(out: Path) -> dict:
    return json.loads((out / "extract_stats.json").read_text())


@pytest.mark.slow
def test_huse_extract_end_to_end_and_cache_reuse(tmp_path, capsys):
    from huse.cli import main

    items = real_items()
    assert len(items) == 12
    corrupt = tmp_path / "corrupt.png"
    data = Path(items[0][0]).read_bytes()
    if items[0][0].lower().endswith(".png"):
        corrupt.write_bytes(data[: len(data) // 2])
    else:  # a JPEG cut in half, under its own suffix
        corrupt = corrupt.with_suffix(".jpg")
        corrupt.write_bytes(data[: len(data) // 2])
    rows = [
        {"id": f"g{i:02d}", "image": p, "text": t, "classes": c}
        for i, (p, t, c) in enumerate(items)
    ]
    rows += [
        {
            "id": "bad-image",
            "image": str(corrupt),
            "text": "a broken picture",
            "classes": items[0][2],
        },
        {"id": "no-file", "image": "missing/nowhere.png", "text": "gone", "classes": items[0][2]},
        {"id": "no-text", "image": items[1][0], "text": "  ", "classes": items[1][2]},
        {"id": "g00", "image": items[2][0], "text": "a second g00", "classes": items[2][2]},
    ]
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["extract", str(manifest), "--out", str(out), "--cache", str(cache), "--quiet"]

    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "extracted 12 items, 4 classes" in printed
    assert "skipped 4 rows" in printed

    skipped = pd.read_csv(out / "skipped.csv", dtype=str, keep_default_na=False)
    got = [tuple(r) for r in skipped[["row", "id", "column"]].itertuples(index=False)]
    assert got == [
        ("13", "bad-image", "image"),
        ("14", "no-file", "image"),
        ("15", "no-text", "text"),
        ("16", "g00", "id"),
    ]
    reasons = skipped["reason"].tolist()
    assert reasons[0].startswith("truncated or corrupt image")
    assert reasons[1].startswith("image file not found:") and "nowhere.png" in reasons[1]
    assert reasons[2] == "empty text"
    assert reasons[3] == "duplicate id (first seen at row 1)"

    image, text = np.load(out / "image.npy"), np.load(out / "text.npy")
    assert image.shape == (12, 1280) and image.dtype == np.float32
    assert text.shape == (12, 1536) and text.dtype == np.float32
    assert np.isfinite(image).all() and np.isfinite(text).all()
    assert (np.abs(image).sum(1) > 0).all()  # no zero rows left for failed images
    assert len({row.tobytes() for row in image}) == 12
    stats = read_stats(out)
    assert (stats["images_total"], stats["images_computed"]) == (13, 12)
    # Equal texts (the demo set has two "Dino. keywords: dinosaur") are encoded once.
    n_distinct = len({t for _, t, _ in items})
    assert (stats["texts_total"], stats["texts_computed"]) == (12, n_distinct)
    assert stats["splits"] == {"train": 4, "val": 4, "test": 4}  # 3 per class: 1/1/1

    # The saved features are the backbones' own numbers for those items.
    from huse.backbones import get_backbone
    from huse.data.images import load_image
    from huse.dataset import DataConfig, FeatureSet

    fs = FeatureSet.load(out)
    assert fs.items["id"].tolist() == [f"g{i:02d}" for i in range(12)]
    img_bb = get_backbone(DataConfig.image_backbone)
    direct = img_bb.forward(img_bb.preprocess(load_image(items[5][0]))[None]).numpy()[0]
    np.testing.assert_allclose(image[5], direct, atol=1e-4, rtol=1e-4)
    txt_bb = get_backbone("minilm-l6")
    direct = txt_bb.forward([fs.items["text"][7]]).numpy()[0]
    np.testing.assert_allclose(text[7], direct, atol=1e-4, rtol=1e-4)

    # Second run: everything comes from the cache.
    assert main(args) == 0
    stats = read_stats(out)
    assert (stats["images_computed"], stats["texts_computed"]) == (0, 0)
    np.testing.assert_array_equal(np.load(out / "image.npy"), image)
    np.testing.assert_array_equal(np.load(out / "text.npy"), text)
    assert "computed 0 images and 0 texts" in capsys.readouterr().out

    # One changed text: exactly one text is computed, no image.
    rows[4]["text"] = rows[4]["text"] + " with a new ending"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    assert main(args) == 0
    stats = read_stats(out)
    assert (stats["images_computed"], stats["texts_computed"]) == (0, 1)
    text3 = np.load(out / "text.npy")
    np.testing.assert_array_equal(np.delete(text3, 4, axis=0), np.delete(text, 4, axis=0))
    assert not np.allclose(text3[4], text[4])
