"""The class hierarchy, read from the class paths themselves.

A class path such as ``clothing<dresses<maxi`` names a node and all its ancestors. Any node
may be a class (``animals`` beside ``animals<bugs``). A virtual root sits above the
top-level nodes so that every two nodes have a lowest common ancestor.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cached_property

import numpy as np

ROOT = ""


class Hierarchy:
    """A tree of class paths with distances and HP@K target sets.

    Args:
        classes: the class paths used as labels. Order is kept: class index ``i`` is
            ``classes[i]``. Duplicates are rejected.
        sep: the separator between levels.
    """

    def __init__(self, classes: Sequence[str], sep: str = "<") -> None:
        if len(set(classes)) != len(classes):
            raise ValueError("class list has duplicates")
        for c in classes:
            parts = c.split(sep)
            if not c or any(not p.strip() for p in parts):
                raise ValueError(f"invalid class path {c!r}: empty level")
        self.sep = sep
        self.classes: list[str] = list(classes)
        self.index: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        # Every node: the classes and all their ancestors, plus the root.
        self.parent: dict[str, str] = {}
        for c in self.classes:
            parts = c.split(sep)
            for d in range(1, len(parts) + 1):
                node = sep.join(parts[:d])
                self.parent[node] = sep.join(parts[: d - 1]) if d > 1 else ROOT

    @classmethod
    def from_paths(cls, paths: Iterable[str], sep: str = "<") -> Hierarchy:
        """Build from (possibly repeated) class paths; classes are sorted."""
        return cls(sorted(set(paths)), sep=sep)

    def __len__(self) -> int:
        return len(self.classes)

    def depth(self, node: str) -> int:
        """Number of levels: ``a`` is 1, ``a<b`` is 2, the root is 0."""
        return 0 if node == ROOT else node.count(self.sep) + 1

    def ancestors(self, node: str) -> list[str]:
        """The node itself, then its ancestors up to and including the root."""
        out = [node]
        while node != ROOT:
            node = self.parent[node]
            out.append(node)
        return out

    def lca(self, a: str, b: str) -> str:
        """Lowest common ancestor of two nodes (the root when they share no top level)."""
        anc = set(self.ancestors(a))
        for node in self.ancestors(b):
            if node in anc:
                return node
        return ROOT

    def distance(self, a: str, b: str) -> int:
        """Tree distance: the number of edges on the path between two nodes."""
        return self.depth(a) + self.depth(b) - 2 * self.depth(self.lca(a, b))

    @cached_property
    def _depths(self) -> np.ndarray:
        return np.array([self.depth(c) for c in self.classes], dtype=np.int64)

    def distance_matrix(self) -> np.ndarray:
        """K×K tree distances between the classes (int)."""
        return self._distance_matrix.copy()

    @cached_property
    def _distance_matrix(self) -> np.ndarray:
        # Depth of the LCA of two paths = length of their common prefix of levels.
        levels = [c.split(self.sep) for c in self.classes]
        k = len(levels)
        lca_depth = np.zeros((k, k), dtype=np.int64)
        for i in range(k):
            for j in range(i, k):
                n = 0
                for x, y in zip(levels[i], levels[j]):
                    if x != y:
                        break
                    n += 1
                lca_depth[i, j] = lca_depth[j, i] = n
        d = self._depths
        return d[:, None] + d[None, :] - 2 * lca_depth

    def descendants(self, node: str) -> list[int]:
        """Indices of the classes at or under ``node`` (all classes for the root)."""
        if node == ROOT:
            return list(range(len(self.classes)))
        prefix = node + self.sep
        return [i for i, c in enumerate(self.classes) if c == node or c.startswith(prefix)]

    def hp_target_node(self, cls: str, k: int) -> str:
        """The node whose subtree is the HP@K target set of ``cls`` (SPEC §7).

        Climb from the class upwards and stop at the first node whose subtree holds at
        least ``k`` classes, or at the root.
        """
        for node in self.ancestors(cls):
            if len(self.descendants(node)) >= k:
                return node
        return ROOT

    def hp_targets(self, k: int) -> np.ndarray:
        """K×K bool matrix: row ``i`` marks the classes in class ``i``'s HP@K target set."""
        n = len(self.classes)
        out = np.zeros((n, n), dtype=bool)
        for i, c in enumerate(self.classes):
            out[i, self.descendants(self.hp_target_node(c, k))] = True
        return out

    def top_level(self, cls: str) -> str:
        return cls.split(self.sep)[0]

    def graded_relevance(self) -> np.ndarray:
        """K×K int matrix of class-level gains for graded ranking (``metrics.graded_ndcg``).

        Entry ``[q, g]`` is 2 when ``g`` is ``q`` itself; 1 when ``g`` lies under ``q``'s
        parent class (a sibling, a sibling's descendant, one of ``q``'s own descendants, or
        the parent itself when the parent is a class); 0 otherwise. A top-level class has no
        parent class (the virtual root is not one), so for it only its own class gains.
        """
        return self._graded_relevance.copy()

    @cached_property
    def _graded_relevance(self) -> np.ndarray:
        n = len(self.classes)
        out = np.zeros((n, n), dtype=np.int8)
        for i, c in enumerate(self.classes):
            parent = self.parent[c]
            if parent != ROOT:
                out[i, self.descendants(parent)] = 1
            out[i, i] = 2
        return out
