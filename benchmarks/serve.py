"""Load test of ``huse serve``: concurrent searches from this process over loopback.

Either point it at a running server (``--url``) or let it start one on a free loopback
port (``--run RUN``). Text queries are the catalogue's class names; image queries are the
catalogue's own thumbnails, fetched through the API and uploaded back as multipart forms.
The load is bounded by both a request count and a time limit.

    python benchmarks/serve.py --run runs/demo --requests 400 --concurrency 8
    python benchmarks/serve.py --url http://127.0.0.1:8000 --kind image

Prints requests/s, latency percentiles and the error count; exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


class Client:
    """One keep-alive HTTP/1.1 connection (one per worker thread)."""

    def __init__(self, url: str, timeout: float) -> None:
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.timeout = u.hostname, u.port or 80, timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None  # the server closed an idle keep-alive: reconnect once
                if attempt:
                    raise
        raise AssertionError("unreachable")


def json_search(payload: dict) -> tuple[bytes, dict]:
    return json.dumps(payload).encode(), {"Content-Type": "application/json"}


def multipart_search(image: bytes, k: int, modality: str) -> tuple[bytes, dict]:
    b = uuid.uuid4().hex
    parts = [
        f'--{b}\r\nContent-Disposition: form-data; name="k"\r\n\r\n{k}\r\n'.encode(),
        f'--{b}\r\nContent-Disposition: form-data; name="modality"\r\n\r\n{modality}\r\n'.encode(),
        f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="q.webp"\r\n'
        "Content-Type: image/webp\r\n\r\n".encode()
        + image
        + b"\r\n",
        f"--{b}--\r\n".encode(),
    ]
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={b}"}


def prepare_queries(url: str, kind: str, k: int, n_images: int) -> list[tuple[str, bytes, dict]]:
    c = Client(url, 30)
    status, body = c.request("GET", "/api/info")
    if status != 200:
        sys.exit(f"GET /api/info answered {status}: is {url} a huse server?")
    info = json.loads(body)
    words = info.get("examples") or ["picture"]
    queries = []
    if kind in ("text", "mixed"):
        for i, w in enumerate(words):
            modality = ("image", "text", "both")[i % 3]
            queries.append(("text", *json_search({"text": w, "k": k, "modality": modality})))
    if kind in ("image", "mixed"):
        body, headers = json_search({"text": words[0], "k": n_images, "modality": "both"})
        status, res = c.request("POST", "/api/search", body, headers)
        for hit in json.loads(res)["results"]:
            status, img = c.request("GET", hit["thumbnail"])
            if status == 200:
                queries.append(("image", *multipart_search(img, k, "image")))
    return queries


def run_load(url, queries, total, concurrency, duration, timeout):
    latencies: list[tuple[str, float, bool]] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(total))
    deadline = time.perf_counter() + duration
    local = threading.local()

    def worker() -> None:
        local.client = Client(url, timeout)
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            kind, body, headers = queries[i % len(queries)]
            t0 = time.perf_counter()
            try:
                status, resp = local.client.request("POST", "/api/search", body, headers)
                ok = status == 200 and bool(json.loads(resp)["results"])
                why = None if ok else f"{status}: {resp[:200]!r}"
            except (OSError, http.client.HTTPException, ValueError) as e:
                ok, why = False, repr(e)
                local.client = Client(url, timeout)
            dt = time.perf_counter() - t0
            with lock:
                latencies.append((kind, dt, ok))
                if why:
                    errors.append(why)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    return latencies, errors, time.perf_counter() - t0


def summarise(latencies, errors, elapsed, args) -> dict:
    ms = np.array([d for _, d, _ in latencies]) * 1000
    out = {
        "requests": len(latencies),
        "errors": len(errors),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        "concurrency": args.concurrency,
        "kind": args.kind,
        "k": args.k,
    }
    if len(ms):
        out |= {f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 90, 99)}
        out["max_ms"] = round(float(ms.max()), 1)
    for kind in sorted({k for k, _, _ in latencies}):
        d = np.array([x for k, x, _ in latencies if k == kind]) * 1000
        out[f"{kind}_p50_ms"] = round(float(np.percentile(d, 50)), 1)
        out[f"{kind}_requests"] = len(d)
    if errors:
        out["first_errors"] = errors[:5]
    return out


def start_server(run: str, timeout: float = 180) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "huse.serve", run, "--port", str(port), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode}:\n{proc.stderr.read()}")
        try:
            if Client(url, 2).request("GET", "/api/health")[0] == 200:
                return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    sys.exit(f"the server did not start within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    src.add_argument("--run", help="a run folder: start `huse serve` on a free loopback port")
    p.add_argument("--requests", type=int, default=400, help="requests to send (default 400)")
    p.add_argument("--duration", type=float, default=60, help="time limit in s (default 60)")
    p.add_argument("--concurrency", type=int, default=8, help="parallel connections")
    p.add_argument("--kind", choices=["text", "image", "mixed"], default="mixed")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--warmup", type=int, default=10, help="unmeasured requests first")
    p.add_argument("--timeout", type=float, default=30, help="per-request timeout in s")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args(argv)

    proc = None
    url = args.url
    if args.run:
        proc, url = start_server(args.run)
    host = urllib.parse.urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(f"refusing to load {host}: this benchmark drives loopback servers only")
    try:
        queries = prepare_queries(url, args.kind, args.k, n_images=12)
        if not queries:
            sys.exit("no queries could be prepared from /api/info and the thumbnails")
        run_load(url, queries, args.warmup, min(args.concurrency, 4), args.duration, args.timeout)
        lat, errors, elapsed = run_load(
            url, queries, args.requests, args.concurrency, args.duration, args.timeout
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=15)
    out = summarise(lat, errors, elapsed, args)
    print(
        f"{out['requests']} requests ({args.kind}, k={args.k}) with {args.concurrency} "
        f"connections in {out['seconds']} s: {out['requests_per_s']} requests/s, "
        f"p50 {out.get('p50_ms')} ms, p90 {out.get('p90_ms')} ms, p99 {out.get('p99_ms')} ms, "
        f"max {out.get('max_ms')} ms, errors {out['errors']}"
    )
    for kind in ("text", "image"):
        if f"{kind}_requests" in out:
            print(f"  {kind}: {out[f'{kind}_requests']} requests, p50 {out[f'{kind}_p50_ms']} ms")
    for e in out.get("first_errors", []):
        print(f"  error: {e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
