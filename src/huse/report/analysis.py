"""The numbers behind the report's plots: a run's test embeddings, its predictions and the
statistics drawn from them. Pure numpy (plus sklearn for the 2-D map), no plotting."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from huse.data.hierarchy import Hierarchy
from huse.errors import HuseError
from huse.runs import RunDir


class ReportError(HuseError):
    """A run folder the report cannot be built from; the message says what is missing."""


def read_metrics(run: Path) -> dict:
    """The run's ``metrics.json`` (written by ``huse fit``), else its ``eval_metrics.json``."""
    metrics = RunDir(run).metrics()
    if metrics is None:
        raise ReportError(
            f"{run}: no metrics.json or eval_metrics.json; run `huse fit ... --out {run}` "
            f"or `huse eval {run}` first"
        )
    return metrics


def read_log(run: Path) -> pd.DataFrame | None:
    """The run's training log, or None when it has none (e.g. an evaluated-only run)."""
    return RunDir(run).log()


@dataclass
class RunData:
    """One run's test split seen through its trained model.

    ``img`` and ``txt`` are the L2-normalised test embeddings (row i of both is test item
    i); ``scores`` are the class scores the metrics were computed from (None where the
    classifier gives none), ``raw_img``/``raw_txt`` the normalised backbone features.
    """

    run: Path
    metrics: dict
    log: pd.DataFrame | None
    train_config: dict
    hierarchy: Hierarchy
    graph: np.ndarray | None
    items: pd.DataFrame
    labels: np.ndarray
    img: np.ndarray
    txt: np.ndarray
    raw_img: np.ndarray
    raw_txt: np.ndarray
    scores: dict[str, np.ndarray | None] = field(default_factory=dict)
    classification_mode: str = "classifier"

    @property
    def name(self) -> str:
        return self.run.name or str(self.run)

    @property
    def method(self) -> str:
        return str(self.metrics.get("method") or self.train_config.get("method") or "?")


def load_run(run: Path, *, progress: bool = False) -> RunData:
    """Load a run's model and its manifest's test split (features from the cache) and embed it.

    Reuses the content-keyed feature cache, so on the machine that trained the run no
    backbone runs again.
    """
    from huse.dataset import build_feature_set
    from huse.evaluate import class_scores, embed, l2_normalize
    from huse.model import HUSEModel

    run = Path(run)
    rd = RunDir(run)
    metrics = read_metrics(run)
    missing = rd.missing()
    if missing is not None:
        raise ReportError(f"{run}: missing {missing}; is this a folder written by `huse fit`?")
    model = HUSEModel.load(rd.model_dir)
    manifest = rd.info()["manifest"]
    if not Path(manifest).is_file():
        raise ReportError(
            f"{run}/run.json names the manifest {manifest}, which does not exist; "
            "the report needs it to find the test items"
        )
    data_config = rd.data_config()
    fs = build_feature_set(
        manifest, data_config, classes=model.classes, tfidf_model=model.tfidf, progress=progress
    )
    idx = fs.split_indices("test")
    if len(idx) < 2:
        raise ReportError(f"{run}: the test split of {manifest} has {len(idx)} items; need 2+")
    embedded = embed(model.net, fs, idx)
    img, txt = embedded.image_embedding, embedded.text_embedding
    labels = fs.labels[idx]
    # The same class scores as metrics.json, so the per-class view adds up to its accuracy.
    scores, mode = class_scores(model.net, fs, embedded)
    graph = rd.graph()
    if graph is None:
        graph = model.graph
    return RunData(
        run=run,
        metrics=metrics,
        log=rd.log(),
        train_config=rd.train_config(),
        hierarchy=fs.hierarchy,
        graph=None if graph is None else np.asarray(graph, dtype=np.float64),
        items=fs.items.iloc[idx].reset_index(drop=True),
        labels=labels,
        img=img,
        txt=txt,
        raw_img=l2_normalize(fs.image[idx]),
        raw_txt=l2_normalize(fs.text[idx]),
        scores=scores,
        classification_mode=mode,
    )


