"""Quality benchmark: every method on the Openclipart manifests, several seeds.

Features are extracted once per manifest (content-keyed cache) and shared by all runs.
Prints a table per dataset and writes benchmarks/out/quality.json; with --results it
rewrites the generated block of benchmarks/RESULTS.md.

    python benchmarks/quality.py --raw OC/manifest.csv --stripped OC/manifest_stripped.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from huse.dataset import DataConfig, build_feature_set
from huse.evaluate import CROSS, DIRECTIONS, evaluate_raw, summary_scores
from huse.methods import list_methods, resolve_config
from huse.runs import fit_features

BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"


def flat(m: dict) -> dict[str, float | None]:
    """One row of numbers per run."""
    row = {f"acc_{k}": v for k, v in m["classification"].items()}
    for d in DIRECTIONS:
        row.update({f"{d}_{k}": v for k, v in m["retrieval"][d].items()})
        row.update({f"{d}_{k}": v for k, v in m["hierarchical"][d].items()})
    for d in CROSS:
        inst = (m.get("instance") or {}).get(d) or {}
        row.update({f"inst_{d}_{k}": v for k, v in inst.items()})
    for d in DIRECTIONS:
        row[f"{d}_nDCG@10"] = ((m.get("graded") or {}).get(d) or {}).get("nDCG@10")
    row.update(summary_scores(m))
    sev = m["mistake_severity"].get("fusion") or {}
    row["severity_fusion"] = sev.get("mistake_severity")
    return row


def run_dataset(name: str, manifest: str, methods, seeds, epochs, split: str, overrides: dict):
    fs = build_feature_set(manifest, DataConfig(), progress=True)
    print(f"[{name}] {len(fs)} items, {len(fs.hierarchy)} classes, splits {fs.stats['splits']}")
    graphs: dict = {}
    rows: dict[str, list[dict]] = {}
    for method in methods:
        for seed in seeds:
            cfg = resolve_config(method, seed=seed, epochs=epochs, **overrides)
            fit = fit_features(fs, cfg, split, graphs=graphs)
            m, res = fit.metrics, fit.train
            row = flat(m) | {
                "train_seconds": res.seconds,
                "epochs": res.epochs_run,
                "stopped": res.stopped,
                "graph_active": res.graph_active,
            }
            rows.setdefault(method, []).append(row)
            s = summary_scores(m)
            print(
                f"[{name}] {method:12s} seed {seed}: xR@1 {s['instance_xR@1']:.3f} "
                f"cross R@1 {s['cross_R@1']:.3f} HP@5 {s['mean_HP@5']:.3f} "
                f"nDCG@10 {s['mean_nDCG@10']:.3f} fusion {s['fusion'] if s['fusion'] is None else round(s['fusion'], 3)} "
                f"({res.epochs_run} ep, {res.stopped}, {row['train_seconds']:.0f}s)",
                flush=True,
            )
    rows["raw backbones"] = [flat(evaluate_raw(fs, split)) | {"train_seconds": 0.0}]
    return {
        "items": len(fs),
        "classes": len(fs.hierarchy),
        "splits": fs.stats["splits"],
        "rows": rows,
    }


def _ms(vals) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}"


# The every-level headline: the item (instance xR@1), its class (class-level cross R@1),
# its relatives (mean HP@5), and the graded figure over all three (mean nDCG@10).
HEADLINE = [
    ("instance xR@1", "instance_xR@1"),
    ("class cross R@1", "cross_R@1"),
    ("mean HP@5", "mean_HP@5"),
    ("mean nDCG@10", "mean_nDCG@10"),
    ("acc fusion", "acc_fusion"),
]

COLUMNS = [
    ("instance xR@1", "instance_xR@1"),
    *[(f"inst {d} {k}", f"inst_{d}_{k}") for d in CROSS for k in ("R@1", "R@5", "R@10", "MedR")],
    ("mean nDCG@10", "mean_nDCG@10"),
    *[(f"{d} nDCG@10", f"{d}_nDCG@10") for d in DIRECTIONS],
    ("cross R@1", "cross_R@1"),
    ("mean HP@5", "mean_HP@5"),
    ("acc img", "acc_image"),
    ("acc txt", "acc_text"),
    ("acc fusion", "acc_fusion"),
    *[(f"{d} R@1", f"{d}_R@1") for d in DIRECTIONS],
    *[(f"{d} R@5", f"{d}_R@5") for d in DIRECTIONS],
    *[(f"{d} R@10", f"{d}_R@10") for d in DIRECTIONS],
    *[(f"{d} HP@2", f"{d}_HP@2") for d in DIRECTIONS],
    *[(f"{d} HP@5", f"{d}_HP@5") for d in DIRECTIONS],
    *[(f"{d} HP@10", f"{d}_HP@10") for d in DIRECTIONS],
    ("severity (fusion)", "severity_fusion"),
    ("train s", "train_seconds"),
]


def table(ds: dict, columns=COLUMNS) -> str:
    head = "| method | " + " | ".join(c for c, _ in columns) + " |"
    sep = "|---" * (len(columns) + 1) + "|"
    lines = [head, sep]
    for method, runs in ds["rows"].items():
        cells = [_ms([r.get(k) for r in runs]) for _, k in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw", default=None, help="manifest with the raw texts")
    ap.add_argument("--stripped", default=None, help="manifest with class words stripped")
    ap.add_argument(
        "--from-json", nargs="*", default=None, help="only render tables from earlier outputs"
    )
    ap.add_argument("--methods", nargs="+", default=list_methods())
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", default="benchmarks/out/quality.json")
    ap.add_argument("--results", default=None, help="RESULTS.md whose generated block to rewrite")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on a busy machine)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = {}
    if args.from_json:
        # Runs of one dataset split over several files (e.g. one per method) are merged.
        for f in args.from_json:
            for name, ds in json.loads(Path(f).read_text()).items():
                if name not in out:
                    out[name] = ds
                    continue
                for method, runs in ds["rows"].items():
                    if method == "raw backbones":  # the same in every file
                        out[name]["rows"].setdefault(method, runs)
                    else:  # e.g. one file per seed
                        out[name]["rows"].setdefault(method, []).extend(runs)
    else:
        for name, manifest in (("stripped", args.stripped), ("raw", args.raw)):
            if manifest is None:
                continue
            out[name] = run_dataset(
                name, manifest, args.methods, args.seeds, args.epochs, args.split, {}
            )
            print(table(out[name], HEADLINE))
            print(table(out[name]))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    if args.results:
        md = []
        for name, ds in out.items():
            md.append(
                f"### {name} texts — {ds['items']} items, {ds['classes']} classes, "
                f"splits {ds['splits']}, seeds {args.seeds}, {args.split} split\n"
            )
            md.append(table(ds, HEADLINE))
            md.append("")
            md.append("<details><summary>every figure</summary>\n")
            md.append(table(ds))
            md.append("\n</details>\n")
        block = "\n".join(md)
        p = Path(args.results)
        text = p.read_text() if p.exists() else f"{BEGIN}\n{END}\n"
        pre, rest = text.split(BEGIN)
        _, post = rest.split(END)
        p.write_text(f"{pre}{BEGIN}\n{block}\n{END}{post}")


if __name__ == "__main__":
    main()
