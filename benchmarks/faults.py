"""Inject faults of every kind and count how many were survived with nothing lost.

    python benchmarks/faults.py                 # ~5-8 min on 2 CPU cores
    python benchmarks/faults.py --n 1 --n-cheap 20   # a quick pass

Kinds (each fault is independent, seeded):
  extract SIGINT / SIGKILL   `huse extract` on 48 demo rows killed at a random point, rerun:
                             survived = every row cached exactly once, features equal
                             (to 1e-5) the uninterrupted run's, no shard fails its digest.
  train SIGINT / SIGKILL     `huse train` killed at a random point, rerun with --resume:
                             survived = model weights bit-identical to the uninterrupted run.
  corrupt cache shard        a random shard flipped, truncated or replaced; extraction again:
                             survived = reported by file name, only its items recomputed,
                             features equal the reference.
  corrupt checkpoint         last.pt (sometimes prev.pt too) flipped or truncated, resume:
                             survived = reported by name, final weights equal the reference.
  corrupt index file         one index file flipped or truncated, load: survived = a
                             CatalogueIndexError naming the file; the rebuilt index answers
                             exactly as before.
  fuzzed manifest            good rows mixed with random bad rows and cells: survived = no
                             exception but ManifestError, every good row kept, every row
                             kept or skipped with a reason.
  fuzzed image               mutated/truncated/random files of many formats: survived =
                             an RGB image or an ImageError, nothing else.
  bad server request         the real server (real model, loopback) under a mix of good and
                             bad requests: survived = a 4xx with a message; good requests
                             are checked too (right results) and reported beside.

  regressions (20 kinds)     every case of the second reliability round, once each: an
                             --out that holds the user's files or the manifest, a refused
                             resume, a pickle as checkpoint, a 50 MB text, a 2 GiB non-image,
                             8 big uploads and 200 slow clients against `huse serve`, huge
                             class labels in the report, manifests that lose rows or have
                             none, tiny classes, bad paths and settings, damaged run and
                             index files, temporary files of a killed fit, re-saved weights,
                             a replaced shard, two extracts on one cache, empty queries.
                             Survived = nothing of the user's lost, no code run, memory
                             bounded, and a mistake answered by one line and exit code 2.

    python benchmarks/faults.py --kinds regressions              # ~10 min on 2 cores
    python benchmarks/faults.py --kinds regressions --src OLD/src   # the same, older code

Prints a Markdown table: kind | injected | survived with nothing lost.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
# The source tree under test (``--src``): the same cases measure any version of huse.
SRC = ROOT / "src"
DEMO = ROOT / "data" / "openclipart-demo"
RESULTS: list[tuple[str, int, int, str]] = []


def record(kind: str, injected: int, survived: int, note: str = "") -> None:
    RESULTS.append((kind, injected, survived, note))
    print(f"  {kind}: {survived}/{injected} survived {note}", flush=True)


def env_for(tmp: Path) -> dict:
    env = dict(os.environ)
    env.update(
        HUSE_CACHE=str(tmp / "default-cache"),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONPATH=str(SRC),
    )
    return env


def cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "huse.cli", *args], env=env, capture_output=True, text=True
    )


def interrupted(args, env, sig, ready, delay) -> tuple[bool, int]:
    """(whether the signal reached a running process, exit code)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "huse.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    sent = proc.poll() is None
    if sent:
        proc.send_signal(sig)
    return sent, proc.wait(timeout=300)


def subset(tmp: Path) -> Path:
    m = pd.read_csv(DEMO / "manifest_stripped.csv")
    big = m["classes"].value_counts()
    m = m[m["classes"].isin(big[big >= 4].index)].groupby("classes").head(4).head(48).copy()
    m["image"] = [str(DEMO / p) for p in m["image"]]
    path = tmp / "subset.csv"
    m.to_csv(path, index=False)
    return path


def cached_keys(cache: Path) -> dict[str, int] | None:
    """Keys over all shards with their counts; None when any shard fails its digest."""
    from huse.features import _shard_digest

    counts: dict[str, int] = {}
    for shard in cache.rglob("shard-*.npz"):
        try:
            with np.load(shard) as z:
                keys, feats = z["keys"], z["features"]
                if _shard_digest(keys, feats) != str(z["sha256"]):
                    return None
        except Exception:
            return None
        for k in keys:
            counts[str(k)] = counts.get(str(k), 0) + 1
    return counts


def same_features(a: Path, b: Path) -> bool:
    return all(
        np.allclose(np.load(a / n), np.load(b / n), atol=1e-5, rtol=1e-5)
        for n in ("image.npy", "text.npy")
    ) and pd.read_parquet(a / "items.parquet").equals(pd.read_parquet(b / "items.parquet"))


def extract_args(manifest: Path, out: Path, cache: Path) -> list[str]:
    return ["extract", str(manifest), "--out", str(out), "--cache", str(cache), "--quiet",
            "--batch-size", "8"]  # fmt: skip


def train_args(feats: Path, out: Path) -> list[str]:
    return ["train", str(feats), "--out", str(out), "--epochs", "60", "--embed-dim", "64",
            "--quiet"]  # fmt: skip


def faults_extract(tmp: Path, manifest: Path, ref: Path, n: int, rng: random.Random) -> None:
    ref_keys = cached_keys(ref / "cache")
    for sig in (signal.SIGINT, signal.SIGKILL):
        injected = survived = 0
        notes = []
        for i in range(n):
            d = tmp / f"extract-{sig.name}-{i}"
            env, cache = env_for(d), d / "cache"
            args = extract_args(manifest, d / "feats", cache)
            if rng.random() < 0.7:  # during extraction, after the first shard
                ready, delay = (lambda c=cache: any(c.rglob("shard-*.npz"))), rng.uniform(0, 0.8)
            else:  # anywhere from the start: loading, hashing, the first batch
                ready, delay = (lambda: True), rng.uniform(0, 6.0)
            sent, code = interrupted(args, env, sig, ready, delay)
            if not sent:
                notes.append("finished before the signal")
                continue
            injected += 1
            before = cached_keys(cache)
            r = cli(args, env)
            after = cached_keys(cache)
            ok = (
                before is not None
                and r.returncode == 0
                and after is not None
                and after.keys() == ref_keys.keys()
                and set(after.values()) == {1}
                and same_features(d / "feats", ref / "feats")
            )
            survived += ok
            notes.append(f"{len(before or {})}/{len(ref_keys)} cached at the signal")
        record(f"extract {sig.name} + rerun", injected, survived, "; ".join(notes))


