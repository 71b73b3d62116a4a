"""Evaluation: centroid and summary scores by hand, evaluate_net on a hand-built net whose
answers are known, and the shape of its metrics."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from huse.config import TrainConfig
from huse.data.hierarchy import Hierarchy
from huse.dataset import DataConfig, FeatureSet
from huse.evaluate import (
    DIRECTIONS,
    centroid_scores,
    embed,
    evaluate_net,
    evaluate_raw,
    summary_scores,
)
from huse.methods import resolve_config
from huse.model import HUSENet, ModelConfig, ModelOutput

pytestmark = pytest.mark.usefixtures("one_thread")


def paper_cfg(**kw) -> ModelConfig:
    """The ``paper`` preset's tower settings and a shared classifier; the rest from ``kw``."""
    paper = resolve_config("huse", "paper")
    names = {f.name for f in fields(ModelConfig)} & {f.name for f in fields(TrainConfig)}
    return ModelConfig(**({k: getattr(paper, k) for k in names} | {"classifier": "shared"} | kw))


# --- centroid_scores ---------------------------------------------------------------------


def test_centroid_scores_by_hand():
    train_emb = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0], [-1.0, 0.0]])
    train_labels = np.array([0, 0, 1, 0])
    # Class 0: sum (0, 1) → centroid (0, 1). Class 1: (3, 4) → (0.6, 0.8). Class 2: none.
    emb = np.array([[1.0, 0.0], [0.0, 2.0]])
    s = centroid_scores(emb, train_emb, train_labels, 3)
    assert s.shape == (2, 3)
    np.testing.assert_allclose(s[:, :2], [[0.0, 0.6], [2.0, 1.6]])
    assert (s[:, 2] == -np.inf).all()  # a class absent from train is never predicted
    assert s.argmax(1).tolist() == [1, 0]


def test_centroid_of_opposite_items_is_never_predicted():
    # Two opposite items cancel: a zero centroid is treated as absent, not as a 0/0.
    s = centroid_scores(
        np.array([[1.0, 0.0]]),
        np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]),
        np.array([0, 0, 1]),
        2,
    )
    assert s[0, 0] == -np.inf and s[0, 1] == 0.0


# --- summary_scores ----------------------------------------------------------------------


def metrics_with(r1: dict, hp5: dict, fusion) -> dict:
    return {
        "classification": {"image": None, "text": None, "fusion": fusion},
        "retrieval": {d: {"R@1": r1[d], "R@5": None, "R@10": None} for d in DIRECTIONS},
        "hierarchical": {d: {"HP@2": None, "HP@5": hp5[d], "HP@10": None} for d in DIRECTIONS},
    }


def test_summary_scores_by_hand():
    m = metrics_with(
        {"i2i": 0.2, "i2t": 0.4, "t2i": 0.6, "t2t": 1.0},
        {"i2i": 0.5, "i2t": 0.25, "t2i": 0.75, "t2t": 0.5},
        0.9,
    )
    s = summary_scores(m)
    want = {"cross_R@1": 0.5, "mean_HP@5": 0.5, "mean_R@1": 0.55, "fusion": 0.9}
    # Metrics written before the instance and graded figures existed still summarise.
    assert s == pytest.approx(want | {"instance_xR@1": None, "mean_nDCG@10": None})
    m["instance"] = {"xR@1": 0.3}
    m["graded"] = {"mean_nDCG@10": 0.7}
    assert summary_scores(m) == pytest.approx(want | {"instance_xR@1": 0.3, "mean_nDCG@10": 0.7})


def test_summary_scores_skip_missing_directions():
    # The raw backbones have in-modal directions only.
    m = metrics_with(
        {"i2i": 0.2, "i2t": None, "t2i": None, "t2t": 0.6},
        {"i2i": 0.4, "i2t": None, "t2i": None, "t2t": 0.8},
        None,
    )
    s = summary_scores(m)
    assert s["cross_R@1"] is None
    assert s["mean_R@1"] == pytest.approx(0.4)
    assert s["mean_HP@5"] == pytest.approx(0.6)
    assert s["fusion"] is None


# --- evaluate_net on a net whose answers are known ----------------------------------------

