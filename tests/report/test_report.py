"""The run report: written, self-contained, every section with the run's real numbers, and
``huse report RUN1 RUN2`` comparing two runs. Two tiny runs (60 demo items, 3 epochs) are
trained once per session."""

from __future__ import annotations

import argparse
import csv
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from huse.data.hierarchy import Hierarchy
from huse.report import analysis as an
from huse.report.html import fmt, write_report

DEMO = Path(__file__).resolve().parents[2] / "data" / "openclipart-demo"
SECTIONS = ("metrics", "training", "map", "graph", "retrieval", "classes")

pytestmark = pytest.mark.slow


# --- fixtures ----------------------------------------------------------------------------


def _tiny_manifest(out: Path, per_class: int = 4) -> Path:
    """``per_class`` demo items of every other class (15 classes, 8 top levels), image
    paths made absolute: small enough that the backbones run in seconds."""
    src = DEMO / "manifest_stripped.csv"
    if not src.is_file():
        pytest.skip(f"demo data set missing: {src}")
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    classes = sorted({r["classes"] for r in rows})[::2]
    taken = dict.fromkeys(classes, 0)
    keep = []
    for r in rows:
        if taken.get(r["classes"], per_class) < per_class:
            taken[r["classes"]] += 1
            r["image"] = str((DEMO / r["image"]).resolve())
            keep.append(r)
    path = out / "manifest.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    return path


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two trained runs on the same tiny manifest: ``huse`` and ``shared``."""
    from huse.dataset import DataConfig
    from huse.methods import resolve_config
    from huse.runs import fit

    root = tmp_path_factory.mktemp("report-runs")
    manifest = _tiny_manifest(root)
    data = DataConfig()  # the session's feature cache ($HUSE_CACHE, see conftest.py)
    out = {}
    for method in ("huse", "shared"):
        cfg = resolve_config(method, epochs=3, embed_dim=64, min_epochs=1)
        fit(manifest, root / method, data, cfg, progress=False)
        out[method] = root / method
    return out


@pytest.fixture(scope="session")
def report(runs) -> tuple[Path, str]:
    path = write_report(runs["huse"])
    return path, path.read_text(encoding="utf-8")


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, f"section {sid!r} missing"
    return m.group(1)


# --- the page ----------------------------------------------------------------------------


def test_report_is_written_in_the_run_folder(runs, report):
    path, page = report
    assert path == runs["huse"] / "report.html"
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


def test_report_is_self_contained(report):
    _, page = report
    assert "http://" not in page and "https://" not in page and "//cdn" not in page
    assert "<link" not in page and "@import" not in page and "url(" not in page
    # Every src is a data URI, every href an anchor on the page.
    srcs = re.findall(r'\bsrc="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/") for s in srcs)
    hrefs = re.findall(r'\bhref="([^"]*)"', page)
    assert hrefs and all(h.startswith("#") for h in hrefs)
    assert "<script" not in page


def test_every_section_is_drawn(report):
    _, page = report
    for sid in SECTIONS:
        body = _section(page, sid)
        assert "could not be drawn" not in body, body[:500]
    # Plots are embedded PNGs: training curves, map, two heatmaps, scatter, per-class bars.
    assert page.count('src="data:image/png;base64,') == 6
    # Retrieval thumbnails are embedded JPEGs.
    assert "data:image/jpeg;base64," in _section(page, "retrieval")


def test_metrics_section_has_the_runs_numbers(runs, report):
    _, page = report
    m = _metrics(runs["huse"])
    body = _section(page, "metrics")
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", body)
    for key in ("image", "text", "fusion"):
        assert fmt(m["classification"][key]) in cells
        assert fmt(m["raw_backbones"]["classification"][key]) in cells
    for d in ("i2i", "i2t", "t2i", "t2t"):
        for k in ("R@1", "R@5", "R@10"):
            assert fmt(m["retrieval"][d][k]) in cells
        for k in ("HP@2", "HP@5", "HP@10"):
            assert fmt(m["hierarchical"][d][k]) in cells
    # The headline card shows the same fusion accuracy.
    assert f'<div class="v">{fmt(m["classification"]["fusion"])}</div>' in page
    # The first row of the first table is this run, in the order of its columns.
    first_row = re.search(r"<tbody><tr>(.*?)</tr>", body, re.S).group(1)
    row_cells = re.findall(r"<td[^>]*>([^<]*)</td>", first_row)
    assert row_cells[:3] == [fmt(m["classification"][k]) for k in ("image", "text", "fusion")]


def _rows(body: str, caption: str) -> dict[str, list[str]]:
    """Row name → cells of the first table after ``caption`` (keyed 'direction/run' inside
    direction blocks)."""
    table = body.split(caption, 1)[1].split("</table>", 1)[0]
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


def _instance_and_graded_cells(body: str, run: str, m: dict) -> None:
    """The run's instance-level R@K and MedR, graded nDCG@10 and their headlines, as
    metrics.json has them, in the metrics section's tables."""
    from huse.report.html import DIRECTION_COLUMNS, fmt_rank

    head = _rows(body, "Classification and headline")[run]
    assert head[-2:] == [fmt(m["instance"]["xR@1"]), fmt(m["graded"]["mean_nDCG@10"])]
    col = [c[0] for c in DIRECTION_COLUMNS].index("nDCG@10")
    by_dir = _rows(body, "Retrieval by direction")
    for d in ("i2i", "i2t", "t2i", "t2t"):
        assert by_dir[f"{d}/{run}"][col] == fmt(m["graded"][d]["nDCG@10"])
    inst = _rows(body, "Instance-level retrieval")
    for d in ("i2t", "t2i"):
        i = m["instance"][d]
        want = [fmt(i["R@1"]), fmt(i["R@5"]), fmt(i["R@10"]), fmt_rank(i["MedR"])]
        assert inst[f"{d}/{run}"] == want