def faults_train(tmp: Path, feats: Path, ref_run: Path, n: int, rng: random.Random) -> None:
    from safetensors.torch import load_file

    ref = load_file(ref_run / "model" / "model.safetensors")
    for sig in (signal.SIGINT, signal.SIGKILL):
        injected = survived = 0
        notes = []
        for i in range(n):
            out = tmp / f"train-{sig.name}-{i}" / "run"
            env = env_for(out.parent)
            ckpt = out / "checkpoints" / "last.pt"
            sent, code = interrupted(
                train_args(feats, out), env, sig, ckpt.exists, rng.uniform(0, 1.5)
            )
            if not sent or code == 0:
                notes.append("finished before the signal")
                continue
            injected += 1
            import torch

            # SIGKILL between moving last.pt to prev.pt and writing the new one leaves prev.pt.
            found = [p for p in (ckpt, ckpt.with_name("prev.pt")) if p.exists()]
            epoch = torch.load(found[0], weights_only=True)["epoch"] if found else 0
            r = cli([*train_args(feats, out), "--resume"], env)
            ok = r.returncode == 0
            if ok:
                got = load_file(out / "model" / "model.safetensors")
                ok = got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
            survived += ok
            notes.append(f"killed after epoch {epoch}")
        record(f"train {sig.name} + --resume", injected, survived, "; ".join(notes))


def damage(path: Path, rng: random.Random, how: str | None = None) -> str:
    data = bytearray(path.read_bytes())
    how = how or rng.choice(["flip", "truncate", "garbage"])
    if how == "flip":
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data) // 4, len(data))  # past the headers: content bytes
            data[at] ^= rng.randint(1, 255)
    elif how == "truncate":
        data = data[: rng.randrange(0, len(data))]
    else:
        data = bytearray(rng.randbytes(rng.randint(0, 200)))
    path.write_bytes(bytes(data))
    return how


def faults_shard(tmp: Path, manifest: Path, ref: Path, n: int, rng: random.Random) -> None:
    from huse.dataset import DataConfig, build_feature_set
    from huse.features import CacheWarning

    injected = survived = 0
    for i in range(n):
        cache = tmp / f"shard-{i}"
        shutil.copytree(ref / "cache", cache)
        victim = rng.choice(sorted(cache.rglob("shard-*.npz")))
        with np.load(victim) as z:
            n_items = len(z["keys"])
        damage(victim, rng)
        injected += 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fs = build_feature_set(
                manifest, DataConfig(cache_dir=str(cache), image_batch_size=8), progress=False
            )
        named = any(
            issubclass(w.category, CacheWarning) and victim.name in str(w.message) for w in caught
        )
        s = fs.stats
        recomputed = s["images_computed"] + s["texts_computed"]
        out = tmp / f"shard-{i}-feats"
        fs.save(out)
        survived += named and recomputed == n_items and same_features(out, ref / "feats")
    record("corrupt cache shard", injected, survived, "flip / truncate / garbage")


def faults_checkpoint(tmp: Path, feats: Path, n: int, rng: random.Random) -> None:
    import torch

    from huse.dataset import FeatureSet
    from huse.methods import resolve_config
    from huse.train import CheckpointWarning, train

    torch.set_num_threads(1)
    fs = FeatureSet.load(feats)
    k = len(fs.hierarchy)
    graph = np.random.default_rng(0).uniform(0.2, 1.0, (k, k)).astype(np.float32)
    graph = (graph + graph.T) / 2
    np.fill_diagonal(graph, 0)
    cfg = resolve_config("huse", epochs=8, embed_dim=64, patience=100, min_epochs=1)
    ref = train(fs, cfg, graph, out=tmp / "ckpt-ref", progress=False).net.state_dict()
    injected = survived = 0
    for i in range(n):
        out = tmp / f"ckpt-{i}"
        stop = rng.randint(2, 7)
        train(fs, dataclasses.replace(cfg, epochs=stop), graph, out=out, progress=False)
        names = ["last.pt"] + (["prev.pt"] if rng.random() < 0.25 else [])
        for name in names:
            damage(out / "checkpoints" / name, rng, rng.choice(["flip", "truncate"]))
        injected += 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = train(fs, cfg, graph, out=out, resume=True, progress=False).net.state_dict()
        flagged = [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]
        # A flip may land in bytes no field uses (zip padding): then nothing is damaged and
        # the checkpoint loads exactly; any flagged file must be one we damaged.
        named = all(any(nm in m for nm in names) for m in flagged)
        survived += named and all(torch.equal(got[k], ref[k]) for k in ref)
    record("corrupt checkpoint + --resume", injected, survived, "last.pt, sometimes prev.pt too")


