"""End to end: the real server (uvicorn in a subprocess, on a free loopback port) with a
trained model, driven in headless Chromium by Playwright. Screenshots go to
``test-artifacts/`` (or ``$HUSE_TEST_ARTIFACTS``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(
        "Chromium is not installed: apt-get install chromium (Debian's package; "
        "never `playwright install`)",
        allow_module_level=True,
    )
pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed: pip install playwright"
)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("HUSE_TEST_ARTIFACTS", ROOT / "test-artifacts"))
# Without the networking flags Chromium keeps calling home, which a closed network refuses.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_run):
    port = free_port()
    cmd = [sys.executable, "-m", "huse.serve", str(tiny_run), "--port", str(port), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{proc.stdout.read()}")
            try:
                with urllib.request.urlopen(f"{base}/api/health", timeout=2) as r:
                    if json.load(r)["status"] == "ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("server did not answer /api/health within 180 s")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def page(server):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        pg.console_errors = []
        pg.on("console", lambda m: m.type == "error" and pg.console_errors.append(m.text))
        pg.on("pageerror", lambda e: pg.console_errors.append(str(e)))
        pg.goto(server)
        yield pg
        browser.close()


def all_images_loaded(pg, timeout: float = 30) -> bool:
    """Every result thumbnail decoded (lazy ones scrolled into view first)."""
    pg.locator(".card img").last.scroll_into_view_if_needed()
    end = time.monotonic() + timeout
    while True:
        done = pg.locator(".card img").evaluate_all(
            "imgs => imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)"
        )
        if done or time.monotonic() > end:
            pg.evaluate("window.scrollTo(0, 0)")
            return done
        time.sleep(0.2)


def test_type_a_query_and_see_cards(page):
    expect(page.locator("#catalogue")).to_contain_text("116 items")
    page.fill("#q", "bird")
    page.press("#q", "Enter")
    expect(page.locator("#status")).to_contain_text("12 results for “bird”")
    cards = page.locator(".card")
    expect(cards).to_have_count(12)
    assert all_images_loaded(page)
    first = cards.first
    expect(first.locator(".path")).not_to_be_empty()
    expect(first.locator(".text")).not_to_be_empty()
    expect(first.locator(".score")).to_have_text(re.compile(r"^-?\d\.\d{3}$"))
    page.screenshot(path=str(ARTIFACTS / "serve-text-search.png"))

    page.click("label[for=m-text]")  # the modality switch searches again
    expect(page.locator("#status")).to_contain_text("matched against texts")
    expect(page.locator(".card .badge").first).to_have_text("text")


def test_upload_an_image_and_see_results(page, tiny_run):
    import pandas as pd

    items = pd.read_parquet(tiny_run / "index" / "items.parquet")
    picture = items["image"].iloc[10]
    page.click("label[for=m-image]")
    page.set_input_files("#file", picture)
    expect(page.locator("#status")).to_contain_text(f"results for image {Path(picture).name}")
    expect(page.locator("#query-image")).to_be_visible()
    first = page.locator(".card").first
    expect(first).to_have_attribute("data-id", items["id"].iloc[10])  # itself, score 1
    expect(first.locator(".score")).to_have_text("1.000")
    assert all_images_loaded(page)
    page.screenshot(path=str(ARTIFACTS / "serve-image-search.png"))

    page.locator(".card .similar").nth(1).click()
    expect(page.locator("#status")).to_contain_text("results for items like")
    expect(page.locator("#query-image")).to_be_hidden()


def test_bad_upload_shows_the_servers_message(page):
    page.set_input_files(
        "#file", files=[{"name": "fake.png", "mimeType": "image/png", "buffer": b"not an image"}]
    )
    status = page.locator("#status")
    expect(status).to_contain_text("not an image")
    expect(status).to_have_class(re.compile(r"\berror\b"))
    expect(page.locator(".card")).to_have_count(0)  # no stale results under the error
    expect(page.locator("#query-image")).to_be_hidden()
    page.screenshot(path=str(ARTIFACTS / "serve-error.png"))


def test_url_state_back_forward_more_results_and_the_class_tree(page, server):
    from urllib.parse import parse_qs, urlparse

    def params() -> dict:
        return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}

    cards, status = page.locator(".card"), page.locator("#status")
    # A shared link restores the whole search: query, k, filter.
    page.goto(f"{server}/?q=bird&k=6&under=animals")
    expect(status).to_contain_text("6 results for “bird” in animals")
    expect(cards).to_have_count(6)
    expect(page.locator("#q")).to_have_value("bird")
    expect(page.locator("#k")).to_have_value("6")
    expect(page.locator("#filter-chip")).to_have_text("animals")
    paths = page.locator(".card .path span:first-child").all_text_contents()
    assert paths == ["animals"] * 6

    # "More results" pages on until the branch (16 items) is exhausted.
    more = page.locator("#more")
    more.click()
    expect(cards).to_have_count(12)
    assert params()["page"] == "2"
    more.click()
    expect(cards).to_have_count(16)  # a short last page: no more
    expect(more).to_be_hidden()
    ids_16 = page.locator(".card").evaluate_all("cs => cs.map(c => c.dataset.id)")
    assert len(set(ids_16)) == 16
    assert params() == {"q": "bird", "k": "6", "under": "animals", "page": "3"}

    # The tree: a narrower branch searches again, from the first page.
    page.click("#tree-box summary")
    page.click('#tree button.node[data-path="animals<birds"]')
    expect(status).to_contain_text("4 results for “bird” in animals › birds")
    expect(cards).to_have_count(4)
    assert params() == {"q": "bird", "k": "6", "under": "animals<birds"}
    page.fill("#q", "car")
    page.press("#q", "Enter")
    expect(status).to_contain_text("results for “car” in animals › birds")
    page.screenshot(path=str(ARTIFACTS / "serve-filter-tree.png"))

    # Back and forward restore each search.
    page.go_back()
    expect(page.locator("#q")).to_have_value("bird")
    expect(cards).to_have_count(4)
    page.go_back()
    expect(cards).to_have_count(16)  # all three pages again
    expect(page.locator("#filter-chip")).to_have_text("animals")
    assert page.locator(".card").evaluate_all("cs => cs.map(c => c.dataset.id)") == ids_16
    page.go_forward()
    expect(cards).to_have_count(4)
    expect(page.locator("#filter-chip")).to_have_text("animals › birds")
    page.click("#filter-clear")
    expect(status).to_contain_text("6 results for “bird” · matched")
    assert "under" not in params()


def test_no_console_errors(page):
    assert page.console_errors == [] or all("415" in e for e in page.console_errors), (
        page.console_errors
    )


def raw_request(base: str, request: bytes) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize(
    "path",
    [
        "/static/../../../../etc/passwd",
        "/api/thumb/../../../../etc/passwd",
        "/api/image/%2e%2e/%2e%2e/etc/passwd",
    ],
)
def test_real_server_traversal_and_host_checks(server, path):
    reply = raw_request(
        server, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    )
    assert reply.startswith(b"HTTP/1.1 404"), reply[:200]
    assert b"root:" not in reply
    reply = raw_request(
        server, b"GET /api/info HTTP/1.1\r\nHost: rebind.example\r\nConnection: close\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
