"""Ablations of the HUSE objective, judged on the VALIDATION split only.

Each variant changes one thing from a base configuration (loss terms on/off, margin ζ,
loss weights, learning rate, logit scale, graph source, label smoothing, training
length). The fusion weight is swept after training, on the same validation embeddings.
For each run it prints the validation cross-modal R@1, mean HP@5, fusion accuracy, how
many class pairs fall under ζ, the share of batch pairs the graph loss touches,
whether training converged (early stop) or hit the epoch cap, and the cross-modal R@1
of ranking by the classifiers' posteriors instead of the embeddings (a bound check).

With ``--shares``, a variant with an instance subspace (``instance_dims > 0``) is also
scored at each share s, on the same trained towers: the share does not enter any
loss (the class terms read the class part, the instance term the instance part, each
renormalised), only the joined embedding, so it is a dial read off one training run.

    python benchmarks/ablation.py --manifest OC/manifest_stripped.csv --seeds 0 1
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from huse.dataset import DataConfig, build_feature_set
from huse.evaluate import embed, evaluate_net, softmax, space_metrics, summary_scores
from huse.methods import get_method, resolve_config
from huse.runs import fit_features, graph_stats

VARIANTS: dict[str, dict] = {
    "base": {},
    "no graph (β=0)": {"beta": 0.0},
    "no gap (γ=0)": {"gamma": 0.0},
    "no cls (α=0)": {"alpha": 0.0},
    "cls only": {"beta": 0.0, "gamma": 0.0},
    "ζ=0.3": {"margin": 0.3},
    "ζ=0.7": {"margin": 0.7},
    "ζ=1.0": {"margin": 1.0},
    "ζ=2.0 (all pairs)": {"margin": 2.0},
    "β=3": {"beta": 3.0},
    "β=10": {"beta": 10.0},
    "γ=0.3": {"gamma": 0.3},
    "γ=3": {"gamma": 3.0},
    "lr=3e-4": {"lr": 3e-4},
    "lr=3e-3": {"lr": 3e-3},
    "logit scale 1 (paper)": {"logit_scale": 1.0},
    "logit scale 4": {"logit_scale": 4.0},
    "logit scale 32": {"logit_scale": 32.0},
    "graph=tree": {"graph_source": "tree"},
    "graph=mix": {"graph_source": "mix"},
    "hier smoothing τ=0.1": {"hier_smoothing": 0.1},
    "label smoothing 0.1": {"label_smoothing": 0.1},
    "epochs=20 cap": {"epochs": 20, "patience": 1000},
    "paper preset": {"preset": "paper"},
    "cosine cls s=16": {"cosine_classifier": True},
    "cosine cls s=32": {"cosine_classifier": True, "logit_scale": 32.0},
    "cosine cls s=16 + hier τ=0.1": {"cosine_classifier": True, "hier_smoothing": 0.1},
    "cosine cls s=16 + γ=3": {"cosine_classifier": True, "gamma": 3.0},
    "cosine cls s=16, β=0": {"cosine_classifier": True, "beta": 0.0},
    "cosine cls s=16, ζ=1.0": {"cosine_classifier": True, "margin": 1.0},
    "cosine cls s=16, graph=mix": {"cosine_classifier": True, "graph_source": "mix"},
    "xmodal δ=1": {"delta": 1.0},
    "xmodal δ=1 + hier τ=0.1": {"delta": 1.0, "hier_smoothing": 0.1},
    "xmodal δ=1 + hier τ=0.05": {"delta": 1.0, "hier_smoothing": 0.05},
    "hier τ=0.05": {"hier_smoothing": 0.05},
    "xmodal δ=0.3": {"delta": 0.3},
    "lr=3e-4, ζ=2": {"lr": 3e-4, "margin": 2.0},
    "lr=3e-4, hier τ=0.05": {"lr": 3e-4, "hier_smoothing": 0.05},
    "lr=3e-4, ζ=2, hier τ=0.05": {"lr": 3e-4, "margin": 2.0, "hier_smoothing": 0.05},
    "lr=3e-4, ζ=2, hier τ=0.05, cosine s=32": {
        "lr": 3e-4,
        "margin": 2.0,
        "hier_smoothing": 0.05,
        "cosine_classifier": True,
        "logit_scale": 32.0,
    },
    "default minus graph and gap (β=γ=0)": {"beta": 0.0, "gamma": 0.0},
    "default minus gap (γ=0)": {"gamma": 0.0},
    "default minus graph (β=0)": {"beta": 0.0},
    "gap text teacher": {"gap_text_teacher": True},
    "hier τ=0.02": {"hier_smoothing": 0.02},
    "hier τ=0.03": {"hier_smoothing": 0.03},
    "input dropout 0.2": {"input_dropout": 0.2},
    "input dropout 0.5": {"input_dropout": 0.5},
    "input dropout 0.7": {"input_dropout": 0.7},
    "γ=2": {"gamma": 2.0},
    "graph scale 1.33": {"graph_scale": 1.33},
    "graph scale 2": {"graph_scale": 2.0},
    "EMA 0.99": {"ema_decay": 0.99},
    "EMA 0.995": {"ema_decay": 0.995},
    "graph cross-modal pairs only": {"graph_cross_only": True},
    "graph cross-modal pairs only, scale 2": {"graph_cross_only": True, "graph_scale": 2.0},
    "dropout 0.3": {"dropout": 0.3},
    "image layers 2": {"image_layers": 2},
    "weight decay 1e-2": {"weight_decay": 1e-2},
    "input dropout 0.2, image layers 2": {"input_dropout": 0.2, "image_layers": 2},
    # Every level (issue: the item first, then its class, then its relatives).
    "instance η=1": {"instance_weight": 1.0},
    "instance η=0.3": {"instance_weight": 0.3},
    "instance η=3": {"instance_weight": 3.0},
    "instance η=1, τ=0.1": {"instance_weight": 1.0, "instance_temperature": 0.1},
    "instance η=1, τ=0.02": {"instance_weight": 1.0, "instance_temperature": 0.02},
    "instance η=1, margin 0.1": {"instance_weight": 1.0, "instance_margin": 0.1},
    "instance η=1, classmates 0.3": {"instance_weight": 1.0, "instance_same_class_weight": 0.3},
    "instance η=1, monitor nDCG": {"instance_weight": 1.0, "monitor": "mean_nDCG@10"},
    "instance η=1, no gap": {"instance_weight": 1.0, "gamma": 0.0},
    "monitor nDCG": {"monitor": "mean_nDCG@10"},
    "instance η=0.1": {"instance_weight": 0.1},
    "instance η=1, classmates only": {"instance_weight": 1.0, "instance_other_class_weight": 0.0},
    "instance η=0.3, classmates only": {"instance_weight": 0.3, "instance_other_class_weight": 0.0},
    "instance η=3, classmates only": {"instance_weight": 3.0, "instance_other_class_weight": 0.0},
    "instance η=0.3, classmates 0.3": {"instance_weight": 0.3, "instance_same_class_weight": 0.3},
    "instance η=0.3, τ=0.1": {"instance_weight": 0.3, "instance_temperature": 0.1},
    # The instance term on its own subspace (huse.model.join_embedding), from the
    # previous default (η = 0) upwards; plain InfoNCE there unless said.
    "η=0 (previous default)": {"instance_weight": 0.0},
    "subspace 128, share 0.25": {
        "instance_dims": 128,
        "instance_share": 0.25,
        "instance_same_class_weight": 1.0,
    },
    "subspace 128, share 0.15": {
        "instance_dims": 128,
        "instance_share": 0.15,
        "instance_same_class_weight": 1.0,
    },
    "subspace 128, share 0.4": {
        "instance_dims": 128,
        "instance_share": 0.4,
        "instance_same_class_weight": 1.0,
    },
    "subspace 64, share 0.25": {
        "instance_dims": 64,
        "instance_share": 0.25,
        "instance_same_class_weight": 1.0,
    },
    "subspace 256, share 0.25": {
        "instance_dims": 256,
        "instance_share": 0.25,
        "instance_same_class_weight": 1.0,
    },
    "subspace 128, share 0.25, classmates 0.3": {"instance_dims": 128, "instance_share": 0.25},
    "subspace 128, share 0.25, τ=0.1": {
        "instance_dims": 128,
        "instance_share": 0.25,
        "instance_same_class_weight": 1.0,
        "instance_temperature": 0.1,
    },
    "subspace 128, τ=0.1, classmates 0.3": {
        "instance_dims": 128,
        "instance_share": 0.25,
        "instance_temperature": 0.1,
    },
    "subspace 128, share 0.1": {
        "instance_dims": 128,
        "instance_share": 0.1,
        "instance_same_class_weight": 1.0,
    },
    "own towers 128, share 0.2": {
        "instance_dims": 128,
        "instance_share": 0.2,
        "instance_towers": True,
        "instance_same_class_weight": 1.0,
    },
    "own towers 256, share 0.2": {
        "instance_dims": 256,
        "instance_share": 0.2,
        "instance_towers": True,
        "instance_same_class_weight": 1.0,
    },
    "subspace 128, share 0.25, η=0.3": {
        "instance_dims": 128,
        "instance_share": 0.25,
        "instance_same_class_weight": 1.0,
        "instance_weight": 0.3,
    },
    "instance towers stop with the class towers": {"instance_stopping": False},
    "class towers stop on cross R@1": {"monitor": "cross_R@1"},
    "xmodal δ=1 + cosine s=32 + hier τ=0.05": {
        "delta": 1.0,
        "cosine_classifier": True,
        "logit_scale": 32.0,
        "hier_smoothing": 0.05,
    },
}


# Temperatures on the logits for the posterior ranking (the softmax may be over-confident).
POSTERIOR_TEMPERATURES = (1.0, 2.0)


def posterior_cross_r1(li, lt, labels, hierarchy, temperature: float = 1.0) -> float:
    """Cross-modal R@1 when the gallery is ranked by the chance that a gallery item shares
    the query's class under the two classifiers, ``sum_c p_q(c) p_g(c)``: the best top-1
    pick if the softmaxes were calibrated. If it is no higher than the embeddings' R@1, the
    space already says all the classifiers know and no reshaping of it can do better."""
    pi = softmax(li / temperature).astype(np.float32)
    pt = softmax(lt / temperature).astype(np.float32)
    r, _, _ = space_metrics(pi, pt, labels, hierarchy, directions=("i2t", "t2i"))
    return (r["i2t"]["R@1"] + r["t2i"]["R@1"]) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--out", default="benchmarks/out/ablation.json")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on a busy machine)")
    ap.add_argument(
        "--methods",
        nargs="+",
        default=["huse"],
        help="methods to run each variant with (baselines get the same overrides)",
    )
    ap.add_argument(
        "--shares",
        nargs="*",
        type=float,
        default=[],
        help="also score subspace variants at these instance shares (same towers)",
    )
    ap.add_argument("--image-backbone", default=DataConfig.image_backbone)
    ap.add_argument(
        "--extra-image-backbone",
        default=None,
        help="concatenate this backbone's image features to the first's (an ensemble probe)",
    )
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    fs = build_feature_set(
        args.manifest, DataConfig(image_backbone=args.image_backbone), progress=True
    )
    if args.extra_image_backbone:
        extra = build_feature_set(
            args.manifest, DataConfig(image_backbone=args.extra_image_backbone), progress=True
        )
        if not extra.items["id"].equals(fs.items["id"]):
            raise SystemExit("the two backbones kept different items; cannot concatenate")
        fs.image = np.hstack([np.asarray(fs.image), np.asarray(extra.image)])
        print(
            f"image features: {args.image_backbone} + {args.extra_image_backbone}, {fs.image.shape[1]}-d"
        )
    val = fs.split_indices("val")
    print(f"{len(fs)} items, {len(fs.hierarchy)} classes; validation items: {len(val)}")
    results: dict[str, list[dict]] = {}
    graphs: dict = {}
    for name, method in itertools.product(args.variants, args.methods):
        over = dict(VARIANTS[name])
        preset = over.pop("preset", "default")
        key = name if method == "huse" else f"{method}: {name}"
        if get_method(method).ignored(over):  # the variant changes nothing for this method
            print(
                f"skipped {key}: {method} does not use {', '.join(get_method(method).ignored(over))}"
            )
            continue
        for seed in args.seeds:
            cfg = resolve_config(method, preset, seed=seed, **({"epochs": args.epochs} | over))
            fit = fit_features(fs, cfg, "val", graphs=graphs)
            res = fit.train
            s = summary_scores(fit.metrics)
            out = embed(res.net, fs, val)
            li, lt = out.image_logits, out.text_logits
            fusion, posterior = {}, {}
            if li is not None and lt is not None:
                pi, pt = softmax(li), softmax(lt)
                y = fs.labels[val]
                for w in (0.0, 0.3, 0.5, 0.7, 1.0):
                    fusion[w] = float(((w * pi + (1 - w) * pt).argmax(1) == y).mean())
                for t in POSTERIOR_TEMPERATURES:
                    posterior[t] = posterior_cross_r1(li, lt, y, fs.hierarchy, t)
            row = {
                **s,
                "epochs": res.epochs_run,
                "best_epoch": res.best_epoch,
                "instance_best_epoch": res.instance_best_epoch,
                "stopped": res.stopped,
                "seconds": res.seconds,
                "graph_active": res.graph_active,
                "pairs_under_margin": graph_stats(fit.graph, cfg.margin)["pairs_under_margin"],
                "fusion_by_weight": fusion,
                "posterior_cross_R@1": posterior,
            }
            results.setdefault(key, []).append(row)
            if cfg.instance_dims and cfg.instance_weight > 0:
                trained = res.net.cfg.instance_share
                for share in args.shares:
                    res.net.cfg.instance_share = share
                    ss = summary_scores(evaluate_net(res.net, fs, "val"))
                    sub = f"{key} @ share {share:g}"
                    results.setdefault(sub, []).append({**row, **ss})
                    print(
                        f"{sub:24s} seed {seed}: xR@1 {ss['instance_xR@1']:.3f}  "
                        f"nDCG@10 {ss['mean_nDCG@10']:.3f}  cross R@1 {ss['cross_R@1']:.3f}  "
                        f"HP@5 {ss['mean_HP@5']:.3f}",
                        flush=True,
                    )
                res.net.cfg.instance_share = trained
            print(
                f"{key:24s} seed {seed}: xR@1 {s['instance_xR@1']:.3f}  "
                f"nDCG@10 {s['mean_nDCG@10']:.3f}  cross R@1 {s['cross_R@1']:.3f}  "
                f"HP@5 {s['mean_HP@5']:.3f}  "
                f"fusion {s['fusion'] or 0:.3f}  pairs<ζ {row['pairs_under_margin']:.2f}  "
                f"active {row['graph_active'] if row['graph_active'] is None else round(row['graph_active'], 3)}  "
                f"{res.epochs_run} ep ({res.stopped}, best {res.best_epoch}"
                + (f", instance {res.instance_best_epoch}" if res.instance_best_epoch else "")
                + f")  {row['seconds']:.0f}s"
                + "".join(f"  posterior R@1 T={t:g} {v:.3f}" for t, v in posterior.items()),
                flush=True,
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(
        "\n| variant | val instance xR@1 | val cross R@1 | val mean HP@5 | val mean nDCG@10 "
        "| val fusion acc | epochs (stop) | pairs<ζ | active | posterior R@1 (T=1 / 2) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():

        def ms(k, rows=rows):
            v = [r[k] for r in rows if r[k] is not None]
            return f"{np.mean(v):.3f} ± {np.std(v):.3f}" if v else "—"

        stops = ",".join(sorted({r["stopped"][:5] for r in rows}))
        ep = np.mean([r["epochs"] for r in rows])
        act = [r["graph_active"] for r in rows if r["graph_active"] is not None]
        post = " / ".join(
            f"{np.mean([r['posterior_cross_R@1'][t] for r in rows]):.3f}"
            for t in POSTERIOR_TEMPERATURES
            if all(t in r["posterior_cross_R@1"] for r in rows)
        )
        print(
            f"| {name} | {ms('instance_xR@1')} | {ms('cross_R@1')} | {ms('mean_HP@5')} "
            f"| {ms('mean_nDCG@10')} | {ms('fusion')} | {ep:.0f} ({stops}) | "
            f"{rows[0]['pairs_under_margin']:.2f} | {np.mean(act) if act else float('nan'):.3f} "
            f"| {post or '—'} |"
        )


if __name__ == "__main__":
    main()
