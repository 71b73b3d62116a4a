"""Large catalogues: Flat against HNSW and IVF indexes, and evaluation's peak memory.

On synthetic 512-d vectors shaped like embeddings (a Gaussian mixture of ``--clusters``
centres, variation along a 32-dim subspace plus a little isotropic noise, L2-normalised), for each catalogue size in ``--sizes``:

- every index type that ``huse index --factory`` offers, built by huse's own code
  (``huse.index``: its factory strings, training sample and default search parameters):
  build time, index size (``faiss.serialize_index``, what ``huse index`` writes per
  modality), the growth of the resident set while building, queries per second (a batch
  of ``--queries`` queries, k = 10), the median time of one single query (what a web
  request asks) and recall@10 against exact Flat search;
- a sweep of the search-time knob (HNSW efSearch, IVF nprobe): the recall/speed trade-off.

Then evaluation's peak memory: ``huse.evaluate.space_metrics`` over ``--eval-size``
synthetic items (image and text embeddings, 100 classes under 10 parents) in a fresh
process, peak resident set from ``getrusage`` beside the memory of the embeddings alone.

    python benchmarks/scale.py --sizes 100000 --threads 1
    python benchmarks/scale.py --sizes 100000 1000000 --types flat hnsw ivfpq --queries 1000
    python benchmarks/scale.py --sizes 0 --eval-size 100000      # evaluation only

Results print as a Markdown table and go to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
K = 10


def rss_bytes() -> int:
    """Current resident set of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def mixture(n: int, d: int, clusters: int, seed: int, rank: int = 32) -> np.ndarray:
    """``n`` unit vectors shaped like embeddings: ``clusters`` unit centres, variation
    within a cluster along a shared ``rank``-dim subspace (norm ~0.6) and a little
    isotropic noise (norm ~0.15). Centres and subspace depend on ``d`` only, so queries
    (another ``seed``) come from the catalogue's distribution. Built in blocks."""
    fixed = np.random.default_rng(12345)
    centres = fixed.normal(size=(clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = (fixed.normal(size=(rank, d)) / np.sqrt(d * rank)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        x = centres[rng.integers(0, clusters, m)]
        x += 0.6 * rng.standard_normal((m, rank), dtype=np.float32) @ basis
        x += (0.15 / np.sqrt(d)) * rng.standard_normal((m, d), dtype=np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def timed_search(index, q: np.ndarray, repeat: int = 1) -> tuple[float, np.ndarray]:
    """Queries per second (best of ``repeat``) and the top-k ids."""
    best, ids = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        _, ids = index.search(q, K)
        best = min(best, time.perf_counter() - t0)
    return len(q) / best, ids


def latency_ms(index, q: np.ndarray) -> float:
    """Median milliseconds of a single-query search (what one web request asks)."""
    times = []
    for row in q:
        t0 = time.perf_counter()
        index.search(row[None, :], K)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth))
    return hits / truth.size


SWEEPS = {
    "HNSW": ("efSearch", (32, 64, 128, 256)),
    "IVF": ("nprobe", (8, 16, 32, 64, 128, 256)),
}


def bench_size(n: int, args) -> list[dict]:
    import faiss

    from huse.index import (
        IndexConfig,
        _apply_search_params,
        _build_one,
        default_search_params,
        resolve_factory,
    )

    d = args.dim
    t0 = time.perf_counter()
    x = mixture(n, d, args.clusters, seed=1)
    q = mixture(args.queries, d, args.clusters, seed=2)
    print(f"\n{n:,} vectors × {d}: generated in {time.perf_counter() - t0:.1f}s", flush=True)
    rows, truth = [], None
    if "flat" not in [t.lower() for t in args.types]:  # recall needs the exact answers
        exact = faiss.IndexFlatIP(d)
        exact.add(x)
        _, truth = exact.search(q, K)
        del exact
    for name in args.types:
        factory = resolve_factory(name, n, d)
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        index = _build_one(x, factory, IndexConfig(factory=factory, train_size=args.train_size))
        build = time.perf_counter() - t0
        grew = rss_bytes() - rss0
        size = faiss.serialize_index(index).nbytes
        params = default_search_params(factory)
        _apply_search_params(index, params)
        qps, ids = timed_search(index, q, repeat=1 if factory == "Flat" else 2)
        lat = latency_ms(index, q[: args.latency_queries])
        if factory == "Flat":
            truth = ids
        rec = recall_at_k(ids, truth) if truth is not None else None
        row = {
            "n": n,
            "type": name,
            "factory": factory,
            "build_s": round(build, 1),
            "index_bytes": int(size),
            "rss_growth_bytes": int(grew),
            "search_params": params,
            "qps": round(qps, 1),
            "latency_ms": round(lat, 2),
            "recall@10": None if rec is None else round(rec, 4),
            "sweep": [],
        }
        head = factory.split(",")[0]
        knob = next((v for k, v in SWEEPS.items() if head.startswith(k)), None)
        if knob is not None and truth is not None:
            name_, values = knob
            nlist = (
                getattr(faiss.extract_index_ivf(index), "nlist", None)
                if name_ == "nprobe"
                else None
            )
            for v in values:
                if nlist is not None and v > nlist:
                    continue
                _apply_search_params(index, f"{name_}={v}")
                s_qps, s_ids = timed_search(index, q, repeat=2)
                row["sweep"].append(
                    {
                        name_: v,
                        "qps": round(s_qps, 1),
                        "recall@10": round(recall_at_k(s_ids, truth), 4),
                    }
                )
        print(
            f"  {name:8s} {factory:16s} build {build:7.1f}s  size {size / 2**20:8.1f} MiB  "
            f"rss +{grew / 2**20:7.1f} MiB  {qps:9.1f} q/s  1 query {lat:6.2f} ms  recall@10 {row['recall@10']}  "
            f"[{params}]",
            flush=True,
        )
        for s in row["sweep"]:
            print(f"      {s}", flush=True)
        rows.append(row)
        del index
    return rows


def eval_child(n: int, d: int, directions: list[str]) -> None:
    """Runs in its own process: peak memory of huse's evaluation on n synthetic items."""
    from huse.data.hierarchy import Hierarchy
    from huse.evaluate import chunk_rows, space_metrics

    classes = [f"p{p}<c{p}{c}" for p in range(10) for c in range(10)]
    h = Hierarchy(classes)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(classes), n)
    cent = mixture(len(classes), d, len(classes), seed=3)
    img = mixture(n, d, 1000, seed=4)
    img = img * 0.5 + cent[labels]
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt = mixture(n, d, 1000, seed=5) * 0.5 + cent[labels]
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    base = rss_bytes()
    t0 = time.perf_counter()
    r, hp, _ = space_metrics(img, txt, labels, h, directions=tuple(directions))
    secs = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "n": n,
                "dim": d,
                "directions": directions,
                "chunk_rows": chunk_rows(n),
                "seconds": round(secs, 1),
                "embeddings_bytes": int(img.nbytes + txt.nbytes),
                "rss_before_bytes": int(base),
                "peak_rss_bytes": int(peak_rss_bytes()),
                "R@1": {k: v["R@1"] for k, v in r.items() if v["R@1"] is not None},
            }
        )
    )


