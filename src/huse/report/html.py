"""``write_report``: one self-contained HTML page per run (CSS inline, images as data URIs,
no external URL), comparing other runs' metrics side by side when given."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import re
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from huse._io import atomic_write_text
from huse.evaluate import DIRECTIONS, HP_KS, RECALL_KS, summary_scores
from huse.report import analysis as an
from huse.report import plots  # matplotlib: a missing [report] extra fails at import
from huse.report.labels import (
    TABLE_CHARS,
    breakable_html,
    class_label,
    ellipsize,
    leaf_label,
    table_label,
    tooltip,
)

MAX_MAP_POINTS = 1500  # image + text points in the 2-D map
MAP_PAIR_LINES = 60
N_QUERIES = 4
TOP_K = 5
THUMB_SIDE = 96

DIRECTION_NAMES = {
    "i2i": "image → image",
    "i2t": "image → text",
    "t2i": "text → image",
    "t2t": "text → text",
}


def fmt(x) -> str:
    """A metric as the model card prints it: three decimals, '—' when absent."""
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"


def fmt_rank(x) -> str:
    """A median rank (1 = first): one decimal, '—' when absent."""
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.1f}"


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _img(png: bytes, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" alt="{esc(alt)}" src="{_data_uri(png, "image/png")}">'


# --- metrics table -----------------------------------------------------------------------


def _sev(m: dict, key: str):
    return (m.get("mistake_severity", {}).get(key) or {}).get("mistake_severity")


OVERALL_COLUMNS: list[tuple[str, Callable[[dict], float | None], bool]] = [
    ("image acc.", lambda m: m["classification"].get("image"), True),
    ("text acc.", lambda m: m["classification"].get("text"), True),
    ("fusion acc.", lambda m: m["classification"].get("fusion"), True),
    ("fusion mistake severity", lambda m: _sev(m, "fusion"), False),
    ("cross-modal R@1", lambda m: _summary(m).get("cross_R@1"), True),
    ("mean R@1", lambda m: _summary(m).get("mean_R@1"), True),
    ("mean HP@5", lambda m: _summary(m).get("mean_HP@5"), True),
    ("instance xR@1", lambda m: _summary(m).get("instance_xR@1"), True),
    ("mean nDCG@10", lambda m: _summary(m).get("mean_nDCG@10"), True),
]

DIRECTION_COLUMNS: list[tuple[str, Callable[[dict, str], float | None], bool]] = [
    *((f"R@{k}", lambda m, d, k=k: m["retrieval"][d][f"R@{k}"], True) for k in RECALL_KS),
    *((f"HP@{k}", lambda m, d, k=k: m["hierarchical"][d][f"HP@{k}"], True) for k in HP_KS),
    ("nDCG@10", lambda m, d: m["graded"][d]["nDCG@10"], True),
    ("mistake severity", lambda m, d: _sev(m, d), False),
]

INSTANCE_DIRECTIONS = ("i2t", "t2i")
INSTANCE_COLUMNS: list[tuple[str, Callable[[dict, str], float | None], bool]] = [
    *((f"R@{k}", lambda m, d, k=k: m["instance"][d][f"R@{k}"], True) for k in RECALL_KS),
    ("MedR", lambda m, d: m["instance"][d]["MedR"], False),
]


def _summary(m: dict) -> dict:
    """The headline numbers of a metrics dict: its ``summary``, with the instance and
    graded headlines read from their own blocks when the summary predates them (a
    metrics.json written before they existed has neither: those stay None)."""
    s = dict(m.get("summary") or summary_scores(m))
    if s.get("instance_xR@1") is None:
        s["instance_xR@1"] = _get(lambda: m["instance"]["xR@1"])
    if s.get("mean_nDCG@10") is None:
        s["mean_nDCG@10"] = _get(lambda: m["graded"]["mean_nDCG@10"])
    return s


def _get(get: Callable, *args) -> float | None:
    try:
        return get(*args)
    except (KeyError, TypeError):
        return None


def _rows_html(
    labels: Sequence[str],
    notes: Sequence[str],
    values: list[list],
    higher,
    formats: Sequence[Callable] | None = None,
) -> str:
    """Table rows of values (rows × columns); each column's best is bold when more than one
    row has a value. ``formats``: one formatter per column (default ``fmt``)."""
    formats = formats or [fmt] * len(higher)
    best = []
    for j, hi in enumerate(higher):
        have = [r[j] for r in values if r[j] is not None]
        best.append((max(have) if hi else min(have)) if len(have) > 1 else None)
    out = []
    for label, note, row in zip(labels, notes, values):
        cells = "".join(
            f'<td class="{"best" if v is not None and v == best[j] else ""}">{formats[j](v)}</td>'
            for j, v in enumerate(row)
        )
        out.append(
            f'<tr><th class="row">{esc(label)} <span class="note">{esc(note)}</span></th>'
            f"{cells}</tr>"
        )
    return "".join(out)


def _head(first: str, cols: Sequence[tuple[str, object, bool]]) -> str:
    cells = "".join(
        f'<th>{esc(name)} <span class="note">{"↑" if hi else "↓"}</span></th>'
        for name, _, hi in cols
    )
    return f"<thead><tr><th>{esc(first)}</th>{cells}</tr></thead>"


def metrics_table(columns: Sequence[tuple[str, str, dict]]) -> str:
    """Two tables over the runs given as (name, note, metrics dict): classification and
    headline numbers (one row per run), then R@K, HP@K and mistake severity per retrieval
    direction (one row per run in each direction's block). Bold: the best in a column
    (of a block)."""
    names = [c[0] for c in columns]
    notes = [c[1] for c in columns]
    overall = [[_get(get, m) for _, get, _ in OVERALL_COLUMNS] for _, _, m in columns]
    t1 = (
        '<table class="metrics">'
        + _head("run", OVERALL_COLUMNS)
        + "<tbody>"
        + _rows_html(names, notes, overall, [hi for *_, hi in OVERALL_COLUMNS])
        + "</tbody></table>"
    )
    blocks = []
    n_cols = len(DIRECTION_COLUMNS) + 1
    for d in DIRECTIONS:
        vals = [[_get(get, m, d) for _, get, _ in DIRECTION_COLUMNS] for _, _, m in columns]
        keep = [i for i, row in enumerate(vals) if any(v is not None for v in row)]
        blocks.append(
            f'<tr class="group"><td colspan="{n_cols}">{esc(d)}: {esc(DIRECTION_NAMES[d])}</td></tr>'
            + _rows_html(
                [names[i] for i in keep],
                [notes[i] for i in keep],
                [vals[i] for i in keep],
                [hi for *_, hi in DIRECTION_COLUMNS],
            )
        )
    t2 = (
        '<table class="metrics">'
        + _head("direction / run", DIRECTION_COLUMNS)
        + f"<tbody>{''.join(blocks)}</tbody></table>"
    )
    # Instance level: every run's row stays, "—" where its metrics.json has no such block
    # (written before instance retrieval existed) or the raw spaces differ.
    blocks = []
    for d in INSTANCE_DIRECTIONS:
        vals = [[_get(get, m, d) for _, get, _ in INSTANCE_COLUMNS] for _, _, m in columns]
        blocks.append(
            f'<tr class="group"><td colspan="{len(INSTANCE_COLUMNS) + 1}">{esc(d)}: '
            f"{esc(DIRECTION_NAMES[d])}</td></tr>"
            + _rows_html(
                names,
                notes,
                vals,
                [hi for *_, hi in INSTANCE_COLUMNS],
                [fmt] * len(RECALL_KS) + [fmt_rank],
            )
        )
    t3 = (
        '<table class="metrics instance">'
        + _head("direction / run", INSTANCE_COLUMNS)
        + f"<tbody>{''.join(blocks)}</tbody></table>"
    )
    return (
        "<h3>Classification and headline</h3>"
        + t1
        + "<h3>Retrieval by direction (class level)</h3>"
        + t2
        + "<h3>Instance-level retrieval: an item's own image or text is the one answer</h3>"
        + '<p class="note">R@K: the share of queries whose own pair is among the first K; '
        + "MedR: the median rank of the own pair (1 = first).</p>"
        + t3
    )


def _column(run: Path, m: dict, main: bool) -> tuple[str, str, dict]:
    d = m.get("data", {})
    note = f"{m.get('method', '?')}, {d.get('test', '?')} test items"
    return (run.name or str(run)) + (" (this run)" if main else ""), note, m


# --- thumbnails --------------------------------------------------------------------------


class Thumbnails:
    """Catalogue images downscaled to ``side`` pixels, as data URIs, each made once."""

    def __init__(self, side: int = THUMB_SIDE) -> None:
        self.side = side
        self._done: dict[str, str | None] = {}

    def __call__(self, path: str) -> str | None:
        if path not in self._done:
            self._done[path] = self._make(path)
        return self._done[path]

    def _make(self, path: str) -> str | None:
        from huse.data.images import ImageError, thumbnail_bytes

        try:
            return _data_uri(thumbnail_bytes(path, self.side, fmt="JPEG"), "image/jpeg")
        except ImageError:
            return None


def _class_html(name: str, sep: str) -> str:
    """A class path for the page: bounded, breakable between levels and words (never
    inside one), the full name as a tooltip when readable."""
    shown = table_label(name, sep)
    tip = tooltip(name, shown)
    body = breakable_html(shown, sep)
    return f'<span title="{esc(tip)}">{body}</span>' if tip else body


def _thumb_html(uri: str | None, alt: str) -> str:
    alt = ellipsize(alt, TABLE_CHARS)
    if uri is None:
        return f'<div class="tbox"><div class="thumb missing">image unreadable<br>{esc(alt)}</div></div>'
    return f'<div class="tbox"><img class="thumb" alt="{esc(alt)}" src="{uri}"></div>'


def _short(text: str, n: int = 110) -> str:
    # The page links to nothing outside itself, not even through a catalogue text.
    text = re.sub(r"(?i)\b[a-z][a-z0-9+.-]*://", "", " ".join(str(text).split()))
    return text if len(text) <= n else text[: n - 1] + "…"


# --- sections ----------------------------------------------------------------------------


def _section(sid: str, title: str, build: Callable[[], str]) -> str:
    """A titled section; if building it fails, the page says so and the rest still renders."""
    try:
        inner = build()
    except Exception as e:  # a broken plot must not cost the whole report
        warnings.warn(f"report section {sid!r} failed: {e!r}", stacklevel=2)
        tb = traceback.format_exception_only(type(e), e)[-1].strip()
        inner = f'<p class="error">This section could not be drawn: {esc(tb)}</p>'
    return f'<section id="{sid}"><h2>{esc(title)}</h2>{inner}</section>'


def _training_section(rd: an.RunData, others: dict[str, pd.DataFrame]) -> str:
    if rd.log is None:
        return "<p>This run has no train_log.csv (it was evaluated, not trained, here).</p>"
    t = rd.metrics.get("training", {})
    best = t.get("best_epoch")
    png = plots.training_curves(rd.log, best, others)
    last = rd.log.iloc[-1]
    losses = [c for c in rd.log.columns if c.startswith("train_") and c != "train_graph_active"]
    final = " · ".join(f"{c.removeprefix('train_')} {last[c]:.4f}" for c in losses)
    cap = rd.train_config.get("epochs")
    of_cap = f" of a cap of {esc(cap)}" if cap else ""
    info = (
        f"{t.get('epochs_run', len(rd.log))} epochs{of_cap}, stopped by "
        f"{esc(t.get('stopped', '?'))}, best epoch {esc(best)} (its weights were kept and "
        "evaluated"
        + (
            f"; the instance towers' own best epoch was {esc(t['instance_best_epoch'])})"
            if t.get("instance_best_epoch")
            else ")"
        )
        if t
        else f"{len(rd.log)} epochs{of_cap}"
    )
    log = rd.log
    flat = (
        "train_graph_active" in log
        and log["train_graph_active"].notna().any()
        and not any(
            title.startswith("share of class pairs") for title, _ in plots.training_panels(log)
        )
    )
    margin = (
        f" Every epoch had the same share of class pairs under the graph margin "
        f"({fmt(float(log['train_graph_active'].dropna().iloc[0]))}), so it is not drawn."
        if flat
        else ""
    )
    return f"<p>{info}. Final epoch losses: {esc(final)}.{margin}</p>" + _img(
        png, "training curves"
    )


def _map_section(rd: an.RunData, h_tops: list[str], colours: dict) -> str:
    n = len(rd.labels)
    keep = an.subsample(n, MAX_MAP_POINTS // 2)
    img, txt, lab = rd.img[keep], rd.txt[keep], rd.labels[keep]
    xy, method = an.project_2d(np.concatenate([img, txt]))
    tops = [rd.hierarchy.top_level(rd.hierarchy.classes[c]) for c in lab]
    pairs = an.subsample(len(keep), MAP_PAIR_LINES, seed=1)
    rel = rd.hierarchy.graded_relevance()
    sims = an.cross_similarities(rd.img, rd.txt, rd.labels, rel)
    png = plots.embedding_map(xy, len(keep), tops, colours, pairs, method, sims)
    g = an.gap_stats(rd.img, rd.txt, rd.labels, rel)
    sub = "" if len(keep) == n else f" (a random {len(keep)} of {n})"
    hist_n = len(sims["pair"])
    hist_sub = "" if hist_n == n else f" (cosines of a random {hist_n} of the {n} test items)"
    return (
        f"<p>{len(keep)} test items{sub}, each drawn twice: its image (●) and its text (▲), "
        f"placed by {method} of the {rd.img.shape[1]}-d embeddings; colour is the "
        "top-level class. A visible cross-modal gap shows as images and texts forming "
        "separate clouds with long grey lines; a closed gap as lines short enough to "
        "vanish inside class clusters. Right: the cosine of a test image with a test text, "
        "split by how the text relates to the image: its own pair, another item of the "
        "same class, an item whose class is under the image's parent class, any other"
        f"{esc(hist_sub)}.</p>"
        + _img(png, "2-D map of the test embeddings")
        + '<table class="kv">'
        + f"<tr><th>modality gap ‖mean image − mean text‖</th><td>{fmt(g['modality_gap'])}</td></tr>"
        + f"<tr><th>mean cosine, an item's image and its text</th><td>{fmt(g['pair_cos'])}</td></tr>"
        + f"<tr><th>mean cosine, image and text of other items of the same class</th><td>{fmt(g['same_class_cos'])}</td></tr>"
        + f"<tr><th>mean cosine, image and text of different classes</th><td>{fmt(g['other_class_cos'])}</td></tr>"
        + f"<tr><th>… of which under the image's parent class</th><td>{fmt(g['same_parent_cos'])}</td></tr>"
        + f"<tr><th>… of which elsewhere in the tree</th><td>{fmt(g['unrelated_cos'])}</td></tr>"
        + "</table>"
    )


def _graph_stats(rd: an.RunData) -> dict:
    h = rd.hierarchy
    k = len(h)
    learned, counts = an.centroid_distances([rd.img, rd.txt], rd.labels, k)
    tree = h.distance_matrix().astype(float)
    out = {
        "learned": learned,
        "counts": counts,
        "graph_r": an.matrix_correlation(rd.graph, learned) if rd.graph is not None else None,
        "tree_r": an.matrix_correlation(tree, learned),
        "graph_tree_r": (an.matrix_correlation(rd.graph, tree) if rd.graph is not None else None),
    }
    for name, x in (("raw_image", rd.raw_img), ("raw_text", rd.raw_txt)):
        raw, _ = an.centroid_distances([x], rd.labels, k)
        out[f"{name}_graph_r"] = (
            an.matrix_correlation(rd.graph, raw) if rd.graph is not None else None
        )
        out[f"{name}_tree_r"] = an.matrix_correlation(tree, raw)
    return out


def _r(c: dict | None, key: str = "pearson") -> str:
    return fmt(None if c is None else c.get(key))


def _figure(png: bytes, alt: str, caption: str) -> str:
    return f"<figure>{_img(png, alt, cls='plot heat')}<figcaption>{caption}</figcaption></figure>"


def _heatmaps_html(rd: an.RunData, gs: dict) -> tuple[str, str]:
    """The two class heatmaps (graph, learned) as page figures, and a sentence saying
    what they show: every class in hierarchy order, or where the classes are too many to
    read one by one, the top-level groups and the classes with the most test items."""
    h = rd.hierarchy
    k = len(h)
    shown = an.heatmap_classes(h, gs["counts"])
    names = [h.classes[i] for i in shown]
    groups = [h.top_level(c) for c in names]
    leaves = [leaf_label(c, h.sep) for c in names]
    ix = np.ix_(shown, shown)
    figs = []
    if len(shown) < k:
        order = an.hierarchy_order(h)
        all_groups = [h.top_level(h.classes[i]) for i in order]
        full = np.ix_(order, order)
        gg, gnames = an.group_matrix(rd.graph[full], all_groups)
        gl, _ = an.group_matrix(gs["learned"][full], all_groups)
        if 2 <= len(gnames) <= an.HEATMAP_CLASSES:
            for mat, alt, what in (
                (gg, "semantic graph by top-level group", "semantic graph"),
                (gl, "learned distance by top-level group", "learned centroid distance"),
            ):
                png = plots.class_heatmap(
                    mat, gnames, None, f"mean {what}", cell_px=22, blank_diagonal=False
                )
                figs.append(
                    _figure(
                        png,
                        alt,
                        f"All {k} classes by top-level group: mean {esc(what)} over the "
                        "class pairs of two groups (diagonal: pairs inside one group)",
                    )
                )
        view = (
            f"There are {k} classes, too many to name in one picture: first the "
            f"{len(gnames)} top-level groups, then the {len(shown)} classes with the most "
            "test items, in hierarchy order."
            if figs
            else f"There are {k} classes, too many to name in one picture: the "
            f"{len(shown)} with the most test items, in hierarchy order."
        )
        which = f"the {len(shown)} classes with the most test items (of {k})"
    else:
        view = "Classes in hierarchy order, named on the left, their top-level group on the right and on top."
        which = f"all {k} classes"
    figs.append(
        _figure(
            plots.class_heatmap(rd.graph[ix], leaves, groups, "semantic graph distance"),
            "semantic graph heatmap",
            f"Semantic graph: the target distance between class names, {esc(which)}",
        )
    )
    figs.append(
        _figure(
            plots.class_heatmap(gs["learned"][ix], leaves, groups, "cosine distance"),
            "learned distance heatmap",
            f"Learned: cosine distance between the class centroids of the test embeddings, "
            f"{esc(which)}",
        )
    )
    return f'<div class="heatmaps">{"".join(figs)}</div>', view


def _graph_section(rd: an.RunData, gs: dict) -> str:
    h = rd.hierarchy
    if rd.graph is None:
        return "<p>This run has no semantic graph (graph.npy).</p>"
    order = an.hierarchy_order(h)
    tops = [h.top_level(h.classes[i]) for i in order]
    ix = np.ix_(order, order)
    heatmaps, view = _heatmaps_html(rd, gs)
    scatter = plots.graph_scatter(rd.graph[ix], gs["learned"][ix], tops, gs["graph_r"])
    missing = int((gs["counts"] == 0).sum())
    miss = f" {missing} classes have no test items (grey rows and columns)." if missing else ""
    gr = gs["graph_r"]
    return (
        "<p>The semantic graph the training pulls towards (distance between class "
        "names) and the cosine distance between the class centroids of the learned "
        "test embeddings (image and text pooled), white lines between top-level "
        f"classes. {esc(view)}{miss} If the learned space follows the graph, the "
        "two heatmaps show the same blocks and the class pairs below lie on a rising line.</p>"
        + heatmaps
        + '<div class="row">'
        + _img(scatter, "graph against learned distance per class pair", cls="plot side")
        + '<table class="kv">'
        + f"<tr><th>correlation of graph and learned distance (Pearson r, {gr['pairs']} class pairs)</th>"
        f'<td class="big">{_r(gr)}</td></tr>'
        + f"<tr><th>… Spearman ρ</th><td>{_r(gr, 'spearman')}</td></tr>"
        + f"<tr><th>correlation of tree distance and learned distance (Pearson r)</th><td>{_r(gs['tree_r'])}</td></tr>"
        + f"<tr><th>same with raw backbone features, image · text (graph r)</th>"
        f"<td>{_r(gs['raw_image_graph_r'])} · {_r(gs['raw_text_graph_r'])}</td></tr>"
        + f"<tr><th>same with raw backbone features, image · text (tree r)</th>"
        f"<td>{_r(gs['raw_image_tree_r'])} · {_r(gs['raw_text_tree_r'])}</td></tr>"
        + f"<tr><th>correlation of the graph with the tree itself</th><td>{_r(gs['graph_tree_r'])}</td></tr>"
        + "</table></div>"
    )


def _retrieval_section(rd: an.RunData, thumbs: Thumbnails) -> str:
    h = rd.hierarchy
    items = rd.items
    queries = an.pick_queries(rd.labels, h, N_QUERIES)
    out = [
        "<p>Test queries from different top-level classes; the gallery is the test split "
        "in the other modality, without the query's own item (as in R@K). A green frame "
        "marks a result of the query's class, amber one under the same top-level class, "
        "red one elsewhere.</p>"
    ]

    def mark(qc: int, rc: int) -> str:
        if qc == rc:
            return "ok"
        return "near" if h.top_level(h.classes[qc]) == h.top_level(h.classes[rc]) else "bad"

    def cls_line(c: int) -> str:
        return f'<div class="cls">{_class_html(h.classes[c], h.sep)}</div>'

    for direction, q_emb, g_emb in (("t2i", rd.txt, rd.img), ("i2t", rd.img, rd.txt)):
        top = an.top_k(q_emb, g_emb, queries, TOP_K)
        out.append(f"<h3>{esc(DIRECTION_NAMES[direction])}</h3>")
        for qi, res in zip(queries, top):
            qc = int(rd.labels[qi])
            row = items.iloc[qi]
            if direction == "t2i":
                q = f'<div class="qtext">“{esc(_short(row["text"], 160))}”</div>'
            else:
                q = _thumb_html(thumbs(row["image"]), row["id"])
            cells = []
            for rank, ri in enumerate(res, 1):
                rc = int(rd.labels[ri])
                r = items.iloc[ri]
                body = (
                    _thumb_html(thumbs(r["image"]), r["id"])
                    if direction == "t2i"
                    else f'<div class="rtext">{esc(_short(r["text"]))}</div>'
                )
                cells.append(
                    f'<div class="res {mark(qc, rc)}"><span class="rank">{rank}</span>'
                    f"{body}{cls_line(rc)}</div>"
                )
            hits = int(sum(int(rd.labels[ri]) == qc for ri in res))
            out.append(
                f'<div class="query"><div class="q">{q}{cls_line(qc)}</div>'
                f'<div class="arrow">→<div class="note">{hits}/{len(res)}<br>correct</div></div>'
                f"{''.join(cells)}</div>"
            )
    return "".join(out)


def _classes_section(rd: an.RunData, colours: dict) -> str:
    h = rd.hierarchy
    k = len(h)
    order = an.hierarchy_order(h)
    key = "fusion" if rd.scores.get("fusion") is not None else "text"
    pred = an.predictions(rd.scores[key])
    acc, n = an.per_class_accuracy(pred, rd.labels, k)
    per = {}
    for mod in ("image", "text"):
        s = rd.scores.get(mod)
        per[mod] = (
            an.per_class_accuracy(an.predictions(s), rd.labels, k)[0] if s is not None else None
        )
    shown = [i for i in order if n[i] > 0]
    names = [h.classes[i] for i in shown]
    cols = [colours[h.top_level(c)] for c in names]
    png = plots.per_class_accuracy(
        [class_label(c, h.sep) for c in names],
        acc[shown],
        n[shown],
        cols,
        image=None if per["image"] is None else per["image"][shown],
        text=None if per["text"] is None else per["text"][shown],
    )
    overall = float((pred == rd.labels).mean())
    absent = k - len(shown)
    pairs = an.confused_pairs(pred, rd.labels, h, rd.graph, top=10)
    rows = "".join(
        f"<tr><td>{_class_html(p['true'], h.sep)}</td><td>{_class_html(p['pred'], h.sep)}</td>"
        f"<td>{p['count']}</td>"
        f"<td>{p['share']:.0%}</td><td>{p['tree_distance']}</td>"
        f"<td>{fmt(p['graph_distance'])}</td></tr>"
        for p in pairs
    )
    sev = _sev(rd.metrics, key)
    table = (
        '<table class="confused"><thead><tr><th>true class</th><th>predicted as</th>'
        "<th>count</th><th>share of the class</th><th>tree distance</th>"
        f"<th>graph distance</th></tr></thead><tbody>{rows}</tbody></table>"
        if pairs
        else "<p>No mistakes on the test split.</p>"
    )
    absent_note = f" {absent} classes without test items are left out." if absent else ""
    return (
        f"<p>Bars: accuracy of the {key} prediction per class ({rd.classification_mode} "
        f"scores, overall {fmt(overall)}), in hierarchy order and coloured by top-level "
        f"class; ○ image only, ▲ text only.{absent_note}</p>"
        + '<div class="row">'
        + _img(png, "per-class accuracy", cls="plot narrow")
        + "<div><h3>Most confused class pairs</h3>"
        + f"<p>Mean tree distance of a {key} mistake (mistake severity): {fmt(sev)}. "
        "Tree distance 2: siblings under one parent; 4: different top-level classes "
        "(for two-level paths). Graph distance: the semantic graph's.</p>" + table + "</div></div>"
    )


def _compare_space_table(runs: Sequence[tuple[str, dict]]) -> str:
    """Embedding-space statistics of each run, side by side."""
    rows = [
        ("modality gap ↓", lambda s: s["gap"]["modality_gap"]),
        ("mean cosine of an item's image and text ↑", lambda s: s["gap"]["pair_cos"]),
        ("mean image–text cosine, same class", lambda s: s["gap"]["same_class_cos"]),
        ("mean image–text cosine, other class", lambda s: s["gap"]["other_class_cos"]),
        (
            "mean image–text cosine, under the image's parent class",
            lambda s: s["gap"].get("same_parent_cos"),
        ),
        (
            "graph vs learned distance, Pearson r ↑",
            lambda s: (s["graph"]["graph_r"] or {}).get("pearson"),
        ),
        ("tree vs learned distance, Pearson r ↑", lambda s: s["graph"]["tree_r"].get("pearson")),
    ]
    head = "".join(f"<th>{esc(name)}</th>" for name, _ in runs)
    body = "".join(
        f'<tr><th class="row">{esc(label)}</th>'
        + "".join(f"<td>{fmt(get(s)) if s else '—'}</td>" for _, s in runs)
        + "</tr>"
        for label, get in rows
    )
    return f'<table class="metrics"><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>'


CSS = """
:root { --ok:#2e9d4b; --near:#e0a526; --bad:#d0453a; --ink:#1d2330; --mute:#667085; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
  color: var(--ink); margin: 0; background: #f6f7f9; line-height: 1.45; font-size: 14px; }
main { max-width: 1280px; margin: 0 auto; padding: 18px 28px 60px; }
header { background: #1d2330; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header .sub { color: #c5cad3; font-size: 13px; }
nav { margin-top: 10px; font-size: 13px; }
nav a { color: #9ecbff; margin-right: 14px; text-decoration: none; }
section { background: #fff; border-radius: 8px; padding: 16px 22px; margin: 18px 0;
  box-shadow: 0 1px 3px rgba(0,0,0,.08); }
h2 { margin: 0 0 8px; font-size: 18px; }
h3 { margin: 18px 0 6px; font-size: 15px; }
.note { color: var(--mute); font-size: 11px; font-weight: normal; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 14px 0 0; }
.card { background: #fff; border-radius: 8px; padding: 10px 16px; min-width: 150px;
  box-shadow: 0 1px 3px rgba(0,0,0,.08); }
.card .v { font-size: 22px; font-weight: 600; }
.card .k { color: var(--mute); font-size: 12px; }
img.plot { max-width: 100%; display: block; margin: 8px 0; }
img.plot.narrow { max-width: 560px; }
img.plot.side { max-width: 460px; margin: 0; }
.row { display: flex; gap: 22px; align-items: flex-start; flex-wrap: wrap; }
.row > div, .row > table { flex: 1 1 420px; }
.row > img { flex: none; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
table.confused { font-size: 12px; }
td, th { padding: 3px 10px; text-align: right; border-bottom: 1px solid #eceef2; }
th { font-weight: 600; vertical-align: bottom; }
th.row, table.kv th, table.confused td:nth-child(-n+2) { text-align: left; font-weight: normal; }
table.confused th:nth-child(-n+2) { text-align: left; }
tr.group td { text-align: left; font-weight: 600; background: #f1f3f6; padding-top: 6px; }
td.best { font-weight: 700; color: #0b5cad; }
td.big { font-size: 18px; font-weight: 700; }
.error { color: var(--bad); font-weight: 600; }
.query { display: flex; align-items: flex-start; gap: 8px; margin: 8px 0 14px; }
.q { width: 210px; flex: none; background: #f1f3f6; border-radius: 6px; padding: 6px; }
.qtext { font-style: italic; font-size: 13px; }
.arrow { font-size: 22px; color: var(--mute); width: 46px; text-align: center; flex: none; }
.res { width: 132px; flex: none; border: 3px solid; border-radius: 6px; padding: 4px;
  position: relative; background: #fff; }
.res.ok { border-color: var(--ok); } .res.near { border-color: var(--near); }
.res.bad { border-color: var(--bad); }
.rank { position: absolute; top: 2px; left: 4px; font-size: 11px; color: var(--mute); }
.tbox { height: 100px; display: flex; align-items: center; justify-content: center; }
img.thumb { display: block; max-width: 96px; max-height: 96px; }
.thumb.missing { font-size: 11px; color: var(--mute); text-align: center; }
.rtext { font-size: 12px; height: 76px; overflow: hidden; padding-top: 12px; }
/* Class paths break at the <wbr> after a level or an underscore; inside a word only when
   that word alone is wider than the box. */
.cls { font-size: 11px; color: var(--mute); margin-top: 3px; overflow-wrap: break-word; }
table.confused td { overflow-wrap: break-word; }
.heatmaps { display: flex; flex-wrap: wrap; gap: 10px 28px; align-items: flex-start; }
figure { margin: 8px 0; }
figcaption { color: var(--mute); font-size: 12px; max-width: 640px; }
footer { color: var(--mute); font-size: 12px; text-align: center; }
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("huse")
    except PackageNotFoundError:
        return "unknown"


def _card(value: str, label: str) -> str:
    return f'<div class="card"><div class="v">{esc(value)}</div><div class="k">{esc(label)}</div></div>'


def build_html(run: Path, compare: Sequence[Path] = (), progress: bool = False) -> str:
    """The report page of ``run`` (and ``compare`` runs beside it) as one HTML string."""
    t0 = time.perf_counter()
    rd = an.load_run(run, progress=progress)
    h = rd.hierarchy
    m = rd.metrics
    h_tops = an.top_levels(h)
    colours = plots.palette(h_tops)
    others: list[tuple[Path, dict, pd.DataFrame | None, dict | None]] = []
    for c in compare:
        c = Path(c)
        cm = an.read_metrics(c)
        try:  # the space statistics need the run's model and features; metrics do not
            crd = an.load_run(c, progress=progress)
            space = {
                "gap": an.gap_stats(crd.img, crd.txt, crd.labels, crd.hierarchy.graded_relevance()),
                "graph": _graph_stats(crd),
            }
        except Exception as e:
            warnings.warn(f"{c}: embedding statistics left out: {e}", stacklevel=2)
            space = None
        others.append((c, cm, an.read_log(c), space))

    gs = _graph_stats(rd)
    space_main = {"gap": an.gap_stats(rd.img, rd.txt, rd.labels, h.graded_relevance()), "graph": gs}
    summary = _summary(m)

    # Metrics: this run, its raw backbones, then the other runs (and their raw backbones
    # when they differ from this run's, e.g. another backbone).
    cols = [_column(run, m, True)]
    raws = []
    if m.get("raw_backbones"):
        raws.append(m["raw_backbones"])
        # Two spaces: no cross-modal rows, so its means (R@1, nDCG@10) cover i2i and t2t
        # only and do not compare with a trained run's four directions.
        in_modal = "" if m["raw_backbones"].get("shared_space") else "; means over i2i, t2t only"
        cols.append(
            ("raw backbones", f"no training, centroid classifier{in_modal}", m["raw_backbones"])
        )
    for c, cm, _, _ in others:
        cols.append(_column(c, cm, False))
        if cm.get("raw_backbones") and cm["raw_backbones"] not in raws:
            raws.append(cm["raw_backbones"])
            cols.append((f"raw backbones of {c.name}", "no training", cm["raw_backbones"]))

    def metrics_section() -> str:
        cmp = f" beside {len(others)} other run{'s' if len(others) > 1 else ''}" if others else ""
        return (
            f"<p>Test split, this run{cmp} and the raw backbone features (L2-normalised; "
            + (
                "<b>one dual encoder gives both, so the raw image and text features already "
                "share a space</b> and have cross-modal rows too). "
                if (m.get("raw_backbones") or {}).get("shared_space")
                else "in-modal retrieval only, as the two backbones' spaces differ). "
            )
            + "R@K and HP@K are "
            "class-level: a result is relevant when it has the query's class. nDCG@10 is "
            "graded: gain 3 for the item's own pair (image → text, text → image), 2 for its "
            "class, 1 for a class under its parent class, 0 otherwise. Bold: the best "
            "of a column (within a direction). ↑ higher is better, ↓ lower (mistake severity is "
            "the mean tree distance of a wrong answer).</p>"
            + metrics_table(cols)
            + (
                "<h3>Embedding space, run by run</h3>"
                + _compare_space_table(
                    [(run.name, space_main)] + [(c.name, s) for c, _, _, s in others]
                )
                if others
                else ""
            )
        )

    thumbs = Thumbnails()
    other_logs = {c.name: lg for c, _, lg, _ in others if lg is not None}
    sections = [
        ("metrics", "Metrics", metrics_section),
        ("training", "Training curves", lambda: _training_section(rd, other_logs)),
        ("map", "The embedding space in 2-D", lambda: _map_section(rd, h_tops, colours)),
        ("graph", "Semantic graph and learned distances", lambda: _graph_section(rd, gs)),
        ("retrieval", "Retrieval examples", lambda: _retrieval_section(rd, thumbs)),
        ("classes", "Per-class accuracy and confusions", lambda: _classes_section(rd, colours)),
    ]
    body = "".join(_section(sid, title, build) for sid, title, build in sections)
    nav = "".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title, _ in sections)

    d = m.get("data", {})
    t = m.get("training", {})
    gr = gs["graph_r"]
    cards = "".join(
        [
            _card(fmt(summary.get("fusion")), "fusion accuracy"),
            _card(fmt(summary.get("cross_R@1")), "cross-modal R@1"),
            _card(fmt(summary.get("instance_xR@1")), "instance xR@1 (own pair first)"),
            _card(fmt(summary.get("mean_HP@5")), "mean HP@5"),
            _card(fmt(summary.get("mean_nDCG@10")), "mean nDCG@10 (graded)"),
            _card(fmt(space_main["gap"]["modality_gap"]), "modality gap"),
            _card(_r(gr), "graph ~ learned distance (r)"),
        ]
    )
    data_line = (
        f"{d.get('train', '?')} train · {d.get('val', '?')} val · {d.get('test', '?')} test "
        f"items, {d.get('classes', len(h))} classes under {len(h_tops)} top-level classes"
    )
    train_line = (
        f"; {t.get('epochs_run')} epochs in {t.get('seconds', 0):.0f} s"
        if t.get("epochs_run")
        else ""
    )
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    took = time.perf_counter() - t0
    title = f"huse report — {run.name} ({rd.method})"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{CSS}</style></head>
<body>
<header><h1>{esc(title)}</h1>
<div class="sub">{esc(str(run.resolve()))} · method <b>{esc(rd.method)}</b> · {esc(data_line)}{esc(train_line)}</div>
<nav>{nav}</nav></header>
<main>
<div class="cards">{cards}</div>
{body}
<footer>huse {esc(_version())} · written {esc(stamp)} in {took:.1f} s · self-contained: opens offline</footer>
</main></body></html>
"""


def write_report(
    run: Path,
    compare: Sequence[Path] = (),
    out: Path | None = None,
    progress: bool = False,
) -> Path:
    """Write the run's report page and return its path (default ``RUN/report.html``).

    Args:
        run: a run folder written by ``huse fit``.
        compare: other run folders shown beside it (metrics, curves, space statistics).
        out: the HTML file to write.
        progress: show the feature-set progress bars (only seen when features are
            recomputed, i.e. the feature cache is not the one the run used).
    """
    run = Path(run)
    out = Path(out) if out is not None else run / "report.html"
    page = build_html(run, [Path(c) for c in compare], progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    return out