def test_metrics_section_shows_instance_and_graded_metrics(runs, report):
    _, page = report
    m = _metrics(runs["huse"])
    body = _section(page, "metrics")
    _instance_and_graded_cells(body, "huse (this run)", m)
    assert f'<div class="v">{fmt(m["instance"]["xR@1"])}</div>' in page  # headline card
    # The map's histogram and table split the other items by the tree.
    map_body = _section(page, "map")
    assert "same class, an item whose class is under the image's parent class" in map_body
    assert "… of which under the image's parent class" in map_body


def test_saved_model_card_matches_the_run(runs):
    """The card ``huse fit`` wrote: valid front matter whose model-index holds
    metrics.json's numbers, the run's classes listed."""
    import yaml

    import huse

    run = runs["huse"]
    text = (run / "model" / "README.md").read_text(encoding="utf-8")
    meta = yaml.safe_load(text.split("---\n")[1])
    m = _metrics(run)
    got = {x["name"]: x["value"] for r in meta["model-index"][0]["results"] for x in r["metrics"]}
    assert got["instance xR@1 (own pair)"] == round(m["instance"]["xR@1"], 4)
    assert got["mean graded nDCG@10"] == round(m["graded"]["mean_nDCG@10"], 4)
    assert got["fusion accuracy"] == round(m["classification"]["fusion"], 4)
    assert meta["datasets"] == [run.parent.name]  # the manifest's folder
    classes = huse.load(run).classes
    listed = re.findall(r"^- `([^`]*)`$", text, re.M)
    assert listed == classes
    assert f"Ran {m['training']['epochs_run']} epochs of a cap of 3" in text


def test_training_section_reports_the_log(runs, report):
    _, page = report
    body = _section(page, "training")
    m = _metrics(runs["huse"])
    assert f"{m['training']['epochs_run']} epochs" in body
    assert f"best epoch {m['training']['best_epoch']}" in body


def test_report_numbers_match_an_independent_computation(runs, report):
    """The graph correlation and the per-class view agree with a brute-force recomputation
    from the run's own embeddings, and the report's class scores give metrics.json's
    fusion accuracy."""
    _, page = report
    rd = an.load_run(runs["huse"])
    m = _metrics(runs["huse"])
    pred = rd.scores["fusion"].argmax(1)
    assert np.mean(pred == rd.labels) == pytest.approx(m["classification"]["fusion"])
    k = len(rd.hierarchy)
    cent = np.full((k, rd.img.shape[1]), np.nan)
    for c in range(k):
        rows = np.concatenate([rd.img[rd.labels == c], rd.txt[rd.labels == c]])
        if len(rows):
            v = rows.sum(0)
            cent[c] = v / np.linalg.norm(v)
    pairs = [
        (rd.graph[i, j], 1 - cent[i] @ cent[j])
        for i in range(k)
        for j in range(i + 1, k)
        if not np.isnan(cent[i]).any() and not np.isnan(cent[j]).any()
    ]
    x, y = np.array(pairs).T
    r = np.corrcoef(x, y)[0, 1]
    graph = _section(page, "graph")
    assert f'<td class="big">{fmt(r)}</td>' in graph
    assert f"{len(pairs)} class pairs" in graph
    # The map reports the mean cosine of an item's image and its text.
    pair_cos = float(np.mean(np.sum(rd.img * rd.txt, axis=1)))
    assert f"<td>{fmt(pair_cos)}</td>" in _section(page, "map")


def test_confused_pairs_table_lists_real_mistakes(runs, report):
    _, page = report
    rd = an.load_run(runs["huse"])
    pred = rd.scores["fusion"].argmax(1)
    h = rd.hierarchy
    wrong = {(h.classes[t], h.classes[p]) for t, p in zip(rd.labels, pred) if t != p}
    rows = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td><td>(\d+)</td>", _section(page, "classes"))
    assert rows, "no confused pairs listed"
    for true, predicted, _ in rows:
        # The cells carry <wbr> break points (and a tooltip span when shortened).
        true, predicted = (html.unescape(re.sub(r"<[^>]*>", "", c)) for c in (true, predicted))
        assert (true, predicted) in wrong


# --- comparing runs ----------------------------------------------------------------------


