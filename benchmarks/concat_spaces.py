"""Two spaces trained apart, concatenated: the check that led to huse's instance towers.

Trains the class-level default without its instance term (``huse``, η = 0) and the
``contrastive`` method on the same split, then scores their concatenation
``[√(1−s)·c, √s·q]`` (each part unit length) at several shares s on the given split:
what one embedding made of a class space and an instance space can reach before any
joint training. ``--method huse`` now trains exactly this layout in one run
(``instance_towers``); see benchmarks/RESULTS.md, "Every level".

    HUSE_CACHE=... python benchmarks/concat_spaces.py --manifest OC/manifest_stripped.csv --split val --seed 0
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from huse.dataset import DataConfig, build_feature_set
from huse.evaluate import DIRECTIONS, _mean, embed, level_metrics, space_metrics
from huse.methods import resolve_config
from huse.runs import fit_features

SHARES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fs = build_feature_set(args.manifest, DataConfig(), progress=False)
    idx = fs.split_indices(args.split)
    spaces = {}
    for name, method, over in (
        ("class", "huse", {"instance_weight": 0.0}),
        ("instance", "contrastive", {}),
    ):
        cfg = resolve_config(method, seed=args.seed, epochs=args.epochs, **over)
        fit = fit_features(fs, cfg, args.split)
        e = embed(fit.train.net, fs, idx)
        spaces[name] = (e.image_embedding, e.text_embedding)
        print(f"{name}: {method}, {fit.train.epochs_run} epochs", flush=True)
    labels, rows = fs.labels[idx], {}
    for s in SHARES:
        img, txt = (
            np.hstack(
                [np.sqrt(1 - s) * spaces["class"][m], np.sqrt(s) * spaces["instance"][m]]
            ).astype(np.float32)
            for m in (0, 1)
        )
        r, hier, _ = space_metrics(img, txt, labels, fs.hierarchy)
        inst, graded = level_metrics(img, txt, labels, fs.hierarchy)
        rows[s] = {
            "xR@1": inst["xR@1"],
            "cross_R@1": _mean([r["i2t"]["R@1"], r["t2i"]["R@1"]]),
            "HP@5": _mean([hier[d]["HP@5"] for d in DIRECTIONS]),
            "nDCG@10": graded["mean_nDCG@10"],
        }
        print(f"share {s:.2f}: " + "  ".join(f"{k} {v:.3f}" for k, v in rows[s].items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
