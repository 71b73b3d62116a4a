"""Nothing lost, nothing loaded as garbage: interrupted `huse extract` and `huse train`
resume to the uninterrupted result; a damaged cache shard, checkpoint or index file is
found, named and recomputed alone; the same seed gives the same metrics twice."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from huse.features import CacheWarning, ExtractStats, FeatureStore, extract_images
from huse.methods import resolve_config
from huse.train import CheckpointError, CheckpointWarning, train

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "openclipart-demo"


def flip_bytes(path: Path, positions: list[int]) -> None:
    data = bytearray(path.read_bytes())
    for p in positions:
        data[p] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# --- the feature cache ----------------------------------------------------------------


def colour_images(folder: Path, n: int) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"c{i:02d}.png"
        Image.new("RGB", (8, 6), (i * 9 % 256, i * 31 % 256, i * 57 % 256)).save(p)
        paths.append(str(p))
    return paths


class MeanColour:
    """A fake image backbone: 2 × the mean RGB of the image; counts what it computes."""

    name, kind, dim, version = "mean-colour", "image", 3, "mean-colour/v1"

    def __init__(self) -> None:
        self.computed = 0

    def preprocess(self, img):
        return torch.from_numpy(np.asarray(img, dtype=np.float32).mean(axis=(0, 1)) / 255.0)

    def forward(self, batch):
        self.computed += len(batch)
        return 2.0 * batch


def shard_rows(store: FeatureStore) -> dict[str, int]:
    import collections

    counts: collections.Counter = collections.Counter()
    for shard in store.dir.glob("shard-*.npz"):
        with np.load(shard) as z:
            counts.update(str(k) for k in z["keys"])
    return dict(counts)


@pytest.mark.parametrize("damage", ["flip-features", "truncate", "not-a-zip", "drop-digest"])
def test_damaged_shard_is_reported_by_name_and_only_its_items_recomputed(tmp_path, damage):
    paths = colour_images(tmp_path / "img", 12)
    cache = tmp_path / "cache"
    bb = MeanColour()
    reference, errors = extract_images(
        paths, bb, FeatureStore(cache, bb.version), batch_size=4, progress=False
    )
    assert errors == {} and bb.computed == 12
    store = FeatureStore(cache, bb.version)
    victim = sorted(store.dir.glob("shard-*.npz"))[1]
    with np.load(victim) as z:
        victim_keys = {str(k) for k in z["keys"]}
        feats = z["features"]
    if damage == "flip-features":
        # Flip the first bytes of the stored feature values themselves.
        at = victim.read_bytes().find(feats.tobytes()[:12])
        assert at > 0
        flip_bytes(victim, [at, at + 5])
    elif damage == "truncate":
        truncate(victim)
    elif damage == "not-a-zip":
        victim.write_bytes(b"half a file")
    else:  # a valid npz whose features no longer match its digest
        with np.load(victim) as z:
            keys, digest = z["keys"], z["sha256"]
        np.savez(victim.with_suffix(""), keys=keys, features=feats + 1.0, sha256=digest)

    bb2, stats = MeanColour(), ExtractStats()
    with pytest.warns(CacheWarning, match=victim.name):
        again, errors = extract_images(
            paths,
            bb2,
            FeatureStore(cache, bb2.version),
            batch_size=4,
            progress=False,
            stats=stats,
        )
    assert errors == {}
    assert bb2.computed == len(victim_keys) == 4  # that shard's items, nothing else
    assert stats.damaged_shards == [str(victim)]
    np.testing.assert_allclose(again, reference, atol=1e-6)
    assert not victim.exists() and victim.with_name(victim.name + ".damaged").exists()
    # Every item is cached exactly once; a third run computes nothing and warns nothing.
    counts = shard_rows(FeatureStore(cache, bb.version))
    assert len(counts) == 12 and set(counts.values()) == {1}
    bb3 = MeanColour()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        extract_images(paths, bb3, FeatureStore(cache, bb3.version), progress=False)
    assert bb3.computed == 0


def test_stale_temporary_shards_are_cleaned_and_never_read(tmp_path):
    store = FeatureStore(tmp_path, "toy/v1")
    store.put(["k1"], np.ones((1, 2)))
    # What a SIGKILL during a write leaves: a temporary file, never renamed.
    old = store.dir / ".shard-dead.npz.abc.tmp"
    old.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    young = store.dir / ".shard-live.npz.def.tmp"
    young.write_bytes(b"another process is writing this")
    again = FeatureStore(tmp_path, "toy/v1")
    assert list(again.index) == ["k1"]
    assert not old.exists() and young.exists()


# --- checkpoints ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fs(make_feature_set):
    return make_feature_set()


@pytest.fixture(scope="module")
def graph(fs, sibling_graph):
    return sibling_graph(fs.hierarchy)


def cfg(**kw):
    base = dict(epochs=6, batch_size=24, embed_dim=32, patience=100, min_epochs=1)
    return resolve_config("huse", **(base | kw))


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def no_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.fixture(scope="module")
def uninterrupted(fs, graph, tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as the one_thread tests it is compared with
    try:
        return train(fs, cfg(), graph, out=tmp_path_factory.mktemp("whole"), progress=False)
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_damaged_checkpoint_falls_back_to_the_previous_one(
    tmp_path, fs, graph, uninterrupted, damage, one_thread
):
    train(fs, cfg(epochs=3), graph, out=tmp_path, progress=False)
    last = tmp_path / "checkpoints" / "last.pt"
    assert (tmp_path / "checkpoints" / "prev.pt").exists()
    if damage == "flip":
        # Inside a weight tensor's bytes: torch.load alone would load it as garbage.
        w = torch.load(last, weights_only=False)["net"]
        tensor = next(v for v in w.values() if v.numel() > 64)
        at = last.read_bytes().find(tensor.numpy().tobytes()[:64])
        assert at > 0
        flip_bytes(last, [at + 3, at + 40])
    elif damage == "truncate":
        truncate(last, 0.6)
    else:
        last.write_bytes(b"\x00" * 100)
    with pytest.warns(CheckpointWarning, match=r"last\.pt.*prev\.pt"):
        resumed = train(fs, cfg(), graph, out=tmp_path, resume=True, progress=False)
    assert (tmp_path / "checkpoints" / "last.pt.damaged").exists()
    # One epoch was redone from prev.pt; the result is the uninterrupted run's.
    assert no_seconds(resumed.history) == no_seconds(uninterrupted.history)
    assert same_weights(resumed.net, uninterrupted.net)


def test_both_checkpoints_damaged_starts_over_with_a_warning(
    tmp_path, fs, graph, uninterrupted, one_thread
):
    train(fs, cfg(epochs=2), graph, out=tmp_path, progress=False)
    for name in ("last.pt", "prev.pt"):
        truncate(tmp_path / "checkpoints" / name)
    with pytest.warns(CheckpointWarning, match="training starts over"):
        resumed = train(fs, cfg(), graph, out=tmp_path, resume=True, progress=False)
    assert same_weights(resumed.net, uninterrupted.net)


def test_resume_refuses_other_settings_or_other_data(tmp_path, fs, graph, make_feature_set):
    train(fs, cfg(epochs=1), graph, out=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match=r"last\.pt.*lr: checkpoint 0\.0003, now 0\.01"):
        train(fs, cfg(lr=0.01), graph, out=tmp_path, resume=True, progress=False)
    other = make_feature_set(seed=5, split=(7, 3, 2))
    with pytest.raises(CheckpointError, match="other data"):
        train(other, cfg(), graph, out=tmp_path, resume=True, progress=False)
    # The epoch cap and patience may change: that is how a run is extended.
    r = train(fs, cfg(epochs=2, patience=50), graph, out=tmp_path, resume=True, progress=False)
    assert r.epochs_run == 2


def test_resuming_an_early_stopped_run_trains_no_further(tmp_path, fs, graph, one_thread):
    c = cfg(epochs=40, patience=1, min_epochs=2)
    first = train(fs, c, graph, out=tmp_path, progress=False)
    assert first.stopped == "early_stopping" and first.epochs_run < 40
    again = train(fs, c, graph, out=tmp_path, resume=True, progress=False)
    assert (again.epochs_run, again.stopped) == (first.epochs_run, "early_stopping")
    assert same_weights(again.net, first.net)


def test_same_seed_on_cpu_gives_the_same_metrics_twice(fs, graph, one_thread):
    from huse.evaluate import evaluate_net

    runs = []
    for _ in range(2):
        r = train(fs, cfg(epochs=4, seed=3), graph, progress=False)
        runs.append((no_seconds(r.history), evaluate_net(r.net, fs, "test")))
    assert runs[0] == runs[1]


# --- the index ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("victim", "damage"),
    [
        ("image.faiss", "flip"),
        ("text.faiss", "truncate"),
        ("items.parquet", "flip"),
        ("index.json", "truncate"),
    ],
)
def test_damaged_index_file_is_named_and_only_the_index_is_rebuilt(tmp_path, victim, damage):
    pytest.importorskip("faiss")
    from huse.index import CatalogueIndexError, build_index, load_index

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    items = pd.DataFrame(
        {"row": range(40), "id": [f"i{i}" for i in range(40)], "image": "x.png",
         "text": "t", "classes": "a<b", "split": "test"}
    )  # fmt: skip
    build_index({"image": x, "text": x[::-1].copy()}, items).save(tmp_path / "index")
    before = load_index(tmp_path / "index").search(x[:5], 3)
    f = tmp_path / "index" / victim
    if damage == "flip":
        flip_bytes(f, [len(f.read_bytes()) // 2])
    else:
        truncate(f)
    with pytest.raises(CatalogueIndexError, match=rf"{victim}.*huse index RUN"):
        load_index(tmp_path / "index")
    # The fix: rebuild the index from the embeddings (no retraining); it loads again.
    build_index({"image": x, "text": x[::-1].copy()}, items).save(tmp_path / "index")
    after = load_index(tmp_path / "index").search(x[:5], 3)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


# --- the real command line, interrupted at random points ------------------------------


def cli_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(
        HUSE_CACHE=str(tmp_path / "default-cache"),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONPATH=str(REPO / "src"),
    )
    return env


def cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "huse.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def interrupted_cli(args, env, sig, ready, delay: float) -> int:
    """Start the CLI, wait until ``ready()`` (the first file it writes), wait ``delay``
    seconds more, send ``sig``; returns the exit code (negative: killed by a signal)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "huse.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and not ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(sig)
        return proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    """48 demo rows (12 classes × 4) with absolute image paths."""
    if not (DEMO / "manifest_stripped.csv").exists():
        pytest.skip(f"demo data missing: {DEMO}")
    m = pd.read_csv(DEMO / "manifest_stripped.csv")
    big = m["classes"].value_counts()
    m = m[m["classes"].isin(big[big >= 4].index)].groupby("classes").head(4).head(48).copy()
    m["image"] = [str(DEMO / p) for p in m["image"]]
    path = tmp_path_factory.mktemp("subset") / "subset.csv"
    m.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def reference_extract(subset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref-extract")
    env = cli_env(out)
    r = cli(["extract", str(subset), "--out", str(out / "feats"), "--cache", str(out / "cache"),
             "--quiet", "--batch-size", "8"], env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out


def cached_keys(cache: Path) -> dict[str, int]:
    """Every key in every shard of the cache, with how many shards hold it; each shard
    is checked against its digest first (no partial file may read back as valid)."""
    from huse.features import _shard_digest

    counts: dict[str, int] = {}
    for shard in cache.rglob("shard-*.npz"):
        with np.load(shard) as z:
            keys, feats = z["keys"], z["features"]
            assert _shard_digest(keys, feats) == str(z["sha256"]), shard
        for k in keys:
            counts[str(k)] = counts.get(str(k), 0) + 1
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_extract_resumes_with_every_row_cached_once(
    subset, reference_extract, tmp_path, sig
):
    rng = random.Random(f"extract-{int(sig)}")
    env = cli_env(tmp_path)
    cache, out = tmp_path / "cache", tmp_path / "feats"
    args = ["extract", str(subset), "--out", str(out), "--cache", str(cache), "--quiet",
            "--batch-size", "8"]  # fmt: skip
    code = interrupted_cli(
        args, env, sig, lambda: any(cache.rglob("shard-*.npz")), rng.uniform(0.0, 0.5)
    )
    assert code == (130 if sig == signal.SIGINT else -signal.SIGKILL), code
    partial = cached_keys(cache)
    ref_keys = cached_keys(reference_extract / "cache")
    assert 0 < len(partial) < len(ref_keys)  # it was interrupted mid-way

    r = cli(args, env)
    assert r.returncode == 0, r.stderr
    stats = json.loads((out / "extract_stats.json").read_text())
    done = cached_keys(cache)
    # Every row is cached exactly once: the rerun computed only what was missing.
    assert done.keys() == ref_keys.keys()
    assert set(done.values()) == {1}
    assert stats["images_computed"] + stats["texts_computed"] == len(ref_keys) - len(partial)
    assert stats["damaged_shards"] == []
    ref = reference_extract / "feats"
    pd.testing.assert_frame_equal(pd.read_parquet(out / "items.parquet"),
                                  pd.read_parquet(ref / "items.parquet"))  # fmt: skip
    # Other batch compositions may round differently in the last bits of a conv kernel.
    for name in ("image.npy", "text.npy"):
        np.testing.assert_allclose(np.load(out / name), np.load(ref / name), atol=1e-5, rtol=1e-5)


def without_timing(d):
    if isinstance(d, dict):
        return {k: without_timing(v) for k, v in d.items() if "seconds" not in k}
    if isinstance(d, list):
        return [without_timing(v) for v in d]
    return d


def train_args(feats: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(feats), "--out", str(out), "--epochs", "60", "--embed-dim", "64",
            "--quiet", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def reference_train(reference_extract, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref-train") / "run"
    r = cli(train_args(reference_extract / "feats", out), cli_env(out.parent))
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_train_resumes_to_the_uninterrupted_model(
    reference_extract, reference_train, tmp_path, sig
):
    from safetensors.torch import load_file

    rng = random.Random(f"train-{int(sig)}")
    env = cli_env(tmp_path)
    out = tmp_path / "run"
    args = train_args(reference_extract / "feats", out)
    ckpt = out / "checkpoints" / "last.pt"
    code = interrupted_cli(args, env, sig, ckpt.exists, rng.uniform(0.0, 1.0))
    assert code != 0, "finished before the signal"
    assert not (out / "metrics.json").exists()
    r = cli([*args, "--resume"], env)
    assert r.returncode == 0, r.stderr
    a = load_file(out / "model" / "model.safetensors")
    b = load_file(reference_train / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # CPU, same seed: bit-identical
    ma = json.loads((out / "metrics.json").read_text())
    mb = json.loads((reference_train / "metrics.json").read_text())
    assert without_timing(ma) == without_timing(mb)
