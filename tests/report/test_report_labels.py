"""The report with hostile class names: a 10,000-character class and a 500-level class
path. Every label on the page and in the figures is bounded, so the page stays small and
quick. A tiny run is made in memory (no training): the report's own loading step is
replaced by a ``RunData`` of random embeddings over such classes."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from huse.data.hierarchy import Hierarchy  # noqa: E402
from huse.report import analysis as an  # noqa: E402
from huse.report import html as report_html  # noqa: E402
from huse.report import plots  # noqa: E402
from huse.report.labels import (  # noqa: E402
    PLOT_CHARS,
    TABLE_CHARS,
    class_label,
    ellipsize,
    tooltip,
)

LONG = "x" * 10_000
DEEP = "<".join(f"level{i}" for i in range(500))
LONG_ID = "id-" + "y" * 10_000


def test_ellipsize_keeps_both_ends_within_n():
    assert ellipsize("short", 60) == "short"
    out = ellipsize("a" * 50 + "b" * 50, 21)
    assert out == "a" * 10 + "…" + "b" * 10 and len(out) == 21


def test_class_label_bounds_levels_and_length():
    assert class_label("animals<cat") == "animals<cat"
    assert class_label(DEEP) == "level0<…<level496<level497<level498<level499"
    assert len(class_label(LONG)) == PLOT_CHARS
    assert len(class_label(LONG + "<" + DEEP, n=TABLE_CHARS)) <= TABLE_CHARS
    assert tooltip("animals<cat", "animals<cat") is None  # not shortened: no tooltip
    assert tooltip(DEEP, class_label(DEEP)) is None  # too long to read as a tooltip
    assert tooltip("a<b<c<d<e<f<g", "a<…<d<e<f<g") == "a<b<c<d<e<f<g"


def tiny_run(tmp_path: Path) -> an.RunData:
    classes = ["animals<cat", "animals<dog", LONG, DEEP]
    h = Hierarchy(classes)
    n, k, dim = 32, len(classes), 16
    rng = np.random.default_rng(0)
    labels = np.arange(n) % k

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    centres = rng.normal(size=(k, dim))
    img = unit(centres[labels] + 0.5 * rng.normal(size=(n, dim)))
    txt = unit(centres[labels] + 0.5 * rng.normal(size=(n, dim)))
    paths = []
    for i in range(n):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (40, 30), (8 * i, 100, 200)).save(p)
        paths.append(str(p))
    items = pd.DataFrame(
        {
            "id": [LONG_ID if i == 2 else f"item{i}" for i in range(n)],
            "image": paths,
            "text": [f"a picture of {classes[c][:50]}" for c in labels],
            "classes": [classes[c] for c in labels],
        }
    )
    scores = {m: rng.normal(size=(n, k)) for m in ("image", "text", "fusion")}
    graph = h.distance_matrix().astype(float) / 4
    metrics = {
        "method": "huse",
        "summary": {"fusion": 0.5, "cross_R@1": 0.4, "mean_HP@5": 0.6},
        "classification": {"image": 0.4, "text": 0.5, "fusion": 0.5},
        "data": {"train": 100, "val": 20, "test": n, "classes": k},
    }
    log = pd.DataFrame(
        {"epoch": [1, 2, 3], "train_total": [3.0, 2.0, 1.5], "val_acc_fusion": [0.3, 0.4, 0.5]}
    )
    return an.RunData(
        run=tmp_path / "run",
        metrics=metrics,
        log=log,
        train_config={},
        hierarchy=h,
        graph=graph,
        items=items,
        labels=labels,
        img=img,
        txt=txt,
        raw_img=img,
        raw_txt=txt,
        scores=scores,
    )


@pytest.fixture()
def page_and_figures(tmp_path, monkeypatch) -> tuple[str, list[dict]]:
    rd = tiny_run(tmp_path)
    monkeypatch.setattr(an, "load_run", lambda run, progress=False: rd)
    figures: list[dict] = []
    real_png = plots._png

    def record(fig) -> bytes:
        ticks, legends = [], []
        for ax in fig.axes:
            ticks += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
            if ax.get_legend() is not None:
                legends += [t.get_text() for t in ax.get_legend().get_texts()]
        texts = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
        figures.append({"ticks": ticks, "legends": legends, "texts": texts})
        return real_png(fig)

    monkeypatch.setattr(plots, "_png", record)
    return report_html.build_html(rd.run), figures


def test_report_with_huge_class_names_has_bounded_labels(page_and_figures):
    page, figures = page_and_figures
    for sid in ("map", "graph", "retrieval", "classes"):
        body = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S).group(1)
        assert "could not be drawn" not in body, body[:300]
    # Table and retrieval cells: at most TABLE_CHARS characters of a class path.
    cells = re.findall(r'<div class="cls">(.*?)</div>', page, re.S)
    cells += re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td>", page, re.S)
    cells = [c for cell in cells for c in ([cell] if isinstance(cell, str) else cell)]
    shown = [html.unescape(re.sub(r"<[^>]*>", "", c)) for c in cells]
    assert len(shown) >= 10 and max(map(len, shown)) <= TABLE_CHARS, max(map(len, shown))
    assert any(s == class_label(DEEP, n=TABLE_CHARS) for s in shown)
    assert any(s.startswith("x" * 99 + "…") for s in shown)
    # No attribute (tooltip, alt text) carries the whole name either.
    attrs = re.findall(r'(?:title|alt)="([^"]*)"', page)
    assert attrs and max(map(len, attrs)) <= TABLE_CHARS
    assert "x" * (TABLE_CHARS + 1) not in page and "level250" not in page
    assert "data:image/jpeg;base64," in page  # the thumbnails, through thumbnail_bytes
    assert "y" * (TABLE_CHARS + 1) not in page
    # The page: tens of kB of figures, not megabytes of names.
    assert len(page) < 1_500_000, len(page)
    # Figures: six drawn; every tick label and legend entry within PLOT_CHARS.
    assert len(figures) == 6
    labels = [t for f in figures for t in f["ticks"] + f["legends"]]
    assert any("level499" in t for t in labels)
    assert max(map(len, labels)) <= PLOT_CHARS, max(labels, key=len)
    assert max(len(t) for f in figures for t in f["texts"]) <= 2 * PLOT_CHARS
