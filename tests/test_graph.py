"""The semantic graph: class-name texts, the real name graph, tree and mixed graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from huse.data.hierarchy import Hierarchy
from huse.graph import build_graph, class_name_text, name_graph, tree_graph

# --- class_name_text ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "sep", "text"),
    [
        ("food<beverages<alcohol", "<", "alcohol, beverages, food"),
        ("animals<birds", "<", "birds, animals"),
        ("animals", "<", "animals"),
        ("signs_and_symbols<flags<africa", "<", "africa, flags, signs and symbols"),
        ("food<breads_and_carbs", "<", "breads and carbs, food"),
        ("home-garden<t-shirts", "<", "t shirts, home garden"),
        ("clothing/dresses/maxi", "/", "maxi, dresses, clothing"),
        ("clothing< dresses ", "<", "dresses, clothing"),
    ],
)
def test_class_name_text_puts_the_leaf_first_then_its_ancestors(path, sep, text):
    assert class_name_text(path, sep) == text


# --- name_graph with a fake encoder: exact values ------------------------------------


class FakeEncoder:
    """Returns fixed (not normalised) vectors per text and counts its calls."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table
        self.calls: list[list[str]] = []

    def embed_sentences(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        return torch.tensor([self.table[t] for t in texts], dtype=torch.float32)


def test_name_graph_is_cosine_distance_of_the_name_embeddings():
    h = Hierarchy(["a<x", "a<y", "b", "c"])
    enc = FakeEncoder(
        {
            "x, a": [2.0, 0.0],  # length 2: the graph normalises it
            "y, a": [1.0, 1.0],
            "b": [0.0, 3.0],
            "c": [-1.0, 0.0],
        }
    )
    g = name_graph(h, enc)
    r = 1 / np.sqrt(2)
    expected = np.array(
        [
            [0, 1 - r, 1, 2],
            [1 - r, 0, 1 - r, 1 + r],
            [1, 1 - r, 0, 1],
            [2, 1 + r, 1, 0],
        ]
    )
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, expected, atol=1e-6)
    assert enc.calls == [["x, a", "y, a", "b", "c"]]  # one call, classes in order


def test_name_graph_diagonal_is_exactly_zero_even_for_duplicate_names():
    # Two classes whose names embed identically: distance 0 off the diagonal too, no
    # negative rounding noise anywhere.
    h = Hierarchy(["a<x", "b<x"])
    enc = FakeEncoder({"x, a": [0.3, 0.4], "x, b": [0.6, 0.8]})
    g = name_graph(h, enc)
    assert (np.diag(g) == 0).all()
    assert (g >= 0).all()
    np.testing.assert_allclose(g, 0.0, atol=1e-7)


# --- tree_graph and mix on a hand tree -------------------------------------------------

# root ─┬─ a ─┬─ a<b
#       │     └─ a<c
#       └─ d
HAND = ["a<b", "a<c", "d", "a"]
# Tree distances (edges): a<b–a<c 2, a<b–d 3, a<b–a 1, a<c–d 3, a<c–a 1, d–a 2; max 3.
HAND_TREE = np.array([[0, 2, 3, 1], [2, 0, 3, 1], [3, 3, 0, 2], [1, 1, 2, 0]]) / 3


def test_tree_graph_is_tree_distance_over_the_largest():
    g = tree_graph(Hierarchy(HAND))
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, HAND_TREE, atol=1e-7)


def test_tree_graph_of_one_class_is_zero():
    np.testing.assert_array_equal(tree_graph(Hierarchy(["only"])), np.zeros((1, 1)))


