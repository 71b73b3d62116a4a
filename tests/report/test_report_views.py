"""The report's views, each against a hand or brute-force computation, on runs made in
memory (no training): the training panels, the class heatmaps at 29 and 133 classes, the
four-group cosine histogram, the instance and graded metrics in the tables, and class
labels that wrap between words."""

from __future__ import annotations

import csv
import io
import re
import sys
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
from huse.report.labels import breakable_html, leaf_label  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _synthetic import many_classes, synthetic_run  # noqa: E402

DEMO = Path(__file__).resolve().parents[2] / "data" / "openclipart-demo"


def demo_classes() -> list[str]:
    with open(DEMO / "manifest.csv", newline="") as f:
        return sorted({r["classes"] for r in csv.DictReader(f)})


# --- 13: the graph-margin panel ----------------------------------------------------------


def _log(active) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "epoch": [1, 2, 3, 4],
            "train_total": [3.0, 2.0, 1.5, 1.2],
            "train_graph_active": active,
            "val_acc_fusion": [0.3, 0.4, 0.5, 0.5],
        }
    )


MARGIN = "share of class pairs under the graph margin"


def test_graph_margin_panel_is_left_out_when_constant():
    titles = [t for t, _ in plots.training_panels(_log([1.0, 1.0, 1.0, 1.0]))]
    assert MARGIN not in titles
    assert titles == ["total loss", "val accuracy"]
    assert MARGIN not in [t for t, _ in plots.training_panels(_log([np.nan] * 4))]
    # A share that moves is drawn, with its values.
    panels = dict(plots.training_panels(_log([1.0, 0.8, 0.6, 0.6])))
    assert panels[MARGIN][""].tolist() == [1.0, 0.8, 0.6, 0.6]
    assert plots.training_curves(_log([1.0] * 4)).startswith(b"\x89PNG")


def test_training_section_says_why_the_margin_panel_is_missing(tmp_path):
    rd = synthetic_run(tmp_path, ["a<x", "a<y"], 4, log=_log([1.0] * 4))
    rd.train_config = {"epochs": 50}
    rd.metrics["training"] = {"epochs_run": 4, "best_epoch": 3, "stopped": "early_stopping"}
    body = report_html._training_section(rd, {})
    assert "4 epochs of a cap of 50, stopped by early_stopping, best epoch 3" in body
    assert "graph margin (1.000), so it is not drawn" in body
    assert "instance towers" not in body
    rd.metrics["training"]["instance_best_epoch"] = 4
    own = report_html._training_section(rd, {})
    assert "evaluated; the instance towers' own best epoch was 4)" in own
    rd.log = _log([1.0, 0.9, 0.9, 0.8])
    assert "not drawn" not in report_html._training_section(rd, {})


# --- 14: class heatmaps ------------------------------------------------------------------


def _record(monkeypatch) -> list[dict]:
    """Every figure drawn: its y tick labels and their font size in pixels, the other
    texts, and the PNG's size."""
    figures: list[dict] = []
    real_png = plots._png

    def record(fig) -> bytes:
        ax = fig.axes[0]
        texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_text")) if t.get_text()]
        png = real_png(fig)
        figures.append(
            {
                "rows": [t.get_text() for t in ax.get_yticklabels()],
                "row_px": [t.get_fontsize() * plots.DPI / 72 for t in ax.get_yticklabels()],
                "texts": [t.get_text() for t in texts],
                # The secondary axes: the group names on the right and on top.
                "right": [
                    t.get_text() for c in ax.child_axes for t in c.get_yticklabels() if t.get_text()
                ],
                "top": [
                    t.get_text() for c in ax.child_axes for t in c.get_xticklabels() if t.get_text()
                ],
                "size": Image.open(io.BytesIO(png)).size,
            }
        )
        return png

    monkeypatch.setattr(plots, "_png", record)
    return figures


def _heatmap_view(tmp_path, classes, n, monkeypatch, labels=None):
    rd = synthetic_run(tmp_path, classes, n, labels=labels)
    gs = report_html._graph_stats(rd)
    figures = _record(monkeypatch)
    body, view = report_html._heatmaps_html(rd, gs)
    return rd, gs, figures, body, view


