"""Evaluation of an embedding space on a split (SPEC §7), chunked throughout.

Classification accuracy (image, text, fusion), class-level R@K and HP@K in the four
directions i2i, i2t, t2i, t2t, mistake severity and hierarchical distance@k; instance-level
R@K and MedR (``instance``: an item's own image or text is the one answer) and graded
nDCG@10 over every level (``graded``). Methods without a classifier are scored by the
nearest training-class centroid, and say so.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch

from huse.data.hierarchy import Hierarchy
from huse.metrics import (
    classification_metrics,
    graded_ndcg,
    instance_retrieval,
    retrieval_metrics,
)
from huse.model import HUSENet, ModelOutput

if TYPE_CHECKING:
    from huse.dataset import FeatureSet

RECALL_KS = (1, 5, 10)
# Similarities scored at once: a chunk holds about 11 bytes per entry (float32 scores,
# their partitioned copy and three masks), so ~350 MB at this budget, whatever N is.
SIM_BUDGET = 2**25
MIN_CHUNK_ROWS = 64
HP_KS = (2, 5, 10)
DIRECTIONS = ("i2i", "i2t", "t2i", "t2t")
CROSS = ("i2t", "t2i")
NDCG_K = 10


@lru_cache(maxsize=8)
def _hier_arrays(classes: tuple[str, ...], sep: str):
    h = Hierarchy(list(classes), sep=sep)
    return {k: h.hp_targets(k) for k in HP_KS}, h.distance_matrix()


@lru_cache(maxsize=8)
def _relevance(classes: tuple[str, ...], sep: str) -> np.ndarray:
    return Hierarchy(list(classes), sep=sep).graded_relevance()


def hierarchy_arrays(h: Hierarchy) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """HP@K target sets and the class distance matrix, computed once per class list."""
    return _hier_arrays(tuple(h.classes), h.sep)


@torch.no_grad()
def embed(
    net: HUSENet, fs: FeatureSet, idx: np.ndarray, batch_size: int = 2048
) -> ModelOutput[np.ndarray]:
    """The net's output for the items ``idx``, as numpy arrays (a net still on the training
    device is run there)."""
    net.eval()
    parts: list[ModelOutput[np.ndarray]] = [
        net(*net.feature_batch(fs, idx[s : s + batch_size])).map(lambda t: t.cpu().numpy())
        for s in range(0, len(idx), batch_size)
    ]

    def cat(field: str) -> np.ndarray | None:
        xs = [getattr(p, field) for p in parts if getattr(p, field) is not None]
        return np.concatenate(xs) if xs else None

    return ModelOutput(*(cat(f) for f in ModelOutput._fields))


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a numpy score matrix."""
    z = np.exp(x - x.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as float32 (zero rows stay zero)."""
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def centroid_scores(emb: np.ndarray, train_emb: np.ndarray, train_labels: np.ndarray, k: int):
    """Cosine to each class's (normalised) training centroid; classes absent from train
    get -inf so they are never predicted."""
    cent = np.zeros((k, emb.shape[1]), dtype=np.float64)
    np.add.at(cent, train_labels, train_emb)
    norms = np.linalg.norm(cent, axis=1, keepdims=True)
    present = norms[:, 0] > 0
    cent[present] /= norms[present]
    scores = emb @ cent.T
    scores[:, ~present] = -np.inf
    return scores


def chunk_rows(n_gallery: int, chunk_size: int = 1024) -> int:
    """Query rows per chunk: at most ``chunk_size``, fewer when the gallery is so large that
    ``rows × n_gallery`` would pass ``SIM_BUDGET`` (never below ``MIN_CHUNK_ROWS``)."""
    return int(min(chunk_size, max(MIN_CHUNK_ROWS, SIM_BUDGET // max(n_gallery, 1))))


def space_metrics(
    img: np.ndarray | None,
    txt: np.ndarray | None,
    labels: np.ndarray,
    h: Hierarchy,
    *,
    chunk_size: int = 1024,
    directions=DIRECTIONS,
) -> tuple[dict, dict, dict]:
    """R@K, HP@K and retrieval mistake severity in each direction both spaces allow."""
    targets, dist = hierarchy_arrays(h)
    ids = np.arange(len(labels))
    spaces = {"i": img, "t": txt}
    retrieval, hier, severity = {}, {}, {}
    for d in DIRECTIONS:
        q, g = spaces[d[0]], spaces[d[2]]
        if d not in directions or q is None or g is None or len(labels) < 2:
            retrieval[d] = dict.fromkeys(f"R@{k}" for k in RECALL_KS)
            hier[d] = dict.fromkeys(f"HP@{k}" for k in HP_KS)
            severity[d] = None
            continue
        m = retrieval_metrics(
            q, labels, g, labels,
            query_ids=ids, gallery_ids=ids,
            recall_ks=RECALL_KS, hp_ks=HP_KS,
            hp_targets=targets, class_distance=dist,
            chunk_size=chunk_rows(len(g), chunk_size),
        )  # fmt: skip
        retrieval[d] = {f"R@{k}": m[f"R@{k}"] for k in RECALL_KS}
        hier[d] = {f"HP@{k}": m[f"HP@{k}"] for k in HP_KS}
        severity[d] = {
            "mistake_severity": m["mistake_severity"],
            **{f"hdist@{k}": m[f"hdist@{k}"] for k in RECALL_KS},
        }
    return retrieval, hier, severity


def level_metrics(
    img: np.ndarray | None,
    txt: np.ndarray | None,
    labels: np.ndarray,
    h: Hierarchy,
    *,
    chunk_size: int = 1024,
    directions=DIRECTIONS,
) -> tuple[dict, dict]:
    """Instance-level retrieval (``i2t``, ``t2i``: R@K, MedR, and ``xR@1`` their mean R@1)
    and graded nDCG@10 (each direction, and ``mean_nDCG@10`` over those computed).

    Row ``i`` of ``img`` and ``txt`` is the same item. See ``metrics.instance_retrieval``
    and ``metrics.graded_ndcg`` for the definitions; in-modal directions leave the query out.
    """
    spaces = {"i": img, "t": txt}
    rel = _relevance(tuple(h.classes), h.sep)
    instance: dict = {}
    graded: dict = {}
    for d in DIRECTIONS:
        q, g = spaces[d[0]], spaces[d[2]]
        usable = d in directions and q is not None and g is not None and len(labels) >= 2
        cross = d in CROSS
        if cross:
            instance[d] = (
                instance_retrieval(
                    q, g, recall_ks=RECALL_KS, chunk_size=chunk_rows(len(g), chunk_size)
                )
                if usable
                else {**dict.fromkeys(f"R@{k}" for k in RECALL_KS), "MedR": None}
            )
        value = None
        if usable:
            value = graded_ndcg(
                q, labels, g, labels, rel,
                pairing="cross" if cross else "self", k=NDCG_K,
                chunk_size=chunk_rows(len(g), chunk_size),
            )  # fmt: skip
        graded[d] = {f"nDCG@{NDCG_K}": value}
    instance["xR@1"] = _mean([instance[d]["R@1"] for d in CROSS])
    graded[f"mean_nDCG@{NDCG_K}"] = _mean([graded[d][f"nDCG@{NDCG_K}"] for d in DIRECTIONS])
    return instance, graded


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def class_scores(
    net: HUSENet, fs: FeatureSet, embedded: ModelOutput[np.ndarray], train_split: str = "train"
) -> tuple[dict[str, np.ndarray | None], str]:
    """Class scores for image, text and fusion from ``embed``'s output, and how they were
    made: ``"classifier"`` (softmaxes, fused by the net's weight) or ``"centroid"``
    (cosine to the training-class centroids, for methods without a classifier)."""
    li, lt = embedded.image_logits, embedded.text_logits
    scores: dict[str, np.ndarray | None] = {"image": None, "text": None, "fusion": None}
    if embedded.joint_logits is not None:  # the notebook's: no single-modality prediction
        scores["fusion"] = softmax(embedded.joint_logits)
        return scores, "classifier"
    if li is not None and lt is not None:
        w = net.cfg.fusion_weight
        scores["image"], scores["text"] = softmax(li), softmax(lt)
        scores["fusion"] = w * scores["image"] + (1 - w) * scores["text"]
        return scores, "classifier"
    tr = fs.split_indices(train_split)
    if len(tr) == 0 or embedded.image_embedding is None:  # no centroids to score against
        return scores, "centroid"
    train_out = embed(net, fs, tr)
    tl, k = fs.labels[tr], len(fs.hierarchy)
    scores["image"] = centroid_scores(embedded.image_embedding, train_out.image_embedding, tl, k)
    scores["text"] = centroid_scores(embedded.text_embedding, train_out.text_embedding, tl, k)
    scores["fusion"] = (scores["image"] + scores["text"]) / 2
    return scores, "centroid"


def empty_metrics(mode: str) -> dict:
    """The metrics of a split with no items: every key, every value None."""
    none3 = dict.fromkeys(("image", "text", "fusion"))
    return {
        "classification": dict(none3),
        "classification_mode": mode,
        "retrieval": {d: dict.fromkeys(f"R@{k}" for k in RECALL_KS) for d in DIRECTIONS},
        "hierarchical": {d: dict.fromkeys(f"HP@{k}" for k in HP_KS) for d in DIRECTIONS},
        "mistake_severity": {**none3, **dict.fromkeys(DIRECTIONS)},
        "instance": {
            **{d: {**dict.fromkeys(f"R@{k}" for k in RECALL_KS), "MedR": None} for d in CROSS},
            "xR@1": None,
        },
        "graded": {
            **{d: {f"nDCG@{NDCG_K}": None} for d in DIRECTIONS},
            f"mean_nDCG@{NDCG_K}": None,
        },
    }


def _mode(net: HUSENet) -> str:
    return "centroid" if net.cfg.classifier == "none" else "classifier"


def evaluate_net(
    net: HUSENet,
    fs: FeatureSet,
    split: str = "test",
    *,
    chunk_size: int = 1024,
    train_split: str = "train",
    class_part: bool = False,
    embedded: ModelOutput[np.ndarray] | None = None,
) -> dict:
    """Every metric of a trained net on one split of a feature set (all None when the split
    has no items, or when a method without a classifier has no training items to centre).

    ``class_part``: measure the class part of the embeddings alone (``HUSENet.class_part``;
    the whole embedding for a net without an instance subspace). ``embedded``: the net's
    output for the split (``embed``), when the caller already has it."""
    idx = fs.split_indices(split)
    if len(idx) == 0:
        return empty_metrics(_mode(net))
    labels = fs.labels[idx]
    h = fs.hierarchy
    _, dist = hierarchy_arrays(h)
    if embedded is None:
        embedded = embed(net, fs, idx)
    r = net.cfg.instance_dims
    if class_part and r:
        embedded = embedded._replace(
            image_embedding=l2_normalize(embedded.image_embedding[:, :-r]),
            text_embedding=l2_normalize(embedded.text_embedding[:, :-r]),
        )
    scores, cls_mode = class_scores(net, fs, embedded, train_split)
    cls, cls_sev = {}, {}
    for name, s in scores.items():
        if s is None or len(idx) == 0:
            cls[name], cls_sev[name] = None, None
            continue
        m = classification_metrics(s, labels, dist, ks=(1, 5))
        cls[name] = m["accuracy"]
        cls_sev[name] = {
            "mistake_severity": m["mistake_severity"],
            "hdist@1": m["hdist@1"],
            "hdist@5": m["hdist@5"],
        }
    img, txt = embedded.image_embedding, embedded.text_embedding
    retrieval, hier, sev = space_metrics(img, txt, labels, h, chunk_size=chunk_size)
    instance, graded = level_metrics(img, txt, labels, h, chunk_size=chunk_size)
    return {
        "classification": cls,
        "classification_mode": cls_mode,
        "retrieval": retrieval,
        "hierarchical": hier,
        "mistake_severity": {**cls_sev, **sev},
        "instance": instance,
        "graded": graded,
    }


def instance_part_recall(
    net: HUSENet,
    embedded: ModelOutput[np.ndarray],
    *,
    ks: tuple[int, ...] = RECALL_KS,
    chunk_size: int = 1024,
) -> float | None:
    """Instance-level recall of the instance part of the embeddings alone (the last
    ``instance_dims`` dims, renormalised): the mean of R@K over ``ks`` and the two
    directions i2t and t2i. With ``ks=(1,)`` it is the part's xR@1; with (1, 5, 10) it is
    "rsum" / 6, the criterion VSE++ and SCAN select image-text models by, steadier on a
    small split than R@1 alone. None without an instance subspace or with fewer than two
    items."""
    r = net.cfg.instance_dims
    img, txt = embedded.image_embedding, embedded.text_embedding
    if not r or img is None or txt is None or len(img) < 2:
        return None
    qi, qt = l2_normalize(img[:, -r:]), l2_normalize(txt[:, -r:])
    rows = chunk_rows(len(qi), chunk_size)
    recalls = []
    for a, b in ((qi, qt), (qt, qi)):
        m = instance_retrieval(a, b, recall_ks=ks, chunk_size=rows)
        recalls += [m[f"R@{k}"] for k in ks]
    return float(np.mean(recalls))


def raw_space_is_shared(fs: FeatureSet) -> bool:
    """Whether the raw image and text features already live in one space: both come from
    the same dual encoder (one ``hf:`` CLIP or SigLIP as image and text backbone, with its
    own text features), so raw cross-modal retrieval means something."""
    c = fs.config
    return (
        c.image_backbone == c.text_backbone
        and c.image_backbone.startswith("hf:")
        and fs.image.shape[1] == fs.text.shape[1]
    )


def evaluate_raw(fs: FeatureSet, split: str = "test", *, chunk_size: int = 1024) -> dict:
    """The raw backbone features, L2-normalised: in-modal retrieval only when the two
    spaces differ, all four directions when one dual encoder gives both
    (``raw_space_is_shared``); classification by nearest training-class centroid."""
    idx = fs.split_indices(split)
    tr = fs.split_indices("train")
    if len(idx) == 0 or len(tr) == 0:
        return empty_metrics("centroid")
    labels = fs.labels[idx]
    h = fs.hierarchy
    _, dist = hierarchy_arrays(h)

    img, txt = l2_normalize(fs.image[idx]), l2_normalize(fs.text[idx])
    si = centroid_scores(img, l2_normalize(fs.image[tr]), fs.labels[tr], len(h))
    st = centroid_scores(txt, l2_normalize(fs.text[tr]), fs.labels[tr], len(h))
    cls, cls_sev = {}, {}
    for name, s in (("image", si), ("text", st), ("fusion", (si + st) / 2)):
        m = classification_metrics(s, labels, dist, ks=(1, 5))
        cls[name] = m["accuracy"]
        cls_sev[name] = {k: m[k] for k in ("mistake_severity", "hdist@1", "hdist@5")}
    shared = raw_space_is_shared(fs)
    directions = ("i2i", "i2t", "t2i", "t2t") if shared else ("i2i", "t2t")
    retrieval, hier, sev = space_metrics(
        img, txt, labels, h, chunk_size=chunk_size, directions=directions
    )
    instance, graded = level_metrics(
        img, txt, labels, h, chunk_size=chunk_size, directions=directions
    )
    return {
        "shared_space": shared,
        "classification": cls,
        "classification_mode": "centroid",
        "retrieval": retrieval,
        "hierarchical": hier,
        "mistake_severity": {**cls_sev, **sev},
        "instance": instance,
        "graded": graded,
    }


def summary_scores(m: dict) -> dict[str, float | None]:
    """Headline numbers: cross-modal R@1 (mean i2t, t2i), mean HP@5 (four directions),
    mean R@1 (four directions), fusion accuracy, instance-level xR@1 and mean graded
    nDCG@10 (None for metrics written before those existed)."""
    r = m["retrieval"]
    return {
        "cross_R@1": _mean([r["i2t"]["R@1"], r["t2i"]["R@1"]]),
        "mean_HP@5": _mean([m["hierarchical"][d]["HP@5"] for d in DIRECTIONS]),
        "mean_R@1": _mean([r[d]["R@1"] for d in DIRECTIONS]),
        "fusion": m["classification"]["fusion"],
        "instance_xR@1": (m.get("instance") or {}).get("xR@1"),
        f"mean_nDCG@{NDCG_K}": (m.get("graded") or {}).get(f"mean_nDCG@{NDCG_K}"),
    }