def test_build_graph_mix_is_the_weighted_sum():
    h = Hierarchy(HAND)
    table = {"b, a": [1.0, 0.0], "c, a": [0.0, 1.0], "d": [1.0, 1.0], "a": [-1.0, 0.0]}
    names = name_graph(h, FakeEncoder(table))
    for w in (0.0, 0.25, 1.0):
        mix = build_graph(h, FakeEncoder(table), source="mix", tree_weight=w)
        np.testing.assert_allclose(mix, (1 - w) * names + w * HAND_TREE, atol=1e-6)
        assert (np.diag(mix) == 0).all()
        assert mix.dtype == np.float32
    np.testing.assert_array_equal(build_graph(h, FakeEncoder(table)), names)
    np.testing.assert_array_equal(build_graph(h, None, source="tree"), tree_graph(h))


def test_build_graph_rejects_an_unknown_source():
    with pytest.raises(ValueError, match="names, tree or mix"):
        build_graph(Hierarchy(HAND), None, source="wordnet")


# --- the real text backbone ------------------------------------------------------------

REAL = [
    "food<fruits",
    "food<vegetables",
    "food<beverages<alcohol",
    "animals<birds",
    "animals<mammals",
    "transportation<cars",
    "transportation<boats",
]


@pytest.fixture(scope="module")
def minilm():
    from huse.backbones import get_backbone

    return get_backbone("minilm-l6", "text")


@pytest.fixture(scope="module")
def real_graph(minilm):
    return name_graph(Hierarchy(REAL), minilm)


@pytest.mark.slow
def test_real_graph_is_a_symmetric_distance_matrix(real_graph):
    g = real_graph
    assert g.shape == (len(REAL), len(REAL))
    assert g.dtype == np.float32
    assert (np.diag(g) == 0).all()
    np.testing.assert_allclose(g, g.T, atol=1e-6)
    off = g[~np.eye(len(g), dtype=bool)]
    assert (off > 0.05).all() and (off <= 2).all()  # distinct names are never merged


@pytest.mark.slow
def test_real_graph_siblings_are_closer_than_strangers(real_graph):
    g, i = real_graph, {c: n for n, c in enumerate(REAL)}
    assert g[i["food<fruits"], i["food<vegetables"]] < g[i["food<fruits"], i["transportation<cars"]]
    assert g[i["animals<birds"], i["animals<mammals"]] < g[i["animals<birds"], i["food<fruits"]]
    assert (
        g[i["transportation<cars"], i["transportation<boats"]]
        < g[i["transportation<cars"], i["animals<mammals"]]
    )
    # Stronger: for every class, the farthest class under its own top level is nearer than
    # the nearest class under another one (alcohol sits a level deeper and still holds).
    top = np.array([c.split("<")[0] for c in REAL])
    for k in range(len(REAL)):
        same = (top == top[k]) & (np.arange(len(REAL)) != k)
        assert g[k, same].max() < g[k, top != top[k]].min(), REAL[k]


@pytest.mark.slow
def test_ancestors_in_the_name_are_what_groups_siblings(minilm):
    # Evidence for class_name_text: the bare leaf names do NOT satisfy the property above
    # (alcohol is nearer to cars than to fruits), the leaf-plus-ancestors names do.
    leaf = minilm.embed_sentences([c.split("<")[-1] for c in REAL]).numpy()
    d = 1 - leaf @ leaf.T
    i = {c: n for n, c in enumerate(REAL)}
    alcohol = i["food<beverages<alcohol"]
    assert d[alcohol, i["transportation<cars"]] < d[alcohol, i["food<fruits"]]


@pytest.mark.slow
def test_real_graph_takes_one_encoder_call_for_k_classes(minilm, monkeypatch):
    calls: list[int] = []
    forwards: list[int] = []
    original = minilm.embed_sentences

    def counting(texts):
        calls.append(len(texts))
        return original(texts)

    monkeypatch.setattr(minilm, "embed_sentences", counting)
    hook = minilm.model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        g = build_graph(Hierarchy(REAL), minilm)
    finally:
        hook.remove()
    assert calls == [len(REAL)]  # one batch of K names, not K(K-1) pair encodings
    assert len(forwards) == 1  # one transformer forward pass
    assert g.shape == (len(REAL), len(REAL))
