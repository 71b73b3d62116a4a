"""Two extractions on one feature cache at once: each batch is claimed with a lock file,
so every item is computed by exactly one process; locks of dead processes are taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from huse import features
from huse.features import (
    ExtractStats,
    FeatureStore,
    extract_images,
    extract_texts,
    hash_image_files,
)

# One extraction, as its own process: waits for the go file so both really overlap, then
# prints what it computed and the features it got.
WORKER = r"""
import json, sys, time
from pathlib import Path
import numpy as np, torch
from huse.features import ExtractStats, FeatureStore, content_key, extract_images, extract_texts

cache, go, ready = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
paths, texts = json.loads(sys.argv[4]), json.loads(sys.argv[5])

class SlowMean:
    name, kind, dim, version = "mean-colour", "image", 3, "mean-colour/v1"
    def preprocess(self, img):
        return torch.from_numpy(np.asarray(img, dtype=np.float32).mean(axis=(0, 1)) / 255.0)
    def forward(self, batch):
        time.sleep(0.2)  # a forward pass takes a while: the other process catches up
        return 2.0 * batch

class SlowWords:
    name, kind, dim, version = "word-count", "text", 2, "word-count/v1"
    def prepare(self, t):
        return t
    def forward(self, ts):
        time.sleep(0.2)
        return torch.tensor([[len(t.split()), len(t)] for t in ts], dtype=torch.float32)

ready.write_text("ready")
while not go.exists():
    time.sleep(0.01)
stats = ExtractStats()
img, errors = extract_images(paths, SlowMean(), FeatureStore(cache, SlowMean.version),
                             batch_size=3, progress=False, stats=stats)
txt = extract_texts(texts, SlowWords(), FeatureStore(cache, SlowWords.version),
                    batch_size=3, progress=False, stats=stats)
print(json.dumps({"images": stats.images_computed, "texts": stats.texts_computed,
                  "errors": {str(k): v for k, v in errors.items()},
                  "image": img.tolist(), "text": txt.tolist()}))
