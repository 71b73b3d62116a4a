"""Deterministic, seeded, stratified train/val/test split.

The rule for small classes, stated once: a class with fewer than ``min_eval_items`` items
(default 3) cannot give one item to each of val and test while keeping one for training,
so ALL its items go to train. Such classes are kept (never dropped) and reported. Larger
classes give ``round(n·frac)`` items to val and to test, at least one each, and keep at
least one for training.

Each class is shuffled with a seed derived from the global seed AND the class name, so
adding or removing one class never reshuffles the others.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from huse.config import SplitConfig
from huse.errors import ConfigError


@dataclass
class SplitReport:
    counts: dict[str, int]
    train_only_classes: list[str] = field(default_factory=list)


def _class_seed(seed: int, name: str) -> int:
    h = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(h[:8], "little")


def stratified_split(
    ids: list[str],
    classes: list[str],
    config: SplitConfig | None = None,
    groups: list[str | None] | None = None,
) -> tuple[list[str], SplitReport]:
    """Assign ``train``/``val``/``test`` to each item, stratified by class.

    Args:
        ids: item ids (their order within a class decides nothing: items are sorted by id
            before the seeded shuffle, so the manifest's row order does not matter).
        classes: the class of each item.

    Returns:
        the split of each item (same order as ``ids``) and a report.

    ``groups`` (e.g. the image's content hash) keeps items that share a group on one side:
    every member takes the split of the member with the smallest id, so the same picture
    filed under two classes can never be in train and test at once.
    """
    config = config or SplitConfig()
    if not 0 <= config.val < 1 or not 0 <= config.test < 1 or config.val + config.test >= 1:
        raise ConfigError(
            f"val and test shares must be in [0, 1) and sum to less than 1, not "
            f"val={config.val}, test={config.test}; lower one of them"
        )
    out = ["train"] * len(ids)
    by_class: dict[str, list[int]] = {}
    for i, c in enumerate(classes):
        by_class.setdefault(c, []).append(i)
    train_only = []
    for name in sorted(by_class):
        members = sorted(by_class[name], key=lambda i: ids[i])
        n = len(members)
        if n < config.min_eval_items:
            train_only.append(name)
            continue
        rng = np.random.default_rng(_class_seed(config.seed, name))
        order = [members[j] for j in rng.permutation(n)]
        n_test = max(1, round(n * config.test)) if config.test > 0 else 0
        n_val = max(1, round(n * config.val)) if config.val > 0 else 0
        while n - n_test - n_val < 1:  # keep one for training
            if n_val >= n_test and n_val > 0:
                n_val -= 1
            else:
                n_test -= 1
        for j in order[:n_test]:
            out[j] = "test"
        for j in order[n_test : n_test + n_val]:
            out[j] = "val"
    if groups is not None:
        leader: dict[str, int] = {}
        for i in sorted(range(len(ids)), key=lambda i: ids[i]):
            g = groups[i]
            if g is not None:
                out[i] = out[leader.setdefault(g, i)]
    counts = {s: out.count(s) for s in ("train", "val", "test")}
    return out, SplitReport(counts=counts, train_only_classes=train_only)
