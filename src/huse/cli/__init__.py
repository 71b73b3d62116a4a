"""The ``huse`` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path

from huse._io import check_output_dir
from huse._settings import read_config_file, values_from_mapping, with_values
from huse.cli._flags import add_config_flags, given
from huse.config import DataConfig, IndexConfig, TrainConfig
from huse.errors import ConfigError, HuseError, UnsafeOutputError

DATA, TRAIN, INDEX = "data.", "train.", "index."
MANIFEST_HELP = (
    "CSV, TSV, JSONL or Parquet file with image, text and classes columns (see --image-col...)"
)


def _add_common(p: argparse.ArgumentParser, sections: str) -> None:
    g = p.add_argument_group("run")
    g.add_argument(
        "--config",
        metavar="FILE",
        help=f"JSON or TOML settings file with sections {sections}; flags override it",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_data_args(
    p: argparse.ArgumentParser, *, cache_shown: str | None = None, skip=(), helps=None
) -> None:
    defaults = {"cache_dir": cache_shown} if cache_shown else None
    add_config_flags(
        p, DataConfig, prefix=DATA, title="features", skip=skip, defaults=defaults, helps=helps
    )


# What fit's shared or look-alike flags mean there.
FIT_HELPS = {
    "device": "torch device of the backbones and of training (cpu, cuda, cuda:1...)",
    "image_batch_size": "images per backbone forward pass while extracting features "
    "(--batch-size is its old name; the training batch is --train-batch-size)",
    "bf16": "bfloat16 autocast of training on a CUDA device (the backbones use half "
    "precision where supported)",
}


def _file_values(args: argparse.Namespace, section: str, cls: type) -> dict:
    """The ``[section]`` of ``--config FILE`` as setting paths → values (checked)."""
    if not getattr(args, "config", None):
        return {}
    data = read_config_file(args.config)
    known = {"data", "train", "index", "serve"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"--config {args.config}: unknown section(s) {', '.join(unknown)}; use "
            f"{', '.join(sorted(known))}"
        )
    part = data.get(section, {})
    if not isinstance(part, dict):
        raise ConfigError(f"--config {args.config}: [{section}] must be a table of settings")
    return values_from_mapping(cls, part, f"--config {args.config} [{section}]")


def config_from_args(args: argparse.Namespace, cls: type, section: str, prefix: str):
    """``cls()`` with ``--config``'s [section], then the flags given, applied."""
    values = _file_values(args, section, cls) | given(args, cls, prefix=prefix)
    return with_values(cls(), values)


def _data_config(args: argparse.Namespace, cache_dir: str | None):
    """DataConfig from its defaults, then ``--config``'s [data], then the flags given."""
    values = _file_values(args, "data", DataConfig) | given(args, DataConfig, prefix=DATA)
    if cache_dir is not None and ("cache_dir",) not in values:
        values[("cache_dir",)] = cache_dir
    return with_values(DataConfig(), values)


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
    config = _data_config(args, str(out / "cache"))  # unless --cache names another
    _check_devices(config.device)
    _check_backbones(config)
    cache = config.cache_dir
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


def _add_train_args(p: argparse.ArgumentParser, *, skip=(), helps=None) -> None:
    add_config_flags(
        p, TrainConfig, prefix=TRAIN, title="training (unset flags take the preset's value)",
        skip=skip, helps=helps,
    )  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.pt")


def _train_config(args: argparse.Namespace):
    """TrainConfig: the preset, the method's defaults, ``--config``'s [train], the flags."""
    from huse.methods import resolve_config

    values = _file_values(args, "train", TrainConfig) | given(args, TrainConfig, prefix=TRAIN)
    over = {path[0]: v for path, v in values.items()}
    if getattr(args, "shared_seed_device", False):  # fit: one --seed, one --device
        data = _data_config(args, None)
        over.setdefault("seed", data.split.seed)
        over.setdefault("device", data.device)
    return resolve_config(over.pop("method", "huse"), over.pop("preset", "default"), **over)


