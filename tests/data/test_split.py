"""The stratified split: per-class counts, determinism, seeds and the small-class rule."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from huse.data.split import SplitConfig, stratified_split

SIZES = {"big": 20, "ten": 10, "four": 4, "three": 3, "two": 2, "one": 1}
# round(n·0.2) to test, round(n·0.1) to val, each at least one; classes under 3 all train.
EXPECTED = {
    "big": {"train": 14, "val": 2, "test": 4},
    "ten": {"train": 7, "val": 1, "test": 2},
    "four": {"train": 2, "val": 1, "test": 1},
    "three": {"train": 1, "val": 1, "test": 1},
    "two": {"train": 2, "val": 0, "test": 0},
    "one": {"train": 1, "val": 0, "test": 0},
}


def make(sizes: dict[str, int]) -> tuple[list[str], list[str]]:
    ids, classes = [], []
    for name, n in sizes.items():
        for j in range(n):
            ids.append(f"{name}-{j:03d}")
            classes.append(name)
    return ids, classes


def per_class(splits: list[str], classes: list[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for s, c in zip(splits, classes):
        out.setdefault(c, {"train": 0, "val": 0, "test": 0})[s] += 1
    return out


def test_stratified_counts_per_class():
    ids, classes = make(SIZES)
    splits, report = stratified_split(ids, classes, SplitConfig(val=0.1, test=0.2, seed=0))
    assert per_class(splits, classes) == EXPECTED
    assert report.counts == {
        "train": sum(e["train"] for e in EXPECTED.values()),
        "val": sum(e["val"] for e in EXPECTED.values()),
        "test": sum(e["test"] for e in EXPECTED.values()),
    }
    assert report.counts == {"train": 27, "val": 5, "test": 8}


def test_small_classes_go_to_train_and_are_reported():
    ids, classes = make(SIZES)
    splits, report = stratified_split(ids, classes)
    assert report.train_only_classes == ["one", "two"]
    assert all(s == "train" for s, c in zip(splits, classes) if c in ("one", "two"))
    # No item is dropped: every input gets a split.
    assert len(splits) == len(ids)


def test_min_eval_items_is_the_threshold():
    ids, classes = make({"four": 4, "three": 3})
    _, report = stratified_split(ids, classes, SplitConfig(min_eval_items=4))
    assert report.train_only_classes == ["three"]


def test_large_shares_still_keep_one_for_training():
    ids, classes = make({"three": 3, "five": 5})
    splits, _ = stratified_split(ids, classes, SplitConfig(val=0.4, test=0.5))
    pc = per_class(splits, classes)
    # n=3: test round(1.5)=2, val round(1.2)=1 leaves none, so test gives one back.
    assert pc["three"] == {"train": 1, "val": 1, "test": 1}
    # n=5: test round(2.5)=2, val 2, train 1.
    assert pc["five"] == {"train": 1, "val": 2, "test": 2}


def test_zero_shares():
    ids, classes = make({"ten": 10})
    splits, _ = stratified_split(ids, classes, SplitConfig(val=0.0, test=0.2))
    assert Counter(splits) == {"train": 8, "test": 2}


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (-0.1, 0.2), (0.1, 1.0)])
def test_invalid_shares_raise(val, test):
    from huse.errors import ConfigError

    with pytest.raises(ConfigError, match=f"val and test .* not val={val}, test={test}"):
        stratified_split(["a"], ["x"], SplitConfig(val=val, test=test))


def test_same_seed_same_split():
    ids, classes = make(SIZES)
    a, _ = stratified_split(ids, classes, SplitConfig(seed=7))
    b, _ = stratified_split(ids, classes, SplitConfig(seed=7))
    assert a == b


def test_row_order_does_not_matter():
    ids, classes = make(SIZES)
    splits, _ = stratified_split(ids, classes, SplitConfig(seed=3))
    by_id = dict(zip(ids, splits))
    order = list(range(len(ids)))
    random.Random(1).shuffle(order)
    ids2 = [ids[i] for i in order]
    classes2 = [classes[i] for i in order]
    splits2, _ = stratified_split(ids2, classes2, SplitConfig(seed=3))
    assert dict(zip(ids2, splits2)) == by_id


def test_different_seed_different_split():
    ids, classes = make({"big": 20, "ten": 10})
    a, _ = stratified_split(ids, classes, SplitConfig(seed=0))
    b, _ = stratified_split(ids, classes, SplitConfig(seed=1))
    assert a != b
    # ... with the same per-class counts.
    assert per_class(a, classes) == per_class(b, classes)


def test_adding_a_class_keeps_other_assignments():
    ids, classes = make(SIZES)
    before = dict(zip(ids, stratified_split(ids, classes)[0]))
    ids2, classes2 = make({"new": 15, **SIZES})
    after = dict(zip(ids2, stratified_split(ids2, classes2)[0]))
    assert {i: after[i] for i in before} == before
    assert Counter(after[i] for i in ids2 if i.startswith("new-")) == {
        "train": 10,
        "val": 2,
        "test": 3,
    }
