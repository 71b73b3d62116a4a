"""The real server (uvicorn on a loopback port) under concurrent load: a seeded mix of good
and bad requests. Every good request gets the right answer, every bad one a 4xx, none a
5xx, and the process's memory does not grow over the run.

Traffic goes to 127.0.0.1 only, in a bounded number of requests (``ROUNDS × PER_ROUND``)
with a bounded thread pool; the server stops when the test ends.
"""

from __future__ import annotations

import io
import json
import os
import random
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from huse.data.images import load_image  # noqa: E402

PER_ROUND = 150  # requests per round
ROUNDS = 3  # the first is the warm-up; memory is compared between its end and the last's
WORKERS = 8
# Allowed RSS growth after the warm-up. Generous: the allocator keeps freed pages and the
# client threads live in this process too. A leak of one decoded upload per request
# (~100 kB each, 300 requests) would pass 30 MB; a leak of request bodies would pass it
# many times over.
MAX_RSS_GROWTH_MB = 50


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status: cannot measure memory")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def header_only_png(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def live_server(fake_searcher):
    from huse.serve import Limits, create_app
    from huse.serve.app import LOOPBACK_HOSTS

    limits = Limits(max_upload_bytes=2 * 1024 * 1024, max_pixels=4_000_000)
    app = create_app(fake_searcher, limits, allowed_hosts=list(LOOPBACK_HOSTS))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def expected_ids(fake_searcher, kind: str, query, k: int, modality: str) -> list[str]:
    if kind == "text":
        hits = fake_searcher.search_text(query, k, modality)
    else:
        hits = fake_searcher.search_image(load_image(query), k, modality)
    return [h.id for h in hits]


def make_requests(fake_searcher, n: int, seed: int) -> list[dict]:
    """A seeded mix: about half good (text, upload, item, thumbnail), half bad."""
    rng = random.Random(seed)
    items = fake_searcher.index.items
    ids = items["id"].astype(str).tolist()
    texts = items["text"].astype(str).tolist()
    paths = items["image"].astype(str).tolist()
    noise = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), np.uint8))
    png = encoded(noise, "PNG")
    frames = [Image.new("RGB", (16, 16), (40 * i, 0, 0)) for i in range(4)]
    gif = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    cmyk = encoded(noise.convert("CMYK"), "JPEG")
    grey16 = encoded(Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)), "PNG")

    def json_req(body, **kw):
        return {"method": "POST", "url": "/api/search", "json": body, **kw}

    def raw(content: bytes, ctype: str = "application/json"):
        return {
            "method": "POST",
            "url": "/api/search",
            "content": content,
            "headers": {"content-type": ctype},
        }

    def up(data: bytes, name: str = "q.png", **fields):
        return {
            "method": "POST",
            "url": "/api/search",
            "files": {"image": (name, data, "application/octet-stream")},
            "data": {k: str(v) for k, v in fields.items()},
        }

    bad = [
        lambda: up(b""),  # empty
        lambda: up(rng.randbytes(rng.randint(1, 4000))),  # random bytes
        lambda: up(png[: rng.randint(60, len(png) - 10)]),  # truncated PNG
        lambda: up(header_only_png(50_000, 50_000)),  # bomb header
        lambda: up(encoded(noise, "TIFF")),  # a format not accepted
        lambda: up(b"\x00" * (3 * 1024 * 1024)),  # over the upload limit
        lambda: json_req({"text": "x" * 600}),
        lambda: json_req({"text": "   "}),
        lambda: json_req({}),
        lambda: json_req({"text": "a", "item": ids[0]}),
        lambda: json_req({"text": "a", "k": rng.choice([0, -3, 101, 10**9, "many", None])}),
        lambda: json_req({"text": "a", "modality": "audio"}),
        lambda: json_req({"text": "a", "path": "/etc/passwd"}),
        lambda: json_req(["text"]),
        lambda: json_req({"item": f"no-such-item-{rng.randint(0, 99)}"}),
        lambda: raw(b"{not json"),
        lambda: raw(b"[" * 60_000),  # nesting deeper than the parser's recursion limit
        lambda: raw(b'{"text": "\\ud800 lone surrogate"}'),
        lambda: raw(b'{"text": "\xff\xfe bad utf-8"}'),
        lambda: raw(b"text=a", "text/plain"),
        lambda: raw(b"{}" * 40_000),  # over the JSON body limit
        lambda: {"method": "GET", "url": f"/api/thumb/missing-{rng.randint(0, 9)}"},
        lambda: {"method": "GET", "url": "/api/image/..%2F..%2Fetc%2Fpasswd"},
        lambda: {"method": "GET", "url": "/static/../../pyproject.toml"},
        lambda: {"method": "GET", "url": "/api/health", "headers": {"host": "evil.example"}},
    ]
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            out.append({"good": False, **rng.choice(bad)()})
            continue
        k, modality = rng.randint(1, 10), rng.choice(["image", "text", "both"])
        kind = rng.choice(["text", "upload", "upload-odd", "item", "thumb"])
        if kind == "text":
            q = " ".join(rng.choice(texts).split()[: rng.randint(1, 6)]) or "a"
            req = json_req({"text": q, "k": k, "modality": modality})
            exp = expected_ids(fake_searcher, "text", q, k, modality)
        elif kind == "upload":
            row = rng.randrange(len(paths))
            data = Path(paths[row]).read_bytes()
            req = up(data, k=k, modality=modality)
            exp = expected_ids(fake_searcher, "image", data, k, modality)
        elif kind == "upload-odd":  # unusual but valid: animated, CMYK, 16-bit
            data = rng.choice([gif, cmyk, grey16])
            req = up(data, k=k, modality=modality)
            exp = expected_ids(fake_searcher, "image", data, k, modality)
        elif kind == "item":
            row = rng.randrange(len(ids))
            req = json_req({"item": ids[row], "k": k, "modality": modality})
            exp = expected_ids(fake_searcher, "image", paths[row], k, modality)
        else:
            req = {"method": "GET", "url": f"/api/thumb/{ids[rng.randrange(len(ids))]}"}
            exp = None
        out.append({"good": True, "expect": exp, **req})
    return out


