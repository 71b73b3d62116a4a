"""The semantic graph: cosine distances between class names (SPEC §4).

K encoder calls (one batch) and one K×K matrix product, never an encoder call per pair.
"""

from __future__ import annotations

import numpy as np

from huse.data.hierarchy import Hierarchy


def class_name_text(path: str, sep: str = "<") -> str:
    """The text embedded for a class path: the leaf first, then its ancestors.

    ``food<beverages<alcohol`` → ``"alcohol, beverages, food"``. Putting the ancestors in
    the text makes siblings share words (closer) while the leaf keeps them apart; the
    underscores and dashes of folder names become spaces.
    """
    levels = [p.replace("_", " ").replace("-", " ").strip() for p in path.split(sep)]
    return ", ".join(reversed(levels))


def name_graph(hierarchy: Hierarchy, encoder) -> np.ndarray:
    """K×K cosine distances between class-name embeddings (diagonal exactly 0).

    Args:
        hierarchy: the classes.
        encoder: a text backbone with ``embed_sentences(list[str]) -> K×E`` (L2-normalised).
    """
    texts = [class_name_text(c, hierarchy.sep) for c in hierarchy.classes]
    emb = encoder.embed_sentences(texts).numpy().astype(np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
    dist = 1.0 - emb @ emb.T
    np.fill_diagonal(dist, 0.0)
    return np.clip(dist, 0.0, 2.0).astype(np.float32)


def tree_graph(hierarchy: Hierarchy) -> np.ndarray:
    """K×K tree distances scaled to [0, 1] by the largest one."""
    d = hierarchy.distance_matrix().astype(np.float32)
    return d / max(float(d.max()), 1.0)


def build_graph(
    hierarchy: Hierarchy, encoder=None, source: str = "names", tree_weight: float = 0.5
) -> np.ndarray:
    """The semantic graph from class names, the class tree, or a mix of both.

    Args:
        source: ``"names"`` (the paper), ``"tree"`` or ``"mix"``.
        tree_weight: in ``"mix"``, the weight of the tree graph.
    """
    if source == "names":
        return name_graph(hierarchy, encoder)
    if source == "tree":
        return tree_graph(hierarchy)
    if source == "mix":
        g = (1 - tree_weight) * name_graph(hierarchy, encoder) + tree_weight * tree_graph(hierarchy)
        np.fill_diagonal(g, 0.0)
        return g.astype(np.float32)
    raise ValueError(f"unknown graph source {source!r}; use names, tree or mix")
