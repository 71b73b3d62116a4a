"""A run made in memory (no training, no backbones): random embeddings clustered by class
over a given class list, for report tests that need many classes or exact metrics dicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from huse.data.hierarchy import Hierarchy
from huse.report import analysis as an


def synthetic_run(
    tmp_path: Path,
    classes: list[str],
    n: int,
    metrics: dict | None = None,
    log: pd.DataFrame | None = None,
    seed: int = 0,
    labels: np.ndarray | None = None,
) -> an.RunData:
    """``n`` test items spread over ``classes`` (item i has class i mod K, or
    ``labels[i]``), image and text embeddings near a per-class centre, one shared 40×30
    PNG as every item's image."""
    h = Hierarchy(classes)
    k, dim = len(classes), 16
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k if labels is None else np.asarray(labels)
    n = len(labels)

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    centres = rng.normal(size=(k, dim))
    img = unit(centres[labels] + 0.5 * rng.normal(size=(n, dim)))
    txt = unit(centres[labels] + 0.5 * rng.normal(size=(n, dim)))
    picture = tmp_path / "picture.png"
    Image.new("RGB", (40, 30), (30, 100, 200)).save(picture)
    items = pd.DataFrame(
        {
            "id": [f"item{i}" for i in range(n)],
            "image": [str(picture)] * n,
            "text": [f"a picture of {classes[c][:50]}" for c in labels],
            "classes": [classes[c] for c in labels],
        }
    )
    scores = {m: rng.normal(size=(n, k)) for m in ("image", "text", "fusion")}
    if metrics is None:
        metrics = {
            "method": "huse",
            "summary": {"fusion": 0.5, "cross_R@1": 0.4, "mean_HP@5": 0.6},
            "classification": {"image": 0.4, "text": 0.5, "fusion": 0.5},
            "data": {"train": 100, "val": 20, "test": n, "classes": k},
        }
    if log is None:
        log = pd.DataFrame(
            {"epoch": [1, 2, 3], "train_total": [3.0, 2.0, 1.5], "val_acc_fusion": [0.3, 0.4, 0.5]}
        )
    return an.RunData(
        run=tmp_path / "run",
        metrics=metrics,
        log=log,
        train_config={},
        hierarchy=h,
        graph=h.distance_matrix().astype(float) / 4,
        items=items,
        labels=labels,
        img=img,
        txt=txt,
        raw_img=img,
        raw_txt=txt,
        scores=scores,
    )


def many_classes(k: int = 133, groups: int = 12) -> list[str]:
    """``k`` two-level class paths under ``groups`` top-level classes, some with long
    snake_case names (as Openclipart's ``food<breads_and_carbs``)."""
    return sorted(f"group_{g:02d}<leaf_class_number_{i:03d}" for i, g in
                  ((i, i % groups) for i in range(k)))  # fmt: skip