CLASSES = ["a<x", "a<y", "b<z", "b<w"]
E = np.eye(4, dtype=np.float32)
# Test items, two per class. Image features are one-hot of the class, except item 3 (class
# a<y) whose picture looks like class a<x. Texts are all one-hot of their class.
TEST_LABELS = [0, 0, 1, 1, 2, 2, 3, 3]
TEST_IMAGE = np.stack([E[0], E[0], E[1], E[0] + 0.5 * E[1], E[2], E[2], E[3], E[3]])
TEST_TEXT = E[TEST_LABELS]
TRAIN_LABELS = [0, 0, 1, 1, 2, 2, 3, 3]


def hand_feature_set() -> FeatureSet:
    labels = TRAIN_LABELS + TEST_LABELS
    n = len(labels)
    items = pd.DataFrame(
        {
            "row": np.arange(n) + 2,
            "id": [f"i{j}" for j in range(n)],
            "image": [f"{j}.png" for j in range(n)],
            "text": ["t"] * n,
            "classes": [CLASSES[y] for y in labels],
            "split": ["train"] * 8 + ["test"] * 8,
            "label": np.array(labels, dtype=np.int64),
        }
    )
    return FeatureSet(
        items=items,
        image=np.concatenate([E[TRAIN_LABELS], TEST_IMAGE]).astype(np.float32),
        text=np.concatenate([E[TRAIN_LABELS], TEST_TEXT]).astype(np.float32),
        tfidf=sp.csr_matrix((n, 0), dtype=np.float32),
        tfidf_model=None,
        hierarchy=Hierarchy(CLASSES),
        skipped=pd.DataFrame(columns=["row", "id", "column", "reason"]),
        config=DataConfig(),
    )


def identity_net(classifier: str, fusion_weight: float = 0.25) -> HUSENet:
    """Every Linear is the identity with zero bias: on non-negative inputs each tower is the
    identity, so an embedding is the L2-normalised input and a logit is 16 × embedding."""
    cfg = paper_cfg(
        image_dim=4,
        text_dim=4,
        tfidf_dim=0,
        num_classes=4,
        embed_dim=4,
        hidden=4,
        classifier=classifier,
        logit_scale=16.0,
        fusion_weight=fusion_weight,
    )
    net = HUSENet(cfg)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                if m.in_features == m.out_features:
                    m.weight.copy_(torch.eye(4))
                else:  # concat: Linear(2D, K) = [I, I]
                    m.weight.copy_(torch.cat([torch.eye(4), torch.eye(4)], 1))
                m.bias.zero_()
    return net.eval()


R1_KNOWN = {"i2i": 7 / 8, "i2t": 7 / 8, "t2i": 1.0, "t2t": 1.0}
# Why: item 3's image (0.894, 0.447, 0, 0) is nearest to class a<x items in image and text
# galleries alike; every other query finds its partner. As a text query, item 3 finds
# item 2's image (a<y) first, and item 2's text finds item 3's image, 0.447 ahead of 0.


@pytest.mark.parametrize("classifier", ["shared", "separate"])
def test_evaluate_net_on_a_hand_built_net(classifier):
    m = evaluate_net(identity_net(classifier), hand_feature_set(), "test")
    assert m["classification_mode"] == "classifier"
    # Image: item 3 → a<x (wrong). Text: all right. Fusion with weight 0.25 on the image:
    # for item 3, 0.25 × P_img(a<x) ≈ 0.25 < 0.75 × P_txt(a<y) ≈ 0.75, so it is right.
    assert m["classification"] == pytest.approx({"image": 7 / 8, "text": 1.0, "fusion": 1.0})
    for d in DIRECTIONS:
        assert m["retrieval"][d]["R@1"] == pytest.approx(R1_KNOWN[d]), d
        assert m["retrieval"][d]["R@5"] == 1.0  # the partner is 2nd or 3rd at worst
    # The only mistakes confuse siblings a<x / a<y: tree distance 2.
    assert m["mistake_severity"]["image"]["mistake_severity"] == 2.0
    assert m["mistake_severity"]["text"]["mistake_severity"] is None
    assert m["mistake_severity"]["i2i"]["mistake_severity"] == 2.0
    assert m["mistake_severity"]["i2t"]["mistake_severity"] == 2.0
    assert m["mistake_severity"]["t2t"]["mistake_severity"] is None
    # Own pairs. i2t ranks 1, 2, 1, 4, 1, 2, 1, 2: the two texts of a class are equal, so
    # the second item's own text ties the first's and ranks 2nd; item 3's image is nearest
    # to the two a<x texts and then ties its own text with item 2's. t2i ranks 1, 2, 1, 2, ...
    inst = m["instance"]
    assert inst["i2t"] == pytest.approx({"R@1": 0.5, "R@5": 1.0, "R@10": 1.0, "MedR": 1.5})
    assert inst["t2i"] == pytest.approx({"R@1": 0.5, "R@5": 1.0, "R@10": 1.0, "MedR": 1.5})
    assert inst["xR@1"] == pytest.approx(0.5)
    assert set(m["graded"]) == {*DIRECTIONS, "mean_nDCG@10"}
    assert all(0 < m["graded"][d]["nDCG@10"] <= 1 for d in DIRECTIONS)


