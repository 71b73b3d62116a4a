"""The server's resource bounds, on a real uvicorn server on 127.0.0.1: image decodes are
limited in number and size, slow or incomplete requests are cut off by the head and body
timeouts, connections beyond the limit get a 503, and a query text without words is a 422.

Each test runs its own server with short timeouts (a fraction of a second); every socket
has a receive timeout and every loop a bound on its count, so a regression fails in a few
seconds instead of hanging.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from huse.errors import QueryError  # noqa: E402
from huse.serve import Limits, create_app  # noqa: E402
from huse.serve import app as app_module  # noqa: E402
from huse.serve.app import QUERY_SIDE, server_config  # noqa: E402

HEAD_TIMEOUT = 0.5
BODY_TIMEOUT = 1.0
SLACK = 1.5  # scheduling slack on a loaded machine: closed within timeout + SLACK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(searcher, limits: Limits) -> Iterator[tuple[str, int, object]]:
    """A uvicorn server over ``searcher`` in a thread, with ``serve``'s configuration."""
    app = create_app(searcher, limits)
    port = free_port()
    server = uvicorn.Server(server_config(app, port=port, limits=limits, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", port, app
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def fast_limits(**kw) -> Limits:
    base = dict(
        max_upload_bytes=2 * 1024 * 1024,
        max_pixels=16_000_000,
        head_timeout_s=HEAD_TIMEOUT,
        body_timeout_s=BODY_TIMEOUT,
        keep_alive_s=HEAD_TIMEOUT,
    )
    return Limits(**(base | kw))


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.settimeout(BODY_TIMEOUT + HEAD_TIMEOUT + SLACK + 2)
    return s


def read_until_closed(s: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything the server sends until it closes (raises socket.timeout if it never does)."""
    out = bytearray()
    while len(out) < limit:
        chunk = s.recv(65536)
        if not chunk:
            return bytes(out)
        out += chunk
    raise AssertionError("the server sent more than expected")


def big_png(w: int, h: int) -> bytes:
    """A few kB of PNG that decodes to w×h pixels (the issue's was 154 kB, 6300×6300)."""
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


# -- image decoding: bounded in number and in size ----------------------------------------
def recording_searcher(fake_searcher):
    """conftest's fake searcher, recording the size of every image that reaches its
    (fake) backbone."""

    class RecordingSearcher(type(fake_searcher)):
        def __init__(self, index) -> None:
            super().__init__(index)
            self.sizes: list[tuple[int, int]] = []

        def embed_image(self, image):
            self.sizes.append(image.size)
            return super().embed_image(image)

    return RecordingSearcher(fake_searcher.index)


@pytest.fixture()
def counted_decodes(monkeypatch):
    """Wrap the app's ``load_image``: count decodes running at once (independently of the
    app's own gate) and make each last ``hold`` seconds so that requests overlap."""
    state = {"active": 0, "peak": 0, "calls": 0, "hold": 0.3}
    lock = threading.Lock()
    real = app_module.load_image

    def load_image(*args, **kw):
        with lock:
            state["active"] += 1
            state["calls"] += 1
            state["peak"] = max(state["peak"], state["active"])
        try:
            time.sleep(state["hold"])
            return real(*args, **kw)
        finally:
            with lock:
                state["active"] -= 1

    monkeypatch.setattr(app_module, "load_image", load_image)
    return state


def upload(base: str, data: bytes) -> httpx.Response:
    with httpx.Client(base_url=base, timeout=30) as c:
        return c.post("/api/search", files={"image": ("big.png", data, "image/png")})


def test_concurrent_large_uploads_are_decoded_two_at_a_time_at_bounded_size(
    fake_searcher, counted_decodes
):
    searcher = recording_searcher(fake_searcher)
    data = big_png(2600, 2200)  # 5.7 MP, under the 16 MP limit: accepted, decoded
    assert len(data) < 200_000
    with running(searcher, fast_limits(decode_concurrency=2, decode_wait_s=20)) as (base, _, app):
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda _: upload(base, data), range(8)))
        gate = app.state.decode_gate
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    assert counted_decodes["calls"] == 8
    # Eight requests at once, never more than two decodes at once (and the gate was used:
    # two did overlap).
    assert counted_decodes["peak"] == 2
    assert gate.peak == 2 and gate.active == 0
    # Every picture that reached the backbone was downscaled: long side QUERY_SIDE.
    assert len(searcher.sizes) == 8
    assert all(max(s) == QUERY_SIDE for s in searcher.sizes), searcher.sizes
    assert searcher.sizes[0] == (QUERY_SIDE, round(2200 * QUERY_SIDE / 2600))


def test_a_saturated_decoder_answers_503_with_a_message(fake_searcher, counted_decodes):
    counted_decodes["hold"] = 1.5
    data = big_png(1200, 1200)
    limits = fast_limits(decode_concurrency=1, decode_wait_s=0.2)
    with running(fake_searcher, limits) as (base, _, _), ThreadPoolExecutor(2) as pool:
        first = pool.submit(upload, base, data)
        time.sleep(0.5)  # the first holds the only slot for 1.5 s
        second = pool.submit(upload, base, data)
        r1, r2 = first.result(), second.result()
    assert r1.status_code == 200
    assert r2.status_code == 503
    assert "server busy" in r2.json()["detail"] and r2.headers["retry-after"] == "2"
    assert counted_decodes["calls"] == 1  # the refused request decoded nothing


def test_limits_refuse_nonsense_values():
    with pytest.raises(ValueError, match="decode_concurrency"):
        Limits(decode_concurrency=0)
    with pytest.raises(ValueError, match="head_timeout_s"):
        Limits(head_timeout_s=0)


# -- slow and incomplete requests ---------------------------------------------------------
@pytest.fixture()
def server(fake_searcher):
    with running(fake_searcher, fast_limits()) as (base, port, _):
        yield base, port


def test_an_unfinished_request_head_is_closed_within_the_head_timeout(server):
    base, port = server
    with connect(port) as s:
        t0 = time.monotonic()
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
        rest = read_until_closed(s)
        took = time.monotonic() - t0
    assert rest == b""  # closed, nothing answered to a request that never arrived
    assert HEAD_TIMEOUT - 0.1 <= took <= HEAD_TIMEOUT + SLACK, took
    assert httpx.get(f"{base}/api/health", timeout=10).status_code == 200


def test_a_silent_connection_is_closed_within_the_head_timeout(server):
    _, port = server
    with connect(port) as s:
        t0 = time.monotonic()
        assert read_until_closed(s) == b""
        assert time.monotonic() - t0 <= HEAD_TIMEOUT + SLACK


def test_a_header_trickled_byte_by_byte_is_cut_off(server):
    _, port = server
    head = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 200
    closed_after = None
    with connect(port) as s:
        t0 = time.monotonic()
        for i in range(len(head)):  # at most 2.5 s of trickle (0.01 s a byte)
            try:
                s.sendall(head[i : i + 1])
            except OSError:  # reset by the server: closed
                closed_after = time.monotonic() - t0
                break
            time.sleep(0.01)
            if time.monotonic() - t0 > HEAD_TIMEOUT + 0.3:
                break
        if closed_after is None:
            assert read_until_closed(s) == b""
            closed_after = time.monotonic() - t0
    assert closed_after <= HEAD_TIMEOUT + SLACK, closed_after


def test_a_trickled_body_gets_408_and_its_connection_is_closed(server):
    _, port = server
    head = (
        b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 50000\r\n\r\n"
    )
    with connect(port) as s:
        s.sendall(head)
        t0 = time.monotonic()
        for _ in range(40):  # 10 bytes every 0.05 s, at most 2 s
            try:
                s.sendall(b" " * 10)
            except OSError:
                break
            time.sleep(0.05)
            if time.monotonic() - t0 > BODY_TIMEOUT + 0.5:
                break
        answer = read_until_closed(s)
        took = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"not received in time" in answer and b"connection: close" in answer.lower()
    assert BODY_TIMEOUT - 0.1 <= took <= BODY_TIMEOUT + SLACK, took


def test_many_incomplete_requests_are_all_closed_and_the_server_still_answers(server):
    base, port = server
    socks = [connect(port) for _ in range(60)]
    try:
        for i, s in enumerate(socks):
            s.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nX-N: %d" % i)
        t0 = time.monotonic()
        for s in socks:
            assert read_until_closed(s) == b""
        took = time.monotonic() - t0
    finally:
        for s in socks:
            s.close()
    assert took <= HEAD_TIMEOUT + SLACK + 1.0, took
    r = httpx.post(f"{base}/api/search", json={"text": "a red car"}, timeout=10)
    assert r.status_code == 200 and len(r.json()["results"]) == 10


def test_connections_beyond_the_limit_get_503_until_the_idle_ones_are_closed(fake_searcher):
    with running(fake_searcher, fast_limits(max_connections=4)) as (base, port, _):
        idle = [connect(port) for _ in range(4)]
        try:
            time.sleep(0.1)
            with httpx.Client(base_url=base, timeout=10) as c:
                assert c.get("/api/health").status_code == 503
            for s in idle:  # the head timeout frees their places
                assert read_until_closed(s) == b""
        finally:
            for s in idle:
                s.close()
        with httpx.Client(base_url=base, timeout=10) as c:
            assert c.get("/api/health").status_code == 200


# -- query texts that normalise to nothing ------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "<b></b>",
        "\u200b\u200b\u200b",
        "https://example.com/a-red-car",
        "HASH(0x55d0c0ffee)",
        "42 !",
    ],
)
def test_a_query_text_without_words_is_a_422(client, text):
    r = client.post("/api/search", json={"text": text})
    assert r.status_code == 422, r.text
    assert "no words" in r.json()["detail"]


