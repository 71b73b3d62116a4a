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


def training_curves(
    log: pd.DataFrame,
    best_epoch: int | None = None,
    others: Mapping[str, pd.DataFrame] | None = None,
) -> bytes:
    """One panel per loss term, then validation accuracy, R@1 and the selection score.

    ``others`` (run name → log) adds a panel comparing the validation score of other runs.
    """
    others = others or {}
    ep = log["epoch"]
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
    if "train_graph_active" in log and log["train_graph_active"].notna().any():
        panels.append(
            ("share of class pairs under the graph margin", {"": log["train_graph_active"]})
        )
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


def embedding_map(
    xy: np.ndarray,
    n_items: int,
    top: Sequence[str],
    colours: Mapping[str, tuple],
    pairs: np.ndarray,
    method: str,
    sims: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> bytes:
    """Left: the 2-D map (rows ``:n_items`` images, the rest their texts in the same order),
    coloured by top-level class, lines joining the items in ``pairs``. Right: histograms of
    image–text cosine for pairs, same-class and other-class items."""
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
    pair, same, other = sims
    lo = min(float(np.min(v)) for v in sims if len(v))
    bins = np.linspace(max(-1.0, np.floor(lo * 10) / 10), 1.0, 41)
    for v, label, c in (
        (other, "other class", "0.6"),
        (same, "same class, other item", "tab:blue"),
        (pair, "the item's own pair", "tab:red"),
    ):
        if len(v):
            hx.hist(
                v, bins=bins, density=True, alpha=0.55, color=c, label=f"{label} ({v.mean():.2f})"
            )
    hx.set_xlabel("cosine(image, text)")
    hx.set_yticks([])
    hx.set_title("image–text cosine (mean)")
    hx.legend(loc="upper left")
    fig.tight_layout()
    return _png(fig)


# --- semantic graph against the learned distances ---------------------------------------


def _class_ticks(ax, names: Sequence[str], tops: Sequence[str], max_labels: int = 60) -> None:
    k = len(names)
    names = [_label(n) for n in names]
    if k <= max_labels:
        ax.set_xticks(range(k), names, rotation=90, fontsize=6)
        ax.set_yticks(range(k), names, fontsize=6)
    else:  # too many classes to name: label the top-level blocks
        starts = [i for i in range(k) if i == 0 or tops[i] != tops[i - 1]]
        ends = starts[1:] + [k]
        mids = [(s + e - 1) / 2 for s, e in zip(starts, ends)]
        labels = [_label(tops[s]) for s in starts]
        ax.set_xticks(mids, labels, rotation=90, fontsize=6)
        ax.set_yticks(mids, labels, fontsize=6)
    for i in range(1, k):  # top-level boundaries
        if tops[i] != tops[i - 1]:
            ax.axhline(i - 0.5, color="white", lw=0.8)
            ax.axvline(i - 0.5, color="white", lw=0.8)
    ax.grid(False)


def graph_heatmaps(
    graph: np.ndarray, learned: np.ndarray, names: Sequence[str], tops: Sequence[str]
) -> bytes:
    """The graph and the learned centroid distances as heatmaps in the same class order.

    The diagonal (always 0) is left blank so each colour scale spans the class pairs.
    """
    k = len(names)
    side = float(np.clip(0.19 * k + 2.2, 4.5, 10.0))
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.6, side))
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.88")
    off = ~np.eye(k, dtype=bool)
    for ax, mat, title in (
        (axes[0], graph, "semantic graph: target distance between classes"),
        (axes[1], learned, "learned: cosine distance of class centroids (test)"),
    ):
        shown = np.where(off, mat, np.nan)
        im = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, interpolation="nearest")
        _class_ticks(ax, names, tops)
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
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