def test_evaluate_net_fusion_follows_the_weight():
    # Mostly the image: item 3's fused prediction turns wrong.
    m = evaluate_net(identity_net("shared", fusion_weight=0.75), hand_feature_set(), "test")
    assert m["classification"]["fusion"] == pytest.approx(7 / 8)


def test_evaluate_net_without_classifier_uses_train_centroids():
    m = evaluate_net(identity_net("none"), hand_feature_set(), "test")
    assert m["classification_mode"] == "centroid"
    # Centroids are the one-hot class vectors. Item 3's image: 0.894 to a<x, 0.447 to a<y.
    # Fusion averages the cosines: a<x (0.894 + 0) / 2 < a<y (0.447 + 1) / 2.
    assert m["classification"] == pytest.approx({"image": 7 / 8, "text": 1.0, "fusion": 1.0})
    for d in DIRECTIONS:
        assert m["retrieval"][d]["R@1"] == pytest.approx(R1_KNOWN[d])


def test_evaluate_net_with_the_notebook_joint_classifier():
    m = evaluate_net(identity_net("concat"), hand_feature_set(), "test")
    assert m["classification"]["image"] is None and m["classification"]["text"] is None
    # Joint logits 16 × (image + text): item 3 → (0.894, 1.447, 0, 0) → a<y, right.
    assert m["classification"]["fusion"] == 1.0
    assert m["mistake_severity"]["image"] is None


def test_evaluate_raw_is_in_modal_only():
    m = evaluate_raw(hand_feature_set(), "test")
    assert m["classification_mode"] == "centroid"
    assert m["classification"] == pytest.approx({"image": 7 / 8, "text": 1.0, "fusion": 1.0})
    assert m["retrieval"]["i2i"]["R@1"] == pytest.approx(7 / 8)
    assert m["retrieval"]["t2t"]["R@1"] == 1.0
    for d in ("i2t", "t2i"):  # two different spaces: no cross-modal figures
        assert set(m["retrieval"][d].values()) == {None}
        assert set(m["hierarchical"][d].values()) == {None}
        assert set(m["instance"][d].values()) == {None}
        assert m["graded"][d]["nDCG@10"] is None
    assert m["instance"]["xR@1"] is None
    assert m["graded"]["i2i"]["nDCG@10"] is not None
    assert m["graded"]["mean_nDCG@10"] == pytest.approx(
        (m["graded"]["i2i"]["nDCG@10"] + m["graded"]["t2t"]["nDCG@10"]) / 2
    )


# --- the metrics' shape on a trained net -------------------------------------------------