def _print_metrics(m: dict, out: Path) -> None:
    from huse.card import _f, metrics_markdown

    t = m.get("training", {})
    if t:
        own = t.get("instance_best_epoch")
        inst = f", instance towers' best epoch {own}" if own else ""
        print(
            f"trained {m['method']}: {t['epochs_run']} epochs ({t['stopped']}, best epoch "
            f"{t['best_epoch']}{inst}) in {t['seconds']:.1f}s"
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


def _check_backbones(config: DataConfig) -> None:
    """Both backbones built and their sizes read (configuration files only, no weights):
    an unknown name or an unreachable hub model is one line before the first image is
    read, not after the image backbone has run over the whole manifest."""
    from huse.backbones import get_backbone

    get_backbone(config.image_backbone, "image", **config.image_options()).dim  # noqa: B018
    get_backbone(config.text_backbone, "text", **config.text_options()).dim  # noqa: B018


def _check_devices(*devices: str) -> None:
    """A device torch does not have here is one line now, not a traceback after the
    first minutes of work."""
    from huse.model import check_device

    for d in dict.fromkeys(devices):
        check_device(d)


def _fit_index_config(args: argparse.Namespace, train_cfg):
    """``fit --index``'s IndexConfig (its flags, ``--config``'s [index], the one --seed),
    its factory string checked against the embedding size before any training."""
    from huse.index import check_factory

    values = _file_values(args, "index", IndexConfig) | given(args, IndexConfig, prefix=INDEX)
    values.setdefault(("seed",), train_cfg.seed)
    config = with_values(IndexConfig(), values)
    check_factory(config.factory, train_cfg.embed_dim, config.search_params)
    return config


def cmd_fit(args: argparse.Namespace) -> int:
    from huse.runs import fit

    out = check_output_dir(args.out)
    cache = args.features
    data_cfg = _data_config(args, cache)
    train_cfg = _train_config(args)
    _check_devices(data_cfg.device, train_cfg.device)
    index_cfg = _fit_index_config(args, train_cfg) if args.index else None
    _check_backbones(data_cfg)
    m = fit(
        args.manifest,
        out,
        data_cfg,
        train_cfg,
        resume=args.resume,
        progress=not args.quiet,
    )
    if not m:  # a non-zero torchrun rank: rank 0 reports
        return 0
    print(f"{m['data']['skipped']} rows skipped; see {out / 'skipped.csv'}")
    _print_metrics(m, out)
    _write_report(out)
    if index_cfg is not None:
        _fit_index(args, out, index_cfg)
    return 0


def _fit_index(args: argparse.Namespace, out: Path, config) -> None:
    """``fit --index``: the run's catalogue index, from the features just cached."""
    import time

    from huse.runs import index_run

    t0 = time.perf_counter()
    index, where = index_run(out, args.manifest, config, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    print(f"indexed {len(index)} items ({index.info['factory']}) in {seconds:.1f}s: {where}")
    print(f'search it: huse search {out} --text "..."   or in a browser: huse serve {out}')


def cmd_train(args: argparse.Namespace) -> int:
    import json as _json

    from huse.dataset import FeatureSet
    from huse.runs import fit

    out = check_output_dir(args.out)
    cfg = _train_config(args)  # settings first: a mistake costs no feature loading
    _check_devices(cfg.device)
    fs = FeatureSet.load(args.features)
    manifest = _json.loads((Path(args.features) / "extract_stats.json").read_text())["manifest"]
    m = fit(
        manifest,
        out,
        fs.config,
        cfg,
        resume=args.resume,
        progress=not args.quiet,
        features=fs,
        command="train",
    )
    if not m:  # a non-zero torchrun rank: rank 0 reports
        return 0
    _print_metrics(m, out)
    _write_report(out)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from huse.runs import RunDir, evaluate_run

    run = Path(args.run)
    target = Path(args.out) if args.out else RunDir(run).eval_metrics_file
    if args.manifest and target.exists() and Path(args.manifest).resolve() == target.resolve():
        raise UnsafeOutputError(
            f"--out {target} is the manifest; give another metrics file (huse never writes "
            "over its input)"
        )
    check_output_dir(target.parent)
    m = evaluate_run(run, args.manifest, progress=not args.quiet)
    RunDir(run).write_eval_metrics(m, target)
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


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (the usage block is in --help)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; builds without importing torch, pandas or FAISS."""
    parser = _Parser(
        prog="huse", description="Hierarchical universal semantic embeddings for images and texts."
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show other libraries' progress bars and warnings (hidden by default)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "extract",
        help="run the frozen backbones over a manifest, once per item",
        description="Compute (or reuse from the cache) every item's backbone features and write "
        "a feature folder for `huse train`.",
    )
    p.add_argument("manifest", help=MANIFEST_HELP)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for the feature set")
    _add_common(p, "[data]")
    _add_data_args(p, cache_shown="OUT/cache")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser(
        "fit",
        help="extract → graph → train → evaluate, end to end",
        description="The whole pipeline into one run folder: features (cached), the semantic "
        "graph, training with early stopping, test metrics, the model and a report.",
    )
    p.add_argument("manifest", help=MANIFEST_HELP)
    p.add_argument("--out", required=True, metavar="DIR", help="run folder")
    _add_common(p, "[data], [train] and [index]")
    # One --seed (split, training, index sample), one --device (backbones and towers),
    # one --bf16.
    _add_data_args(p, skip=("bf16",), helps=FIT_HELPS)
    _add_train_args(p, skip=("seed", "device"), helps=FIT_HELPS)
    p.add_argument(
        "--index",
        action="store_true",
        help="build RUN/index when training ends, ready for `huse search` and `huse serve` "
        "(as `huse index RUN` would; see the index settings below)",
    )
    add_config_flags(
        p, IndexConfig, prefix=INDEX, title="index (with --index)",
        skip=("seed", "keep_missing", "retrain"),
    )  # fmt: skip
    p.set_defaults(func=cmd_fit, features=None, shared_seed_device=True)

    p = sub.add_parser(
        "train",
        help="train on a feature folder written by `huse extract`",
        description="Train and evaluate on the features of `huse extract --out FEATURES`.",
    )
    p.add_argument("features", help="feature folder written by `huse extract`")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder")
    _add_common(p, "[train]")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run on its test split or another manifest")
    p.add_argument("run", help="run folder written by `huse fit` or `huse train`")
    p.add_argument(
        "--manifest",
        default=None,
        help="evaluate on this manifest's test split (default: the run's)",
    )
    p.add_argument(
        "--out", default=None, metavar="FILE", help="metrics file (default RUN/eval_metrics.json)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("data", help="build manifests from public datasets")
    dsub = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    q = dsub.add_parser("openclipart", help="Openclipart from Debian's openclipart-png/-svg")
    q.add_argument(
        "--out", required=True, metavar="DIR", help="folder for manifest.csv and its companions"
    )
    q.add_argument(
        "--root",
        default="/usr/share/openclipart",
        help="where openclipart-png and openclipart-svg are unpacked (default %(default)s)",
    )
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


def quiet_libraries() -> None:
    """Other packages' progress bars and warnings off, huse's own warnings on.

    Set before the commands import transformers or huggingface_hub, which read these
    variables when they load.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module="huse")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        quiet_libraries()
    else:  # the library's own quiet loading (huse.model) steps aside
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "0")
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
