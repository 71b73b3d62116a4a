"""Evaluation metrics (SPEC §7): accuracy, class-level retrieval R@K, hierarchical precision
HP@K, mistake severity and average hierarchical distance@k; instance-level retrieval (an item's
own pair as the one answer) and graded nDCG@K over every level of the hierarchy.

Pure numpy. Retrieval runs over chunks of queries, so an evaluation never holds an N×N
similarity matrix: one chunk is ``chunk_size × n_gallery``. Equal scores are ranked by the lower
gallery (or class) index, so every result is deterministic and independent of ``chunk_size``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

__all__ = [
    "accuracy",
    "classification_metrics",
    "graded_ndcg",
    "instance_retrieval",
    "retrieval_metrics",
    "topk_classes",
]

# Gain of the query's own pair in graded nDCG; the class-level gains (2 same class, 1 same
# parent class) come from ``Hierarchy.graded_relevance``.
OWN_PAIR_GAIN = 3


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Share of predictions equal to the labels.

    Args:
        pred: predicted class indices, shape (N,).
        labels: true class indices, shape (N,).
    """
    pred = _as_labels(pred, None, "pred")
    labels = _as_labels(labels, len(pred), "labels")
    if len(labels) == 0:
        raise ValueError("accuracy: got no predictions; pass at least one")
    return float(np.mean(pred == labels))