def faults_index(tmp: Path, n: int, rng: random.Random) -> None:
    from huse.index import CatalogueIndexError, build_index, load_index

    x = np.random.default_rng(0).normal(size=(300, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    items = pd.DataFrame({"row": range(300), "id": [f"i{i}" for i in range(300)],
                          "image": "x.png", "text": "t", "classes": "a<b", "split": "test"})  # fmt: skip
    injected = survived = 0
    for i in range(n):
        path = tmp / f"index-{i}"
        factory = rng.choice(["flat", "hnsw", "ivfflat"])
        from huse.index import IndexConfig

        build_index({"image": x, "text": x[::-1].copy()}, items, IndexConfig(factory)).save(path)
        before = load_index(path).search(x[:10], 5, "both")
        victim = path / rng.choice(["image.faiss", "text.faiss", "items.parquet", "index.json"])
        damage(victim, rng, rng.choice(["flip", "truncate"]))
        injected += 1
        try:
            load_index(path)
            named = False
        except CatalogueIndexError as e:
            named = victim.name in str(e)
        build_index({"image": x, "text": x[::-1].copy()}, items, IndexConfig(factory)).save(path)
        after = load_index(path).search(x[:10], 5, "both")
        same = all(np.array_equal(a, b) for a, b in zip(before, after))
        survived += named and same
    record("corrupt index file", injected, survived, "flat / hnsw / ivfflat")


NASTY = [
    "", " ", '"', "'", ",", "\t", "\n", "\r\n", "\x00", "<", "<<", "a<", "<a", "a,b<c",
    "é<ü", "类别<子类", "🙂", "\u200b", "a" * 200_000, "nan", "None", "-1", "1e309",
    "~nobody/x.png", "../../etc/passwd", "/", "a" * 5000 + ".png", "<b>x</b>", "&amp;",
    "\ud800",
]  # fmt: skip


def fuzz_cell(rng: random.Random):
    r = rng.random()
    if r < 0.4:
        return rng.choice(NASTY)
    if r < 0.6:
        return "".join(chr(rng.randint(1, 0x2FFFF)) for _ in range(rng.randint(0, 12)))
    if r < 0.7:
        return rng.choice([rng.randint(-(10**6), 10**6), 10**5000, rng.random(), None, True,
                           [1, 2], {"a": 1}])  # fmt: skip
    return "".join(rng.choice("ab <,\"'\n") for _ in range(rng.randint(0, 10)))


def faults_manifest(tmp: Path, n: int, rng: random.Random) -> None:
    from PIL import Image

    from huse.data.hierarchy import Hierarchy
    from huse.data.manifest import ManifestError, read_manifest

    Image.new("RGB", (4, 4), "red").save(tmp / "img.png")
    injected = survived = errors = 0
    for i in range(n):
        fmt = rng.choice([".csv", ".tsv", ".jsonl", ".parquet", "raw"])
        good = [{"id": f"good-{j}", "image": "img.png", "text": f"good item {j}",
                 "classes": f"r<l{j % 2}"} for j in range(rng.randint(1, 4))]  # fmt: skip
        bad = [{c: fuzz_cell(rng) for c in ("id", "image", "text", "classes")}
               for _ in range(rng.randint(1, 8))]  # fmt: skip
        rows = good + bad
        rng.shuffle(rows)
        path = tmp / f"m{i}{'.csv' if fmt == 'raw' else fmt}"
        try:
            if fmt == "raw":  # bytes in a random encoding, structure not guaranteed
                text = "id,image,text,classes\n" + "\n".join(
                    ",".join(str(v) for v in r.values()) for r in rows
                )
                enc = rng.choice(["utf-8", "utf-16", "latin-1", "cp1252"])
                path.write_bytes(text.encode(enc, "replace"))
            elif fmt == ".jsonl":
                path.write_text("\n".join(json.dumps(r, default=str) for r in rows))
            elif fmt == ".parquet":
                pd.DataFrame([{k: str(v) for k, v in r.items()} for r in rows]).map(
                    lambda s: s.encode("utf-8", "replace").decode()
                ).to_parquet(path)
            else:
                import csv

                with open(path, "w", newline="", encoding="utf-8", errors="surrogatepass") as f:
                    w = csv.writer(f, delimiter="\t" if fmt == ".tsv" else ",")
                    w.writerow(["id", "image", "text", "classes"])
                    w.writerows([r.values() for r in rows])
        except (ValueError, TypeError, OverflowError):
            continue  # the fuzz value could not be written in this format at all
        injected += 1
        try:
            m = read_manifest(path)
        except ManifestError as e:
            # A clear error naming the file (undecodable bytes, no header) stops before
            # anything is written: nothing is lost, the user fixes the file.
            clear = str(path) in str(e)
            survived += clear
            errors += clear
            continue
        except Exception as e:  # noqa: BLE001 - this is what the benchmark counts
            print(f"    crash on {path}: {type(e).__name__}: {e}"[:300])
            continue
        try:
            for t in m.items["text"]:
                t.encode("utf-8")
            if len(m.items):
                Hierarchy.from_paths(m.items["classes"])
            m.items.to_parquet(io.BytesIO())
            m.skipped_frame().to_csv(io.StringIO())
        except Exception as e:  # noqa: BLE001
            print(f"    downstream crash on {path}: {type(e).__name__}: {e}"[:300])
            continue
        kept = set(m.items["id"])
        good_kept = fmt == "raw" or {g["id"] for g in good} <= kept
        survived += good_kept and all(s.reason for s in m.skipped)
        if not good_kept:
            lost = {g["id"] for g in good} - kept
            print(f"    {fmt}: good rows lost {lost}: {m.skipped_frame().to_dict('records')}"[:600])
    record(
        "fuzzed manifest",
        injected,
        survived,
        f"csv / tsv / jsonl / parquet / raw bytes; {errors} whole-file errors naming the "
        "file (undecodable bytes), the rest read with bad rows skipped",
    )


def image_seeds() -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 32, 3), np.uint8))

    def enc(img, fmt, **kw):
        b = io.BytesIO()
        img.save(b, fmt, **kw)
        return b.getvalue()

    frames = [Image.new("RGB", (12, 12), (60 * i + 30, 0, 0)) for i in range(3)]
    return [
        enc(rgb, "PNG"), enc(rgb, "JPEG"), enc(rgb.convert("CMYK"), "JPEG"), enc(rgb, "WEBP"),
        enc(rgb, "BMP"), enc(rgb, "GIF", save_all=True, append_images=frames),
        enc(Image.fromarray(rng.integers(0, 65535, (20, 20)).astype(np.uint16)), "PNG"),
        enc(Image.fromarray(rng.integers(0, 65535, (20, 20)).astype(np.uint16)), "TIFF"),
    ]  # fmt: skip


