"""The JSON API: searches, thumbnails, and a clear 4xx for every bad request."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

import huse.data.images as images_module
import huse.serve.app as app_module


def image_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_bomb(side: int) -> bytes:
    """A real decompression bomb: a side×side grey PNG of zeros, ~side²/1000 bytes."""
    z = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    data = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def upload(client, data: bytes, name: str = "q.png", **fields):
    return client.post(
        "/api/search",
        files={"image": (name, data, "application/octet-stream")},
        data={k: str(v) for k, v in fields.items()},
    )


def catalogue_picture(fake_searcher, row: int = 3) -> bytes:
    return open(fake_searcher.index.items["image"].iloc[row], "rb").read()


# -- what works --------------------------------------------------------------------------
def test_page_static_and_docs(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="results"' in r.text and "/static/app.js" in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/search"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert body["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
    assert {"/api/thumb/{item_id}", "/api/image/{item_id}", "/api/info"} <= set(spec["paths"])


def test_info(client, fake_searcher):
    info = client.get("/api/info").json()
    assert info["items"] == len(fake_searcher.index) and info["factory"] == "Flat"
    assert info["limits"]["max_upload_bytes"] == 2 * 1024 * 1024
    assert 1 <= len(info["examples"]) <= 8


def test_text_search(client, fake_searcher):
    item = fake_searcher.index.items.iloc[7]
    r = client.post("/api/search", json={"text": item["text"], "k": 4, "modality": "text"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == {"text": item["text"], "k": 4, "modality": "text"}
    res = body["results"]
    assert len(res) == 4 and res[0]["id"] == item["id"]
    assert set(res[0]) == {
        "rank", "id", "image", "thumbnail", "text", "class", "class_path", "score", "modality"
    }  # fmt: skip
    assert res[0]["class"] == item["classes"] and res[0]["class_path"] == item["classes"].split("<")
    assert res[0]["thumbnail"] == f"/api/thumb/{item['id']}"
    assert res[0]["image"] == f"/api/image/{item['id']}"  # a URL, never a server path
    assert all(a["score"] >= b["score"] for a, b in zip(res, res[1:]))
    both = client.post("/api/search", json={"text": "bird", "modality": "both"}).json()
    assert len(both["results"]) == 10 and len({h["id"] for h in both["results"]}) == 10


def test_image_upload_and_item_search(client, fake_searcher):
    items = fake_searcher.index.items
    r = upload(client, catalogue_picture(fake_searcher, 3), k=3, modality="image")
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 3 and res[0]["id"] == items["id"].iloc[3]
    assert res[0]["score"] == pytest.approx(1.0, abs=1e-4)
    r = client.post("/api/search", json={"item": items["id"].iloc[5], "k": 2})
    assert r.status_code == 200 and r.json()["results"][0]["id"] == items["id"].iloc[5]


def test_thumbnails_by_id(client, fake_searcher):
    item_id = fake_searcher.index.items["id"].iloc[0]
    r = client.get(f"/api/thumb/{item_id}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    thumb = Image.open(io.BytesIO(r.content))
    assert max(thumb.size) <= 256
    assert client.get(f"/api/image/{item_id}").status_code == 200
    assert client.get("/api/thumb/no-such-item").status_code == 404


# -- bad uploads: each a 4xx with a message, none a 500 or a hang -------------------------
def _tiff() -> bytes:
    return image_bytes(Image.new("RGB", (8, 8), "red"), "TIFF")


def _truncated_png() -> bytes:
    data = image_bytes(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    )
    return data[: len(data) // 2]


def _header_only_png() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("make", "status", "message"),
    [
        (lambda: b"", 400, "empty file"),
        (lambda: b"just some text, not a picture\n" * 10, 415, "not an image"),
        (
            lambda: b'<svg xmlns="http://www.w3.org/2000/svg"><script>x</script></svg>',
            415,
            "not an image",
        ),
        (_tiff, 415, "unsupported image format TIFF"),
        (lambda: png_bomb(10_000), 413, "decompression bomb"),  # 100 MP from ~100 kB
        (lambda: png_bomb(2_100), 413, "too many pixels"),  # 4.4 MP > the 4 MP limit here
        (_header_only_png, 413, "decompression bomb"),  # 2.5 GP declared
        (_truncated_png, 422, "unusable image"),
        (lambda: b"\x00" * (3 * 1024 * 1024), 413, "too large"),  # over the 2 MiB limit
    ],
    ids=["empty", "text", "svg", "tiff", "bomb", "pixels", "header-only", "truncated", "size"],
)
def test_bad_upload_is_refused_clearly(client, make, status, message):
    data = make()
    t0 = time.perf_counter()
    r = upload(client, data, name="evil.png")
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"json": {"text": "x" * 501}}, 422, "query text too long"),
        ({"json": {"text": "   "}}, 422, "query text is empty"),
        ({"json": {}}, 422, "exactly one query"),
        ({"json": {"text": "a", "item": "b"}}, 422, "exactly one query"),
        ({"json": {"text": "a", "k": 0}}, 422, "k"),
        ({"json": {"text": "a", "k": 101}}, 422, "k must be at most 100"),
        ({"json": {"text": "a", "modality": "audio"}}, 422, "modality"),
        ({"json": {"text": "a", "path": "/etc/passwd"}}, 422, "path"),
        ({"json": ["text"]}, 422, "must be an object"),
        ({"json": {"image": "aGVsbG8="}}, 422, "multipart"),
        (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "not valid JSON",
        ),
        (
            {"content": b"text=a", "headers": {"content-type": "text/plain"}},
            415,
            "application/json",
        ),
        ({"json": {"item": "no-such-item"}}, 404, "no catalogue item"),
        ({"data": {"k": "3"}, "files": {"other": ("a", b"x")}}, 422, "unknown form field"),
    ],
)
def test_bad_query_is_refused_clearly(client, kwargs, status, message):
    r = client.post("/api/search", **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_body_limit_is_enforced_before_reading(client):
    r = client.post(
        "/api/search",
        content=b"{}",
        headers={"content-type": "application/json", "content-length": str(10**9)},
    )
    assert r.status_code == 413 and "too large" in r.json()["detail"]

    def chunks():  # no Content-Length: the cap applies while streaming
        for _ in range(200):
            yield b" " * 1024

    r = client.post("/api/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


# -- no request path reaches the file system ----------------------------------------------
TRAVERSALS = [
    "/api/thumb/../../../../etc/passwd",
    "/api/thumb/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/thumb/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/api/thumb//etc/passwd",
    "/api/thumb/%2Fetc%2Fpasswd",
    "/api/image/....//....//etc/passwd",
    "/api/image/..\\..\\..\\etc\\passwd",
    "/static/../../../../etc/passwd",
    "/static/..%2F..%2F..%2Fpyproject.toml",
    "/static/%2e%2e%2fapp.py",
    "/static/index.html/../../app.py",
]


def raw_get(app, path: str) -> tuple[int, bytes]:
    """Call the ASGI app with the path exactly as given: HTTP clients would normalise the
    dot segments away, a hand-made request does not."""
    import asyncio
    from urllib.parse import unquote

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": unquote(path), "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


def record_opened(monkeypatch) -> list:
    """Every image the app decodes: uploads (its own ``load_image``), thumbnails and
    catalogue images (``huse.data.images.load_image``, behind ``thumbnail_bytes`` and
    ``Searcher.search_item``)."""
    opened = []
    for module in (app_module, images_module):
        real = module.load_image
        monkeypatch.setattr(
            module, "load_image", lambda p, real=real, **kw: opened.append(p) or real(p, **kw)
        )
    return opened


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_attempts_get_404(client, fake_searcher, monkeypatch, path):
    opened = record_opened(monkeypatch)
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code)
    assert "root:" not in r.text and "[project]" not in r.text
    status, body = raw_get(client.app, path)
    assert status == 404, (path, status)
    assert b"root:" not in body and b"[project]" not in body
    assert opened == []


def test_ids_are_looked_up_never_opened(client, fake_searcher, monkeypatch):
    """Even a catalogue file's own absolute path is not an id; every file opened is one
    the index's metadata names."""
    catalogue = set(fake_searcher.index.items["image"])
    opened = record_opened(monkeypatch)
    some_path = next(iter(catalogue))
    assert client.get(f"/api/thumb/{some_path}").status_code == 404
    assert client.post("/api/search", json={"item": some_path}).status_code == 404
    assert client.post("/api/search", json={"item": "../../etc/passwd"}).status_code == 404
    item_id = fake_searcher.index.items["id"].iloc[1]
    assert client.get(f"/api/image/{item_id}").status_code == 200
    assert client.post("/api/search", json={"item": item_id}).status_code == 200
    assert opened and set(map(str, opened)) <= catalogue


def test_loopback_server_refuses_foreign_host_header(fake_searcher):
    from fastapi.testclient import TestClient

    from huse.serve import create_app
    from huse.serve.app import LOOPBACK_HOSTS

    app = create_app(fake_searcher, allowed_hosts=list(LOOPBACK_HOSTS))
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/health").status_code == 200
        assert c.get("/api/health", headers={"host": "localhost:8000"}).status_code == 200
        assert c.get("/api/health", headers={"host": "evil.example"}).status_code == 400


def test_an_item_whose_image_is_unreadable_is_a_422(fake_searcher, tmp_path):
    from fastapi.testclient import TestClient

    from huse.serve import create_app

    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a picture")
    broken = type(fake_searcher)(fake_searcher.index)
    broken._cols = {**broken._cols, "image": [str(junk)] * len(fake_searcher.index)}
    item_id = fake_searcher.index.items["id"].iloc[2]
    with TestClient(create_app(broken)) as c:
        r = c.post("/api/search", json={"item": item_id})
        assert c.app.state.decode_gate.peak == 1  # the item's image was decoded in a slot
    assert r.status_code == 422
    assert r.json()["detail"].startswith(f"item {item_id!r} has an unreadable image: not an image")
