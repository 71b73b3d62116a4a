"""Metrics against plain-loop reference versions and hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from huse.metrics import accuracy, classification_metrics, retrieval_metrics, topk_classes

# A hand-made hierarchy; a virtual root sits above the top-level classes a, b and c.
#   root ─ a ─ x, y
#        ─ b ─ z
#        ─ c ─ w
CLASSES = ["a", "a<x", "a<y", "b", "b<z", "c", "c<w"]
A, X, Y, B, Z, C, W = range(7)
# Number of edges between the two class nodes.
DIST = np.array(
    [
        # a  x  y  b  z  c  w
        [0, 1, 1, 2, 3, 2, 3],  # a
        [1, 0, 2, 3, 4, 3, 4],  # x
        [1, 2, 0, 3, 4, 3, 4],  # y
        [2, 3, 3, 0, 1, 2, 3],  # b
        [3, 4, 4, 1, 0, 3, 4],  # z
        [2, 3, 3, 2, 3, 0, 1],  # c
        [3, 4, 4, 3, 4, 1, 0],  # w
    ],
    dtype=float,
)
_ABC = [1, 1, 1, 0, 0, 0, 0]  # {a, x, y}
_BZ = [0, 0, 0, 1, 1, 0, 0]  # {b, z}
_CW = [0, 0, 0, 0, 0, 1, 1]  # {c, w}
_ALL = [1] * 7
# DeViSE target sets: climb from the class until the subtree holds >= K classes (or the root).
HP_TARGETS = {
    2: np.array([_ABC, _ABC, _ABC, _BZ, _BZ, _CW, _CW], dtype=bool),
    3: np.array([_ABC, _ABC, _ABC, _ALL, _ALL, _ALL, _ALL], dtype=bool),
    5: np.ones((7, 7), dtype=bool),
    10: np.ones((7, 7), dtype=bool),
}


# ---------------------------------------------------------------- plain-loop references


def brute_force_ranking(queries, gallery, query_ids, gallery_ids, i):
    """Gallery indices for query i, best first, ties to the lower index, same ids left out."""
    scored = []
    for j in range(len(gallery)):
        if query_ids is not None and query_ids[i] == gallery_ids[j]:
            continue
        s = 0.0
        for a, b in zip(queries[i], gallery[j], strict=True):
            s += float(a) * float(b)
        scored.append((-s, j))
    scored.sort()
    return [j for _, j in scored]


def brute_force_retrieval(
    queries, query_labels, gallery, gallery_labels, query_ids, gallery_ids, recall_ks, hp_ks
):
    n = len(queries)
    hits = {k: 0 for k in recall_ks}
    hp = {k: 0.0 for k in hp_ks}
    hd = {k: 0.0 for k in recall_ks}
    severity, wrong = 0.0, 0
    for i in range(n):
        c = int(query_labels[i])
        ranked = [
            int(gallery_labels[j])
            for j in brute_force_ranking(queries, gallery, query_ids, gallery_ids, i)
        ]
        for k in recall_ks:
            top = ranked[:k]
            if c in top:
                hits[k] += 1
            hd[k] += sum(DIST[c][t] for t in top) / len(top)
        for k in hp_ks:
            top = ranked[:k]
            hp[k] += sum(1 for t in top if HP_TARGETS[k][c][t]) / len(top)
        if ranked[0] != c:
            severity += DIST[c][ranked[0]]
            wrong += 1
    out = {f"R@{k}": hits[k] / n for k in recall_ks}
    out.update({f"HP@{k}": hp[k] / n for k in hp_ks})
    out["mistake_severity"] = severity / wrong if wrong else None
    out.update({f"hdist@{k}": hd[k] / n for k in recall_ks})
    return out


def brute_force_classification(scores, labels, ks):
    n = len(scores)
    hits = {k: 0 for k in ks}
    hd = {k: 0.0 for k in ks}
    severity, wrong = 0.0, 0
    for i in range(n):
        c = int(labels[i])
        ranked = sorted(range(len(scores[i])), key=lambda j, i=i: (-float(scores[i][j]), j))
        for k in ks:
            top = ranked[:k]
            if c in top:
                hits[k] += 1
            hd[k] += sum(DIST[c][t] for t in top) / len(top)
        if ranked[0] != c:
            severity += DIST[c][ranked[0]]
            wrong += 1
    out = {"accuracy": hits[1] / n}
    out.update({f"top{k}": hits[k] / n for k in ks if k != 1})
    out["mistake_severity"] = severity / wrong if wrong else None
    out.update({f"hdist@{k}": hd[k] / n for k in ks})
    return out


def assert_same(got, want):
    assert list(got) == list(want)
    for key, value in want.items():
        if value is None:
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


# ---------------------------------------------------------------- data


def tied_set(rng, n, n_dup):
    """Vectors with entries in {-1, -0.5, 0, 0.5, 1}: every dot product is exact in float32 and
    in Python, so ties are true ties for both; n_dup rows repeat earlier rows."""
    x = rng.integers(-2, 3, size=(n, 4)).astype(np.float32) / 2
    x[n - n_dup :] = x[rng.integers(0, n - n_dup, size=n_dup)]
    return x


def unit_set(rng, n, dim=8):
    x = rng.normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


KW = dict(recall_ks=(1, 5, 10), hp_ks=(2, 3, 5, 10), hp_targets=HP_TARGETS, class_distance=DIST)


# ---------------------------------------------------------------- retrieval


@pytest.mark.parametrize("with_ids", [False, True])
def test_retrieval_matches_brute_force_with_ties(with_ids):
    rng = np.random.default_rng(0)
    q, g = tied_set(rng, 60, 15), tied_set(rng, 50, 12)
    q[:5] = g[:5]  # some queries equal to gallery items
    ql, gl = rng.integers(0, 7, 60), rng.integers(0, 7, 50)
    # Repeated ids: several gallery items share a query's id (cross-modal style).
    qid = rng.integers(0, 20, 60) if with_ids else None
    gid = rng.integers(0, 20, 50) if with_ids else None
    got = retrieval_metrics(q, ql, g, gl, query_ids=qid, gallery_ids=gid, chunk_size=7, **KW)
    want = brute_force_retrieval(q, ql, g, gl, qid, gid, (1, 5, 10), (2, 3, 5, 10))
    assert_same(got, want)


def test_retrieval_matches_brute_force_unit_vectors_self_excluded():
    rng = np.random.default_rng(1)
    x = unit_set(rng, 45)
    labels = rng.integers(0, 7, 45)
    ids = np.arange(45)
    got = retrieval_metrics(
        x, labels, x, labels, query_ids=ids, gallery_ids=ids, chunk_size=7, **KW
    )
    want = brute_force_retrieval(x, labels, x, labels, ids, ids, (1, 5, 10), (2, 3, 5, 10))
    assert_same(got, want)
    # Without exclusion every query finds itself first.
    assert retrieval_metrics(x, labels, x, labels, **KW)["R@1"] == 1.0
    assert got["R@1"] < 1.0


def test_chunk_size_does_not_change_results():
    rng = np.random.default_rng(2)
    q, g = tied_set(rng, 60, 15), tied_set(rng, 50, 12)
    ql, gl = rng.integers(0, 7, 60), rng.integers(0, 7, 50)
    ids_q, ids_g = rng.integers(0, 30, 60), rng.integers(0, 30, 50)
    results = [
        retrieval_metrics(q, ql, g, gl, query_ids=ids_q, gallery_ids=ids_g, chunk_size=cs, **KW)
        for cs in (1, 7, 59, 1024)
    ]
    for r in results[1:]:
        assert_same(r, results[0])


def test_retrieval_hand_example():
    # Four items, each a query against the three others (ids exclude itself).
    #   0: a (1, 0)   1: z (.8, .6)   2: b (.6, .8)   3: b (0, 1)
    # Similarities: 0-1 .8, 0-2 .6, 0-3 0, 1-2 .96, 1-3 .6, 2-3 .8. Rankings:
    #   q0 (a): 1 z, 2 b, 3 b   top-1 wrong, dist(a, z) = 3; top-2 {z, b} vs {a,x,y}: 0/2
    #   q1 (z): 2 b, 0 a, 3 b   top-1 wrong, dist(z, b) = 1; top-2 {b, a} vs {b,z}:   1/2
    #   q2 (b): 1 z, 3 b, 0 a   top-1 wrong, dist(b, z) = 1; top-2 {z, b} vs {b,z}:   2/2
    #   q3 (b): 2 b, 1 z, 0 a   top-1 right;                 top-2 {b, z} vs {b,z}:   2/2
    # R@1 = 1/4; HP@2 = (0 + .5 + 1 + 1) / 4 = .625; mistake severity = (3 + 1 + 1) / 3;
    # hdist@1 = (3 + 1 + 1 + 0) / 4; R@5 (all three others): q2 and q3 find a b -> 1/2.
    x = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1]], dtype=np.float32)
    labels = np.array([A, Z, B, B])
    ids = np.arange(4)
    r = retrieval_metrics(
        x, labels, x, labels, query_ids=ids, gallery_ids=ids,
        hp_targets=HP_TARGETS, class_distance=DIST,
    )  # fmt: skip
    assert r["R@1"] == 0.25
    assert r["R@5"] == 0.5
    assert r["HP@2"] == pytest.approx(0.625)
    assert r["mistake_severity"] == pytest.approx(5 / 3)
    assert r["hdist@1"] == pytest.approx(1.25)
    # HP@10 uses all three others; the target set is every class.
    assert r["HP@10"] == 1.0


def test_ties_go_to_lower_gallery_index():
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    g = np.array([[0, 1], [1, 0], [1, 0], [1, 0]], dtype=np.float32)
    gl = np.array([A, X, Y, B])
    assert retrieval_metrics(q, np.array([X]), g, gl, class_distance=DIST)["R@1"] == 1.0
    r = retrieval_metrics(q, np.array([Y]), g, gl, class_distance=DIST)
    assert r["R@1"] == 0.0
    assert r["mistake_severity"] == DIST[Y, X]
    assert topk_classes(np.array([[1, 3, 3, 0, 3]]), 2).tolist() == [[1, 2]]
    assert topk_classes(np.array([[1, 3, 3, 0, 3]]), 3).tolist() == [[1, 2, 4]]
    assert topk_classes(np.array([[1, 3, 3, 0, 3]]), 9).tolist() == [[1, 2, 4, 0, 3]]


def test_small_gallery_uses_what_remains():
    # Three items with self-exclusion: two remain, fewer than K = 5 or 10.
    rng = np.random.default_rng(3)
    x = unit_set(rng, 3, dim=2)
    labels = np.array([A, X, A])
    ids = np.arange(3)
    got = retrieval_metrics(x, labels, x, labels, query_ids=ids, gallery_ids=ids, **KW)
    want = brute_force_retrieval(x, labels, x, labels, ids, ids, (1, 5, 10), (2, 3, 5, 10))
    assert_same(got, want)
    # Each query sees both others: only item 1 (x) finds no item of its class.
    assert got["R@10"] == pytest.approx(2 / 3)
    assert got["hdist@10"] == pytest.approx((1 / 2 + 2 / 2 + 1 / 2) / 3)


def test_optional_inputs_give_none():
    rng = np.random.default_rng(4)
    x = unit_set(rng, 10)
    labels = np.zeros(10, dtype=int)
    r = retrieval_metrics(x, labels, x, labels)
    assert r["HP@2"] is None and r["hdist@5"] is None and r["mistake_severity"] is None
    # One class only: no top-1 is wrong, so no mistake severity even with distances.
    r = retrieval_metrics(x, labels, x, labels, class_distance=DIST)
    assert r["mistake_severity"] is None and r["hdist@1"] == 0.0


def test_retrieval_errors():
    x = np.eye(3, dtype=np.float32)
    labels = np.array([0, 1, 2])
    with pytest.raises(ValueError, match="dimension"):
        retrieval_metrics(x, labels, np.eye(3, 4), labels)
    with pytest.raises(ValueError, match=r"gallery_labels\[1\] = 9"):
        retrieval_metrics(x, labels, x, np.array([0, 9, 1]), class_distance=DIST)
    with pytest.raises(ValueError, match="no matrix for K=4"):
        retrieval_metrics(x, labels, x, labels, hp_ks=(2, 4), hp_targets=HP_TARGETS)
    with pytest.raises(ValueError, match="both query_ids and gallery_ids"):
        retrieval_metrics(x, labels, x, labels, query_ids=np.arange(3))
    with pytest.raises(ValueError, match="no gallery item left"):
        retrieval_metrics(
            x, labels, x[:1], labels[:1], query_ids=np.arange(3), gallery_ids=np.array([1])
        )
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_metrics(x, labels, x, labels, chunk_size=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        retrieval_metrics(np.full((1, 3), np.nan), labels[:1], x, labels)


# ---------------------------------------------------------------- classification


def test_classification_matches_brute_force_with_ties():
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 4, size=(40, 7)).astype(np.float32)  # many ties
    labels = rng.integers(0, 7, 40)
    ks = (1, 3, 5, 10)
    got = classification_metrics(scores, labels, DIST, ks=ks)
    assert_same(got, brute_force_classification(scores, labels, ks))
    assert classification_metrics(scores, labels, None)["hdist@5"] is None


def test_classification_hand_example():
    # Row 0: best x (label x): right.  Row 1: best a, label b: wrong, dist(b, a) = 2.
    # Row 2: best w, label z: wrong, dist(z, w) = 4; top-2 {w, z} holds z.
    scores = np.zeros((3, 7))
    scores[0, X] = 0.9
    scores[1, A], scores[1, B] = 0.6, 0.3
    scores[2, W], scores[2, Z] = 0.5, 0.4
    labels = np.array([X, B, Z])
    r = classification_metrics(scores, labels, DIST, ks=(1, 2))
    assert r["accuracy"] == pytest.approx(1 / 3)
    assert r["top2"] == 1.0
    assert r["mistake_severity"] == pytest.approx((2 + 4) / 2)
    assert r["hdist@1"] == pytest.approx((0 + 2 + 4) / 3)
    # Row 0's runner-up is a (tie at 0 -> lowest index): dist(x, a) = 1.
    assert r["hdist@2"] == pytest.approx(((0 + 1) / 2 + (2 + 0) / 2 + (4 + 0) / 2) / 3)


def test_accuracy():
    assert accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == 0.75
    with pytest.raises(ValueError, match="shape"):
        accuracy(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="integer"):
        accuracy(np.array([0.0]), np.array([0]))
