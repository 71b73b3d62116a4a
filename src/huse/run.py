"""``fit``: manifest → features → graph → train → evaluate → model directory and metrics.

Everything a run decided is written next to its outputs: ``train_config.json``,
``data_config.json``, ``metrics.json``, ``train_log.csv``, ``model/``.

A run folder is huse's own: ``fit`` refuses an ``--out`` that holds files huse did not
write, or where a file it writes is the manifest, and checks a ``--resume`` against the
checkpoint before it writes anything.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from huse._dist import is_main, teardown
from huse._io import atomic_path, atomic_write_text
from huse.card import model_card
from huse.checkpoint import data_fingerprint, load_checkpoint
from huse.dataset import DataConfig, FeatureSet, build_feature_set, write_skipped
from huse.errors import RunError, UnsafeOutputError
from huse.evaluate import evaluate_net, evaluate_raw, summary_scores
from huse.graph import build_graph, class_name_text
from huse.methods import TrainConfig
from huse.model import HUSEModel, ModelInfo
from huse.train import MIN_VAL_ITEMS, TrainResult, check_splits, train

RUN_FORMAT = "huse-run/1"
# Every file and folder a run folder may hold, written by fit, eval or report.
RUN_FILES = (
    "run.json", "train_config.json", "data_config.json", "skipped.csv", "notes.csv",
    "items.parquet", "graph.npy", "metrics.json", "train_log.csv", "report.html", "eval_metrics.json",
)  # fmt: skip
RUN_DIRS = ("model", "checkpoints", "tensorboard")


def graph_for(fs: FeatureSet, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """The semantic graph and the class-name embeddings (one batch of K names)."""
    from huse.backbones import get_backbone

    enc = get_backbone(fs.config.text_backbone, "text", **fs.config.text_options())
    names = [class_name_text(c, fs.hierarchy.sep) for c in fs.hierarchy.classes]
    class_emb = enc.embed_sentences(names).numpy()
    graph = build_graph(
        fs.hierarchy, enc, source=cfg.graph_source, tree_weight=cfg.graph_tree_weight
    )
    return graph, class_emb


def graph_stats(graph: np.ndarray, margin: float) -> dict:
    off = graph[~np.eye(len(graph), dtype=bool)]
    if off.size == 0:
        return {"pairs_under_margin": None, "mean_distance": None}
    return {
        "pairs_under_margin": float((off < margin).mean()),
        "mean_distance": float(off.mean()),
        "min_distance": float(off.min()),
        "max_distance": float(off.max()),
    }


def _metrics(fs: FeatureSet, cfg: TrainConfig, result: TrainResult, graph: np.ndarray) -> dict:
    m = {"method": cfg.method, **evaluate_net(result.net, fs, "test")}
    m["summary"] = summary_scores(m)
    m["embed_dim"] = cfg.embed_dim
    m["data"] = {
        "train": int(len(fs.split_indices("train"))),
        "val": int(len(fs.split_indices("val"))),
        "test": int(len(fs.split_indices("test"))),
        "classes": len(fs.hierarchy),
        "skipped": int(len(fs.skipped)),
    }
    m["training"] = {
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped": result.stopped,
        "seconds": result.seconds,
        "graph_active": result.graph_active,
    }
    m["graph"] = graph_stats(graph, cfg.margin)
    m["raw_backbones"] = evaluate_raw(fs, "test")
    m["notes"] = split_notes(fs, training=True)
    return m


def save_run(
    out: Path, fs: FeatureSet, cfg: TrainConfig, result: TrainResult, graph, metrics: dict
) -> HUSEModel:
    info = ModelInfo(
        model=result.net.cfg,
        classes=fs.hierarchy.classes,
        sep=fs.hierarchy.sep,
        image_backbone=fs.config.image_backbone,
        text_backbone=fs.config.text_backbone,
        method=cfg.method,
        image_fit=fs.config.image_fit,
        text_pooling=fs.config.text_pooling,
    )
    model = HUSEModel(result.net, info, tfidf=fs.tfidf_model, graph=graph)
    model.save(out / "model", card=model_card(metrics, asdict(cfg), asdict(fs.config)))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return model


def split_notes(fs: FeatureSet, training: bool = False) -> list[str]:
    """What could not be measured because a split is empty or too small, in words."""
    notes = []
    if training and len(fs.split_indices("val")) < MIN_VAL_ITEMS:
        notes.append(
            f"the validation split has {len(fs.split_indices('val'))} items: no early "
            "stopping on validation scores; the epoch with the lowest training loss was kept"
        )
    if len(fs.split_indices("test")) == 0:
        notes.append(
            "the test split is empty: no test metrics (every class had too few items to "
            "spare some for testing, or the split column names no 'test' row)"
        )
    return notes


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a ``run.json`` that huse wrote."""
    try:
        info = json.loads((Path(path) / "run.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(info, dict) and (
        info.get("format") == RUN_FORMAT or info.get("command") == "fit"
    )


def _is_tmp(p: Path) -> bool:
    """A temporary file of ``huse._io.atomic_path``: ``.NAME.XXXX.tmp``."""
    return p.name.startswith(".") and p.name.endswith(".tmp")


def _within(p: Path, folder: Path) -> bool:
    return p == folder or folder in p.parents


def check_output(
    out: str | Path, inputs: list[str | Path] = (), *, cache_dir: str | Path | None = None
) -> None:
    """Refuse an output folder where writing a run would overwrite an input or a file that
    huse did not write.

    Args:
        out: the run folder to be written.
        inputs: files (the manifest) that must survive the run.
        cache_dir: the feature cache, which may live inside ``out``.

    Raises:
        UnsafeOutputError: ``out`` is a file, holds foreign files, or a name the run writes
            is one of ``inputs``.
    """
    out = Path(out)
    real = out.resolve()
    for inp in map(Path, inputs):
        src = inp.resolve()
        hit = [n for n in RUN_FILES if src == real / n or _same_file(out / n, inp)]
        hit += [f"{d}/" for d in RUN_DIRS if _within(src, real / d)]
        if hit:
            raise UnsafeOutputError(
                f"--out {out} would overwrite the input {inp} (the run writes "
                f"{out / hit[0].rstrip('/')}). Choose another --out folder, or move the "
                "input out of it."
            )
    if out.exists() and not out.is_dir():
        raise UnsafeOutputError(f"--out {out} is a file, not a folder; choose a folder")
    if not out.is_dir() or is_run_folder(out):
        return
    cache = Path(cache_dir).resolve() if cache_dir else None
    foreign = sorted(
        e.name for e in out.iterdir() if not _is_tmp(e) and (cache is None or e.resolve() != cache)
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise UnsafeOutputError(
            f"--out {out} is not empty and is not a huse run folder (no run.json written by "
            f"huse; it holds {shown}). huse never overwrites files it did not write: choose a "
            "new or empty --out folder."
        )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def remove_stale_tmp(out: str | Path) -> list[Path]:
    """Delete what an interrupted write left in a run folder: huse's ``.*.tmp`` files at its
    top level and anywhere under ``model/`` and ``checkpoints/``. A run folder has one
    writer (rank 0 of one fit), so any such file at the start of a fit is dead."""
    out = Path(out)
    found = [*out.glob(".*.tmp")]
    for d in ("model", "checkpoints"):
        found += (out / d).rglob(".*.tmp")
    removed = []
    for p in found:
        if p.is_file() and not p.is_symlink():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def fit(
    manifest: str | Path,
    out: str | Path,
    data_config: DataConfig | None = None,
    train_config: TrainConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    features: FeatureSet | None = None,
) -> dict:
    """Run extract → graph → train → evaluate and write ``out/``; returns metrics.json's dict.

    Raises:
        UnsafeOutputError: ``out`` holds files huse did not write, or would overwrite the
            manifest (checked before anything is read or written).
        DataError: no train split.
        CheckpointError: ``resume`` with a checkpoint of other settings or data (checked
            before anything is written).
    """
    out = Path(out)
    data_config = data_config or DataConfig()
    cfg = train_config or TrainConfig()
    check_output(out, [manifest], cache_dir=data_config.cache_dir)
    fs = (
        features
        if features is not None
        else build_feature_set(manifest, data_config, progress=progress)
    )
    check_splits(fs, warn=False)  # train warns about a small validation split
    ckpt = out / "checkpoints" / "last.pt"
    if resume and (ckpt.exists() or ckpt.with_name("prev.pt").exists()):
        # Refused here, a resume leaves the run folder as it was.
        load_checkpoint(ckpt, cfg, data_fingerprint(fs), rank=0 if is_main() else 1)
    if not is_main():  # under torchrun: the other ranks extract and train, rank 0 writes
        graph, class_emb = graph_for(fs, cfg)
        train(fs, cfg, graph, class_emb, out=out, resume=resume, progress=False)
        teardown()
        return {}
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out)
    run_info = {"format": RUN_FORMAT, "manifest": str(Path(manifest).resolve()), "command": "fit"}
    atomic_write_text(out / "run.json", json.dumps(run_info, indent=2))
    atomic_write_text(out / "train_config.json", json.dumps(asdict(cfg), indent=2))
    atomic_write_text(out / "data_config.json", json.dumps(asdict(fs.config), indent=2))
    write_skipped(fs.skipped, out / "skipped.csv")
    write_skipped(fs.notes, out / "notes.csv")
    with atomic_path(out / "items.parquet") as tmp:
        fs.items.to_parquet(tmp, index=False)
    graph_file = out / "graph.npy"
    graph, class_emb = graph_for(fs, cfg)
    with atomic_path(graph_file) as tmp, open(tmp, "wb") as f:
        np.save(f, graph)
    result = train(fs, cfg, graph, class_emb, out=out, resume=resume, progress=progress)
    teardown()
    metrics = _metrics(fs, cfg, result, graph)
    save_run(out, fs, cfg, result, graph, metrics)
    return metrics


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise RunError(
            f"{path} is missing: {path.parent} is not a complete huse run folder. Give a "
            f"folder written by `huse fit`, or re-run `huse fit` into it ({what})."
        ) from e
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunError(
            f"{path} is damaged ({type(e).__name__}: {e}); re-run `huse fit` to write it "
            f"again ({what})."
        ) from e
    if not isinstance(data, dict):
        raise RunError(f"{path} is not a JSON object; re-run `huse fit` to write it again.")
    return data


def evaluate_run(
    run: str | Path, manifest: str | Path | None = None, progress: bool = True
) -> dict:
    """Re-evaluate a saved run on its manifest's test split (or another manifest's).

    Raises:
        RunError: the run folder, its run.json, data_config.json or model is missing or
            damaged.
    """
    run = Path(run)
    if not run.is_dir():
        raise RunError(
            f"{run} does not exist or is not a folder; give a run folder written by `huse fit`"
        )
    info = _read_json(run / "run.json", "it names the manifest")
    raw_config = _read_json(run / "data_config.json", "it holds the data settings")
    if manifest is None and "manifest" not in info:
        raise RunError(f"{run / 'run.json'} names no manifest; pass one with --manifest")
    model = HUSEModel.load(run / "model")
    try:
        data_config = DataConfig.from_dict(raw_config)
    except (TypeError, ValueError, KeyError) as e:
        raise RunError(
            f"{run / 'data_config.json'} is damaged ({type(e).__name__}: {e}); re-run "
            "`huse fit` to write it again."
        ) from e
    fs = build_feature_set(
        manifest or info["manifest"],
        data_config,
        classes=model.classes,
        tfidf_model=model.tfidf,
        progress=progress,
    )
    m = {"method": model.info.method, **evaluate_net(model.net, fs, "test")}
    m["summary"] = summary_scores(m)
    m["raw_backbones"] = evaluate_raw(fs, "test")
    m["data"] = {
        "test": int(len(fs.split_indices("test"))),
        "classes": len(fs.hierarchy),
        "skipped": int(len(fs.skipped)),
    }
    m["notes"] = split_notes(fs)
    return m
