"""The ``huse`` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from huse._io import check_output_dir
from huse.data.manifest import ManifestConfig
from huse.errors import HuseError, UnsafeOutputError


def _add_manifest_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("manifest columns")
    g.add_argument("--image-col", default="image")
    g.add_argument("--text-col", default="text")
    g.add_argument("--classes-col", default="classes")
    g.add_argument("--id-col", default="id")
    g.add_argument("--split-col", default="split")
    g.add_argument("--sep", default="<", help="class path separator (default '<')")
    g.add_argument(
        "--max-text-chars",
        type=int,
        default=20_000,
        help="longer texts are cut to this many characters, noted in notes.csv (default 20000)",
    )


def _add_data_args(p: argparse.ArgumentParser) -> None:
    _add_manifest_args(p)
    g = p.add_argument_group("features")
    # Literals keep `huse --help` free of torch; a test ties them to DataConfig's defaults.
    g.add_argument("--image-backbone", default="efficientnet-lite2")
    g.add_argument("--text-backbone", default="minilm-l6")
    g.add_argument("--batch-size", type=int, default=32, help="image backbone batch size")
    g.add_argument("--workers", type=int, default=0, help="image decoding processes")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cpu")
    g.add_argument(
        "--image-fit",
        choices=["pad", "crop"],
        default=None,
        help="pad: letterbox on white (default); crop: the model's own resize and crop",
    )
    g.add_argument(
        "--text-pooling",
        choices=["last4", "mean", "cls", "model"],
        default=None,
        help="hf: text backbones (default: model for CLIP/SigLIP, last4 otherwise)",
    )
    g.add_argument(
        "--max-image-mb",
        type=float,
        default=256.0,
        help="image files larger than this are skipped unread (default 256)",
    )


def _data_config(args: argparse.Namespace, cache_dir: str | None):
    from huse.data.split import SplitConfig
    from huse.dataset import DataConfig

    return DataConfig(
        manifest=ManifestConfig(
            image_col=args.image_col,
            text_col=args.text_col,
            classes_col=args.classes_col,
            id_col=args.id_col,
            split_col=args.split_col,
            sep=args.sep,
            max_text_chars=args.max_text_chars,
        ),
        split=SplitConfig(seed=args.seed),
        image_backbone=args.image_backbone,
        text_backbone=args.text_backbone,
        image_batch_size=args.batch_size,
        num_workers=args.workers,
        cache_dir=cache_dir,
        device=args.device,
        image_fit=args.image_fit,
        text_pooling=args.text_pooling,
        max_image_file_bytes=int(args.max_image_mb * 2**20),
    )


def _summary_skipped(fs, out: Path) -> str:
    n = len(fs.skipped)
    if not n:
        return "skipped 0 rows"
    reasons = fs.skipped["reason"].str.split(":").str[0].value_counts()
    top = ", ".join(f"{r} ×{c}" for r, c in reasons.head(5).items())
    return f"skipped {n} rows ({top}); see {out / 'skipped.csv'}"


def cmd_extract(args: argparse.Namespace) -> int:
    from huse.dataset import build_feature_set

    out = check_output_dir(args.out)
    cache = args.cache or str(out / "cache")
    config = _data_config(args, cache)
    from huse._dist import is_main, teardown

    fs = build_feature_set(args.manifest, config, progress=not args.quiet)
    teardown()  # under torchrun: every rank extracted its share into the cache
    if not is_main():  # rank 0 writes the feature set and reports
        return 0
    fs.save(out)
    s = fs.stats
    print(
        f"extracted {len(fs)} items, {len(fs.hierarchy)} classes "
        f"(splits {s['splits']}); computed {s['images_computed']} images and "
        f"{s['texts_computed']} texts, reused the rest from {cache}"
    )
    print(_summary_skipped(fs, out))
    if s.get("texts_truncated"):
        print(
            f"{s['texts_truncated']} texts cut to {config.manifest.max_text_chars} characters; "
            f"see {out / 'notes.csv'}"
        )
    for shard in s.get("damaged_shards", []):
        print(f"damaged cache shard {shard}: set aside (*.damaged), its items recomputed")
    if s["train_only_classes"]:
        print(
            f"{len(s['train_only_classes'])} classes have fewer than "
            f"{config.split.min_eval_items} items and went to train only"
        )
    print(f"features written to {out}")
    return 0


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from huse.methods import PRESETS, list_methods

    g = p.add_argument_group("training (unset flags take the preset's value)")
    g.add_argument("--method", default="huse", choices=list_methods())
    g.add_argument("--preset", default="default", choices=sorted(PRESETS))
    g.add_argument("--epochs", type=int)
    g.add_argument("--train-batch-size", type=int, dest="train_batch_size")
    g.add_argument("--lr", type=float)
    g.add_argument("--optimizer", choices=["adamw", "rmsprop"])
    g.add_argument("--alpha", type=float, help="classification loss weight")
    g.add_argument("--beta", type=float, help="graph loss weight")
    g.add_argument("--gamma", type=float, help="gap loss weight")
    g.add_argument("--margin", type=float, help="graph loss margin ζ")
    g.add_argument("--graph-source", choices=["names", "tree", "mix"])
    g.add_argument("--graph-scale", type=float, help="graph loss targets = min(2, scale * A)")
    g.add_argument(
        "--graph-cross-only",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="graph loss on image-text pairs only",
    )
    g.add_argument(
        "--gap-text-teacher",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the gap loss moves only the image side",
    )
    g.add_argument("--delta", type=float, help="class-level cross-modal contrastive weight")
    g.add_argument("--hier-smoothing", type=float)
    g.add_argument("--logit-scale", type=float)
    g.add_argument("--fusion-weight", type=float)
    g.add_argument(
        "--cosine-classifier",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="normalised classifier rows (class prototypes)",
    )
    g.add_argument("--embed-dim", type=int)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--dropout", type=float, help="dropout after each hidden tower layer")
    g.add_argument(
        "--input-dropout", type=float, help="dropout on the backbone features entering the towers"
    )
    g.add_argument("--image-layers", type=int, help="hidden layers of the image tower")
    g.add_argument("--ema-decay", type=float, help="average the weights (e.g. 0.99); 0 = off")
    g.add_argument("--patience", type=int)
    g.add_argument(
        "--bf16",
        action="store_true",
        default=None,
        help="bfloat16 mixed precision on a CUDA device (elsewhere: a warning, float32)",
    )
    g.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.pt")
    g.add_argument("--quiet", action="store_true")


def _train_config(args: argparse.Namespace):
    from huse.methods import resolve_config

    return resolve_config(
        args.method,
        args.preset,
        epochs=args.epochs,
        batch_size=args.train_batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        alpha=args.alpha,
        beta=args.beta,
        gamma=args.gamma,
        margin=args.margin,
        graph_source=args.graph_source,
        graph_scale=args.graph_scale,
        graph_cross_only=args.graph_cross_only,
        gap_text_teacher=args.gap_text_teacher,
        delta=args.delta,
        hier_smoothing=args.hier_smoothing,
        logit_scale=args.logit_scale,
        fusion_weight=args.fusion_weight,
        cosine_classifier=args.cosine_classifier,
        embed_dim=args.embed_dim,
        weight_decay=args.weight_decay,
        dropout=args.dropout,
        input_dropout=args.input_dropout,
        image_layers=args.image_layers,
        ema_decay=args.ema_decay,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        bf16=args.bf16,
    )


def _print_metrics(m: dict, out: Path) -> None:
    from huse.card import _f, metrics_markdown

    t = m.get("training", {})
    if t:
        print(
            f"trained {m['method']}: {t['epochs_run']} epochs ({t['stopped']}, best epoch "
            f"{t['best_epoch']}) in {t['seconds']:.1f}s"
        )
    print(metrics_markdown(m))
    s = m["summary"]
    print(
        f"cross-modal R@1 {_f(s['cross_R@1'])} · mean HP@5 {_f(s['mean_HP@5'])}"
        + (f" · fusion accuracy {_f(s['fusion'])}" if s["fusion"] is not None else "")
    )
    for note in m.get("notes", []):
        print(f"note: {note}")
    print(f"metrics: {out / 'metrics.json'}  model: {out / 'model'}")


def cmd_fit(args: argparse.Namespace) -> int:
    from huse.run import fit

    out = check_output_dir(args.out)
    cache = args.features
    data_cfg = _data_config(args, cache)
    m = fit(
        args.manifest,
        out,
        data_cfg,
        _train_config(args),
        resume=args.resume,
        progress=not args.quiet,
    )
    if not m:  # a non-zero torchrun rank: rank 0 reports
        return 0
    print(f"{m['data']['skipped']} rows skipped; see {out / 'skipped.csv'}")
    _print_metrics(m, out)
    _write_report(out)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import json as _json

    from huse.dataset import FeatureSet
    from huse.run import fit

    out = check_output_dir(args.out)
    fs = FeatureSet.load(args.features)
    manifest = _json.loads((Path(args.features) / "extract_stats.json").read_text())["manifest"]
    m = fit(
        manifest,
        out,
        fs.config,
        _train_config(args),
        resume=args.resume,
        progress=not args.quiet,
        features=fs,
    )
    if not m:  # a non-zero torchrun rank: rank 0 reports
        return 0
    _print_metrics(m, out)
    _write_report(out)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json as _json

    from huse._io import atomic_write_text
    from huse.run import evaluate_run

    run = Path(args.run)
    target = Path(args.out) if args.out else run / "eval_metrics.json"
    if args.manifest and target.exists() and Path(args.manifest).resolve() == target.resolve():
        raise UnsafeOutputError(
            f"--out {target} is the manifest; give another metrics file (huse never writes "
            "over its input)"
        )
    check_output_dir(target.parent)
    m = evaluate_run(run, args.manifest, progress=not args.quiet)
    atomic_write_text(target, _json.dumps(m, indent=2))
    from huse.card import metrics_markdown

    print(metrics_markdown(m))
    print(f"written {target}")
    _write_report(run)
    return 0


def cmd_data_openclipart(args: argparse.Namespace) -> int:
    from huse.data.openclipart import build_openclipart

    report = build_openclipart(
        Path(args.root), Path(args.out), drop_duplicate_images=not args.keep_duplicate_images
    )
    print(report.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="huse", description="Hierarchical universal semantic embeddings for images and texts."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="run the frozen backbones over a manifest, once per item")
    p.add_argument("manifest")
    p.add_argument("--out", required=True, help="output folder for the feature set")
    p.add_argument("--cache", default=None, help="feature cache folder (default OUT/cache)")
    p.add_argument("--quiet", action="store_true")
    _add_data_args(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("fit", help="extract → graph → train → evaluate, end to end")
    p.add_argument("manifest")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument(
        "--features",
        default=None,
        help="feature cache folder shared across runs (default $HUSE_CACHE or ~/.cache/huse)",
    )
    _add_data_args(p)
    _add_train_args(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("train", help="train on a feature folder written by `huse extract`")
    p.add_argument("features")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run on its test split or another manifest")
    p.add_argument("run")
    p.add_argument("--manifest", default=None)
    p.add_argument("--out", default=None, help="metrics file (default RUN/eval_metrics.json)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("data", help="build manifests from public datasets")
    dsub = p.add_subparsers(dest="dataset", required=True)
    q = dsub.add_parser("openclipart", help="Openclipart from Debian's openclipart-png/-svg")
    q.add_argument("--out", required=True)
    q.add_argument("--root", default="/usr/share/openclipart")
    q.add_argument(
        "--keep-duplicate-images",
        action="store_true",
        help="keep byte-identical pictures filed under several classes (default: keep the deepest)",
    )
    q.set_defaults(func=cmd_data_openclipart)

    from huse.cli import backbones, report, search

    search.register(sub)
    report.register(sub)
    backbones.register(sub)
    return parser


def _write_report(run: Path) -> None:
    """The HTML report after fit/eval; a missing optional dependency is a note, not a failure."""
    try:
        from huse.report import write_report
    except ImportError as e:
        print(f"no report ({e}); install the report extra: pip install 'huse[report]'")
        return
    from huse.report.analysis import ReportError

    try:
        print(f"report: {write_report(run)}")
    except ReportError as e:
        print(f"no report: {e}")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("huse")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HuseError as e:
        _keep_skipped(e, args)
        print(f"error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is cached and a rerun resumes", file=sys.stderr)
        return 130


def _keep_skipped(e: HuseError, args: argparse.Namespace) -> None:
    """A manifest with no usable row: its rows and reasons go to OUT/skipped.csv, as the
    message says, for the commands whose --out is a plain folder of theirs."""
    skipped = getattr(e, "skipped", None)
    out = getattr(args, "out", None)
    if skipped is None or out is None or args.command not in ("extract", "fit"):
        return
    from huse.dataset import write_skipped

    # If it cannot be written, the error line still names the first reasons.
    with contextlib.suppress(OSError, HuseError):
        write_skipped(skipped, check_output_dir(out) / "skipped.csv")


def _one_line(msg: str) -> str:
    return " ".join(msg.split())


if __name__ == "__main__":
    sys.exit(main())