def topk_classes(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best classes per row, best first; equal scores go to the lower index.

    Args:
        scores: class scores (probabilities or logits), shape (N, K).
        k: how many classes to return; capped at K.

    Returns:
        int array of shape (N, min(k, K)).
    """
    scores = _as_scores(scores)
    (k,) = _as_ks([k], "k")
    return _topk_rows(scores, k)


def classification_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    class_distance: np.ndarray | None = None,
    ks: Iterable[int] = (1, 5),
) -> dict[str, float | None]:
    """Accuracy, top-k accuracy, mistake severity and hierarchical distance@k of class scores.

    Args:
        scores: class scores (probabilities or logits), shape (N, K).
        labels: true class indices in [0, K), shape (N,).
        class_distance: (K, K) hierarchy distance between classes, or None to skip the
            distance metrics (they are then None).
        ks: the k of ``top{k}`` (for k > 1; k = 1 is ``accuracy``) and of ``hdist@k``. A k
            above K counts all K classes.

    Returns:
        ``accuracy``; ``top{k}`` = share of rows whose label is among the k best classes;
        ``mistake_severity`` = mean distance from the label to the predicted class over the
        wrong top-1 predictions (None when there are none); ``hdist@k`` = mean over rows of the
        mean distance from the label to the k best classes.
    """
    scores = _as_scores(scores)
    n, n_classes = scores.shape
    if n == 0:
        raise ValueError("classification_metrics: scores has no rows; pass at least one")
    labels = _as_labels(labels, n, "labels", n_classes)
    ks = _as_ks(ks, "ks")
    dist = _as_class_distance(class_distance, n_classes)

    top = _topk_rows(scores, max((1, *ks)))
    hit = top == labels[:, None]
    out: dict[str, float | None] = {"accuracy": float(hit[:, 0].mean())}
    for k in ks:
        if k != 1:
            out[f"top{k}"] = float(hit[:, :k].any(axis=1).mean())
    wrong = ~hit[:, 0]
    if dist is None:
        out["mistake_severity"] = None
        out.update({f"hdist@{k}": None for k in ks})
        return out
    d = dist[labels[:, None], top]
    out["mistake_severity"] = float(d[wrong, 0].mean()) if wrong.any() else None
    for k in ks:
        out[f"hdist@{k}"] = float(d[:, :k].mean(axis=1).mean())
    return out


def retrieval_metrics(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    *,
    query_ids: np.ndarray | None = None,
    gallery_ids: np.ndarray | None = None,
    recall_ks: Iterable[int] = (1, 5, 10),
    hp_ks: Iterable[int] = (2, 5, 10),
    hp_targets: Mapping[int, np.ndarray] | None = None,
    class_distance: np.ndarray | None = None,
    chunk_size: int = 1024,
) -> dict[str, float | None]:
    """Class-level retrieval metrics of queries against a gallery, ranked by dot product.

    Gallery items whose id equals the query's id are left out of that query's ranking (SPEC §7:
    each test item is a query against all *other* test items; across modalities an image's own
    text is the same item). When fewer than K gallery items remain, the metrics @K use those
    that remain. Equal similarities rank the lower gallery index first.

    Args:
        queries: L2-normalised embeddings, shape (Nq, D); cosine similarity = dot product.
        query_labels: class indices in [0, K), shape (Nq,).
        gallery: L2-normalised embeddings, shape (Ng, D).
        gallery_labels: class indices in [0, K), shape (Ng,).
        query_ids: item ids of the queries, shape (Nq,); pass with ``gallery_ids`` (both or
            neither). None: nothing is excluded.
        gallery_ids: item ids of the gallery, shape (Ng,).
        recall_ks: the K of ``R@K`` and ``hdist@K``.
        hp_ks: the K of ``HP@K``.
        hp_targets: for each K in ``hp_ks`` a (K_classes, K_classes) bool matrix whose row c
            marks the target class set of query class c. None: ``HP@K`` are None.
        class_distance: (K_classes, K_classes) hierarchy distance between classes. None:
            ``mistake_severity`` and ``hdist@K`` are None.
        chunk_size: queries scored at once; memory is about ``chunk_size × Ng`` floats.

    Returns:
        ``R@K`` = share of queries with an item of their class among the top K; ``HP@K`` =
        share of the top K whose class is in the query class's target set, averaged over
        queries; ``mistake_severity`` = mean distance from the query class to the top-1 class
        over queries whose top-1 is of another class (None when there are none); ``hdist@K`` =
        mean over queries of the mean distance from the query class to the top-K classes.
    """
    q = _as_embeddings(queries, "queries")
    g = _as_embeddings(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"retrieval_metrics: queries have dimension {q.shape[1]} but gallery has "
            f"{g.shape[1]}; embed both with the same model"
        )
    n_q, n_g = len(q), len(g)
    if n_q == 0 or n_g == 0:
        raise ValueError(f"retrieval_metrics: got {n_q} queries and {n_g} gallery items; need ≥ 1")
    dtype = np.result_type(q.dtype, g.dtype, np.float32)
    q = q.astype(dtype, copy=False)
    g = g.astype(dtype, copy=False)
    recall_ks = _as_ks(recall_ks, "recall_ks")
    hp_ks = _as_ks(hp_ks, "hp_ks")
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(
            f"retrieval_metrics: chunk_size must be a positive int, got {chunk_size!r}"
        )

    targets = None
    if hp_targets is not None:
        targets = {}
        for k in hp_ks:
            if k not in hp_targets:
                raise ValueError(
                    f"retrieval_metrics: hp_targets has no matrix for K={k} (has "
                    f"{sorted(hp_targets)}); pass one per K in hp_ks={list(hp_ks)}"
                )
            targets[k] = _as_square(hp_targets[k], f"hp_targets[{k}]", None).astype(bool)
    dist = _as_class_distance(class_distance, None)
    n_classes = None
    for m in (*(targets or {}).values(), *(() if dist is None else (dist,))):
        if n_classes is not None and len(m) != n_classes:
            raise ValueError(
                "retrieval_metrics: hp_targets and class_distance disagree on the number of "
                f"classes ({n_classes} vs {len(m)}); build them from the same hierarchy"
            )
        n_classes = len(m)
    ql = _as_labels(query_labels, n_q, "query_labels", n_classes)
    gl = _as_labels(gallery_labels, n_g, "gallery_labels", n_classes)

    if (query_ids is None) != (gallery_ids is None):
        raise ValueError("retrieval_metrics: pass both query_ids and gallery_ids, or neither")
    qid = gid = None
    if query_ids is not None:
        qid = _as_ids(query_ids, n_q, "query_ids")
        gid = _as_ids(gallery_ids, n_g, "gallery_ids")

    kk = min(max((*recall_ks, *hp_ks)), n_g)
    hits = dict.fromkeys(recall_ks, 0)
    hp_sum = dict.fromkeys(hp_ks, 0.0)
    hd_sum = dict.fromkeys(recall_ks, 0.0)
    sev_sum, n_wrong = 0.0, 0
    g_t = g.T
    for start in range(0, n_q, chunk_size):
        stop = min(start + chunk_size, n_q)
        sims = q[start:stop] @ g_t
        if qid is None:
            top = _topk_rows(sims, kk)
            valid = np.ones(top.shape, dtype=bool)
        else:
            excluded = qid[start:stop, None] == gid[None, :]
            empty = np.flatnonzero(excluded.all(axis=1))
            if empty.size:
                i = start + int(empty[0])
                raise ValueError(
                    f"retrieval_metrics: query {i} (id {qid[i]!r}) has no gallery item left "
                    "after excluding items with the same id; drop it or fix the ids"
                )
            # Inputs are finite, so excluded items rank after every remaining one and the valid
            # entries of each row of `top` form a prefix.
            sims[excluded] = -np.inf
            top = _topk_rows(sims, kk)
            valid = ~np.take_along_axis(excluded, top, axis=1)
        n_valid = np.cumsum(valid, axis=1)  # n_valid[:, k - 1] = items counted @k
        cls = gl[top]
        qc = ql[start:stop, None]
        same = (cls == qc) & valid
        for k in recall_ks:
            hits[k] += int(same[:, :k].any(axis=1).sum())
        if targets is not None:
            for k in hp_ks:
                kc = min(k, kk)
                t = targets[k][qc, cls[:, :kc]] & valid[:, :kc]
                hp_sum[k] += float((t.sum(axis=1) / n_valid[:, kc - 1]).sum())
        if dist is not None:
            d = np.where(valid, dist[qc, cls], 0.0)
            for k in recall_ks:
                kc = min(k, kk)
                hd_sum[k] += float((d[:, :kc].sum(axis=1) / n_valid[:, kc - 1]).sum())
            wrong = ~same[:, 0]
            sev_sum += float(d[wrong, 0].sum())
            n_wrong += int(wrong.sum())

    out: dict[str, float | None] = {f"R@{k}": hits[k] / n_q for k in recall_ks}
    out.update({f"HP@{k}": None if targets is None else hp_sum[k] / n_q for k in hp_ks})
    out["mistake_severity"] = sev_sum / n_wrong if dist is not None and n_wrong else None
    out.update({f"hdist@{k}": None if dist is None else hd_sum[k] / n_q for k in recall_ks})
    return out


def instance_retrieval(
    queries: np.ndarray,
    gallery: np.ndarray,
    *,
    recall_ks: Iterable[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Instance-level retrieval: query ``i``'s one relevant answer is gallery item ``i``.

    This is the Flickr30k / COCO image-text retrieval protocol (as open_clip reports it):
    row ``i`` of ``queries`` and of ``gallery`` are the two sides of the same item, every
    query ranks the whole gallery by dot product, and the rank of its own pair is counted.
    Equal similarities rank the lower gallery index first, as everywhere in this module.

    Args:
        queries: L2-normalised embeddings of one modality, shape (N, D).
        gallery: the other modality's embeddings of the same N items, in the same order.
        recall_ks: the K of ``R@K``.
        chunk_size: queries scored at once; memory is about ``chunk_size × N`` floats.

    Returns:
        ``R@K`` = share of queries whose own pair is among the top K; ``MedR`` = median
        1-based rank of the own pair (numpy's median: the mean of the two middle ranks when
        N is even).
    """
    q = _as_embeddings(queries, "queries")
    g = _as_embeddings(gallery, "gallery")
    if q.shape != g.shape:
        raise ValueError(
            f"instance_retrieval: queries {q.shape} and gallery {g.shape} must pair row by row"
        )
    if len(q) == 0:
        raise ValueError("instance_retrieval: got no items; need ≥ 1")
    recall_ks = _as_ks(recall_ks, "recall_ks")
    chunk_size = _as_chunk(chunk_size, "instance_retrieval")
    dtype = np.result_type(q.dtype, g.dtype, np.float32)
    q, g_t = q.astype(dtype, copy=False), g.astype(dtype, copy=False).T
    ranks = np.empty(len(q), dtype=np.int64)
    cols = np.arange(len(g))
    for start in range(0, len(q), chunk_size):
        stop = min(start + chunk_size, len(q))
        sims = q[start:stop] @ g_t
        rows = np.arange(stop - start)
        own = sims[rows, start + rows][:, None]
        # Items ahead of the own pair: strictly more similar, or equal with a lower index.
        ahead = (sims > own) | ((sims == own) & (cols[None, :] < (start + rows)[:, None]))
        ranks[start:stop] = ahead.sum(axis=1) + 1
    out = {f"R@{k}": float(np.mean(ranks <= k)) for k in recall_ks}
    out["MedR"] = float(np.median(ranks))
    return out


def graded_ndcg(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    relevance: np.ndarray,
    *,
    pairing: str,
    k: int = 10,
    chunk_size: int = 1024,
) -> float | None:
    """Graded nDCG@k: one ranking figure over every level, from the item to its relatives.

    Rows of ``queries`` and ``gallery`` are the same N items (one or two modalities). For
    query ``i`` each gallery item ``j`` has a gain:

    - 3 (``OWN_PAIR_GAIN``) when ``j == i`` and ``pairing == "cross"`` (the item's own
      image or text);
    - else ``relevance[label_i, label_j]``: 2 for an item of the query's class, 1 for an
      item under the same parent class, 0 otherwise (``Hierarchy.graded_relevance``).

    With ``pairing == "self"`` (an in-modal gallery) the query itself is left out. The
    ranking is by dot product, equal scores to the lower gallery index. With linear gains,
    ``DCG@k = Σ_{r=1..k} gain_r / log2(r + 1)`` and ``nDCG@k = DCG@k / IDCG@k``, where
    ``IDCG@k`` is the DCG of the gallery's gains sorted in decreasing order. The result is
    the mean over queries; a query whose gallery holds no gain at all (IDCG = 0: an in-modal
    query alone in a top-level class) cannot be ranked and is left out of the mean.

    Args:
        queries: L2-normalised embeddings, shape (N, D).
        query_labels: class indices, shape (N,).
        gallery: L2-normalised embeddings of the same N items, shape (N, D).
        gallery_labels: class indices, shape (N,); equal to ``query_labels`` for the same
            items (they are one item's class).
        relevance: (K, K) integer class-level gains.
        pairing: ``"cross"`` (gallery ``i`` is query ``i``'s own pair) or ``"self"``
            (gallery ``i`` is query ``i`` itself, excluded).
        k: the cut-off.
        chunk_size: queries scored at once; memory is about ``chunk_size × N`` floats.

    Returns:
        The mean nDCG@k, or None when no query can be ranked.
    """
    if pairing not in ("cross", "self"):
        raise ValueError(f"graded_ndcg: pairing must be 'cross' or 'self', got {pairing!r}")
    q = _as_embeddings(queries, "queries")
    g = _as_embeddings(gallery, "gallery")
    if q.shape != g.shape:
        raise ValueError(f"graded_ndcg: queries {q.shape} and gallery {g.shape} must pair rows")
    n = len(q)
    rel = _as_square(relevance, "relevance", None).astype(np.float64)
    ql = _as_labels(query_labels, n, "query_labels", len(rel))
    gl = _as_labels(gallery_labels, n, "gallery_labels", len(rel))
    (k,) = _as_ks([k], "k")
    chunk_size = _as_chunk(chunk_size, "graded_ndcg")
    cross = pairing == "cross"
    if n < (1 if cross else 2):
        return None

    # Ideal DCG from counts: how many gallery items of each gain each query has.
    hist = np.bincount(gl, minlength=len(rel)).astype(np.float64)
    levels = np.unique(rel[rel > 0])[::-1]
    counts = np.stack([(rel[ql] == lv).astype(np.float64) @ hist for lv in levels], axis=1)
    # The own pair (cross) or the query itself (self) was counted at its class gain.
    own_level = np.searchsorted(-levels, -rel[ql, gl])
    has_own = rel[ql, gl] > 0
    counts[np.flatnonzero(has_own), own_level[has_own]] -= 1
    gains_ideal = list(levels)
    if cross:
        counts = np.concatenate([np.ones((n, 1)), counts], axis=1)
        gains_ideal = [float(OWN_PAIR_GAIN), *gains_ideal]
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    # Position r of the ideal list holds the first gain level whose cumulative count passes r.
    cum = np.cumsum(counts, axis=1)
    pos = np.arange(k)[None, :, None] < cum[:, None, :]  # (n, k, levels)
    first = np.where(pos.any(axis=2), pos.argmax(axis=2), len(gains_ideal))
    ideal_gain = np.append(np.asarray(gains_ideal), 0.0)[first]
    idcg = ideal_gain @ discount

    dtype = np.result_type(q.dtype, g.dtype, np.float32)
    q, g_t = q.astype(dtype, copy=False), g.astype(dtype, copy=False).T
    kk = min(k, n if cross else n - 1)
    dcg = np.empty(n)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        sims = q[start:stop] @ g_t
        rows = np.arange(stop - start)
        if not cross:
            sims[rows, start + rows] = -np.inf
        top = _topk_rows(sims, kk)
        gain = rel[ql[start:stop, None], gl[top]]
        if cross:
            gain = np.where(top == (start + rows)[:, None], float(OWN_PAIR_GAIN), gain)
        dcg[start:stop] = gain @ discount[:kk]
    ok = idcg > 0
    return float(np.mean(dcg[ok] / idcg[ok])) if ok.any() else None


def _topk_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest entries per row, largest first, ties to the lower index."""
    n_rows, n = scores.shape
    k = min(k, n)
    kth = np.partition(scores, n - k, axis=1)[:, n - k : n - k + 1]  # k-th largest per row
    keep = scores >= kth
    tied = np.flatnonzero(keep.sum(axis=1) > k)
    if tied.size:
        # Rows where several entries equal the k-th value: of those, keep the lowest indices.
        sub, kv = scores[tied], kth[tied]
        above, at = sub > kv, sub == kv
        room = k - above.sum(axis=1, keepdims=True)
        keep[tied] = above | (at & (np.cumsum(at, axis=1) <= room))
    cols = np.nonzero(keep)[1].reshape(n_rows, k)  # ascending within each row
    order = np.argsort(-np.take_along_axis(scores, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


def _as_chunk(chunk_size: int, where: str) -> int:
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"{where}: chunk_size must be a positive int, got {chunk_size!r}")
    return int(chunk_size)


def _as_ks(ks: Iterable[int], name: str) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or not all(isinstance(k, (int, np.integer)) and k >= 1 for k in ks):
        raise ValueError(f"{name} must be positive ints, got {ks!r}")
    return tuple(int(k) for k in ks)


def _as_labels(
    labels: np.ndarray, n: int | None, name: str, n_classes: int | None = None
) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or (n is not None and len(labels) != n):
        want = "(N,)" if n is None else f"({n},)"
        raise ValueError(f"{name} must have shape {want}, got {labels.shape}")
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if labels.size:
        out_of_range = labels < 0
        if n_classes is not None:
            out_of_range |= labels >= n_classes
        bad = np.flatnonzero(out_of_range)
        if bad.size:
            i = int(bad[0])
            hi = "" if n_classes is None else f", {n_classes}"
            raise ValueError(
                f"{name}[{i}] = {labels[i]} is not a class index in [0{hi}); "
                "map labels to 0..K-1 with the class list used for the hierarchy"
            )
    return labels.astype(np.intp, copy=False)


def _as_ids(ids: np.ndarray, n: int, name: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {ids.shape}")
    return ids


def _as_embeddings(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must be a numeric (N, D) array, got {x.dtype} {x.shape}")
    if not np.isfinite(x).all():
        row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise ValueError(f"{name} row {row} holds NaN or inf; recompute that embedding")
    return x


def _as_scores(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] == 0 or not np.issubdtype(scores.dtype, np.number):
        raise ValueError(
            f"scores must be a numeric (N, K) array, got {scores.dtype} {scores.shape}"
        )
    scores = scores.astype(np.float64, copy=False)
    if np.isnan(scores).any():
        row = int(np.flatnonzero(np.isnan(scores).any(axis=1))[0])
        raise ValueError(f"scores row {row} holds NaN; check the model output for that item")
    return scores


def _as_square(m: np.ndarray, name: str, n: int | None) -> np.ndarray:
    m = np.asarray(m)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or (n is not None and len(m) != n):
        want = "(K, K)" if n is None else f"({n}, {n})"
        raise ValueError(f"{name} must have shape {want} (one row per class), got {m.shape}")
    return m


def _as_class_distance(d: np.ndarray | None, n_classes: int | None) -> np.ndarray | None:
    if d is None:
        return None
    return _as_square(d, "class_distance", n_classes).astype(np.float64, copy=False)
