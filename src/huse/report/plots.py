"""The report's figures, each returned as PNG bytes (matplotlib, Agg backend, no display)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # never open a window; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from huse.report.labels import PLOT_CHARS, ellipsize  # noqa: E402

DPI = 110


def _label(text: str) -> str:
    # Every name drawn comes from the user (class paths, run folders): a long one would
    # make the figure as wide as the text.
    return ellipsize(text, PLOT_CHARS)


plt.rcParams.update(
    {
        "font.size": 8,
        "axes.titlesize": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "legend.fontsize": 7,
        "legend.frameon": False,
    }
)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # No "Software" tag: it would carry matplotlib's web address into the page.
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def palette(names: Sequence[str]) -> dict[str, tuple]:
    """A distinct colour for each name (top-level classes), stable for a sorted list."""
    n = len(names)
    if n <= 10:
        cols = plt.get_cmap("tab10").colors
    elif n <= 20:
        cols = plt.get_cmap("tab20").colors
    else:
        cmap = plt.get_cmap("hsv")
        cols = [cmap(i / n) for i in range(n)]
    return {name: cols[i % len(cols)] for i, name in enumerate(names)}


# --- training curves ---------------------------------------------------------------------

LOSS_SKIP = {"train_graph_active"}


def _constant(s: pd.Series) -> bool:
    v = s.dropna()
    return len(v) == 0 or bool(np.allclose(v.to_numpy(dtype=float), float(v.iloc[0])))


def training_panels(log: pd.DataFrame) -> list[tuple[str, dict[str, pd.Series]]]:
    """The panels ``training_curves`` draws: (title, {legend label: series}).

    One per loss term, then validation accuracy, R@1 and the selection score, then the
    share of class pairs under the graph margin unless it is constant (with the default
    margin ζ = 2 every pair is under it in every epoch: a flat line at 1.00 says nothing).
    """
    panels: list[tuple[str, dict[str, pd.Series]]] = []
    losses = [c for c in log.columns if c.startswith("train_") and c not in LOSS_SKIP]
    losses = [c for c in losses if c != "train_total"] + (
        ["train_total"] if "train_total" in losses else []
    )
    for c in losses:
        if log[c].notna().any():
            panels.append((c.removeprefix("train_").replace("_", " ") + " loss", {"": log[c]}))
    groups = [
        ("val accuracy", "val_acc_"),
        ("val R@1", "val_R@1_"),
    ]
    for title, prefix in groups:
        cols = {c.removeprefix(prefix): log[c] for c in log.columns if c.startswith(prefix)}
        cols = {k: v for k, v in cols.items() if v.notna().any()}
        if cols:
            panels.append((title, cols))
    extra = {c.removeprefix("val_"): log[c] for c in ("val_mean_HP@5", "val_score") if c in log}
    extra = {k: v for k, v in extra.items() if v.notna().any()}
    if extra:
        panels.append(("val mean HP@5 and selection score", extra))
    if "train_graph_active" in log and not _constant(log["train_graph_active"]):
        panels.append(
            ("share of class pairs under the graph margin", {"": log["train_graph_active"]})
        )
    return panels


def training_curves(
    log: pd.DataFrame,
    best_epoch: int | None = None,
    others: Mapping[str, pd.DataFrame] | None = None,
) -> bytes:
    """The panels of ``training_panels``, the best epoch dashed.

    ``others`` (run name → log) adds a panel comparing the validation score of other runs.
    """
    others = others or {}
    ep = log["epoch"]
    panels = training_panels(log)
    n_cols = 4
    n_rows = -(-(len(panels) + (1 if others else 0)) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.1 * n_cols, 2.3 * n_rows), squeeze=False)
    flat = list(axes.ravel())
    for ax, (title, series) in zip(flat, panels):
        for label, s in series.items():
            ax.plot(ep, s, label=_label(label) if label else None, lw=1.4)
        if best_epoch:
            ax.axvline(best_epoch, color="0.4", ls="--", lw=0.8)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if any(series):
            ax.legend()
    used = len(panels)
    if others:
        ax = flat[used]
        col = "val_score" if "val_score" in log else "val_acc_fusion"
        for name, other in {"this run": log, **others}.items():
            if col in other:
                ax.plot(other["epoch"], other[col], label=_label(name), lw=1.4)
        ax.set_title(f"{col.replace('_', ' ')}, all runs")
        ax.set_xlabel("epoch")
        ax.legend()
        used += 1
    for ax in flat[used:]:
        ax.set_visible(False)
    if best_epoch:
        fig.text(
            0.01, -0.01, f"dashed line: best epoch ({best_epoch}), the weights kept", fontsize=7
        )
    fig.tight_layout()
    return _png(fig)


# --- the 2-D map of the embedding space -------------------------------------------------

COSINE_LABELS = {
    "pair": "the item's own pair",
    "same_class": "same class, other item",
    "same_parent": "same parent class",
    "other": "other",
}
COSINE_COLOURS = {"pair": "tab:red", "same_class": "tab:blue", "same_parent": "tab:orange",
                  "other": "0.45"}  # fmt: skip


def embedding_map(
    xy: np.ndarray,
    n_items: int,
    top: Sequence[str],
    colours: Mapping[str, tuple],
    pairs: np.ndarray,
    method: str,
    sims: Mapping[str, np.ndarray],
) -> bytes:
    """Left: the 2-D map (rows ``:n_items`` images, the rest their texts in the same order),
    coloured by top-level class, lines joining the items in ``pairs``. Right: histograms of
    image–text cosine in the groups of ``analysis.cross_similarities`` (own pair, same
    class, same parent class, other)."""
    fig, (ax, hx) = plt.subplots(1, 2, figsize=(12.5, 5.8), gridspec_kw={"width_ratios": [2.3, 1]})
    pi, pt = xy[:n_items], xy[n_items:]
    segs = np.stack([pi[pairs], pt[pairs]], axis=1)
    from matplotlib.collections import LineCollection

    ax.add_collection(LineCollection(segs, colors="0.35", linewidths=0.6, alpha=0.55, zorder=1))
    col = np.array([colours[t] for t in top])
    ax.scatter(pi[:, 0], pi[:, 1], c=col, marker="o", s=22, edgecolors="white", lw=0.4, zorder=2)
    ax.scatter(pt[:, 0], pt[:, 1], c=col, marker="^", s=30, edgecolors="black", lw=0.4, zorder=3)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.set_title(
        f"{method} of the test embeddings: ● image, ▲ text, "
        f"grey lines join {len(pairs)} image–text pairs"
    )
    handles = [
        Line2D([], [], marker="s", ls="", color=colours[t], label=_label(t))
        for t in colours
        if t in set(top)
    ]
    handles += [
        Line2D([], [], marker="o", ls="", color="0.5", mec="white", label="image"),
        Line2D([], [], marker="^", ls="", color="0.5", mec="black", label="text"),
    ]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    groups = [
        (COSINE_LABELS[g], sims.get(g, np.zeros(0)), COSINE_COLOURS[g]) for g in COSINE_LABELS
    ]
    values = [v for _, v, _ in groups if len(v)]
    lo = min(float(np.min(v)) for v in values) if values else -1.0
    bins = np.linspace(max(-1.0, np.floor(lo * 10) / 10), 1.0, 41)
    for label, v, c in groups:
        if len(v):
            # Outlines, not filled bars: four overlapping groups stay readable.
            hx.hist(
                v,
                bins=bins,
                density=True,
                histtype="step",
                lw=1.6,
                color=c,
                label=f"{label} ({v.mean():.2f}, n={len(v):,})",
            )
    hx.set_xlabel("cosine(image, text)")
    hx.set_yticks([])
    hx.set_title("image–text cosine (mean)")
    hx.legend(loc="upper left")
    fig.tight_layout()
    return _png(fig)


# --- semantic graph against the learned distances ---------------------------------------


HEAT_CELL_PX = 15  # one class: wider than a tick label's 12 px (8 pt at DPI 110)
HEAT_FONT = 8
HEAT_LABEL_CHARS = 40
MAX_WIDTH_PX = 1180  # the page's content width: a wider PNG is scaled down, labels too


def class_heatmap(
    mat: np.ndarray,
    names: Sequence[str],
    groups: Sequence[str] | None,
    colour_label: str,
    *,
    cell_px: int = HEAT_CELL_PX,
    blank_diagonal: bool = True,
) -> bytes:
    """A K×K class matrix drawn at ``cell_px`` pixels per class, so that its labels are
    legible at the size the page shows it (never wider than ``MAX_WIDTH_PX``).

    Rows are named on the left (``names``: the class below its top level), the top-level
    ``groups`` (consecutive runs of equal values; None: no groups) on the right and on
    top, with white lines between them; the colour scale sits underneath. The diagonal
    (always 0 for classes) is left blank by ``blank_diagonal`` so the scale spans the
    class pairs.
    """
    k = len(names)
    side = max(k * cell_px / DPI, 1.2)
    fig = plt.figure(figsize=(side, side))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.88")
    shown = np.where(~np.eye(k, dtype=bool), mat, np.nan) if blank_diagonal else mat
    im = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, interpolation="nearest", aspect="auto")
    ax.set_xlim(-0.5, k - 0.5)
    ax.set_ylim(k - 0.5, -0.5)
    ax.grid(False)
    ax.set_yticks(range(k), [ellipsize(n, HEAT_LABEL_CHARS) for n in names], fontsize=HEAT_FONT)
    ax.set_xticks([])
    if groups is None:  # no groups to show on top: the columns' own names go there
        top = ax.secondary_xaxis("top")
        top.set_xticks(
            range(k), [ellipsize(n, HEAT_LABEL_CHARS) for n in names], fontsize=HEAT_FONT,
            rotation=90,
        )  # fmt: skip
    else:
        starts = [i for i in range(k) if i == 0 or groups[i] != groups[i - 1]]
        ends = starts[1:] + [k]
        mids = [(a + b - 1) / 2 for a, b in zip(starts, ends)]
        labels = [ellipsize(groups[a], HEAT_LABEL_CHARS) for a in starts]
        for b in starts[1:]:
            ax.axhline(b - 0.5, color="white", lw=1.2)
            ax.axvline(b - 0.5, color="white", lw=1.2)
        edges = [a - 0.5 for a in starts] + [k - 0.5]
        right = ax.secondary_yaxis("right")
        right.set_yticks(mids, labels, fontsize=HEAT_FONT, fontweight="bold")
        top = ax.secondary_xaxis("top")
        top.set_xticks(mids, labels, fontsize=HEAT_FONT, fontweight="bold", rotation=90)
        for sec in (right, top):  # long ticks at the block edges bracket each group
            sec.tick_params(which="major", length=0)
            if sec is right:
                sec.set_yticks(edges, minor=True)
            else:
                sec.set_xticks(edges, minor=True)
            sec.tick_params(which="minor", length=10, width=0.8)
    cax = fig.add_axes((0.0, -0.45 / side, 1.0, 0.14 / side))
    cb = fig.colorbar(im, cax=cax, orientation="horizontal")
    cb.set_label(colour_label, fontsize=HEAT_FONT)
    cb.ax.tick_params(labelsize=HEAT_FONT)
    return _png(fig)


def graph_scatter(
    graph: np.ndarray, learned: np.ndarray, tops: Sequence[str], corr: Mapping
) -> bytes:
    """Each class pair: graph distance against learned distance, same-top-level pairs red."""
    k = len(tops)
    fig, ax = plt.subplots(figsize=(4.6, 3.9))
    iu = np.triu_indices(k, 1)
    x, y = graph[iu], learned[iu]
    ok = np.isfinite(x) & np.isfinite(y)
    t = np.asarray(tops)
    same = t[iu[0]] == t[iu[1]]
    ax.scatter(x[ok & ~same], y[ok & ~same], s=7, alpha=0.45, c="0.45", label="different top level")
    ax.scatter(x[ok & same], y[ok & same], s=11, alpha=0.85, c="tab:red", label="same top level")
    r, rho = corr.get("pearson"), corr.get("spearman")
    stat = "r = —" if r is None else f"Pearson r = {r:.3f} · Spearman ρ = {rho:.3f}"
    ax.set_title(f"class pairs: {stat}")
    ax.set_xlabel("semantic graph distance")
    ax.set_ylabel("learned centroid distance")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return _png(fig)


# --- per-class accuracy -----------------------------------------------------------------


def per_class_accuracy(
    names: Sequence[str],
    fusion: np.ndarray,
    counts: np.ndarray,
    colours: Sequence[tuple],
    image: np.ndarray | None = None,
    text: np.ndarray | None = None,
) -> bytes:
    """Horizontal bars (fused prediction) per class in hierarchy order, with the image-only
    and text-only accuracy as markers and the number of test items at the right."""
    k = len(names)
    fig, ax = plt.subplots(figsize=(6.0, float(np.clip(0.22 * k + 1.0, 2.5, 40))))
    y = np.arange(k)
    ax.barh(y, np.nan_to_num(fusion), color=colours, alpha=0.85, label="fusion", height=0.7)
    if image is not None:
        ax.scatter(
            image,
            y,
            marker="o",
            s=16,
            c="white",
            edgecolors="black",
            lw=0.7,
            zorder=3,
            label="image only",
        )
    if text is not None:
        ax.scatter(text, y, marker="^", s=18, c="black", zorder=3, label="text only")
    for i in range(k):
        ax.text(1.02, i, f"n={counts[i]}", va="center", fontsize=6, color="0.3")
    ax.set_yticks(y, [_label(n) for n in names], fontsize=7)
    ax.set_ylim(k - 0.5, -0.5)  # first class on top, no empty margin rows
    ax.set_xlim(0, 1.1)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("test accuracy")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3)
    fig.tight_layout()
    return _png(fig)