def png_header(w: int, h: int) -> bytes:
    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")  # fmt: skip


def mutate(data: bytes, rng: random.Random) -> bytes:
    d = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        if op < 0.5 and d:
            d[rng.randrange(len(d))] ^= rng.randint(1, 255)
        elif op < 0.75:
            d = d[: rng.randrange(len(d) + 1)]
        else:
            at = rng.randrange(len(d) + 1)
            d[at:at] = rng.randbytes(rng.randint(1, 16))
    return bytes(d)


def faults_image(n: int, rng: random.Random) -> None:
    from huse.data.images import ImageError, load_image

    seeds = image_seeds()
    injected = survived = 0
    for _ in range(n):
        r = rng.random()
        if r < 0.7:
            data = mutate(rng.choice(seeds), rng)
        elif r < 0.85:
            data = rng.randbytes(rng.randint(0, 3000))
        else:
            data = png_header(rng.choice([0, 1, 10**5, 2**31 - 1]), rng.choice([0, 7, 10**5]))
        injected += 1
        try:
            img = load_image(data, max_side=256)
            survived += img.mode == "RGB" and max(img.size) <= 256
        except ImageError:
            survived += 1
        except Exception as e:  # noqa: BLE001
            print(f"    crash: {type(e).__name__}: {e}"[:200])
    record("fuzzed image", injected, survived, "mutated / truncated / random / huge header")


def faults_server(tmp: Path, run: Path, manifest: Path, n: int, rng: random.Random) -> None:
    import httpx
    import uvicorn

    from huse.data.images import load_image
    from huse.runs import index_run
    from huse.search import Searcher
    from huse.serve import create_app
    from huse.serve.app import LOOPBACK_HOSTS

    index_run(run, manifest, progress=False)
    searcher = Searcher.from_run(run)
    searcher.warm_up()
    app = create_app(searcher, allowed_hosts=list(LOOPBACK_HOSTS))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    items = searcher.index.items
    ids, paths = items["id"].astype(str).tolist(), items["image"].astype(str).tolist()
    seeds = image_seeds()

    def up(data, **f):
        return {"files": {"image": ("q.png", data, "application/octet-stream")},
                "data": {k: str(v) for k, v in f.items()}}  # fmt: skip

    def js(body):
        return {"json": body}

    def raw(content, ctype="application/json"):
        return {"content": content, "headers": {"content-type": ctype}}

    bad_makers = [
        lambda: up(b""), lambda: up(rng.randbytes(rng.randint(1, 3000))),
        lambda: up(mutate(rng.choice(seeds), rng)[:40]), lambda: up(png_header(60000, 60000)),
        lambda: up(b"\0" * (9 * 1024 * 1024)), lambda: js({"text": "x" * 600}),
        lambda: js({"text": " "}), lambda: js({}), lambda: js({"text": "a", "k": 0}),
        lambda: js({"text": "a", "k": "x"}), lambda: js({"text": "a", "modality": "smell"}),
        lambda: js({"item": "nope"}), lambda: js(["a"]), lambda: raw(b"{bad"),
        lambda: raw(b"[" * 60000), lambda: raw(b'{"text": "\\udc00"}'),
        lambda: raw(b"x", "text/plain"), lambda: js({"text": "a", "extra": 1}),
    ]  # fmt: skip
    reqs = []
    for _ in range(n):
        reqs.append(("bad", rng.choice(bad_makers)(), None))
        if rng.random() < 0.5:
            q = rng.choice(["a red apple", "a dog", "music", "a car on the road", "flowers"])
            k = rng.randint(1, 10)
            exp = [h.id for h in searcher.search_text(q, k)]
            reqs.append(("good", js({"text": q, "k": k}), exp))
        else:
            row = rng.randrange(len(ids))
            data = Path(paths[row]).read_bytes()
            exp = [h.id for h in searcher.search_image(load_image(data), 5)]
            reqs.append(("good", up(data, k=5), exp))
    local = threading.local()

    def one(req):
        kind, kw, exp = req
        if not hasattr(local, "c"):
            local.c = httpx.Client(base_url=base, timeout=120)
        r = local.c.post("/api/search", **kw)
        if kind == "bad":
            return kind, 400 <= r.status_code < 500 and bool(r.json().get("detail"))
        return kind, r.status_code == 200 and [x["id"] for x in r.json()["results"]] == exp

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, reqs))
    server.should_exit = True
    thread.join(timeout=10)
    bad = [ok for kind, ok in results if kind == "bad"]
    good = [ok for kind, ok in results if kind == "good"]
    record("bad server request", len(bad), sum(bad),
           f"and {sum(good)}/{len(good)} good requests answered correctly, 8 threads")  # fmt: skip


# ---------------------------------------------------------------------------------------
# Regressions: every case of the second reliability round, one fault kind each. A case
# returns (survived, note). "Survived" is what a user needs: nothing of theirs lost, no
# code of theirs run, memory bounded, and a mistake answered by one line and exit code 2.
# They run against any source tree (``--src``), so the same cases measure before and after.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Ctx:
    tmp: Path
    manifest: Path  # the 48-row demo subset, absolute image paths
    feats: Path  # `huse extract` output of it
    cache: Path  # its feature cache (content-keyed, shared by every case)
    run: Path  # a `huse fit` run of it, indexed
    env: dict


def user_error(r: subprocess.CompletedProcess) -> bool:
    """Exit code 2, no traceback, and the error said in one line."""
    err = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")]
    return r.returncode == 2 and "Traceback" not in r.stderr and len(err) == 1


def show(r: subprocess.CompletedProcess) -> str:
    last = (r.stderr.strip().splitlines() or [""])[-1]
    return f"rc {r.returncode}: {last[:120]}"