@pytest.mark.parametrize("classifier", ["separate", "concat"])
def test_embed_gives_the_nets_output_for_the_items_in_batches(make_feature_set, classifier):
    fs = make_feature_set()
    cfg = paper_cfg(
        image_dim=32, text_dim=48, tfidf_dim=fs.tfidf.shape[1], num_classes=10, embed_dim=16,
        hidden=32, classifier=classifier,
    )  # fmt: skip
    torch.manual_seed(0)
    net = HUSENet(cfg).eval()
    idx = fs.split_indices("test")
    got = embed(net, fs, idx, batch_size=3)  # batches of 3 concatenated
    assert isinstance(got, ModelOutput)
    with torch.no_grad():
        whole = net(*net.feature_batch(fs, idx))
    for name in ModelOutput._fields:
        ref = getattr(whole, name)
        if ref is None:
            assert getattr(got, name) is None, name
        else:
            np.testing.assert_allclose(getattr(got, name), ref.numpy(), atol=1e-6, err_msg=name)
    assert (got.joint_logits is None) == (classifier != "concat")


def is_unit(x) -> bool:
    return x is None or (isinstance(x, float) and 0.0 <= x <= 1.0 and not math.isnan(x))


@pytest.mark.parametrize("classifier", ["shared", "separate", "concat", "none"])
def test_evaluate_net_has_exactly_the_issue_keys(make_feature_set, classifier):
    fs = make_feature_set()
    cfg = paper_cfg(
        image_dim=32, text_dim=48, tfidf_dim=fs.tfidf.shape[1], num_classes=10, embed_dim=16,
        hidden=32, classifier=classifier,
    )  # fmt: skip
    torch.manual_seed(0)
    net = HUSENet(cfg)
    m = evaluate_net(net, fs, "test")
    assert set(m) == {
        "classification",
        "classification_mode",
        "retrieval",
        "hierarchical",
        "mistake_severity",
        "instance",
        "graded",
    }
    assert set(m["instance"]) == {"i2t", "t2i", "xR@1"}
    for d in ("i2t", "t2i"):
        assert set(m["instance"][d]) == {"R@1", "R@5", "R@10", "MedR"}
        assert m["instance"][d]["MedR"] >= 1
    assert set(m["graded"]) == {*DIRECTIONS, "mean_nDCG@10"}
    assert is_unit(m["graded"]["mean_nDCG@10"]) and m["graded"]["mean_nDCG@10"] is not None
    assert all(is_unit(m["graded"][d]["nDCG@10"]) for d in DIRECTIONS)
    assert set(m["classification"]) == {"image", "text", "fusion"}
    assert all(is_unit(v) for v in m["classification"].values())
    assert m["classification"]["fusion"] is not None
    single = m["classification"]["image"] is not None
    assert single == (classifier != "concat")
    assert m["classification_mode"] == ("centroid" if classifier == "none" else "classifier")
    assert set(m["retrieval"]) == set(m["hierarchical"]) == set(DIRECTIONS)
    for d in DIRECTIONS:
        assert set(m["retrieval"][d]) == {"R@1", "R@5", "R@10"}
        assert set(m["hierarchical"][d]) == {"HP@2", "HP@5", "HP@10"}
        assert all(is_unit(v) and v is not None for v in m["retrieval"][d].values())
        assert all(is_unit(v) and v is not None for v in m["hierarchical"][d].values())
        r = m["retrieval"][d]
        assert r["R@1"] <= r["R@5"] <= r["R@10"]
    sev = m["mistake_severity"]
    assert set(sev) == {"image", "text", "fusion", *DIRECTIONS}
    for d in DIRECTIONS:
        assert set(sev[d]) == {"mistake_severity", "hdist@1", "hdist@5", "hdist@10"}
        assert all(v is None or v >= 0 for v in sev[d].values())


@pytest.mark.parametrize("classifier", ["shared", "concat", "none"])
def test_an_empty_split_gives_every_key_with_no_value(make_feature_set, classifier):
    fs = make_feature_set()
    net = HUSENet(
        paper_cfg(image_dim=32, text_dim=48, tfidf_dim=fs.tfidf.shape[1], num_classes=10,
                  embed_dim=16, hidden=32, classifier=classifier)
    )  # fmt: skip
    full = evaluate_net(net, fs, "test")
    m = evaluate_net(net, fs, "no-such-split")
    assert m["classification_mode"] == full["classification_mode"]

    assert m.keys() == full.keys()
    assert m["classification"] == {"image": None, "text": None, "fusion": None}
    for part in ("retrieval", "hierarchical"):
        assert m[part] == {d: dict.fromkeys(full[part][d]) for d in DIRECTIONS}
    assert m["mistake_severity"] == dict.fromkeys(full["mistake_severity"])
    for part in ("instance", "graded"):
        assert m[part].keys() == full[part].keys()
    assert m["instance"]["i2t"] == dict.fromkeys(full["instance"]["i2t"])
    assert summary_scores(m) == dict.fromkeys(
        ("cross_R@1", "mean_HP@5", "mean_R@1", "fusion", "instance_xR@1", "mean_nDCG@10")
    )
    raw = evaluate_raw(fs, "no-such-split")
    assert raw["classification"] == {"image": None, "text": None, "fusion": None}
    assert raw["retrieval"]["i2i"]["R@1"] is None