def test_heatmaps_name_every_class_legibly_at_29_classes(tmp_path, monkeypatch):
    classes = demo_classes()
    assert len(classes) == 29
    rd, _, figures, body, view = _heatmap_view(tmp_path, classes, 87, monkeypatch)
    assert len(figures) == 2 and body.count("<figure>") == 2
    h = rd.hierarchy
    order = an.hierarchy_order(h)
    want_rows = [leaf_label(h.classes[i]) for i in order]
    tops = sorted({h.top_level(c) for c in classes})
    for f in figures:
        # Rows: every class in hierarchy order, without its top level (named apart).
        assert f["rows"] == want_rows
        assert "breads_and_carbs" in f["rows"] and "food<breads_and_carbs" not in f["rows"]
        # Each top-level group is labelled once on the right and once on top.
        assert f["right"] == tops and f["top"] == tops
        # Legible as the page shows it: drawn no wider than the content column (so not
        # scaled down), labels >= 11 px high, one class per row at least that tall.
        width, height = f["size"]
        assert width <= plots.MAX_WIDTH_PX
        assert min(f["row_px"]) >= 11
        assert max(f["row_px"]) <= plots.HEAT_CELL_PX
        assert height >= 29 * plots.HEAT_CELL_PX
    assert "hierarchy order" in view


def test_many_classes_get_a_group_view_and_a_top_n_view(tmp_path, monkeypatch):
    classes = many_classes(133, groups=12)
    # Two test items per class, three for every third class (45 of them, in every group).
    labels = np.r_[np.arange(133), np.arange(133), np.arange(0, 133, 3)]
    rd, gs, figures, body, view = _heatmap_view(tmp_path, classes, 0, monkeypatch, labels)
    h = rd.hierarchy
    assert len(figures) == 4 and body.count("<figure>") == 4
    groups, group_l, top_g, top_l = figures
    tops = sorted({h.top_level(c) for c in classes})
    assert groups["rows"] == tops and group_l["rows"] == tops
    # Top-N: 40 of the 45 classes with the most test items (3).
    counts = np.bincount(rd.labels, minlength=133)
    shown = an.heatmap_classes(h, counts)
    assert len(shown) == an.HEATMAP_CLASSES
    assert all(counts[i] == 3 for i in shown)
    # ... spread over the groups (ties go to each group's first), in hierarchy order.
    assert {h.top_level(h.classes[i]) for i in shown} == set(tops)
    assert list(shown) == sorted(shown, key=lambda i: h.classes[i].split("<"))
    assert top_g["rows"] == [leaf_label(h.classes[i]) for i in shown]
    for f in figures:
        assert f["size"][0] <= plots.MAX_WIDTH_PX and min(f["row_px"]) >= 11
    assert "133 classes" in view and "40 classes with the most test items" in view
    # The group view's numbers: the mean over the class pairs of two groups.
    order = an.hierarchy_order(h)
    full = gs["learned"][np.ix_(order, order)]
    g_of = [h.top_level(h.classes[i]) for i in order]
    mat, names = an.group_matrix(full, g_of)
    a, b = names.index("group_03"), names.index("group_07")
    vals = [
        full[i, j]
        for i in range(133)
        for j in range(133)
        if g_of[i] == "group_03" and g_of[j] == "group_07" and i != j
    ]
    assert mat[a, b] == pytest.approx(np.mean(vals))
    inside = [full[i, j] for i in range(133) for j in range(133)
              if g_of[i] == g_of[j] == "group_03" and i != j]  # fmt: skip
    assert mat[a, a] == pytest.approx(np.mean(inside))


def test_heatmap_classes_by_hand():
    h = Hierarchy(["a<x", "a<y", "a<z", "b<u", "b<v", "c<w"])
    counts = np.array([5, 1, 1, 1, 1, 1])
    # Limit 3: a<x (5 items) first; then among equal counts each group's first class.
    assert an.heatmap_classes(h, counts, limit=3).tolist() == [0, 3, 5]
    assert an.heatmap_classes(h, counts, limit=6).tolist() == [0, 1, 2, 3, 4, 5]


# --- issue 15: the four-group cosine histogram -------------------------------------------


def _hierarchy_and_data(seed=0):
    h = Hierarchy(["a", "a<x", "a<y", "b<u", "b<v", "c<w"])
    rng = np.random.default_rng(seed)
    n = 30
    labels = rng.integers(0, len(h), size=n)
    img = rng.normal(size=(n, 5))
    txt = rng.normal(size=(n, 5))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return h, labels, img, txt