def fit_args(manifest: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["fit", str(manifest), "--out", str(out), "--features", str(cache), "--epochs", "3",
            "--embed-dim", "32", "--quiet", *extra]  # fmt: skip


def peak_cli(args: list[str], env: dict, timeout: float) -> tuple[int | None, float, float]:
    """(exit code or None on timeout, peak RSS in MiB, seconds) of one CLI run."""
    code = (
        "import resource, sys\n"
        "from huse.cli import main\n"
        "try:\n    rc = main(sys.argv[1:])\n"
        "except SystemExit as e:\n    rc = e.code\n"
        "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                           text=True, timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, float("nan"), time.perf_counter() - t0
    peak = [ln for ln in r.stderr.splitlines() if ln.startswith("PEAK")]
    mib = int(peak[-1].split()[1]) / 1024 if peak else float("nan")
    return r.returncode, mib, time.perf_counter() - t0


def digest_tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def case_index_out_deletes(c: Ctx):
    v = c.tmp / "r1-victim"
    v.mkdir()
    (v / "index.json").write_text("{}")
    (v / "precious.txt").write_text("x")
    r = cli(["index", str(c.run), "--out", str(v), "--quiet"], c.env)
    kept = (v / "precious.txt").is_file() and (v / "precious.txt").read_text() == "x"
    return kept and user_error(r), ("kept" if kept else "precious.txt DELETED") + "; " + show(r)


def case_fit_overwrites_manifest(c: Ctx):
    d = c.tmp / "r2"
    d.mkdir()
    m = d / "items.parquet"
    pd.read_csv(c.manifest).to_parquet(m, index=False)
    before = m.read_bytes()
    r = cli(fit_args(m, d, c.cache), c.env)
    same = m.read_bytes() == before
    return same and r.returncode == 2, (
        "manifest intact" if same else "manifest OVERWRITTEN"
    ) + "; " + show(r)


def case_refused_resume_rewrites(c: Ctx):
    run = c.tmp / "r3"
    shutil.copytree(c.run, run)
    other = c.tmp / "r3-other.csv"
    pd.read_csv(c.manifest).head(40).to_csv(other, index=False)
    files = ["run.json", "items.parquet", "data_config.json", "metrics.json"]
    before = {f: (run / f).read_bytes() for f in files if (run / f).is_file()}
    r = cli(fit_args(other, run, c.cache, "--resume"), c.env)
    changed = [f for f, b in before.items() if (run / f).read_bytes() != b]
    ok = r.returncode == 2 and not changed and user_error(r)
    return ok, (f"rewrote {changed}" if changed else "run untouched") + "; " + show(r)


def case_checkpoint_runs_code(c: Ctx):
    import pickle

    run = c.tmp / "r4"
    shutil.copytree(c.run, run)
    marker = c.tmp / "r4-PWNED"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (run / "checkpoints").mkdir(exist_ok=True)
    with open(run / "checkpoints" / "last.pt", "wb") as f:
        pickle.dump({"net": Evil()}, f)
    r = cli(fit_args(c.manifest, run, c.cache, "--resume"), c.env)
    ran = marker.exists()
    return not ran and "Traceback" not in r.stderr, (
        "CODE RAN" if ran else "not run"
    ) + "; " + show(r)


def _extract_with_row(c: Ctx, name: str, image: str, text: str) -> tuple[int | None, float, float]:
    m = pd.read_csv(c.manifest)
    row = m.iloc[0].copy()
    row["id"], row["image"], row["text"] = f"{name}-row", image, text
    m = pd.concat([m, row.to_frame().T], ignore_index=True)
    path = c.tmp / f"{name}.csv"
    m.to_csv(path, index=False)
    return peak_cli(extract_args(path, c.tmp / f"{name}-feats", c.cache), c.env, timeout=300)


def case_huge_text(c: Ctx):
    m = pd.read_csv(c.manifest)
    rc, mib, s = _extract_with_row(c, "r5", m.iloc[0]["image"], "word " * 10_000_000)
    ok = rc == 0 and mib < 2048 and s < 120
    return ok, f"50 MB text: rc {rc}, peak {mib:.0f} MiB, {s:.0f}s"


def case_huge_non_image(c: Ctx):
    big = c.tmp / "r6-big.png"
    with open(big, "wb") as f:
        f.truncate(2 * 1024**3)  # sparse: no disk, but 2 GiB to whoever reads it all
    rc, mib, s = _extract_with_row(c, "r6", str(big), "a big file that is no image")
    big.unlink()
    ok = rc == 0 and mib < 1536
    return ok, f"2 GiB non-image: rc {rc}, peak {mib:.0f} MiB, {s:.0f}s"


class Server:
    """`huse serve RUN` in a child process on a free loopback port."""

    def __init__(self, c: Ctx, *extra: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "huse.cli", "serve", str(c.run), "--port", str(self.port),
             "--quiet", *extra], env=c.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.base = f"http://127.0.0.1:{self.port}"
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/api/health", timeout=2).status_code < 500:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError("server did not start")

    def rss_mib(self, field: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def case_server_big_uploads(c: Ctx, server: Server):
    import httpx
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (6300, 6300), (200, 30, 30)).save(buf, "PNG")
    data = buf.getvalue()
    rss0 = server.rss_mib()

    def one(_):
        files = {"image": ("big.png", data, "image/png")}
        return httpx.post(server.base + "/api/search", files=files, timeout=120).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(8)))
    grew = server.rss_mib("VmHWM") - rss0
    ok = grew < 1024 and all(code in (200, 429, 503) for code in codes)
    return (
        ok,
        f"8 × {len(data) // 1024} KB PNG of 6300×6300: peak +{grew:.0f} MiB, codes {sorted(set(codes))}",
    )