def test_evaluate_net_on_the_class_part_alone(make_feature_set):
    from huse.evaluate import level_metrics, space_metrics

    fs = make_feature_set()
    cfg = paper_cfg(
        image_dim=32, text_dim=48, tfidf_dim=fs.tfidf.shape[1], num_classes=10, embed_dim=16,
        hidden=32, instance_dims=6, instance_share=0.4, instance_towers=True,
    )  # fmt: skip
    torch.manual_seed(0)
    net = HUSENet(cfg).eval()
    idx = fs.split_indices("test")
    whole, part = evaluate_net(net, fs, "test"), evaluate_net(net, fs, "test", class_part=True)
    out = embed(net, fs, idx)
    c_img, c_txt = (x[:, :10] / np.linalg.norm(x[:, :10], axis=1, keepdims=True) for x in out[:2])
    retrieval, hier, _ = space_metrics(c_img, c_txt, fs.labels[idx], fs.hierarchy)
    instance, graded = level_metrics(c_img, c_txt, fs.labels[idx], fs.hierarchy)
    assert part["retrieval"] == retrieval and part["hierarchical"] == hier
    assert part["instance"] == instance and part["graded"] == graded
    assert part["classification"] == whole["classification"]  # the classifier reads c anyway
    assert part["retrieval"] != whole["retrieval"]
    # The instance part alone: its own recall, brute force over the last 6 dims.
    from huse.evaluate import instance_part_recall

    q_img, q_txt = (x[:, 10:] / np.linalg.norm(x[:, 10:], axis=1, keepdims=True) for x in out[:2])
    sim = q_img @ q_txt.T
    n = len(idx)
    rank = [(s_ > np.diag(s_)[:, None]).sum(1) for s_ in (sim, sim.T)]  # 0-based, own pair
    brute = np.mean([np.mean(r_ < k) for r_ in rank for k in (1, 5, 10)])
    assert instance_part_recall(net, out) == pytest.approx(float(brute))
    xr1 = np.mean(
        [np.mean(sim.argmax(1) == np.arange(n)), np.mean(sim.T.argmax(1) == np.arange(n))]
    )
    assert instance_part_recall(net, out, ks=(1,)) == pytest.approx(float(xr1))
    # By hand: the instance parts of 3 items. Image 2 is nearer text 1 (0.8) than its own
    # (0.6), every text is nearest its own image: i2t R@1 2/3, t2i R@1 1, all R@2 1. The
    # class part and the scales do not matter: the part is renormalised.
    q_i = np.array([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0.8, 0.6, 0, 0, 0]])
    q_t = np.array([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]])
    junk = np.random.default_rng(0).normal(size=(3, 10))
    hand = out._replace(
        image_embedding=np.hstack([junk, 3 * q_i]).astype(np.float32),
        text_embedding=np.hstack([junk, 0.5 * q_t]).astype(np.float32),
    )
    assert instance_part_recall(net, hand, ks=(1,)) == pytest.approx((2 / 3 + 1) / 2)
    assert instance_part_recall(net, hand, ks=(1, 2)) == pytest.approx((2 / 3 + 1 + 1 + 1) / 4)
    assert instance_part_recall(net, hand, ks=(1, 2), chunk_size=1) == pytest.approx(
        (2 / 3 + 1 + 1 + 1) / 4
    )
    again = evaluate_net(net, fs, "test", class_part=True, embedded=out)
    assert again == part  # a given embedding is used as is