def _brute_groups(h, labels, img, txt):
    rel = h.graded_relevance()
    out = {"pair": [], "same_class": [], "same_parent": [], "other": []}
    for i in range(len(labels)):
        for j in range(len(labels)):
            c = float(img[i] @ txt[j])
            if i == j:
                out["pair"].append(c)
            elif labels[i] == labels[j]:
                out["same_class"].append(c)
            elif rel[labels[i], labels[j]] == 1:
                out["same_parent"].append(c)
            else:
                out["other"].append(c)
    return out


def test_cross_similarities_split_into_four_groups_by_graded_relevance():
    h, labels, img, txt = _hierarchy_and_data()
    got = an.cross_similarities(img, txt, labels, h.graded_relevance())
    want = _brute_groups(h, labels, img, txt)
    assert list(got) == list(an.COSINE_GROUPS)
    for g in an.COSINE_GROUPS:
        assert sorted(got[g]) == pytest.approx(sorted(want[g])), g
        assert len(want[g]) > 0, g
    assert sum(len(v) for v in got.values()) == len(labels) ** 2
    # A sample bounds the pairs: 12 items, 144 cosines.
    sub = an.cross_similarities(img, txt, labels, h.graded_relevance(), limit=12)
    assert sum(len(v) for v in sub.values()) == 144 and len(sub["pair"]) == 12


def test_gap_stats_parent_and_unrelated_means_by_brute_force():
    h, labels, img, txt = _hierarchy_and_data(1)
    g = an.gap_stats(img, txt, labels, h.graded_relevance())
    want = _brute_groups(h, labels, img, txt)
    assert g["pair_cos"] == pytest.approx(np.mean(want["pair"]))
    assert g["same_class_cos"] == pytest.approx(np.mean(want["same_class"]))
    assert g["same_parent_cos"] == pytest.approx(np.mean(want["same_parent"]))
    assert g["unrelated_cos"] == pytest.approx(np.mean(want["other"]))
    assert g["other_class_cos"] == pytest.approx(np.mean(want["same_parent"] + want["other"]))


def test_map_histogram_draws_the_four_groups(tmp_path, monkeypatch):
    rd = synthetic_run(tmp_path, ["a<x", "a<y", "b<u", "b<v"], 24)
    legends: list[str] = []
    real_png = plots._png

    def record(fig) -> bytes:
        for ax in fig.axes:
            if ax.get_legend() is not None:
                legends.extend(t.get_text() for t in ax.get_legend().get_texts())
        return real_png(fig)

    monkeypatch.setattr(plots, "_png", record)
    # The 2-D placement is not under test here: skip t-SNE's seconds.
    monkeypatch.setattr(an, "project_2d", lambda x: (x[:, :2], "first two coordinates"))
    body = report_html._map_section(rd, ["a", "b"], plots.palette(["a", "b"]))
    want = _brute_groups(rd.hierarchy, rd.labels, rd.img.astype(float), rd.txt.astype(float))
    for g, label in plots.COSINE_LABELS.items():
        v = want[g]
        assert f"{label} ({np.mean(v):.2f}, n={len(v):,})" in legends
    assert f"<td>{report_html.fmt(np.mean(want['same_parent']))}</td>" in body


# --- issue 15: instance and graded metrics in the tables ----------------------------------


def metrics_dict(seed: int, new: bool = True) -> dict:
    """A metrics.json of the current shape (``new``) or of one written before instance
    and graded metrics existed."""
    rng = np.random.default_rng(seed)
    r = lambda: float(rng.random())  # noqa: E731
    dirs = ("i2i", "i2t", "t2i", "t2t")
    m = {
        "method": "huse",
        "classification": {"image": r(), "text": r(), "fusion": r()},
        "classification_mode": "classifier",
        "retrieval": {d: {f"R@{k}": r() for k in (1, 5, 10)} for d in dirs},
        "hierarchical": {d: {f"HP@{k}": r() for k in (2, 5, 10)} for d in dirs},
        "mistake_severity": {d: {"mistake_severity": 3 * r()} for d in (*dirs, "fusion")},
        "data": {"train": 10, "val": 5, "test": 7, "classes": 3},
    }
    if new:
        m["instance"] = {
            d: {"R@1": r(), "R@5": r(), "R@10": r(), "MedR": float(rng.integers(1, 9))}
            for d in ("i2t", "t2i")
        }
        m["instance"]["xR@1"] = (m["instance"]["i2t"]["R@1"] + m["instance"]["t2i"]["R@1"]) / 2
        m["graded"] = {d: {"nDCG@10": r()} for d in dirs}
        m["graded"]["mean_nDCG@10"] = float(np.mean([m["graded"][d]["nDCG@10"] for d in dirs]))
    return m