def test_a_query_text_with_words_around_markup_is_searched(client):
    r = client.post("/api/search", json={"text": "<b>red</b> car https://example.com"})
    assert r.status_code == 200 and len(r.json()["results"]) == 10


def test_a_query_error_from_the_searcher_is_a_422_with_its_message(fake_searcher):
    from fastapi.testclient import TestClient

    class RefusingSearcher(type(fake_searcher)):
        def search_text(self, text, k=10, modality="image", **filters):
            raise QueryError(f"unknown class filter in {text!r}; use a class of the catalogue")

    with TestClient(create_app(RefusingSearcher(fake_searcher.index))) as c:
        r = c.post("/api/search", json={"text": "a red car"})
    assert r.status_code == 422
    assert r.json()["detail"] == (
        "invalid query: unknown class filter in 'a red car'; use a class of the catalogue"
    )


def test_decodes_run_on_the_gates_own_threads_only():
    """Memory a decode frees stays in its thread's allocator arena: decoding on every
    request thread would let each keep a full-size image, so only the gate's threads do."""

    from huse.serve.app import DecodeGate

    gate = DecodeGate(2, 5.0)
    names = {gate.run(lambda: threading.current_thread().name) for _ in range(20)}
    assert names and all(n.startswith("huse-decode") for n in names)
    assert len({gate.run(threading.get_ident) for _ in range(20)}) <= 2