def case_server_slow_clients(c: Ctx, server: Server, wait_s: float = 45.0):
    socks = []
    for i in range(200):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        if i % 2:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finished
        else:
            s.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")  # fmt: skip
        socks.append(s)
    deadline = time.monotonic() + wait_s
    open_ = set(range(len(socks)))
    while open_ and time.monotonic() < deadline:
        for i in list(open_):
            s = socks[i]
            s.setblocking(False)
            try:
                if s.recv(65536) == b"":
                    open_.discard(i)
            except BlockingIOError:
                if i % 2 == 0:  # trickle the body
                    with contextlib.suppress(OSError):
                        s.send(b" ")
            except OSError:
                open_.discard(i)
        time.sleep(0.5)
    for s in socks:
        s.close()
    return not open_, f"{len(open_)}/200 slow connections still open after {wait_s:.0f}s"


def case_report_huge_labels(c: Ctx):
    m = pd.read_csv(c.manifest)
    classes = sorted(m["classes"].unique())
    long_name = classes[0] + "<" + "x" * 10_000
    deep = classes[1] + "<" + "<".join(f"l{i}" for i in range(500))
    m["classes"] = m["classes"].replace({classes[0]: long_name, classes[1]: deep})
    path = c.tmp / "r9.csv"
    m.to_csv(path, index=False)
    run = c.tmp / "r9-run"
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "huse.cli", *fit_args(path, run, c.cache)],
                           env=c.env, capture_output=True, text=True, timeout=300)  # fmt: skip
    except subprocess.TimeoutExpired:
        return False, "fit + report over 300 s"
    s = time.perf_counter() - t0
    rep = run / "report.html"
    mb = rep.stat().st_size / 1e6 if rep.is_file() else float("nan")
    ok = r.returncode == 0 and rep.is_file() and mb < 5 and s < 150
    return ok, f"fit + report {s:.0f}s, report {mb:.1f} MB; rc {r.returncode}"


def _manifest_file(c: Ctx, name: str, text: str) -> Path:
    p = c.tmp / name
    p.write_text(text, encoding="utf-8")
    return p


def case_no_valid_rows(c: Ctx):
    notes, ok = [], True
    header = _manifest_file(c, "r10-header.csv", "image,text,classes\n")
    pq = c.tmp / "r10-types.parquet"
    pd.DataFrame({"image": [b"x", b"y"], "text": [1, 2], "classes": [["a"], ["b"]]}).to_parquet(pq)
    for m in (header, pq):
        for args in (extract_args(m, c.tmp / f"r10-{m.stem}-f", c.cache),
                     fit_args(m, c.tmp / f"r10-{m.stem}-r", c.cache),
                     ["index", str(c.run), "--manifest", str(m), "--out",
                      str(c.tmp / f"r10-{m.stem}-i"), "--quiet"]):  # fmt: skip
            r = cli(args, c.env)
            ok &= user_error(r)
            notes.append(f"{args[0]} {m.suffix}: {'ok' if user_error(r) else show(r)}")
    return ok, "; ".join(notes)


def case_tiny_classes(c: Ctx):
    m = pd.read_csv(c.manifest)
    notes, ok = [], True
    tiny = m.groupby("classes").head(2)
    p1 = c.tmp / "r11-tiny.csv"
    tiny.to_csv(p1, index=False)
    p2 = c.tmp / "r11-train.csv"
    m.assign(split="train").to_csv(p2, index=False)
    for p in (p1, p2):
        run = c.tmp / f"r11-{p.stem}"
        t0 = time.perf_counter()
        r = cli(fit_args(p, run, c.cache), c.env)
        s = time.perf_counter() - t0
        good = "Traceback" not in r.stderr and (
            user_error(r) or (r.returncode == 0 and (run / "metrics.json").is_file())
        )
        ok &= good
        notes.append(f"{p.stem}: {'ok' if good else show(r)} ({s:.0f}s)")
    return ok, "; ".join(notes)


def case_out_is_file(c: Ctx):
    f = c.tmp / "r12-file"
    f.write_text("mine")
    ok, notes = True, []
    for out in (f, f / "sub"):
        for args in (["index", str(c.run), "--out", str(out), "--quiet"],
                     extract_args(c.manifest, out, c.cache)):  # fmt: skip
            r = cli(args, c.env)
            good = user_error(r) and f.read_text() == "mine"
            ok &= good
            notes.append(f"{args[0]}: {'ok' if good else show(r)}")
    return ok, "; ".join(notes)


def case_bad_arguments(c: Ctx):
    partial = c.tmp / "r13-partial"
    partial.mkdir()
    shutil.copy(c.feats / "image.npy", partial / "image.npy")
    cases = {
        "train on missing folder": ["train", str(c.tmp / "nope"), "--out", str(c.tmp / "r13a")],
        "train on partial folder": ["train", str(partial), "--out", str(c.tmp / "r13b")],
        "eval missing run": ["eval", str(c.tmp / "nope-run")],
        "unknown backbone": extract_args(c.manifest, c.tmp / "r13c", c.cache)
        + ["--image-backbone", "resnet-9000"],
        "batch size 0": ["train", str(c.feats), "--out", str(c.tmp / "r13d"),
                         "--train-batch-size", "0"],
        "lr nan": ["train", str(c.feats), "--out", str(c.tmp / "r13e"), "--lr", "nan"],
    }  # fmt: skip
    bad = []
    for name, args in cases.items():
        r = cli(args, c.env)
        if not user_error(r):
            bad.append(f"{name} ({show(r)})")
    return not bad, "all one line, exit 2" if not bad else "; ".join(bad)


