"""How much of feature extraction is the backbone, and how much is loading around it.

For each backbone named (any registered name or ``hf:<model id or folder>``; by default
efficientnet-lite2 for images and minilm-l6 for texts), at one batch size:

- extraction: ``huse.features.extract_images`` / ``extract_texts`` into a fresh, empty
  cache: hashing, decoding and preprocessing (images) or salient truncation and
  tokenising (texts), the forward pass and the shard writes;
- forward: the forward pass alone on batches built beforehand (preprocessed tensors;
  prepared texts in the same length-sorted order that extraction uses, tokenised by the
  backbone's own ``forward``);
- their ratio (forward items/s ÷ extraction items/s): 1.0 means loading costs nothing;
- peak memory of each phase: resident set (``VmHWM``, reset between phases where the
  kernel allows, else ``ru_maxrss``) and the peak of Python/numpy allocations
  (tracemalloc, measured in an extra, untimed extraction run).

Each backbone runs in its own process, so one's memory does not hide in the other's peak.
Pictures: the first N (sorted, symlinks skipped) of Debian's openclipart-png, texts their
file names; without that package, the bundled data/openclipart-demo set.

    python benchmarks/extract.py --n 96 --batch-size 32 [--repeat 2]
    python benchmarks/extract.py --image-backbone efficientnet-lite0 efficientnet-lite2 \
        hf:/models/clip-vit-base-patch32 --text-backbone minilm-l6
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

OPENCLIPART = Path("/usr/share/openclipart/png")
DEMO = Path(__file__).resolve().parents[1] / "data" / "openclipart-demo" / "manifest.csv"


def real_items(n: int) -> tuple[list[str], list[str], str]:
    """N (image path, text) pairs, deterministic, and where they came from."""
    if OPENCLIPART.is_dir():
        files = [p for p in sorted(OPENCLIPART.rglob("*.png")) if not p.is_symlink()][:n]
        return [str(p) for p in files], [p.stem.replace("_", " ") for p in files], str(OPENCLIPART)
    if DEMO.exists():
        with open(DEMO, newline="", encoding="utf-8") as f:
            rows = sorted(csv.DictReader(f), key=lambda r: r["id"])[:n]
        return [str(DEMO.parent / r["image"]) for r in rows], [r["text"] for r in rows], str(DEMO)
    raise SystemExit("no pictures: install openclipart-png or build data/openclipart-demo")


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ≥ 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    hwm = _status_kb("VmHWM")
    kb = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


def _rss_mb() -> float:
    rss = _status_kb("VmRSS")
    return (rss or 0) / 1024


def _bench(
    kind: str, name: str, paths: list[str], texts: list[str], batch_size: int, repeat: int, queue
) -> None:
    import torch

    from huse.backbones import get_backbone
    from huse.data.images import load_image
    from huse.features import ExtractStats, FeatureStore, extract_images, extract_texts

    bb = get_backbone(name, kind)
    n = len(paths) if kind == "image" else len(texts)

    # Warm up: weights loaded and one small forward pass done before any clock starts.
    if kind == "image":
        bb.forward(bb.preprocess(load_image(paths[0]))[None])
    else:
        bb.forward([bb.prepare(texts[0])])
    res: dict = {"backbone": name, "kind": kind, "n": n, "batch_size": batch_size}
    res["rss_loaded_mb"] = _rss_mb()
    can_reset = _reset_peak()

    def extract(cache: str) -> ExtractStats:
        stats = ExtractStats()
        store = FeatureStore(cache, bb.version)
        if kind == "image":
            _, errors = extract_images(
                paths, bb, store, batch_size=batch_size, progress=False, stats=stats
            )
            res["failed"] = len(errors)
        else:
            extract_texts(texts, bb, store, batch_size=batch_size, progress=False, stats=stats)
        return stats

    # Best of ``repeat`` runs, each into a fresh empty cache: the machine may be shared.
    # CPU seconds too: on a busy machine they move much less than wall time.
    times, cpus = [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as cache:
            t0, c0 = time.perf_counter(), time.process_time()
            stats = extract(cache)
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    res["extract_s"], res["extract_cpu"] = min(times), min(cpus)
    res["computed"] = stats.images_computed if kind == "image" else stats.texts_computed
    res["extract_peak_mb"] = _peak_mb()

    # Batches built beforehand; this (untimed) step is what extraction adds.
    t0 = time.perf_counter()
    if kind == "image":
        xs = [bb.preprocess(load_image(p)) for p in paths]
        batches = [torch.stack(xs[s : s + batch_size]) for s in range(0, n, batch_size)]
    else:
        prepared = sorted((bb.prepare(t) for t in texts), key=len)
        batches = [prepared[s : s + batch_size] for s in range(0, n, batch_size)]
    res["prepare_s"] = time.perf_counter() - t0

    _reset_peak()
    times, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            for b in batches:
                bb.forward(b)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    res["forward_s"], res["forward_cpu"] = min(times), min(cpus)
    res["forward_peak_mb"] = _peak_mb() if can_reset else None

    # Python/numpy allocations during a whole extraction (tracemalloc slows it: untimed).
    del batches
    with tempfile.TemporaryDirectory() as cache:
        tracemalloc.start()
        extract(cache)
        res["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    res["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["peak_reset"] = can_reset
    res["threads"] = torch.get_num_threads()
    queue.put(res)


def run(
    kind: str, name: str, paths: list[str], texts: list[str], batch_size: int, repeat: int
) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_bench, args=(kind, name, paths, texts, batch_size, repeat, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=96, help="items per backbone (default 96)")
    ap.add_argument("--batch-size", type=int, default=32, help="backbone batch size (default 32)")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs, best kept (default 2)")
    ap.add_argument(
        "--image-backbone", nargs="*", default=["efficientnet-lite2"], help="image backbones"
    )
    ap.add_argument("--text-backbone", nargs="*", default=["minilm-l6"], help="text backbones")
    args = ap.parse_args(argv)
    paths, texts, source = real_items(args.n)
    print(
        f"{len(paths)} pictures and their names as texts from {source}; "
        f"batch size {args.batch_size}"
    )
    jobs = [("image", b) for b in args.image_backbone] + [("text", b) for b in args.text_backbone]
    rows = [run(kind, b, paths, texts, args.batch_size, args.repeat) for kind, b in jobs]
    print(f"torch threads: {rows[0]['threads']}; best of {args.repeat} timed runs")
    head = (
        f"{'backbone':<20}{'items':>6}{'extract/s':>11}{'forward/s':>11}{'ratio':>7}"
        f"{'prep s':>8}{'RSS model':>11}{'peak extract':>14}{'peak fwd':>10}"
        f"{'tracemalloc':>13}{'cpu ms/item ext':>17}{'fwd':>6}{'ratio':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        ext = r["n"] / r["extract_s"]
        fwd = r["n"] / r["forward_s"]
        fwd_peak = f"{r['forward_peak_mb']:.0f} MB" if r["forward_peak_mb"] else "n/a"
        print(
            f"{r['backbone']:<20}{r['n']:>6}{ext:>11.1f}{fwd:>11.1f}{fwd / ext:>7.2f}"
            f"{r['prepare_s']:>8.2f}{r['rss_loaded_mb']:>8.0f} MB{r['extract_peak_mb']:>11.0f} MB"
            f"{fwd_peak:>10}{r['tracemalloc_peak_mb']:>10.1f} MB"
            f"{1000 * r['extract_cpu'] / r['n']:>17.0f}{1000 * r['forward_cpu'] / r['n']:>6.0f}"
            f"{r['extract_cpu'] / r['forward_cpu']:>7.2f}"
        )
    for r in rows:
        if r.get("failed"):
            print(f"{r['backbone']}: {r['failed']} pictures could not be decoded")
    print(
        "extract/s: items/s of a full extraction into an empty cache; forward/s: the forward "
        "pass alone on pre-built batches; ratio = forward/s ÷ extract/s. prep s: seconds to "
        "decode+preprocess (images) or truncate+tokenise (texts) all items outside the "
        "forward pass. RSS model: resident set after loading the backbone; peak extract / "
        "peak fwd: peak resident set during each phase"
        + ("" if rows[0]["peak_reset"] else " (process peak: reset not allowed)")
        + "; tracemalloc: peak Python/numpy allocations of one extraction; cpu ms/item: "
        "process CPU time (all threads) per item of extraction and of the forward pass, "
        "and their ratio (robust to other load on the machine; excludes I/O waits)."
    )


if __name__ == "__main__":
    main()
