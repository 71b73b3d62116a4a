"""Fixtures for the web app: a fast fake searcher over real catalogue images, and the
trained tiny run (slow) for the end-to-end tests."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("faiss")
pytest.importorskip("fastapi")

from PIL import Image  # noqa: E402

from huse.data.images import load_image  # noqa: E402
from huse.index import CatalogueIndex, build_index  # noqa: E402
from huse.search import Searcher  # noqa: E402

DEMO = Path(__file__).resolve().parents[2] / "data" / "openclipart-demo"
DIM = 48


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-9)).astype(np.float32)


def fake_image_vector(image) -> np.ndarray:
    """A 4×4 colour thumbnail as a 48-dim vector: the same picture gives the same vector."""
    img = image if isinstance(image, Image.Image) else load_image(image)
    small = np.asarray(img.convert("RGB").resize((4, 4), Image.Resampling.BOX), np.float32)
    return _unit(small.reshape(1, -1) - 127.5)


def fake_text_vector(text: str) -> np.ndarray:
    v = np.zeros((1, DIM), np.float32)
    for ch in text.lower():
        v[0, ord(ch) % DIM] += 1.0
    return _unit(v)


class FakeSearcher(Searcher):
    """The real Searcher's search and hit building over a real index, with toy encoders
    in place of the model: the API tests need no backbone and no training."""

    def __init__(self, index: CatalogueIndex) -> None:
        self.model = None
        self.index = index
        self.sep = "<"
        self._cols = {
            c: index.items[c].astype(str).tolist() for c in ("id", "image", "text", "classes")
        }
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        pass

    def embed_text(self, text: str) -> np.ndarray:
        return fake_text_vector(text)

    def embed_image(self, image) -> np.ndarray:
        return fake_image_vector(image)


@pytest.fixture(scope="session")
def fake_searcher() -> FakeSearcher:
    if not (DEMO / "manifest_stripped.csv").exists():
        pytest.skip(f"demo data missing: {DEMO}")
    m = pd.read_csv(DEMO / "manifest_stripped.csv").iloc[::15].reset_index(drop=True)
    m["image"] = [str(DEMO / p) for p in m["image"]]
    m["row"] = np.arange(1, len(m) + 1)
    m["split"] = "train"
    vectors = {
        "image": np.vstack([fake_image_vector(p) for p in m["image"]]),
        "text": np.vstack([fake_text_vector(t) for t in m["text"]]),
    }
    return FakeSearcher(build_index(vectors, m))


@pytest.fixture()
def client(fake_searcher):
    from fastapi.testclient import TestClient

    from huse.serve import Limits, create_app

    app = create_app(fake_searcher, Limits(max_upload_bytes=2 * 1024 * 1024, max_pixels=4_000_000))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    # The same helper and folder as tests/test_search.py: one training serves both.
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "test_search.py"
    spec = importlib.util.spec_from_file_location("_huse_test_search", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.train_tiny_run(tmp_path_factory.getbasetemp() / "huse-tiny-run")
