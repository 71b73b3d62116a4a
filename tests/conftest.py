"""Shared test setup: no test touches ~/.cache or the network."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

# Before anything imports transformers: the backbones ship in wheels, never from the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Point the default feature cache (``$HUSE_CACHE``) at a per-session temp folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HUSE_CACHE", str(tmp_path_factory.mktemp("huse-cache")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture
def one_thread():
    """Torch on one thread: tiny matrices run faster than two threads on shared cores."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_faiss_thread():
    """FAISS on one OpenMP thread: k-means training with threads spins badly on a busy
    2-core machine."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


# --- a tiny synthetic FeatureSet: random features whose class means differ, no backbones ---

# 10 classes under 5 parents: siblings share a parent, so the tree has two levels.
SYNTHETIC_CLASSES = [f"group{g}<leaf{g}{c}" for g in range(5) for c in "ab"]
_VOCAB_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet "
    "kilo lima mike november oscar papa quebec romeo sierra tango"
)
VOCAB = _VOCAB_WORDS.split()


def _make_feature_set(
    per_class: int = 12,
    image_dim: int = 32,
    text_dim: int = 48,
    spread: float = 3.0,
    noise: float = 1.0,
    seed: int = 0,
    split: tuple[int, int, int] = (8, 2, 2),
):
    """``len(SYNTHETIC_CLASSES) * per_class`` items; each class takes ``split`` items for
    train/val/test (the rest go to train). Features are ``spread``-scaled class means plus
    unit noise; each text holds its class's two words and two random ones (20-word TF-IDF).
    """
    from huse.data.hierarchy import Hierarchy
    from huse.data.text import TfidfFeatures
    from huse.dataset import DataConfig, FeatureSet

    rng = np.random.default_rng(seed)
    k = len(SYNTHETIC_CLASSES)
    labels = np.repeat(np.arange(k), per_class)
    mu_i = rng.normal(size=(k, image_dim)) * spread
    mu_t = rng.normal(size=(k, text_dim)) * spread
    image = (mu_i[labels] + noise * rng.normal(size=(len(labels), image_dim))).astype(np.float32)
    text = (mu_t[labels] + noise * rng.normal(size=(len(labels), text_dim))).astype(np.float32)
    texts = [" ".join([VOCAB[2 * y], VOCAB[2 * y + 1], *rng.choice(VOCAB, 2)]) for y in labels]
    n_val, n_test = split[1], split[2]
    per_split = ["train"] * (per_class - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    splits = per_split * k
    items = pd.DataFrame(
        {
            "row": np.arange(len(labels)) + 2,
            "id": [f"item{i}" for i in range(len(labels))],
            "image": [f"img{i}.png" for i in range(len(labels))],
            "text": texts,
            "classes": [SYNTHETIC_CLASSES[y] for y in labels],
            "split": splits,
            "label": labels.astype(np.int64),
        }
    )
    tfidf_model = TfidfFeatures(max_features=len(VOCAB), min_df=1).fit(
        [t for t, s in zip(texts, splits) if s == "train"]
    )
    return FeatureSet(
        items=items,
        image=image,
        text=text,
        tfidf=tfidf_model.transform(texts),
        tfidf_model=tfidf_model,
        hierarchy=Hierarchy(SYNTHETIC_CLASSES),
        skipped=pd.DataFrame(columns=["row", "id", "column", "reason"]),
        config=DataConfig(),
    )


@pytest.fixture(scope="session")
def make_feature_set():
    """Builds a synthetic ``huse.dataset.FeatureSet`` (see ``_make_feature_set``)."""
    return _make_feature_set


def _sibling_graph(hierarchy) -> np.ndarray:
    # Siblings (same top-level group) at 0.3, strangers at 0.8.
    groups = np.array([c.split("<")[0] for c in hierarchy.classes])
    g = np.where(groups[:, None] == groups[None, :], 0.3, 0.8).astype(np.float32)
    np.fill_diagonal(g, 0.0)
    return g


@pytest.fixture(scope="session")
def sibling_graph():
    """A K×K semantic graph for a hierarchy: siblings at 0.3, strangers at 0.8."""
    return _sibling_graph
