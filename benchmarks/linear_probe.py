"""How separable are the frozen backbone features? A linear-probe ceiling per modality.

Fits a multinomial logistic regression on the standardised, cached backbone features of
the training split and prints its accuracy on validation and test. If every trained
method's image (or text) accuracy sits at the probe's, the towers add nothing a linear
read-out of the features does not already give, and the features bound what the losses
can reach.

    python benchmarks/linear_probe.py --manifest OC/manifest_stripped.csv
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from huse.dataset import DataConfig, build_feature_set


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--image-backbone", default=DataConfig.image_backbone)
    ap.add_argument("--C", nargs="+", type=float, default=[0.01, 0.1, 1.0], dest="cs")
    args = ap.parse_args()
    fs = build_feature_set(
        args.manifest, DataConfig(image_backbone=args.image_backbone), progress=True
    )
    tr, va, te = (fs.split_indices(s) for s in ("train", "val", "test"))
    y = fs.labels
    print(
        f"{len(fs)} items, {len(fs.hierarchy)} classes; train/val/test {len(tr)}/{len(va)}/{len(te)}"
    )
    print("| modality | C | val accuracy | test accuracy | fit seconds |")
    print("|---|---|---|---|---|")
    for name, feats in (("image", fs.image), ("text", fs.text)):
        x = np.asarray(feats, dtype=np.float32)
        scaler = StandardScaler().fit(x[tr])
        xtr, xva, xte = (scaler.transform(x[i]) for i in (tr, va, te))
        for c in args.cs:
            t0 = time.perf_counter()
            clf = LogisticRegression(C=c, max_iter=2000).fit(xtr, y[tr])
            print(
                f"| {name} | {c:g} | {clf.score(xva, y[va]):.3f} | {clf.score(xte, y[te]):.3f} "
                f"| {time.perf_counter() - t0:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
