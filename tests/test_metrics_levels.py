"""Instance-level retrieval and graded nDCG against plain-loop references and hand numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from huse.data.hierarchy import Hierarchy
from huse.metrics import OWN_PAIR_GAIN, graded_ndcg, instance_retrieval

CLASSES = ["a", "a<x", "a<y", "b", "b<z", "c", "c<w"]


def _unit(rng, n, d=6, quant=None):
    x = rng.normal(size=(n, d))
    if quant:
        # Coarse values, left unnormalised so that every dot product is exact: ties between
        # gallery items are common and the same in both implementations.
        return np.round(x * quant) / quant
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def _order(sims_row: np.ndarray) -> list[int]:
    """Gallery indices best first; equal scores to the lower index (plain Python sort)."""
    return sorted(range(len(sims_row)), key=lambda j: (-sims_row[j], j))


def _brute_instance(q, g, ks=(1, 5, 10)):
    ranks = []
    for i in range(len(q)):
        sims = [float(np.dot(q[i], g[j])) for j in range(len(g))]
        ranks.append(_order(np.array(sims)).index(i) + 1)
    out = {f"R@{k}": sum(r <= k for r in ranks) / len(ranks) for k in ks}
    out["MedR"] = float(np.median(ranks))
    return out


def _brute_ndcg(q, ql, g, gl, rel, pairing, k=10):
    vals = []
    for i in range(len(q)):
        sims = np.array([float(np.dot(q[i], g[j])) for j in range(len(g))])
        gains = {}
        for j in range(len(g)):
            if pairing == "self" and j == i:
                continue
            own = pairing == "cross" and j == i
            gains[j] = OWN_PAIR_GAIN if own else int(rel[ql[i], gl[j]])
        ranked = [j for j in _order(sims) if j in gains][:k]
        dcg = sum(gains[j] / math.log2(r + 2) for r, j in enumerate(ranked))
        ideal = sorted(gains.values(), reverse=True)[:k]
        idcg = sum(x / math.log2(r + 2) for r, x in enumerate(ideal))
        if idcg > 0:
            vals.append(dcg / idcg)
    return float(np.mean(vals)) if vals else None


def test_graded_relevance_by_hand():
    rel = Hierarchy(CLASSES).graded_relevance()
    #                      a  x  y  b  z  c  w
    want = np.array(
        [
            [2, 0, 0, 0, 0, 0, 0],  # a: top level, no parent class
            [1, 2, 1, 0, 0, 0, 0],  # a<x: under a (a itself, x, y)
            [1, 1, 2, 0, 0, 0, 0],  # a<y
            [0, 0, 0, 2, 0, 0, 0],  # b
            [0, 0, 0, 1, 2, 0, 0],  # b<z
            [0, 0, 0, 0, 0, 2, 0],  # c
            [0, 0, 0, 0, 0, 1, 2],  # c<w
        ]
    )
    np.testing.assert_array_equal(rel, want)


@pytest.mark.parametrize("quant", [None, 2])
def test_instance_matches_brute_force(quant):
    rng = np.random.default_rng(0)
    q, g = _unit(rng, 41, quant=quant), _unit(rng, 41, quant=quant)
    g[3] = q[3]  # one exact pair
    got = instance_retrieval(q, g, chunk_size=7)
    want = _brute_instance(q, g)
    assert got == pytest.approx(want)
    assert got == instance_retrieval(q, g, chunk_size=1000)


def test_instance_hand_example():
    q = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    g = np.array([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0]])
    # q0: its own text scores 1 (best); q1: 1.0 against 0.8 and -0.8 (best); q2 = (0, 1):
    # g1 scores 0.6, g0 and its own g2 both 0, and the tie goes to the lower index: rank 3.
    m = instance_retrieval(q, g, recall_ks=(1, 2, 3))
    assert m == {"R@1": pytest.approx(2 / 3), "R@2": pytest.approx(2 / 3), "R@3": 1.0, "MedR": 1.0}


def test_instance_ties_go_to_lower_index():
    q = np.array([[1.0, 0.0], [1.0, 0.0]])
    g = np.array([[1.0, 0.0], [1.0, 0.0]])
    # Both gallery items score 1 for both queries: item 0 ranks first, so item 1's pair is 2nd.
    assert instance_retrieval(q, g, recall_ks=(1,)) == {"R@1": 0.5, "MedR": 1.5}


@pytest.mark.parametrize("pairing", ["cross", "self"])
@pytest.mark.parametrize("quant", [None, 2])
def test_graded_ndcg_matches_brute_force(pairing, quant):
    rng = np.random.default_rng(1)
    h = Hierarchy(CLASSES)
    rel = h.graded_relevance()
    n = 53
    labels = rng.integers(0, len(CLASSES), size=n)
    q = _unit(rng, n, quant=quant)
    g = q if pairing == "self" else _unit(rng, n, quant=quant)
    for k in (1, 3, 10, 80):
        got = graded_ndcg(q, labels, g, labels, rel, pairing=pairing, k=k, chunk_size=9)
        assert got == pytest.approx(_brute_ndcg(q, labels, g, labels, rel, pairing, k))


def test_graded_ndcg_hand_example():
    # Classes a<x, a<y, b (indices 1, 2, 3 of CLASSES). Query 0 is an a<x image; gallery
    # texts: its own (rank 2), an a<x text (rank 1), an a<y text (rank 3), a b text (rank 4).
    rel = Hierarchy(CLASSES).graded_relevance()
    labels = np.array([1, 1, 2, 3])
    q = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    g = np.array([[0.9, 0.436], [1.0, 0.0], [0.5, 0.866], [0.0, -1.0]])
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    got = graded_ndcg(q[:1], labels[:1], g[:1], labels[:1], rel, pairing="cross", k=3)
    assert got == pytest.approx(1.0)  # one item: its own pair is the whole gallery
    # Query 0 alone against the 4 texts, through a 4-row call: rows 1-3 also query, so
    # compute query 0's value by hand and compare to the brute force of the same call.
    dcg0 = 2 / math.log2(2) + 3 / math.log2(3) + 1 / math.log2(4)
    idcg0 = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    full = graded_ndcg(q, labels, g, labels, rel, pairing="cross", k=3)
    assert full == pytest.approx(_brute_ndcg(q, labels, g, labels, rel, "cross", 3))
    # Queries 1-3 all point to (0, 1); texts ranked by their second coordinate: t2 (0.866),
    # t0 (0.436), t1 (0), t3 (-1).
    v1 = (1 / 1 + 2 / math.log2(3) + 3 / math.log2(4)) / (3 + 2 / math.log2(3) + 1 / math.log2(4))
    v2 = (3 / 1 + 1 / math.log2(3) + 1 / math.log2(4)) / (3 + 1 / math.log2(3) + 1 / math.log2(4))
    v3 = (0 + 0 + 0) / 3  # b is top level: only its own text gains
    assert full == pytest.approx((dcg0 / idcg0 + v1 + v2 + v3) / 4)


def test_graded_ndcg_self_skips_queries_with_nothing_to_find():
    rel = Hierarchy(CLASSES).graded_relevance()
    labels = np.array([3, 5])  # b and c: top-level, one item each, nothing relevant
    q = np.eye(2)
    assert graded_ndcg(q, labels, q, labels, rel, pairing="self") is None
    assert graded_ndcg(q[:1], labels[:1], q[:1], labels[:1], rel, pairing="self") is None


def test_errors():
    rel = Hierarchy(CLASSES).graded_relevance()
    q = np.eye(3)
    with pytest.raises(ValueError, match="pairing"):
        graded_ndcg(q, np.zeros(3, int), q, np.zeros(3, int), rel, pairing="both")
    with pytest.raises(ValueError, match="pair row by row"):
        instance_retrieval(q, q[:2])
    with pytest.raises(ValueError, match="chunk_size"):
        instance_retrieval(q, q, chunk_size=0)