def case_damaged_run_files(c: Ctx):
    import json as _json

    bad = []

    def fresh(name: str) -> Path:
        run = c.tmp / f"r14-{name}"
        shutil.copytree(c.run, run)
        return run

    run = fresh("shape")
    (run / "index" / "index.json").write_text("[]")
    r = cli(["search", str(run), "--text", "a red apple"], c.env)
    if not user_error(r):
        bad.append(f"index.json []: {show(r)}")
    run = fresh("trunc")
    st = run / "model" / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    r = cli(["search", str(run), "--text", "a red apple"], c.env)
    if not user_error(r):
        bad.append(f"truncated safetensors: {show(r)}")
    run = fresh("config")
    (run / "model" / "config.json").write_text("{not json")
    r = cli(["search", str(run), "--text", "a red apple"], c.env)
    if not user_error(r):
        bad.append(f"bad config.json: {show(r)}")
    run = fresh("nofiles")
    info_path = run / "index" / "index.json"
    info = _json.loads(info_path.read_text())
    info.pop("files", None)
    info_path.write_text(_json.dumps(info))
    victim = run / "index" / "image.faiss"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    r = cli(["search", str(run), "--text", "a red apple"], c.env)
    if not user_error(r):
        bad.append(f"no checksums + bit flip: {show(r)}")
    return not bad, "all named, exit 2" if not bad else "; ".join(bad)


def _read_rows(path: Path) -> tuple[int | None, int | None, str]:
    """(kept rows, skipped rows, error) of huse's manifest reader on ``path``."""
    from huse.data.manifest import read_manifest

    try:
        m = read_manifest(path)
    except Exception as e:  # the old code raises several kinds; the check is on the outcome
        return None, None, f"{type(e).__name__}: {str(e)[:80]}"
    return len(m.items), len(m.skipped), ""


def case_manifest_rows(c: Ctx):
    m = pd.read_csv(c.manifest).head(26)
    img = m.iloc[0]["image"]
    bad = []
    # 15: one unterminated quote swallows the next row.
    lines = ["id,image,text,classes"] + [f"i{i},{img},text {i},a<b" for i in range(8)]
    lines[4] = f'i3,{img},"text 3 never closed,a<b'
    kept, skipped, err = _read_rows(_manifest_file(c, "r15.csv", "\n".join(lines) + "\n"))
    if (kept, skipped) != (7, 1):  # the broken row alone is lost, and listed
        bad.append(f"unterminated quote: kept {kept}, skipped {skipped} of 8 {err}")
    # 16: a column twice.
    text = "id,image,text,classes,text\n" + "".join(f"i{i},{img},t {i},a<b,\n" for i in range(5))
    kept, skipped, err = _read_rows(_manifest_file(c, "r16.csv", text))
    if not (kept is None and err.startswith(("ManifestError", "HuseError"))):
        bad.append(f"duplicate column: kept {kept}, skipped {skipped} {err}")
    # 17: one record with a non-text split, the others with none.
    recs = [{"id": f"i{i}", "image": img, "text": f"t {i}", "classes": "a<b"} for i in range(27)]
    recs[5]["split"] = 123
    kept, skipped, err = _read_rows(
        _manifest_file(c, "r17.jsonl", "\n".join(json.dumps(r) for r in recs) + "\n")
    )
    if (kept, skipped) != (26, 1):
        bad.append(f"split 123: kept {kept}, skipped {skipped} of 27 {err}")
    # 18: JSONL with a byte-order mark.
    recs = [{"id": f"i{i}", "image": img, "text": f"t {i}", "classes": "a<b"} for i in range(5)]
    kept, skipped, err = _read_rows(
        _manifest_file(c, "r18.jsonl", "\ufeff" + "\n".join(json.dumps(r) for r in recs) + "\n")
    )
    if (kept, skipped) != (5, 0):
        bad.append(f"BOM: kept {kept}, skipped {skipped} of 5 {err}")
    # 19: Parquet float ids with NaN.
    pq = c.tmp / "r19.parquet"
    ids = [float(100 + i) if i % 3 else float("nan") for i in range(10)]
    pd.DataFrame({"id": ids, "image": img, "text": [f"t {i}" for i in range(10)],
                  "classes": "a<b"}).to_parquet(pq)  # fmt: skip
    kept, skipped, err = _read_rows(pq)
    if (kept, skipped) != (10, 0):
        bad.append(f"NaN ids: kept {kept}, skipped {skipped} of 10 {err}")
    return not bad, "5 manifests, every row kept or listed" if not bad else "; ".join(bad)


def case_stale_model_tmp(c: Ctx):
    run = c.tmp / "r20"
    shutil.copytree(c.run, run)
    leftover = run / "model" / ".model.safetensors.abc123.tmp"
    leftover.write_bytes(b"\0" * 1024)
    r = cli(fit_args(c.manifest, run, c.cache), c.env)
    gone = not leftover.exists()
    return gone and r.returncode == 0, ("cleaned" if gone else "left behind") + "; " + show(r)


def case_deterministic_save(c: Ctx):
    import hashlib

    from huse.model import HUSEModel

    model = HUSEModel.load(c.run / "model")
    digests = set()
    for i in range(6):
        out = c.tmp / f"r21-{i}"
        model.save(out)
        digests.add(hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest())
    return len(digests) == 1, f"{len(digests)} distinct digests over 6 saves"


def case_replaced_shard(c: Ctx):
    cache = c.tmp / "r22-cache"
    shutil.copytree(c.cache, cache)
    shards = sorted(cache.rglob("shard-*.npz"))
    img = [s for s in shards if s.parent == shards[0].parent]
    if len(img) < 2:
        return False, "need two shards of one backbone"
    shutil.copy(img[1], img[0])  # a valid shard under another shard's name
    out = c.tmp / "r22-feats"
    r = cli(extract_args(c.manifest, out, cache), c.env)
    stats = json.loads((out / "extract_stats.json").read_text()) if r.returncode == 0 else {}
    reported = bool(stats.get("damaged_shards")) or img[0].name in r.stdout + r.stderr
    same = r.returncode == 0 and same_features(out, c.feats)
    return reported and same, f"reported {reported}, features equal {same}"