"""


def colour_images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"c{i:02d}.png"
        Image.new("RGB", (8, 6), (i * 9 % 256, i * 31 % 256, i * 57 % 256)).save(p)
        paths.append(str(p))
    return paths


def cached_key_counts(cache: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for shard in cache.rglob("shard-*.npz"):
        with np.load(shard) as z:
            for k in z["keys"]:
                counts[str(k)] = counts.get(str(k), 0) + 1
    return counts


def run_pair(tmp_path: Path, cache: Path, paths: list[str], texts: list[str], n: int) -> list:
    go = tmp_path / "go"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    args = [json.dumps(paths), json.dumps(texts)]
    procs, ready = [], []
    for i in range(n):
        ready.append(tmp_path / f"ready-{i}")
        cmd = [sys.executable, "-c", WORKER, str(cache), str(go), str(ready[-1]), *args]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    deadline = time.time() + 120
    while not all(r.exists() for r in ready):
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"worker died: {p.communicate()[1].decode()[-3000:]}")
        assert time.time() < deadline
        time.sleep(0.05)
    go.write_text("go")
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr.decode()[-3000:]
        out.append(json.loads(stdout.decode().strip().splitlines()[-1]))
    return out


def test_two_extractions_at_once_compute_every_item_once(tmp_path):
    paths = colour_images(tmp_path / "img", 24)
    paths.append(str(tmp_path / "missing.png"))
    texts = [f"text number {i} " + "word " * (i % 5) for i in range(24)]
    a, b = run_pair(tmp_path, tmp_path / "cache", paths, texts, 2)
    # Without claims both processes compute all 24 images and all 24 texts.
    assert a["images"] + b["images"] == 24
    assert a["texts"] + b["texts"] == 24
    counts = cached_key_counts(tmp_path / "cache")
    assert len(counts) == 48 and set(counts.values()) == {1}
    assert not list((tmp_path / "cache").rglob("*.lock"))  # every claim released
    # The same as one process alone (same fake backbones, without the sleep).
    ref_cache = tmp_path / "single"
    ref_img, ref_errors = extract_images(
        paths, MeanColour(), FeatureStore(ref_cache, MeanColour.version), progress=False
    )
    ref_txt = extract_texts(
        texts, WordCount(), FeatureStore(ref_cache, WordCount.version), progress=False
    )
    assert ref_errors == {24: "image file not readable: No such file or directory"}
    for r in (a, b):
        assert r["errors"] == {"24": ref_errors[24]}
        np.testing.assert_array_equal(r["image"], ref_img)
        np.testing.assert_array_equal(r["text"], ref_txt)


class MeanColour:
    name, kind, dim, version = "mean-colour", "image", 3, "mean-colour/v1"

    def __init__(self) -> None:
        self.computed: list[int] = []

    def preprocess(self, img):
        return torch.from_numpy(np.asarray(img, dtype=np.float32).mean(axis=(0, 1)) / 255.0)

    def forward(self, batch):
        self.computed.append(len(batch))
        return 2.0 * batch


class WordCount:
    name, kind, dim, version = "word-count", "text", 2, "word-count/v1"

    def prepare(self, text: str) -> str:
        return text

    def forward(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([[len(t.split()), len(t)] for t in texts], dtype=torch.float32)


def write_lock(store: FeatureStore, unit: list[str], pid: int, **kw) -> Path:
    lock = store._lock_path(unit)
    info = {"pid": pid, "host": socket.gethostname(), "time": time.time(), "token": "x"}
    lock.write_text(json.dumps(info | kw))
    return lock


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # reaped: the pid names no process now
    return p.pid


def test_a_stale_lock_from_a_dead_process_is_taken_over(tmp_path, monkeypatch):
    # Were the lock honoured, the run would wait for it to age out: make that short but
    # longer than the run may take.
    monkeypatch.setattr(features, "STALE_LOCK_SECONDS", 30)
    paths = colour_images(tmp_path / "img", 9)
    bb = MeanColour()
    store = FeatureStore(tmp_path / "cache", bb.version)
    keys, _ = hash_image_files(paths, bb.version)
    lock = write_lock(store, keys[:3], dead_pid())
    t0 = time.perf_counter()
    feats, errors = extract_images(paths, bb, store, batch_size=3, progress=False)
    assert time.perf_counter() - t0 < 15
    assert errors == {} and bb.computed == [3, 3, 3]
    assert not lock.exists()
    again, _ = extract_images(paths, MeanColour(), FeatureStore(store.dir.parent, bb.version))
    np.testing.assert_array_equal(feats, again)


def test_claims_honour_live_locks_and_break_old_ones(tmp_path, monkeypatch):
    store = FeatureStore(tmp_path, "toy/v1")
    live = write_lock(store, ["a"], os.getppid())
    assert store.claim(["a"]) is None and live.exists()  # a live process holds it
    elsewhere = write_lock(store, ["b"], dead_pid(), host="another-host")
    assert store.claim(["b"]) is None  # a pid on another host says nothing
    old = time.time() - features.STALE_LOCK_SECONDS - 5
    os.utime(elsewhere, (old, old))
    got = store.claim(["b"])
    assert got == elsewhere and json.loads(got.read_text())["pid"] == os.getpid()
    assert store.claim(["b"]) is None  # claimed once
    store.release(got)
    assert not got.exists()
    # A lock taken over meanwhile is not released by its former holder.
    mine = store.claim(["c"])
    write_lock(store, ["c"], os.getppid())
    store.release(mine)
    assert mine.exists()


def test_a_batch_held_by_another_process_is_waited_for_and_read(tmp_path):
    paths = colour_images(tmp_path / "img", 9)
    bb = MeanColour()
    cache = tmp_path / "cache"
    keys, _ = hash_image_files(paths, bb.version)
    lock = write_lock(FeatureStore(cache, bb.version), keys[:3], os.getppid())

    def other_process() -> None:  # computes the first batch, then lets go of it
        time.sleep(1.0)
        mine = MeanColour()
        x = torch.stack([mine.preprocess(Image.open(p).convert("RGB")) for p in paths[:3]])
        FeatureStore(cache, bb.version).put(keys[:3], mine.forward(x).numpy())
        lock.unlink()

    t = threading.Thread(target=other_process)
    t.start()
    stats = ExtractStats()
    try:
        feats, errors = extract_images(
            paths, bb, FeatureStore(cache, bb.version), batch_size=3, progress=False,
            stats=stats,
        )  # fmt: skip
    finally:
        t.join()
    assert errors == {} and bb.computed == [3, 3]  # the first batch was the other's
    assert stats.images_computed == 6
    counts = cached_key_counts(cache)
    assert len(counts) == 9 and set(counts.values()) == {1}
    ref, _ = extract_images(paths, MeanColour(), FeatureStore(tmp_path / "ref", bb.version))
    np.testing.assert_allclose(feats, ref, atol=1e-6)


def test_torchrun_ranks_share_no_claims(tmp_path, monkeypatch):
    """Each rank claims only its strided share: rank 1 of 2 computes items 1, 3, 5..."""
    monkeypatch.setattr(features, "dist_setup", lambda: (1, 2))
    monkeypatch.setattr(features, "barrier", lambda: None)
    paths = colour_images(tmp_path / "img", 6)
    bb = MeanColour()
    feats, errors = extract_images(
        paths, bb, FeatureStore(tmp_path / "cache", bb.version), batch_size=2, progress=False
    )
    assert bb.computed == [2, 1]
    # Rank 0's items are missing here (rank 0 never ran): reported, not silently zero.
    assert sorted(errors) == [0, 2, 4]
    assert (np.abs(feats[[1, 3, 5]]).sum(1) > 0).all()


def test_a_file_at_a_locks_name_that_huse_did_not_write_is_never_deleted(tmp_path):
    """Only huse's own lock records (their fields, not their name) are broken: an old
    foreign file is left as it was, and its batch is computed all the same."""
    paths = colour_images(tmp_path / "img", 6)
    bb = MeanColour()
    store = FeatureStore(tmp_path / "cache", bb.version)
    keys, _ = hash_image_files(paths, bb.version)
    foreign = store._lock_path(keys[:3])
    foreign.parent.mkdir(parents=True, exist_ok=True)
    foreign.write_text("my notes")
    old = time.time() - features.STALE_LOCK_SECONDS - 5
    os.utime(foreign, (old, old))
    t0 = time.perf_counter()
    feats, errors = extract_images(paths, bb, store, batch_size=3, progress=False)
    assert time.perf_counter() - t0 < 15  # not waited on
    assert errors == {} and bb.computed == [3, 3]
    assert foreign.read_text() == "my notes"
    again, _ = extract_images(paths, MeanColour(), FeatureStore(store.dir.parent, bb.version))
    np.testing.assert_array_equal(feats, again)
