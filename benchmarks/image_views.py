"""Do augmented image views lift the image side? A probe on cached, augmented features.

The towers train on frozen backbone features, one clean view per image. This probe
extracts extra views of every training image once (a horizontal flip and random crops,
each with a random flip) plus a flipped view of every image, caches them, and measures on
the VALIDATION split:

- a linear probe (logistic regression on standardised features) trained on the clean
  view alone, and on the clean view plus the augmented ones; each scored on the clean view
  and with test-time augmentation (the probabilities of the clean and flipped views
  averaged);
- each method's towers trained as usual and trained on a random view of each training
  image per step (``views``), each scored on the clean features and on the mean of the
  clean and flipped features (``tta``).

    python benchmarks/image_views.py --manifest OC/manifest_stripped.csv --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from huse._io import atomic_path
from huse.backbones import get_backbone
from huse.data.images import load_image_for
from huse.dataset import DataConfig, build_feature_set
from huse.evaluate import evaluate_net, summary_scores
from huse.methods import resolve_config
from huse.runs import fit_features


def random_crop(img: Image.Image, rng: random.Random, min_area: float = 0.5) -> Image.Image:
    """A crop of 50-100 % of the area, aspect 3:4 to 4:3, flipped half the time."""
    w, h = img.size
    for _ in range(10):
        area = rng.uniform(min_area, 1.0) * w * h
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            img = img.crop((x, y, x + cw, y + ch))
            break
    return ImageOps.mirror(img) if rng.random() < 0.5 else img


def extract_views(fs, backbone: str, crops: int, path: Path, batch: int = 32) -> dict:
    """Clean and flipped features of every item, ``crops`` random crops of the training
    items (NaN elsewhere); cached at ``path``."""
    if path.exists():
        with np.load(path) as z:
            views = dict(z)
        if len(views["clean"]) == len(fs) and sum(k.startswith("crop") for k in views) == crops:
            return views
    bb = get_backbone(backbone)
    paths = fs.items["image"].tolist()
    is_train = np.zeros(len(fs), bool)
    is_train[fs.split_indices("train")] = True
    rng = random.Random(0)
    augment = {"clean": lambda im: im, "flip": ImageOps.mirror}
    augment |= {f"crop{c}": lambda im: random_crop(im, rng) for c in range(crops)}
    views = {k: np.full((len(fs), bb.dim), np.nan, np.float32) for k in augment}
    bar = tqdm(total=len(fs), desc="views", unit="img")
    for s in range(0, len(fs), batch):
        idx = np.arange(s, min(s + batch, len(fs)))
        # Decoded as extraction decodes (load_pixels): the clean view is the cached one.
        imgs = [load_image_for(paths[i], bb.image_size) for i in idx]
        for k, aug in augment.items():
            keep = idx if not k.startswith("crop") else idx[is_train[idx]]
            if not len(keep):
                continue
            x = torch.stack([bb.preprocess(aug(imgs[i - s])) for i in keep])
            views[k][keep] = bb.forward(x).numpy()
        bar.update(len(idx))
    bar.close()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **views)
    return views


class ViewSampler:
    """Stands in for ``fs.image``: while ``sampling``, a training batch (at most
    ``max_batch`` training rows) gets a random view of each image; everything else (input
    statistics, validation) reads ``features``."""

    def __init__(self, views: list[np.ndarray], train_rows: np.ndarray, max_batch: int):
        self.views = np.stack(views)
        self.features = self.views[0]
        self.shape, self.dtype = self.features.shape, self.features.dtype
        self.is_train = np.zeros(len(self.features), bool)
        self.is_train[train_rows] = True
        self.max_batch = max_batch
        self.sampling = False
        self.rng = np.random.default_rng(0)

    def __len__(self) -> int:
        return len(self.features)

    def __array__(self, dtype=None, copy=None):
        return self.features if dtype is None else self.features.astype(dtype)

    def __getitem__(self, rows):
        rows = np.asarray(rows)
        if (
            self.sampling
            and rows.ndim == 1
            and len(rows) <= self.max_batch
            and self.is_train[rows].all()
        ):
            return self.views[self.rng.integers(0, len(self.views), len(rows)), rows]
        return self.features[rows]


def _accuracy(classes: np.ndarray, proba: np.ndarray, y: np.ndarray) -> float:
    return float((classes[proba.argmax(1)] == y).mean())


def probe(views: dict, fs, c: float) -> list[dict]:
    tr, va = fs.split_indices("train"), fs.split_indices("val")
    y = fs.labels
    scaler = StandardScaler().fit(views["clean"][tr])
    crops = [k for k in views if k.startswith("crop")]
    rows = []
    for name, used in (("clean", ["clean"]), ("clean + flip + crops", ["clean", "flip", *crops])):
        x = np.vstack([scaler.transform(views[k][tr]) for k in used])
        clf = LogisticRegression(C=c, max_iter=2000).fit(x, np.tile(y[tr], len(used)))
        p_clean = clf.predict_proba(scaler.transform(views["clean"][va]))
        p_flip = clf.predict_proba(scaler.transform(views["flip"][va]))
        rows.append(
            {
                "train on": name,
                "val acc": _accuracy(clf.classes_, p_clean, y[va]),
                "val acc (tta)": _accuracy(clf.classes_, p_clean + p_flip, y[va]),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["huse", "shared"])
    ap.add_argument("--crops", type=int, default=2, help="random crops per training image")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--C", type=float, default=0.1, dest="c", help="probe regularisation")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--views-cache", default="benchmarks/out/image_views.npz")
    ap.add_argument("--out", default="benchmarks/out/image_views.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg_data = DataConfig()
    fs = build_feature_set(args.manifest, cfg_data, progress=True)
    views = extract_views(fs, cfg_data.image_backbone, args.crops, Path(args.views_cache))
    if not np.allclose(views["clean"], np.asarray(fs.image), atol=1e-4):
        raise SystemExit("the clean view differs from the cached features: stale views cache?")

    result: dict = {"probe": probe(views, fs, args.c), "towers": {}}
    print("| probe trained on | val acc | val acc, flip TTA |\n|---|---|---|")
    for r in result["probe"]:
        print(f"| {r['train on']} | {r['val acc']:.3f} | {r['val acc (tta)']:.3f} |")

    tr = fs.split_indices("train")
    train_views = [views["clean"], views["flip"]] + [
        np.where(np.isnan(views[k]), views["clean"], views[k])
        for k in views
        if k.startswith("crop")
    ]
    tta = (views["clean"] + views["flip"]) / 2
    graphs: dict = {}
    sampler = ViewSampler(train_views, tr, max_batch=0)
    fs.image = sampler
    for method in args.methods:
        for seed in args.seeds:
            cfg = resolve_config(method, "default", seed=seed, epochs=args.epochs)
            sampler.max_batch = cfg.batch_size
            for sampled in (False, True):
                sampler.sampling, sampler.rng = sampled, np.random.default_rng(seed)
                # Trained only: each view set is evaluated below, with sampling off.
                res = fit_features(fs, cfg, None, graphs=graphs).train
                seconds = res.seconds
                sampler.sampling = False
                for ev, feats in (("clean", views["clean"]), ("tta", tta)):
                    sampler.features = feats
                    m = evaluate_net(res.net, fs, "val")
                    row = {
                        **summary_scores(m),
                        "acc_image": m["classification"]["image"],
                        "epochs": res.epochs_run,
                        "seconds": seconds,
                    }
                    key = f"{method}, {'views' if sampled else 'clean'} training, {ev} eval"
                    result["towers"].setdefault(key, []).append(row)
                    print(
                        f"{key} seed {seed}: cross R@1 {row['cross_R@1']:.3f}  "
                        f"HP@5 {row['mean_HP@5']:.3f}  image acc {row['acc_image']:.3f}  "
                        f"{res.epochs_run} ep",
                        flush=True,
                    )
                sampler.features = views["clean"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("\n| method, training, eval | val cross R@1 | val mean HP@5 | val image acc |")
    print("|---|---|---|---|")
    for key, rows in result["towers"].items():
        cells = [
            f"{np.mean([r[k] for r in rows]):.3f} ± {np.std([r[k] for r in rows], ddof=1) if len(rows) > 1 else 0:.3f}"
            for k in ("cross_R@1", "mean_HP@5", "acc_image")
        ]
        print(f"| {key} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