def _table_rows(page: str, caption: str) -> dict[str, list[str]]:
    """Row name → cells of the first table after ``caption`` (blocks keyed 'dir/run')."""
    table = page.split(caption, 1)[1].split("</table>", 1)[0]
    rows, block = {}, ""
    for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S):
        g = re.match(r'<td colspan="\d+">(\w+):', tr)
        if g:
            block = g.group(1) + "/"
            continue
        name = re.search(r'<th class="row">([^<]*)', tr)
        if name:
            rows[block + name.group(1).strip()] = re.findall(r"<td[^>]*>([^<]*)</td>", tr)
    return rows


def test_metrics_tables_show_instance_and_graded_metrics():
    a, b, old = metrics_dict(0), metrics_dict(1), metrics_dict(2, new=False)
    page = report_html.metrics_table([("A", "", a), ("B", "", b), ("OLD", "", old)])
    fmt, fr = report_html.fmt, report_html.fmt_rank
    head = _table_rows(page, "Classification and headline")
    for name, m in (("A", a), ("B", b)):
        assert head[name][-2:] == [fmt(m["instance"]["xR@1"]), fmt(m["graded"]["mean_nDCG@10"])]
    assert head["OLD"][-2:] == ["—", "—"]  # an old metrics.json still renders
    by_dir = _table_rows(page, "Retrieval by direction")
    for d in ("i2i", "i2t", "t2i", "t2t"):
        col = [c[0] for c in report_html.DIRECTION_COLUMNS].index("nDCG@10")
        assert by_dir[f"{d}/A"][col] == fmt(a["graded"][d]["nDCG@10"])
        assert by_dir[f"{d}/OLD"][col] == "—"
    inst = _table_rows(page, "Instance-level retrieval")
    for d in ("i2t", "t2i"):
        for name, m in (("A", a), ("B", b)):
            i = m["instance"][d]
            assert inst[f"{d}/{name}"] == [
                fmt(i["R@1"]),
                fmt(i["R@5"]),
                fmt(i["R@10"]),
                fr(i["MedR"]),
            ]
        assert inst[f"{d}/OLD"] == ["—"] * 4
    # Bold marks the best: the higher R@1, the lower MedR.
    t2i = page.split("Instance-level retrieval", 1)[1].split("t2i:", 1)[1]
    best_r1 = max(a["instance"]["t2i"]["R@1"], b["instance"]["t2i"]["R@1"])
    best_medr = min(a["instance"]["t2i"]["MedR"], b["instance"]["t2i"]["MedR"])
    assert f'<td class="best">{fmt(best_r1)}</td>' in t2i
    assert f'<td class="best">{fr(best_medr)}</td>' in t2i


def test_headline_reads_instance_and_graded_blocks_when_the_summary_predates_them():
    m = metrics_dict(3)
    m["summary"] = {"cross_R@1": 0.1, "mean_HP@5": 0.2, "mean_R@1": 0.3, "fusion": 0.4}
    s = report_html._summary(m)
    assert s["instance_xR@1"] == m["instance"]["xR@1"]
    assert s["mean_nDCG@10"] == m["graded"]["mean_nDCG@10"]
    assert report_html._summary(metrics_dict(3, new=False))["instance_xR@1"] is None


# --- 15: class labels wrap between words -------------------------------------------------


def test_class_labels_break_only_between_levels_and_words():
    out = breakable_html("food<breads_and_carbs")
    assert out == "food&lt;<wbr>breads_<wbr>and_<wbr>carbs"
    assert breakable_html("a::b", sep="::") == "a::<wbr>b"
    assert breakable_html("<script>x") == "&lt;<wbr>script&gt;x"  # escaped, never markup
    assert report_html._class_html("food<breads_and_carbs", "<") == out
    # No rule on the page breaks words anywhere.
    assert "break-all" not in report_html.CSS