def case_concurrent_extract(c: Ctx):
    cache = c.tmp / "r22b-cache"
    procs = [
        subprocess.Popen([sys.executable, "-m", "huse.cli",
                          *extract_args(c.manifest, c.tmp / f"r22b-{i}", cache)],
                         env=c.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for i in range(2)
    ]  # fmt: skip
    codes = [p.wait(timeout=900) for p in procs]
    computed = 0
    for i in range(2):
        s = json.loads((c.tmp / f"r22b-{i}" / "extract_stats.json").read_text())
        computed += s["images_computed"]
    n = len(pd.read_csv(c.manifest))
    keys = cached_keys(cache) or {}
    once = all(v == 1 for v in keys.values())
    ok = codes == [0, 0] and computed == n and once
    return ok, f"{computed} images computed for {n} items, every key stored once: {once}"


def case_empty_query(c: Ctx, server: Server):
    import httpx

    bad = []
    for q in ("<b></b>", "\u200b\u200b", "https://example.com/x.png"):
        r = cli(["search", str(c.run), "--text", q], c.env)
        if not user_error(r):
            bad.append(f"cli {q!r}: {show(r)}")
        code = httpx.post(server.base + "/api/search", json={"text": q}, timeout=60).status_code
        if code != 422:
            bad.append(f"api {q!r}: {code}")
    return not bad, "cli exit 2, api 422" if not bad else "; ".join(bad)


REGRESSIONS = {
    "index --out deletes a folder": case_index_out_deletes,
    "fit --out overwrites its manifest": case_fit_overwrites_manifest,
    "refused --resume rewrites the run": case_refused_resume_rewrites,
    "checkpoint runs code": case_checkpoint_runs_code,
    "50 MB text field": case_huge_text,
    "2 GiB file listed as image": case_huge_non_image,
    "server: 8 big uploads": "server",
    "server: 200 slow clients": "server",
    "report: huge class labels": case_report_huge_labels,
    "manifest with no usable row": case_no_valid_rows,
    "classes too small / train only": case_tiny_classes,
    "--out is a file": case_out_is_file,
    "bad paths and settings": case_bad_arguments,
    "damaged run and index files": case_damaged_run_files,
    "rows lost silently (15-19)": case_manifest_rows,
    "killed fit leaves tmp files": case_stale_model_tmp,
    "re-saved weights change digest": case_deterministic_save,
    "replaced cache shard": case_replaced_shard,
    "two extracts on one cache": case_concurrent_extract,
    "empty query": "server",
}
SERVER_CASES = {
    "server: 8 big uploads": case_server_big_uploads,
    "server: 200 slow clients": case_server_slow_clients,
    "empty query": case_empty_query,
}


def faults_regressions(tmp: Path, manifest: Path, ref: Path, only: str | None) -> None:
    """Every regression case once; each is its own fault kind in the table."""
    env = env_for(tmp)
    run = tmp / "reg-run"
    r = cli(fit_args(manifest, run, ref / "cache"), env)
    assert r.returncode == 0, r.stderr
    r = cli(["index", str(run), "--quiet"], env)
    assert r.returncode == 0, r.stderr
    c = Ctx(tmp, manifest, ref / "feats", ref / "cache", run, env)

    def one(kind: str, fn, *a) -> None:
        if only and only not in kind:
            return
        try:
            ok, note = fn(c, *a)
        except Exception as e:  # a case that crashes the harness is a case not survived
            ok, note = False, f"harness: {type(e).__name__}: {str(e)[:100]}"
        record(kind, 1, int(bool(ok)), note)

    for kind, fn in REGRESSIONS.items():
        if fn != "server":
            one(kind, fn)
    if not only or any(only in k for k in SERVER_CASES):
        server = Server(c)
        try:
            for kind, fn in SERVER_CASES.items():
                one(kind, fn, server)
        finally:
            server.close()


def main() -> None:
    global SRC
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3, help="faults per kind for the CLI kinds")
    ap.add_argument("--n-cheap", type=int, default=30, help="corrupt shard/checkpoint/index")
    ap.add_argument("--n-fuzz", type=int, default=300, help="manifests, images, requests")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--kinds",
        choices=["all", "classic", "regressions"],
        default="all",
        help="classic: kills, corruption, fuzzing; regressions: the second round's cases",
    )
    ap.add_argument("--only", default=None, help="run only regression cases whose name has this")
    ap.add_argument("--src", type=Path, default=None, help="source tree to test (default ./src)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    if args.src is not None:
        SRC = args.src.resolve()
        sys.path.insert(0, str(SRC))
    rng = random.Random(args.seed)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="huse-faults-"))
    t0 = time.perf_counter()
    try:
        manifest = subset(tmp)
        ref = tmp / "ref"
        r = cli(extract_args(manifest, ref / "feats", ref / "cache"), env_for(ref))
        assert r.returncode == 0, r.stderr
        print(f"features ready ({time.perf_counter() - t0:.0f}s)", flush=True)
        if args.kinds in ("all", "classic"):
            ref_run = tmp / "ref-run"
            r = cli(train_args(ref / "feats", ref_run), env_for(tmp))
            assert r.returncode == 0, r.stderr
            faults_extract(tmp, manifest, ref, args.n, rng)
            faults_train(tmp, ref / "feats", ref_run, args.n, rng)
            faults_shard(tmp, manifest, ref, args.n_cheap, rng)
            faults_checkpoint(tmp, ref / "feats", args.n_cheap, rng)
            faults_index(tmp, args.n_cheap, rng)
            faults_manifest(tmp, args.n_fuzz, rng)
            faults_image(args.n_fuzz, rng)
            faults_server(tmp, ref_run, manifest, args.n_fuzz, rng)
        if args.kinds in ("all", "regressions"):
            faults_regressions(tmp, manifest, ref, args.only)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{time.perf_counter() - t0:.0f}s in all (seed {args.seed}, source {SRC})\n")
    print("| kind | injected | survived with nothing lost | notes |")
    print("|---|---:|---:|---|")
    for kind, inj, ok, note in RESULTS:
        print(f"| {kind} | {inj} | {ok} | {note} |")
    total, ok = sum(r[1] for r in RESULTS), sum(r[2] for r in RESULTS)
    print(f"\n{ok} of {total} faults survived with nothing lost")


if __name__ == "__main__":
    main()
