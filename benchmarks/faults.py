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

Prints a Markdown table: kind | injected | survived with nothing lost.
"""

from __future__ import annotations

import argparse
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
        PYTHONPATH=str(ROOT / "src"),
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
            epoch = torch.load(found[0], weights_only=False)["epoch"] if found else 0
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
    from huse.index import index_run
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3, help="faults per kind for the CLI kinds")
    ap.add_argument("--n-cheap", type=int, default=30, help="corrupt shard/checkpoint/index")
    ap.add_argument("--n-fuzz", type=int, default=300, help="manifests, images, requests")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="huse-faults-"))
    t0 = time.perf_counter()
    try:
        manifest = subset(tmp)
        ref = tmp / "ref"
        r = cli(extract_args(manifest, ref / "feats", ref / "cache"), env_for(ref))
        assert r.returncode == 0, r.stderr
        ref_run = tmp / "ref-run"
        r = cli(train_args(ref / "feats", ref_run), env_for(tmp))
        assert r.returncode == 0, r.stderr
        print(f"references ready ({time.perf_counter() - t0:.0f}s)", flush=True)
        faults_extract(tmp, manifest, ref, args.n, rng)
        faults_train(tmp, ref / "feats", ref_run, args.n, rng)
        faults_shard(tmp, manifest, ref, args.n_cheap, rng)
        faults_checkpoint(tmp, ref / "feats", args.n_cheap, rng)
        faults_index(tmp, args.n_cheap, rng)
        faults_manifest(tmp, args.n_fuzz, rng)
        faults_image(args.n_fuzz, rng)
        faults_server(tmp, ref_run, manifest, args.n_fuzz, rng)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{time.perf_counter() - t0:.0f}s in all (seed {args.seed})\n")
    print("| kind | injected | survived with nothing lost | notes |")
    print("|---|---:|---:|---|")
    for kind, inj, ok, note in RESULTS:
        print(f"| {kind} | {inj} | {ok} | {note} |")


if __name__ == "__main__":
    main()