def test_huse_report_compares_two_runs(runs, tmp_path, capsys):
    from huse.cli.report import register

    parser = argparse.ArgumentParser(prog="huse")
    register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "compare.html"
    args = parser.parse_args(["report", str(runs["huse"]), str(runs["shared"]), "--out", str(out)])
    assert args.func(args) == 0
    assert str(out) in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    body = _section(page, "metrics")
    a, b = _metrics(runs["huse"]), _metrics(runs["shared"])
    assert "huse (this run)" in body and ">shared <span" in body
    assert "huse, " in body and "shared, " in body  # each column names its method
    for d in ("i2t", "t2i"):
        block = body.split(f"{d}: ")[1].split('class="group"')[0]
        cells = re.findall(r"<td[^>]*>([^<]*)</td>", block)
        assert fmt(a["retrieval"][d]["R@1"]) in cells
        assert fmt(b["retrieval"][d]["R@1"]) in cells
    first_table = body.split("Retrieval by direction")[0]
    rows = re.findall(r'<th class="row">(.*?)</th>((?:<td[^>]*>[^<]*</td>)+)', first_table)
    by_name = {re.sub(r"<.*", "", n).strip(): re.findall(r">([^<]*)</td>", c) for n, c in rows}
    assert by_name["shared"][2] == fmt(b["classification"]["fusion"])
    # Instance-level and graded metrics of both runs, side by side.
    _instance_and_graded_cells(body, "huse (this run)", a)
    _instance_and_graded_cells(body, "shared", b)
    assert "Embedding space, run by run" in body
    # The comparison does not overwrite either run's own report.
    assert not (runs["shared"] / "report.html").exists()


def test_report_of_a_folder_that_is_no_run(tmp_path, capsys):
    from huse.cli.report import register

    parser = argparse.ArgumentParser(prog="huse")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", str(tmp_path)])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "no metrics.json" in err and "huse fit" in err


def test_import_huse_does_not_import_matplotlib():
    code = (
        "import sys, huse, huse.runs, huse.cli.report; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the numbers behind the plots --------------------------------------------------------


def test_centroid_distances_against_a_loop():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(9, 5)), rng.normal(size=(9, 5))
    labels = np.array([0, 0, 1, 1, 1, 3, 3, 0, 1])
    d, n = an.centroid_distances([img, txt], labels, 4)
    assert n.tolist() == [3, 4, 0, 2]
    for i in (0, 1, 3):
        for j in (0, 1, 3):
            ci = np.concatenate([img[labels == i], txt[labels == i]]).sum(0)
            cj = np.concatenate([img[labels == j], txt[labels == j]]).sum(0)
            want = 1 - ci @ cj / np.linalg.norm(ci) / np.linalg.norm(cj)
            assert d[i, j] == pytest.approx(want, abs=1e-12)
    assert np.isnan(d[2]).all() and np.isnan(d[:, 2]).all()


def test_matrix_correlation_is_pearson_and_spearman_of_the_upper_triangle():
    rng = np.random.default_rng(1)
    a = rng.random((6, 6))
    b = a**3 + 0.1 * rng.random((6, 6))
    b[0, 5] = np.nan
    c = an.matrix_correlation(a, b)
    iu = np.triu_indices(6, 1)
    ok = np.isfinite(b[iu])
    x, y = a[iu][ok], b[iu][ok]
    assert c["pairs"] == 14
    assert c["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    assert c["spearman"] == pytest.approx(np.corrcoef(rx, ry)[0, 1])


def test_per_class_accuracy_and_confused_pairs_by_hand():
    h = Hierarchy(["a<x", "a<y", "b<z"])
    labels = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 2, 2])
    acc, n = an.per_class_accuracy(pred, labels, 3)
    assert acc.tolist() == pytest.approx([1 / 3, 1 / 2, 1.0])
    assert n.tolist() == [3, 2, 1]
    pairs = an.confused_pairs(pred, labels, h, graph=np.full((3, 3), 0.5))
    assert [(p["true"], p["pred"], p["count"], p["tree_distance"]) for p in pairs] == [
        ("a<x", "a<y", 2, 2),
        ("a<y", "b<z", 1, 4),
    ]
    assert pairs[0]["share"] == pytest.approx(2 / 3)
    assert pairs[0]["graph_distance"] == 0.5


def test_top_k_leaves_out_the_query_item():
    rng = np.random.default_rng(2)
    q = rng.normal(size=(7, 3))
    g = q + 0.01 * rng.normal(size=(7, 3))  # each query's own item is its nearest
    res = an.top_k(q, g, np.array([0, 4]), 3)
    for row, qi in zip(res, (0, 4)):
        sims = g @ q[qi]
        sims[qi] = -np.inf
        assert row.tolist() == np.argsort(-sims, kind="stable")[:3].tolist()
        assert qi not in row


def test_pick_queries_spreads_over_top_levels():
    h = Hierarchy(["a<x", "a<y", "b<z", "c<w"])
    labels = np.array([0, 0, 1, 1, 2, 3, 3])
    q = an.pick_queries(labels, h, 3)
    assert len(set(q)) == 3
    assert len({h.top_level(h.classes[labels[i]]) for i in q}) == 3