def fire(base: str, requests: list[dict]) -> list[tuple[dict, int, object]]:
    local = threading.local()

    def one(req: dict):
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=base, timeout=60)
        kw = {k: v for k, v in req.items() if k not in ("good", "expect", "method", "url")}
        r = local.client.request(req["method"], req["url"], **kw)
        body = (
            r.json() if r.headers.get("content-type", "").startswith("application/json") else None
        )
        return req, r.status_code, body

    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(one, requests))


def check(results) -> tuple[int, int]:
    good = bad = 0
    for req, status, body in results:
        what = f"{req['method']} {req['url']} {str(req.get('json') or req.get('content'))[:80]}"
        assert status < 500, f"{what}: {status} {body}"
        if req["good"]:
            assert status == 200, f"{what}: {status} {body}"
            if req["expect"] is not None:
                assert [r["id"] for r in body["results"]] == req["expect"], what
            good += 1
        else:
            assert 400 <= status < 500, f"{what}: {status} {body}"
            if body is not None:
                assert body.get("detail"), what  # a message, not a bare status
            bad += 1
    return good, bad


def test_mixed_load_good_answers_right_bad_get_4xx_no_memory_growth(live_server, fake_searcher):
    counts = [0, 0]
    rss = []
    for round_ in range(ROUNDS):
        results = fire(live_server, make_requests(fake_searcher, PER_ROUND, seed=round_))
        good, bad = check(results)
        counts[0] += good
        counts[1] += bad
        rss.append(rss_mb())
    assert counts[0] > 100 and counts[1] > 100  # both kinds well represented
    growth = rss[-1] - rss[0]
    print(f"RSS after each round (MB): {[round(x, 1) for x in rss]}; growth {growth:.1f} MB")
    assert growth < MAX_RSS_GROWTH_MB, rss
    # The server still answers normally afterwards.
    r = httpx.get(f"{live_server}/api/health", timeout=10)
    assert r.status_code == 200 and json.loads(r.text)["status"] == "ok"


# -- fuzzed uploads through the app: a 200 or a 4xx, never a 5xx ------------------------
_PNG = encoded(
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)), "PNG"
)
_JPEG = encoded(Image.open(io.BytesIO(_PNG)).convert("RGB"), "JPEG")
_GIF = encoded(
    Image.new("RGB", (8, 8), "red"),
    "GIF",
    save_all=True,
    append_images=[Image.new("RGB", (8, 8), "blue")],
)


@st.composite
def fuzzed_upload(draw) -> bytes:
    data = bytearray(draw(st.sampled_from([_PNG, _JPEG, _GIF])))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data) - 1)) if data else 0
        if draw(st.booleans()) and data:
            data[at] ^= draw(st.integers(1, 255))
        else:
            data = data[:at]
    return bytes(data)


@pytest.fixture(scope="module")
def app_client(fake_searcher):
    from fastapi.testclient import TestClient

    from huse.serve import Limits, create_app

    with TestClient(create_app(fake_searcher, Limits(max_pixels=4_000_000))) as c:
        yield c


@settings(
    max_examples=int(os.environ.get("HUSE_FUZZ_EXAMPLES", "80")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.one_of(fuzzed_upload(), st.binary(max_size=2048)))
def test_fuzzed_uploads_get_200_or_4xx(app_client, data):
    r = app_client.post("/api/search", files={"image": ("f.png", data, "application/octet-stream")})
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.json().get("results") is not None or r.json().get("detail")