# --- class order and colours -------------------------------------------------------------


def hierarchy_order(h: Hierarchy) -> np.ndarray:
    """Class indices in depth-first tree order: siblings next to each other."""
    return np.array(sorted(range(len(h)), key=lambda i: h.classes[i].split(h.sep)), dtype=int)


def top_levels(h: Hierarchy) -> list[str]:
    """Top-level nodes, sorted."""
    return sorted({h.top_level(c) for c in h.classes})


HEATMAP_CLASSES = 40  # classes drawn one by one in a heatmap; beyond, a top-N view


def heatmap_classes(h: Hierarchy, counts: np.ndarray, limit: int = HEATMAP_CLASSES) -> np.ndarray:
    """The classes a heatmap draws, in hierarchy order: all when there are at most
    ``limit``, else the ``limit`` with the most test items. Equal counts go to the class
    ranked higher within its own top-level group first, so a tie spreads the view over
    the groups rather than filling it with the first group's classes."""
    order = hierarchy_order(h)
    if len(order) <= limit:
        return order
    tops = [h.top_level(h.classes[i]) for i in order]
    by_group: dict[str, list[int]] = {}
    for r in sorted(range(len(order)), key=lambda r: (-int(counts[order[r]]), r)):
        by_group.setdefault(tops[r], []).append(r)
    within = {r: j for rs in by_group.values() for j, r in enumerate(rs)}
    ranked = sorted(range(len(order)), key=lambda r: (-int(counts[order[r]]), within[r], r))
    return order[np.sort(ranked[:limit])]


def group_matrix(mat: np.ndarray, groups: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """``mat`` (K×K, rows in ``groups``' order) averaged over the class pairs of each
    pair of groups: off-diagonal, finite entries only. Returns (G×G, group names in order
    of first appearance); NaN where a block has no such pair."""
    names = list(dict.fromkeys(groups))
    gi = np.array([names.index(g) for g in groups])
    ok = np.isfinite(mat) & ~np.eye(len(mat), dtype=bool)
    one = np.eye(len(names))[gi]  # K×G membership
    sums = one.T @ np.where(ok, mat, 0.0) @ one
    n = one.T @ ok.astype(float) @ one
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, sums / np.maximum(n, 1), np.nan), names


# --- embedding-space statistics ----------------------------------------------------------