def bench_eval(n: int, args) -> dict:
    env = dict(
        os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads)
    )
    cmd = [sys.executable, __file__, "--eval-child", str(n), "--dim", str(args.dim)]
    cmd += ["--eval-directions", *args.eval_directions]
    print(f"\nevaluation of {n:,} items ({', '.join(args.eval_directions)}) ...", flush=True)
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    print(
        f"  {res['seconds']}s, chunk {res['chunk_rows']} rows, peak RSS "
        f"{res['peak_rss_bytes'] / 2**20:.0f} MiB (embeddings {res['embeddings_bytes'] / 2**20:.0f} MiB,"
        f" before scoring {res['rss_before_bytes'] / 2**20:.0f} MiB)",
        flush=True,
    )
    return res


def table(rows: list[dict]) -> str:
    lines = [
        "| items | type | factory | build | index size | queries/s (batch) | 1 query | "
        "recall@10 | search params |",
        "|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        rec = "—" if r["recall@10"] is None else f"{r['recall@10']:.3f}"
        lines.append(
            f"| {r['n']:,} | {r['type']} | `{r['factory']}` | {r['build_s']:.1f} s | "
            f"{r['index_bytes'] / 2**20:,.0f} MiB | {r['qps']:,.0f} | "
            f"{r['latency_ms']:.2f} ms | {rec} | "
            f"{r['search_params'] or '—'} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--types", nargs="+", default=["flat", "hnsw", "ivfflat", "ivfpq"])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--latency-queries", type=int, default=50, help="single-query timings")
    ap.add_argument("--train-size", type=int, default=100_000, help="IVF/PQ training sample")
    ap.add_argument("--threads", type=int, default=1, help="FAISS/BLAS threads")
    ap.add_argument("--eval-size", type=int, default=100_000, help="0: skip the evaluation run")
    ap.add_argument("--eval-directions", nargs="+", default=["i2t"])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "scale.json"))
    ap.add_argument("--eval-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.eval_child is not None:
        eval_child(args.eval_child, args.dim, args.eval_directions)
        return

    import faiss

    faiss.omp_set_num_threads(args.threads)
    print(f"FAISS {faiss.__version__}, {args.threads} thread(s), {os.cpu_count()} cores")
    rows = []
    for n in (s for s in args.sizes if s > 0):
        rows += bench_size(n, args)
    ev = bench_eval(args.eval_size, args) if args.eval_size else None
    print("\n" + table(rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"indexes": rows, "evaluation": ev}, indent=2))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
