"""Hierarchy: depth, LCA, tree distance and HP@K target sets on a small hand-drawn tree.

(root)
├── a            ← a class AND an inner node
│   ├── a<b      ← a class AND an inner node
│   │   ├── a<b<c
│   │   └── a<b<g
│   └── a<d
└── e            ← an inner node only (not a class)
    ├── e<f
    └── e<h
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from huse.data.hierarchy import ROOT, Hierarchy

CLASSES = ["a", "a<b", "a<b<c", "a<b<g", "a<d", "e<f", "e<h"]


@pytest.fixture
def h() -> Hierarchy:
    return Hierarchy(CLASSES)


def test_depth(h):
    assert h.depth(ROOT) == 0
    assert h.depth("a") == 1
    assert h.depth("e") == 1
    assert h.depth("a<b") == 2
    assert h.depth("a<b<c") == 3


def test_ancestors_include_inner_nodes_that_are_not_classes(h):
    assert h.ancestors("e<f") == ["e<f", "e", ROOT]
    assert h.ancestors("a<b<c") == ["a<b<c", "a<b", "a", ROOT]


@pytest.mark.parametrize(
    ("x", "y", "lca"),
    [
        ("a<b<c", "a<d", "a"),
        ("a<b<c", "a<b", "a<b"),  # an ancestor that is itself a class
        ("a<b<c", "a<b<g", "a<b"),
        ("a", "a<b<c", "a"),
        ("a<b<c", "e<f", ROOT),
        ("e<f", "e<h", "e"),
        ("a<d", "a<d", "a<d"),
    ],
)
def test_lca(h, x, y, lca):
    assert h.lca(x, y) == lca
    assert h.lca(y, x) == lca


@pytest.mark.parametrize(
    ("x", "y", "dist"),
    [
        ("a<b<c", "a<d", 3),  # c→b→a→d
        ("a<b<c", "a<b", 1),
        ("a<b<c", "a<b<g", 2),
        ("a", "a<b<c", 2),
        ("a<b<c", "e<f", 5),  # c→b→a→root→e→f
        ("a", "e<h", 3),
        ("e<f", "e<h", 2),
        ("a<d", "a<d", 0),
    ],
)
def test_distance(h, x, y, dist):
    assert h.distance(x, y) == dist
    assert h.distance(y, x) == dist


def test_distance_matrix_equals_pairwise_distance(h):
    d = h.distance_matrix()
    expected = np.array([[h.distance(x, y) for y in CLASSES] for x in CLASSES], dtype=np.int64)
    np.testing.assert_array_equal(d, expected)
    assert d.dtype.kind == "i"
    np.testing.assert_array_equal(d, d.T)
    assert (np.diag(d) == 0).all()
    # A few by hand, so the test does not only compare the code with itself.
    i = h.index
    assert d[i["a<b<c"], i["e<f"]] == 5
    assert d[i["a"], i["a<d"]] == 1
    assert d[i["a<b<g"], i["a<d"]] == 3


def test_distance_matrix_is_a_copy(h):
    d = h.distance_matrix()
    d[0, 1] = 99
    assert h.distance_matrix()[0, 1] == 1


def test_descendants_include_the_node_itself_when_it_is_a_class(h):
    assert [CLASSES[j] for j in h.descendants("a<b")] == ["a<b", "a<b<c", "a<b<g"]
    assert [CLASSES[j] for j in h.descendants("e")] == ["e<f", "e<h"]
    assert h.descendants(ROOT) == list(range(len(CLASSES)))


A = {"a", "a<b", "a<b<c", "a<b<g", "a<d"}
AB = {"a<b", "a<b<c", "a<b<g"}
E = {"e<f", "e<h"}
ALL = set(CLASSES)

# Target set of each class, worked out by hand: climb until the subtree holds ≥ K classes.
HP_TARGETS = {
    2: {
        "a": A,  # a itself has 5
        "a<b": AB,  # 3 ≥ 2
        "a<b<c": AB,  # 1 < 2, climb to a<b: 3
        "a<b<g": AB,
        "a<d": A,  # 1, then a: 5
        "e<f": E,  # 1, then e: 2
        "e<h": E,
    },
    3: {
        "a": A,
        "a<b": AB,
        "a<b<c": AB,
        "a<b<g": AB,
        "a<d": A,
        "e<f": ALL,  # e has only 2, so the root
        "e<h": ALL,
    },
    5: {
        "a": A,
        "a<b": A,  # a<b has 3 < 5, climb to a: 5
        "a<b<c": A,
        "a<b<g": A,
        "a<d": A,
        "e<f": ALL,
        "e<h": ALL,
    },
}


@pytest.mark.parametrize("k", [2, 3, 5])
def test_hp_targets_by_hand(h, k):
    t = h.hp_targets(k)
    assert t.shape == (len(CLASSES), len(CLASSES))
    assert t.dtype == bool
    for i, c in enumerate(CLASSES):
        got = {CLASSES[j] for j in np.flatnonzero(t[i])}
        assert got == HP_TARGETS[k][c], (k, c)


def test_hp_targets_k1_is_the_class_subtree(h):
    # K=1 stops at the class itself: its subtree (itself plus the classes under it).
    t = h.hp_targets(1)
    assert {CLASSES[j] for j in np.flatnonzero(t[h.index["a<b<c"]])} == {"a<b<c"}
    assert {CLASSES[j] for j in np.flatnonzero(t[h.index["a<b"]])} == AB


def test_hp_targets_larger_than_the_tree_is_everything(h):
    assert h.hp_targets(100).all()


def test_from_paths_sorts_and_deduplicates():
    h = Hierarchy.from_paths(["b<x", "a", "b<x", "a"])
    assert h.classes == ["a", "b<x"]
    assert len(h) == 2


@pytest.mark.parametrize("bad", [["a", "a"], ["a<<b"], [""], ["a< "]])
def test_invalid_class_lists_are_rejected(bad):
    with pytest.raises(ValueError):
        Hierarchy(bad)


def test_custom_separator():
    h = Hierarchy(["x/y", "x/z", "w"], sep="/")
    assert h.distance("x/y", "x/z") == 2
    assert h.distance("x/y", "w") == 3
    assert h.lca("x/y", "x/z") == "x"


def test_distance_matrix_on_a_random_tree_matches_brute_force():
    rng = np.random.default_rng(0)
    paths = set()
    for _ in range(40):
        depth = rng.integers(1, 5)
        paths.add("<".join(f"n{rng.integers(0, 3)}" for _ in range(depth)))
    h = Hierarchy.from_paths(paths)
    d = h.distance_matrix()
    for (i, x), (j, y) in itertools.product(enumerate(h.classes), repeat=2):
        assert d[i, j] == h.distance(x, y)