def centroid_distances(
    embs: Sequence[np.ndarray], labels: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """K×K cosine distance between class centroids of the embeddings in ``embs`` (rows of
    each aligned with ``labels``; the image and the text embeddings pool into one centroid),
    and the number of items per class. Classes without items get NaN rows and columns."""
    x = np.concatenate(list(embs)).astype(np.float64)
    y = np.concatenate([labels] * len(embs))
    cent = np.zeros((k, x.shape[1]))
    np.add.at(cent, y, x)
    counts = np.bincount(labels, minlength=k)
    norms = np.linalg.norm(cent, axis=1, keepdims=True)
    present = (counts > 0) & (norms[:, 0] > 0)
    cent[present] /= norms[present]
    dist = 1.0 - cent @ cent.T
    dist[~present, :] = np.nan
    dist[:, ~present] = np.nan
    np.fill_diagonal(dist, np.where(present, 0.0, np.nan))
    return dist, counts


def _rank(x: np.ndarray) -> np.ndarray:
    return pd.Series(x).rank().to_numpy()


def matrix_correlation(a: np.ndarray, b: np.ndarray) -> dict[str, float | int | None]:
    """Pearson and Spearman correlation of two K×K matrices over the class pairs (i < j)
    where both are finite."""
    iu = np.triu_indices(len(a), k=1)
    x, y = a[iu], b[iu]
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return {"pearson": None, "spearman": None, "pairs": int(len(x))}
    return {
        "pearson": float(np.corrcoef(x, y)[0, 1]),
        "spearman": float(np.corrcoef(_rank(x), _rank(y))[0, 1]),
        "pairs": int(len(x)),
    }


def gap_stats(
    img: np.ndarray,
    txt: np.ndarray,
    labels: np.ndarray,
    relevance: np.ndarray | None = None,
) -> dict[str, float | None]:
    """How far apart the two modalities sit.

    ``modality_gap``: distance between the mean image and the mean text embedding (Liang
    et al. 2022); ``pair_cos``: mean cosine of an item's image and text;
    ``same_class_cos`` / ``other_class_cos``: mean image–text cosine of different items of
    the same / another class. With ``relevance`` (``Hierarchy.graded_relevance()``, rows
    the image's class) the other-class pairs split further: ``same_parent_cos`` (the
    text's class is under the image's parent class, relevance 1) and ``unrelated_cos``
    (relevance 0).
    """
    gap = float(np.linalg.norm(img.mean(0) - txt.mean(0)))
    # Sums over pairs from per-class sums, O(N·D + K²·D): Σ_ij a_i·b_j = (Σa)·(Σb), and
    # the same within each class pair, so no N×N similarity matrix is ever built.
    img, txt = img.astype(np.float64), txt.astype(np.float64)
    k = int(labels.max()) + 1 if len(labels) else 0
    if relevance is not None:
        k = max(k, len(relevance))
    si, st = np.zeros((k, img.shape[1])), np.zeros((k, txt.shape[1]))
    np.add.at(si, labels, img)
    np.add.at(st, labels, txt)
    n_per = np.bincount(labels, minlength=k).astype(np.float64)
    pair_sum = float(np.einsum("ij,ij->", img, txt))
    same_sum = float(np.einsum("ij,ij->", si, st))
    all_sum = float(si.sum(0) @ st.sum(0))
    n_same_off = float((n_per**2).sum()) - len(labels)
    n_other = float(len(labels)) ** 2 - float((n_per**2).sum())
    out = {
        "modality_gap": gap,
        "pair_cos": pair_sum / len(labels),
        "same_class_cos": (same_sum - pair_sum) / n_same_off if n_same_off > 0 else None,
        "other_class_cos": (all_sum - same_sum) / n_other if n_other > 0 else None,
    }
    if relevance is not None:
        # Class-pair sums (K×K) and counts, then one total per relevance grade.
        by_pair = si @ st.T
        n_pair = np.outer(n_per, n_per)
        for key, grade in (("same_parent_cos", 1), ("unrelated_cos", 0)):
            sel = relevance == grade
            n = float(n_pair[sel].sum())
            out[key] = float(by_pair[sel].sum()) / n if n > 0 else None
    return out


CROSS_SIM_ITEMS = 3000


COSINE_GROUPS = ("pair", "same_class", "same_parent", "other")


def cross_similarities(
    img: np.ndarray,
    txt: np.ndarray,
    labels: np.ndarray,
    relevance: np.ndarray | None = None,
    limit: int = CROSS_SIM_ITEMS,
) -> dict[str, np.ndarray]:
    """Image–text cosines of the test items in four groups (``COSINE_GROUPS``): an item's
    own pair; another item of the same class; an item whose class lies under the image's
    parent class (``relevance`` 1, from ``Hierarchy.graded_relevance()``, rows the image's
    class); any other item (relevance 0; without ``relevance``, every other class).

    Over at most ``limit`` items (a seeded sample): the values feed histograms, and the
    pairs grow as N² (3000 items: 9 M cosines, ~150 MB while split)."""
    keep = subsample(len(labels), limit)
    img, txt, labels = img[keep], txt[keep], labels[keep]
    sim = img.astype(np.float64) @ txt.T.astype(np.float64)
    off = ~np.eye(len(labels), dtype=bool)
    if relevance is None:
        grade = np.where(labels[:, None] == labels[None, :], 2, 0).astype(np.int8)
    else:
        grade = np.asarray(relevance, dtype=np.int8)[labels[:, None], labels[None, :]]
    return {
        "pair": np.diag(sim).copy(),
        "same_class": sim[(grade == 2) & off],
        "same_parent": sim[(grade == 1) & off],
        "other": sim[(grade == 0) & off],
    }


def project_2d(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of the rows of ``x`` by UMAP when installed, else t-SNE."""
    n = len(x)
    if n < 4:
        return np.c_[np.arange(n, dtype=float), np.zeros(n)], "none (too few points)"
    try:
        import umap  # type: ignore[import-not-found]

        reducer = umap.UMAP(
            n_neighbors=min(15, n - 1), metric="cosine", random_state=seed, n_jobs=1
        )
        return reducer.fit_transform(x), "UMAP"
    except ImportError:
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
        tsne = TSNE(
            n_components=2,
            perplexity=perplexity,
            init="pca",
            metric="cosine",
            random_state=seed,
            max_iter=500,
        )
        from threadpoolctl import threadpool_limits

        # One thread: on a few shared cores the OpenMP gradient runs ~30x slower with more.
        with threadpool_limits(1):
            return tsne.fit_transform(x.astype(np.float32)), "t-SNE"


def subsample(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """At most ``limit`` of ``range(n)``, sorted, chosen at random with a fixed seed."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


# --- classification ----------------------------------------------------------------------


def predictions(scores: np.ndarray) -> np.ndarray:
    """Top-1 class of each row; ties go to the lower class index as in huse.metrics."""
    return np.argmax(scores, axis=1)


def per_class_accuracy(
    pred: np.ndarray, labels: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy per true class (NaN without test items) and the number of test items."""
    n = np.bincount(labels, minlength=k)
    hit = np.bincount(labels, weights=(pred == labels).astype(float), minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n > 0, hit / np.maximum(n, 1), np.nan)
    return acc, n


def confused_pairs(
    pred: np.ndarray,
    labels: np.ndarray,
    h: Hierarchy,
    graph: np.ndarray | None = None,
    top: int = 10,
) -> list[dict]:
    """The most frequent (true class, predicted class) mistakes, with the tree distance and
    the semantic graph distance between the two classes."""
    k = len(h)
    wrong = pred != labels
    if not wrong.any():
        return []
    conf = np.zeros((k, k), dtype=int)
    np.add.at(conf, (labels[wrong], pred[wrong]), 1)
    n = np.bincount(labels, minlength=k)
    tree = h.distance_matrix()
    # Most frequent first; among equal counts the larger share of the true class first.
    share = conf / np.maximum(n, 1)[:, None]
    flat = np.lexsort((-share.ravel(), -conf.ravel()))[:top]
    out = []
    for t, p in zip(*np.unravel_index(flat, conf.shape)):
        if conf[t, p] == 0:
            break
        out.append(
            {
                "true": h.classes[t],
                "pred": h.classes[p],
                "count": int(conf[t, p]),
                "share": float(conf[t, p] / n[t]),
                "tree_distance": int(tree[t, p]),
                "graph_distance": None if graph is None else float(graph[t, p]),
            }
        )
    return out


# --- retrieval examples ------------------------------------------------------------------


def pick_queries(labels: np.ndarray, h: Hierarchy, n: int, seed: int = 0) -> np.ndarray:
    """``n`` test items from as many different top-level classes as possible."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    chosen, seen = [], set()
    for i in order:
        top = h.top_level(h.classes[labels[i]])
        if top not in seen:
            seen.add(top)
            chosen.append(int(i))
        if len(chosen) == n:
            break
    for i in order:  # fewer top levels than queries: fill with any other items
        if len(chosen) == n:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    return np.array(chosen, dtype=int)


def top_k(queries: np.ndarray, gallery: np.ndarray, query_rows: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` nearest gallery rows of each query by cosine, the query's own item left
    out as in R@K. Returns (len(query_rows), k) gallery row indices."""
    sim = queries[query_rows].astype(np.float64) @ gallery.T.astype(np.float64)
    sim[np.arange(len(query_rows)), query_rows] = -np.inf
    k = min(k, gallery.shape[0] - 1)
    # Stable sort on -sim: equal scores go to the lower gallery index, as in huse.metrics.
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]
