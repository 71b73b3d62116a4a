"""Feature extraction per backbone, backend and batch size: items/s and how they compare.

For each backbone named (any registered name or ``hf:<model id or folder>``; by default
efficientnet-lite2 for images and minilm-l6 for texts), each batch size and each variant:

- ``torch-today``: eager torch with decoding in line (``decode_threads=0``), the
  extraction loop as it was before the ONNX backend: the baseline of every ratio;
- ``torch``: eager torch, decoding on threads overlapped with the forward pass;
- ``onnx``: the ONNX export run by ONNX Runtime, decoding on threads (the CPU default);
- ``onnx-procs``: the same with decoding in 2 worker processes (``--workers 2``), to
  measure threads against processes (images only).

Columns: items/s of a full extraction into an empty cache (hashing, decoding and
preprocessing or truncation and tokenising, the forward pass, the shard writes); its ratio
to ``torch-today``; the pure forward throughput of the variant's backend on batches built
beforehand and the pipeline-to-forward ratio (1.0: loading costs nothing); the peak
resident set during the extraction (``VmHWM`` after a reset; both backends' weights are
loaded); and the worst cosine similarity of any item's features against eager torch's.

The variants run interleaved, in one process per backbone, ``--repeat`` times each, best
kept: on a shared machine each variant sees the same load. Texts are hub backbones' only
variant ``torch``/``torch-today`` (they take no backend).

Pictures: the first N (sorted, symlinks skipped) of Debian's openclipart-png, texts their
file names; without that package, the bundled data/openclipart-demo set.

    python benchmarks/extract.py --n 96 --batch-size 32 [--repeat 3]
    python benchmarks/extract.py --image-backbone efficientnet-lite0 --text-backbone
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import resource
import tempfile
import time
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


# variant -> (backend, decode_threads, num_workers)
VARIANTS = {
    "torch-today": ("torch", 0, 0),
    "torch": ("torch", None, 0),
    "onnx": ("onnx", None, 0),
    "onnx-1thread": ("onnx", 1, 0),
    "onnx-inline": ("onnx", 0, 0),
    "onnx-procs": ("onnx", 0, 2),
}


def _bench(
    kind: str,
    name: str,
    paths: list[str],
    texts: list[str],
    batch_sizes: list[int],
    variants: list[str],
    repeat: int,
    queue,
) -> None:
    import numpy as np
    import torch

    from huse.backbones import get_backbone
    from huse.backbones.base import load_pixels
    from huse.backbones.runtime import cosines
    from huse.data.images import load_image
    from huse.features import FeatureStore, extract_images, extract_texts

    if kind == "text":
        # Decoding threads and processes are for pictures: texts are tokenised one batch ahead.
        variants = [v for v in variants if v not in ("onnx-1thread", "onnx-inline", "onnx-procs")]
    if name.startswith("hf:"):
        variants = [v for v in variants if VARIANTS[v][0] == "torch"]
    export_dir = tempfile.mkdtemp(prefix="huse-bench-onnx-")
    backbones = {}
    build_s = {}
    for backend in sorted({VARIANTS[v][0] for v in variants}):
        opts = {} if name.startswith("hf:") else {"backend": backend, "export_dir": export_dir}
        bb = get_backbone(name, kind, **opts)
        t0 = time.perf_counter()
        # Weights loaded, the export built and checked, one forward pass done: untimed.
        if kind == "image":
            bb.forward(load_pixels(bb, paths[0])[None])
        else:
            bb.forward([bb.prepare(texts[0])])
        build_s[backend] = time.perf_counter() - t0
        backbones[backend] = bb
    n = len(paths) if kind == "image" else len(texts)
    can_reset = _reset_peak()

    def extract(variant: str, bs: int) -> tuple[float, float, np.ndarray, float]:
        backend, threads, workers = VARIANTS[variant]
        bb = backbones[backend]
        with tempfile.TemporaryDirectory() as cache:
            store = FeatureStore(cache, bb.version)
            _reset_peak()
            t0, c0 = time.perf_counter(), time.process_time()
            if kind == "image":
                feats, errors = extract_images(
                    paths,
                    bb,
                    store,
                    batch_size=bs,
                    num_workers=workers,
                    decode_threads=threads,
                    progress=False,
                )
                feats = np.delete(feats, sorted(errors), axis=0)
            else:
                feats = extract_texts(texts, bb, store, batch_size=bs, progress=False)
            return time.perf_counter() - t0, time.process_time() - c0, feats, _peak_mb()

    # Batches built beforehand for the pure forward pass (the same for both backends).
    if kind == "image":
        ref_bb = next(iter(backbones.values()))
        xs = [load_pixels(ref_bb, p) for p in paths]
    else:
        prepared = sorted((next(iter(backbones.values())).prepare(t) for t in texts), key=len)

    def forward(backend: str, bs: int) -> tuple[float, float]:
        bb = backbones[backend]
        if kind == "image":
            batches = [torch.stack(xs[s : s + bs]) for s in range(0, n, bs)]
        else:
            batches = [prepared[s : s + bs] for s in range(0, n, bs)]
        t0, c0 = time.perf_counter(), time.process_time()
        for b in batches:
            bb.forward(b)
        return time.perf_counter() - t0, time.process_time() - c0

    # Decoding and preprocessing alone, one thread, CPU time per picture: the path in use
    # (the backbone's ``load``) and the one before it (``load_image``: a resize to 1024 px
    # and a full-size composite, then the fit's resize), best of ``repeat``.
    decode_ms: dict[str, float] = {}
    if kind == "image":
        ref_bb = next(iter(backbones.values()))
        for label, one in (
            ("before", lambda p: ref_bb.preprocess(load_image(p))),
            ("now", lambda p: load_pixels(ref_bb, p)),
        ):
            best_s = float("inf")
            for _ in range(repeat):
                c0 = time.process_time()
                for p in paths:
                    one(p)
                best_s = min(best_s, time.process_time() - c0)
            decode_ms[label] = 1000 * best_s / n

    rows = []
    for bs in batch_sizes:
        best: dict[str, dict] = {}
        fwd: dict[str, float] = {}
        fwd_cpu: dict[str, float] = {}
        for _ in range(repeat):
            for v in variants:  # interleaved: each variant sees the same load
                secs, cpu, feats, peak = extract(v, bs)
                r = best.setdefault(v, {"s": secs, "cpu": cpu, "feats": feats, "peak": peak})
                r["s"], r["cpu"] = min(r["s"], secs), min(r["cpu"], cpu)
                r["peak"] = max(r["peak"], peak)
            for backend in backbones:
                secs, cpu = forward(backend, bs)
                fwd[backend] = min(fwd.get(backend, secs), secs)
                fwd_cpu[backend] = min(fwd_cpu.get(backend, cpu), cpu)
        ref = best[variants[0]]["feats"]
        base = n / best[variants[0]]["s"]
        for v in variants:
            backend, threads, _ = VARIANTS[v]
            ips = n / best[v]["s"]
            rows.append(
                {
                    "backbone": name,
                    "kind": kind,
                    "variant": v,
                    "batch": bs,
                    "n": n,
                    "items_s": ips,
                    "vs_eager": ips / base,
                    "forward_s": n / fwd[backend],
                    "pipe_fwd": ips / (n / fwd[backend]),
                    "peak_mb": best[v]["peak"] if can_reset else None,
                    "worst_cos": float(cosines(best[v]["feats"], ref).min()),
                    "build_s": build_s[backend],
                    "cpu_ms": 1000 * best[v]["cpu"] / n,
                    "fwd_cpu_ms": 1000 * fwd_cpu[backend] / n,
                    # With decoding and the forward pass sharing every core, pipe/fwd can
                    # reach at most forward CPU ÷ (forward CPU + decoding CPU).
                    "pipe_bound": (
                        fwd_cpu[backend] / (fwd_cpu[backend] + decode_ms["now"] * n / 1000)
                        if decode_ms and threads != 0
                        else None
                    ),
                }
            )
    queue.put({"rows": rows, "threads": torch.get_num_threads(), "decode_ms": decode_ms})


def run(kind, name, paths, texts, batch_sizes, variants, repeat) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(
        target=_bench, args=(kind, name, paths, texts, batch_sizes, variants, repeat, q)
    )
    p.start()
    res = q.get()
    p.join()
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=96, help="items per backbone (default 96)")
    ap.add_argument(
        "--batch-size", type=int, nargs="+", default=[32], help="batch sizes (default 32)"
    )
    ap.add_argument("--repeat", type=int, default=3, help="timed runs, best kept (default 3)")
    ap.add_argument(
        "--variant",
        nargs="+",
        default=list(VARIANTS),
        choices=list(VARIANTS),
        help="what to compare (the first is the baseline of the ratios)",
    )
    ap.add_argument(
        "--image-backbone", nargs="*", default=["efficientnet-lite2"], help="image backbones"
    )
    ap.add_argument("--text-backbone", nargs="*", default=["minilm-l6"], help="text backbones")
    args = ap.parse_args(argv)
    paths, texts, source = real_items(args.n)
    print(f"{len(paths)} pictures and their names as texts from {source}")
    jobs = [("image", b) for b in args.image_backbone] + [("text", b) for b in args.text_backbone]
    results = [
        run(kind, b, paths, texts, args.batch_size, args.variant, args.repeat) for kind, b in jobs
    ]
    print(
        f"torch threads: {results[0]['threads']}; best of {args.repeat} interleaved runs; "
        f"ratios against {args.variant[0]}"
    )
    head = (
        f"{'backbone':<20}{'variant':<13}{'batch':>6}{'items/s':>9}{'x eager':>9}"
        f"{'fwd/s':>8}{'pipe/fwd':>10}{'peak RSS':>10}{'1-worst cos':>12}{'load s':>8}"
        f"{'cpu ms/item':>13}{'fwd':>6}{'bound':>7}"
    )
    print(head)
    print("-" * len(head))
    for res in results:
        for r in res["rows"]:
            peak = f"{r['peak_mb']:.0f} MB" if r["peak_mb"] else "n/a"
            print(
                f"{r['backbone']:<20}{r['variant']:<13}{r['batch']:>6}{r['items_s']:>9.1f}"
                f"{r['vs_eager']:>9.2f}{r['forward_s']:>8.1f}{r['pipe_fwd']:>10.2f}"
                f"{peak:>10}{1 - r['worst_cos']:>12.1e}{r['build_s']:>8.1f}"
                f"{r['cpu_ms']:>13.1f}{r['fwd_cpu_ms']:>6.1f}"
                + (f"{r['pipe_bound']:>7.2f}" if r["pipe_bound"] else f"{'':>7}")
            )
        if res["decode_ms"]:
            d = res["decode_ms"]
            print(
                f"{res['rows'][0]['backbone']}: decoding and preprocessing, one thread, CPU "
                f"per picture: {d['now']:.2f} ms now (load_image_for, one resize), "
                f"{d['before']:.2f} ms before (load_image: to 1024 px, composite, resize): "
                f"{d['before'] / d['now']:.2f}x"
            )
    print(
        "items/s: a full extraction into an empty cache; x eager: its ratio to the first "
        "variant; fwd/s: the backend's forward pass alone on pre-built batches; pipe/fwd: "
        "items/s ÷ fwd/s; peak RSS: the process's peak resident set during the extraction "
        "(both backends loaded); 1-worst cos: 1 minus the lowest cosine similarity "
        "of an item's features to the first variant's (0: identical); load s: loading the weights and (onnx) building "
        "and checking the export, once, untimed above; cpu ms/item: process CPU time (all "
        "threads) per item of the extraction and of the forward pass alone (robust to other "
        "load on the machine); bound: the highest pipe/fwd possible when decoding and the "
        "forward pass share every core, forward CPU ÷ (forward CPU + decoding CPU)."
    )


if __name__ == "__main__":
    main()
