"""Class labels in the report's retrieval boxes, laid out by headless Chromium: a line
breaks after a level separator or an underscore, never inside a word that fits on a line
of its own (issue: ``food<breads_and_carb / s``)."""

from __future__ import annotations

import html
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Chromium is not installed: apt-get install chromium", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
pytest.importorskip("matplotlib")

from playwright.sync_api import sync_playwright  # noqa: E402

from huse.report import html as report_html  # noqa: E402

ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update"]  # fmt: skip

NAMES = [
    "food<breads_and_carbs",
    "signs_and_symbols<flags<europe",
    "transportation<roadsigns",
    "recreation<games<chess",
    "people<clothing<hats",
    "kitchen_and_household_appliances<refrigerators_and_freezers",
    "x" * 60,  # one word wider than the box: it has to break inside
]

# For each .cls box: its text and the character offsets where a new line starts.
LINES_JS = """
() => [...document.querySelectorAll('.cls')].map(box => {
  const text = box.textContent;
  const walker = document.createTreeWalker(box, NodeFilter.SHOW_TEXT);
  const tops = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (let i = 0; i < node.length; i++) {
      const r = document.createRange();
      r.setStart(node, i); r.setEnd(node, i + 1);
      tops.push(r.getClientRects()[0].top);
    }
  }
  const starts = [];
  for (let i = 1; i < tops.length; i++) if (tops[i] > tops[i - 1] + 2) starts.push(i);
  return {text, starts, width: box.clientWidth};
})
"""


def _page() -> str:
    boxes = "".join(
        f'<div class="query"><div class="res ok"><span class="rank">1</span>'
        f'<div class="rtext">a text</div><div class="cls">{report_html._class_html(n, "<")}'
        "</div></div></div>"
        for n in NAMES
    )
    return f"<!DOCTYPE html><html><head><style>{report_html.CSS}</style></head><body>{boxes}</body></html>"


def test_class_labels_wrap_between_levels_and_words():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_content(_page())
            boxes = page.evaluate(LINES_JS)
        finally:
            browser.close()
    assert [html.unescape(b["text"]) for b in boxes] == NAMES
    wrapped = 0
    for b in boxes:
        text, starts = b["text"], b["starts"]
        wrapped += bool(starts)
        if text == "x" * 60:
            assert starts, "a 60-character word must wrap inside the 120-px box"
            continue
        for i in starts:
            assert text[i - 1] in "<_", (
                f"{text!r} breaks inside a word: {text[:i]!r} / {text[i:]!r}"
            )
    assert wrapped >= 4  # the box is narrow enough that most of these names do wrap
