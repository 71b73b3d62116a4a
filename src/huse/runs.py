"""The run folder and the library calls that make and use one: fit, evaluate, index.

``RunDir`` is the only code that knows a run folder's files::

    RUN/
      run.json            format marker, the manifest, the command that wrote it
      train_config.json   the resolved training settings
      data_config.json    the resolved data settings
      items.parquet       the items trained on, with their splits
      skipped.csv         rows left out, with the reason
      notes.csv           rows kept with a change (a text cut short)
      graph.npy           the semantic graph of the classes
      train_log.csv       one row per epoch
      metrics.json        the test metrics of ``fit``
      eval_metrics.json   the metrics of ``huse eval``
      report.html         the report page
      model/              the model directory (``huse.model``)
      checkpoints/        ``last.pt`` and ``prev.pt`` (``huse.checkpoint``)
      index/              the catalogue index (``huse.index``)

A run folder is huse's own: ``fit`` refuses an ``out`` that holds files huse did not
write, or where a file it writes is the manifest, and checks a ``resume`` against the
checkpoint before it writes anything.

``fit_features`` is the same pipeline in memory (graph → train → evaluate on a feature
set), for the benchmarks that train many configurations on one set of features.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from huse._dist import is_main, teardown
from huse._io import atomic_path, atomic_write_text
from huse.card import model_card
from huse.checkpoint import data_fingerprint, load_checkpoint
from huse.config import IndexConfig
from huse.data.manifest import Manifest
from huse.dataset import (
    DataConfig,
    FeatureSet,
    NoUsableRowsError,
    build_feature_set,
    write_skipped,
)
from huse.errors import RunError, UnsafeOutputError
from huse.evaluate import evaluate_net, evaluate_raw, summary_scores
from huse.graph import build_graph, class_name_text
from huse.index import (
    MODALITIES,
    CatalogueIndex,
    build_index,
    check_factory,
    check_output_dir,
    diff_items,
    load_items,
    model_fingerprint,
    update_folder,
    writer_lock,
)
from huse.methods import TrainConfig
from huse.model import HUSEModel, HUSENet, ModelInfo
from huse.train import MIN_VAL_ITEMS, TrainResult, check_splits, train

RUN_FORMAT = "huse-run/1"


def _is_tmp(p: Path) -> bool:
    """A temporary file of ``huse._io.atomic_path``: ``.NAME.XXXX.tmp``."""
    return p.name.startswith(".") and p.name.endswith(".tmp")


def _within(p: Path, folder: Path) -> bool:
    return p == folder or folder in p.parents


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class RunDir:
    """A run folder: its file names, their formats and the rules for writing into it.

    Args:
        path: the run folder (it need not exist yet).
    """

    # Every file and folder a run folder may hold, written by fit, eval, index or report.
    FILES = (
        "run.json", "train_config.json", "data_config.json", "skipped.csv", "notes.csv",
        "items.parquet", "graph.npy", "metrics.json", "train_log.csv", "report.html",
        "eval_metrics.json",
    )  # fmt: skip
    DIRS = ("model", "checkpoints", "tensorboard")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- the layout ----------------------------------------------------------------------
    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def index_dir(self) -> Path:
        return self.path / "index"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def eval_metrics_file(self) -> Path:
        return self.path / "eval_metrics.json"

    @property
    def skipped_file(self) -> Path:
        return self.path / "skipped.csv"

    @property
    def report_file(self) -> Path:
        return self.path / "report.html"

    # -- ownership -----------------------------------------------------------------------
    def is_run(self) -> bool:
        """Whether the folder holds a ``run.json`` that huse wrote."""
        try:
            info = json.loads((self.path / "run.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return False
        # Runs written before the format marker said only "command": "fit".
        return isinstance(info, dict) and (
            info.get("format") == RUN_FORMAT or info.get("command") == "fit"
        )

    def check_output(
        self, inputs: list[str | Path] = (), *, cache_dir: str | Path | None = None
    ) -> None:
        """Refuse to write a run here if it would overwrite an input or a file that huse
        did not write.

        Args:
            inputs: files (the manifest) that must survive the run.
            cache_dir: the feature cache, which may live inside the run folder.

        Raises:
            UnsafeOutputError: the path is a file, holds foreign files, or a name the run
                writes is one of ``inputs``.
        """
        out = self.path
        real = out.resolve()
        for inp in map(Path, inputs):
            src = inp.resolve()
            hit = [n for n in self.FILES if src == real / n or _same_file(out / n, inp)]
            hit += [f"{d}/" for d in self.DIRS if _within(src, real / d)]
            if hit:
                raise UnsafeOutputError(
                    f"--out {out} would overwrite the input {inp} (the run writes "
                    f"{out / hit[0].rstrip('/')}). Choose another --out folder, or move the "
                    "input out of it."
                )
        if out.exists() and not out.is_dir():
            raise UnsafeOutputError(f"--out {out} is a file, not a folder; choose a folder")
        if not out.is_dir() or self.is_run():
            return
        cache = Path(cache_dir).resolve() if cache_dir else None
        foreign = sorted(
            e.name
            for e in out.iterdir()
            if not _is_tmp(e) and (cache is None or e.resolve() != cache)
        )
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise UnsafeOutputError(
                f"--out {out} is not empty and is not a huse run folder (no run.json written "
                f"by huse; it holds {shown}). huse never overwrites files it did not write: "
                "choose a new or empty --out folder."
            )

    def remove_stale_tmp(self) -> list[Path]:
        """Delete what an interrupted write left: huse's ``.*.tmp`` files at the top level
        and anywhere under ``model/`` and ``checkpoints/``. A run folder has one writer
        (rank 0 of one fit), so any such file at the start of a fit is dead."""
        found = [*self.path.glob(".*.tmp")]
        for d in (self.model_dir, self.checkpoint_dir):
            found += d.rglob(".*.tmp")
        removed = []
        for p in found:
            if p.is_file() and not p.is_symlink():
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
        return removed

    # -- writing -------------------------------------------------------------------------
    def write_inputs(
        self, manifest: str | Path, command: str, fs: FeatureSet, train_config: TrainConfig
    ) -> None:
        """``run.json``, both configs and the items as read (kept, skipped, noted)."""
        info = {"format": RUN_FORMAT, "manifest": str(Path(manifest).resolve()), "command": command}
        atomic_write_text(self.path / "run.json", json.dumps(info, indent=2))
        atomic_write_text(
            self.path / "train_config.json", json.dumps(asdict(train_config), indent=2)
        )
        atomic_write_text(self.path / "data_config.json", json.dumps(asdict(fs.config), indent=2))
        write_skipped(fs.skipped, self.skipped_file)
        write_skipped(fs.notes, self.path / "notes.csv")
        with atomic_path(self.path / "items.parquet") as tmp:
            fs.items.to_parquet(tmp, index=False)

    def write_graph(self, graph: np.ndarray) -> None:
        with atomic_path(self.path / "graph.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, graph)

    def save_model(
        self, fs: FeatureSet, cfg: TrainConfig, result: TrainResult, graph, metrics: dict
    ) -> HUSEModel:
        """``model/`` (weights, config, card) and ``metrics.json``."""
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
        card = model_card(
            metrics, asdict(cfg), asdict(fs.config), classes=fs.hierarchy.classes,
            sep=fs.hierarchy.sep, manifest=self.info()["manifest"],
        )  # fmt: skip
        model.save(self.model_dir, card=card)
        atomic_write_text(self.metrics_file, json.dumps(metrics, indent=2))
        return model

    def write_eval_metrics(self, metrics: dict, out: str | Path | None = None) -> Path:
        """Write ``huse eval``'s metrics to ``out`` (default ``eval_metrics.json``)."""
        target = Path(out) if out is not None else self.eval_metrics_file
        atomic_write_text(target, json.dumps(metrics, indent=2))
        return target

    # -- reading -------------------------------------------------------------------------
    def _read_json(self, name: str, what: str) -> dict:
        path = self.path / name
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

    def require_dir(self) -> None:
        """``RunError`` unless the run folder exists."""
        if not self.path.is_dir():
            raise RunError(
                f"{self.path} does not exist or is not a folder; give a run folder written "
                "by `huse fit`"
            )

    def info(self) -> dict:
        """``run.json``; ``RunError`` when missing or damaged."""
        return self._read_json("run.json", "it names the manifest")

    def manifest(self) -> str:
        """The manifest ``run.json`` names; ``RunError`` (pass one instead) when none."""
        file = self.path / "run.json"
        manifest = None
        if file.is_file():
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise RunError(
                    f"{file} is unreadable ({type(e).__name__}: {e}); pass --manifest"
                ) from None
            if not isinstance(data, dict):
                raise RunError(f"{file} is not a JSON object; pass --manifest")
            manifest = data.get("manifest")
        if not isinstance(manifest, str) or not manifest:
            raise RunError(f"{self.path} has no run.json naming its manifest; pass --manifest")
        return manifest

    def data_config(self, *, required: bool = True) -> DataConfig | None:
        """``data_config.json`` (None when absent and not ``required``)."""
        if not required and not (self.path / "data_config.json").exists():
            return None
        raw = self._read_json("data_config.json", "it holds the data settings")
        try:
            return DataConfig.from_dict(raw)
        except (TypeError, ValueError, KeyError) as e:
            raise RunError(
                f"{self.path / 'data_config.json'} is damaged ({type(e).__name__}: {e}); "
                "re-run `huse fit` to write it again."
            ) from e

    def train_config(self) -> dict:
        """``train_config.json`` as written ({} when the run has none)."""
        file = self.path / "train_config.json"
        return json.loads(file.read_text()) if file.is_file() else {}

    def metrics(self) -> dict | None:
        """``metrics.json`` (from ``fit``), else ``eval_metrics.json``, else None."""
        for file in (self.metrics_file, self.eval_metrics_file):
            if file.is_file():
                return json.loads(file.read_text())
        return None

    def log(self) -> pd.DataFrame | None:
        """``train_log.csv``, or None when the run has none (e.g. an evaluated-only run)."""
        file = self.path / "train_log.csv"
        if not file.is_file():
            return None
        log = pd.read_csv(file)
        return log if len(log) else None

    def graph(self) -> np.ndarray | None:
        """``graph.npy``, or None when the run has none."""
        file = self.path / "graph.npy"
        return np.load(file) if file.is_file() else None

    def missing(self) -> str | None:
        """The first of run.json, data_config.json and model/ the folder lacks (None: all
        there): what evaluating or reporting the run needs."""
        for name in ("run.json", "data_config.json", "model"):
            if not (self.path / name).exists():
                return name
        return None

    def require_model_dir(self) -> Path:
        """``model/``, or the folder itself when it is a bare model folder; ``RunError``
        when neither holds a model."""
        run = self.path
        if not run.exists():
            raise RunError(
                f"{run}: no such run folder; train one with `huse fit MANIFEST --out {run}`"
            )
        if not run.is_dir():
            raise RunError(f"{run} is a file, not a run folder from `huse fit`")
        model_dir = self.model_dir if (self.model_dir / "config.json").exists() else run
        for name in ("config.json", "model.safetensors"):
            if not (model_dir / name).is_file():
                raise RunError(
                    f"{run}: not a huse model directory (no {name}); pass a run folder from "
                    "`huse fit` or its model/ folder"
                )
        return model_dir


def find_index(path: str | Path) -> Path:
    """The index folder ``path``, or the ``index/`` of the run folder ``path``."""
    path = Path(path)
    inner = RunDir(path).index_dir
    if not (path / "index.json").exists() and (inner / "index.json").exists():
        return inner
    return path


# -- graph → train → evaluate ----------------------------------------------------------------
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
    """How many class pairs sit under the graph loss margin, and the distances' range."""
    off = graph[~np.eye(len(graph), dtype=bool)]
    if off.size == 0:
        return {"pairs_under_margin": None, "mean_distance": None}
    return {
        "pairs_under_margin": float((off < margin).mean()),
        "mean_distance": float(off.mean()),
        "min_distance": float(off.min()),
        "max_distance": float(off.max()),
    }


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


@dataclass
class FitResult:
    """What ``fit_features`` trained and measured.

    Args:
        net: the trained towers.
        metrics: ``evaluate_net``'s metrics on the split asked for (None: not evaluated).
        train: the training loop's result (epochs, stop reason, seconds, history).
        graph: the semantic graph trained with.
        class_emb: the class-name embeddings (HUSE-P's targets).
    """

    net: HUSENet
    metrics: dict | None
    train: TrainResult
    graph: np.ndarray
    class_emb: np.ndarray | None


def fit_features(
    fs: FeatureSet,
    cfg: TrainConfig,
    split: str | None = "test",
    *,
    graphs: dict | None = None,
    progress: bool = False,
) -> FitResult:
    """Graph → train → evaluate on a feature set in memory; nothing is written.

    Args:
        fs: the feature set.
        cfg: the training settings.
        split: the split to evaluate on; None: train only.
        graphs: a dict the graphs are cached in across calls on the same ``fs`` (the
            graph embeds the class names with the text backbone).
        progress: show the training progress bar.
    """
    key = (cfg.graph_source, cfg.graph_tree_weight)
    if graphs is None or key not in graphs:
        found = graph_for(fs, cfg)
        if graphs is not None:
            graphs[key] = found
    graph, class_emb = graphs[key] if graphs is not None else found
    result = train(fs, cfg, graph, class_emb, progress=progress)
    metrics = evaluate_net(result.net, fs, split) if split is not None else None
    return FitResult(result.net, metrics, result, graph, class_emb)


def _fit_metrics(fs: FeatureSet, cfg: TrainConfig, result: TrainResult, graph: np.ndarray) -> dict:
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
        "instance_best_epoch": result.instance_best_epoch,
        "stopped": result.stopped,
        "seconds": result.seconds,
        "graph_active": result.graph_active,
    }
    m["graph"] = graph_stats(graph, cfg.margin)
    m["raw_backbones"] = evaluate_raw(fs, "test")
    m["notes"] = split_notes(fs, training=True)
    return m


def fit(
    manifest: str | Path,
    out: str | Path,
    data_config: DataConfig | None = None,
    train_config: TrainConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    features: FeatureSet | None = None,
    command: str = "fit",
) -> dict:
    """Run extract → graph → train → evaluate and write the run folder ``out``.

    Args:
        manifest: the manifest (read unless ``features`` is given; named in run.json).
        out: the run folder.
        data_config: the data settings (default ``DataConfig()``).
        train_config: the training settings (default ``TrainConfig()``).
        resume: continue from ``out/checkpoints/last.pt`` when it exists.
        progress: show progress bars.
        features: a feature set already built from ``manifest``.
        command: the command recorded in run.json (``fit``, ``train``).

    Returns:
        metrics.json's dict ({} on a torchrun rank other than 0).

    Raises:
        UnsafeOutputError: ``out`` holds files huse did not write, or would overwrite the
            manifest (checked before anything is read or written).
        DataError: no train split.
        CheckpointError: ``resume`` with a checkpoint of other settings or data (checked
            before anything is written).
    """
    run = RunDir(out)
    data_config = data_config or DataConfig()
    cfg = train_config or TrainConfig()
    run.check_output([manifest], cache_dir=data_config.cache_dir)
    fs = (
        features
        if features is not None
        else build_feature_set(manifest, data_config, progress=progress)
    )
    check_splits(fs, warn=False)  # train warns about a small validation split
    ckpt = run.checkpoint_dir / "last.pt"
    if resume and (ckpt.exists() or ckpt.with_name("prev.pt").exists()):
        # Refused here, a resume leaves the run folder as it was.
        load_checkpoint(ckpt, cfg, data_fingerprint(fs), rank=0 if is_main() else 1)
    if not is_main():  # under torchrun: the other ranks extract and train, rank 0 writes
        graph, class_emb = graph_for(fs, cfg)
        train(fs, cfg, graph, class_emb, out=run.path, resume=resume, progress=False)
        teardown()
        return {}
    run.path.mkdir(parents=True, exist_ok=True)
    run.remove_stale_tmp()
    run.write_inputs(manifest, command, fs, cfg)
    graph, class_emb = graph_for(fs, cfg)
    run.write_graph(graph)
    result = train(fs, cfg, graph, class_emb, out=run.path, resume=resume, progress=progress)
    teardown()
    metrics = _fit_metrics(fs, cfg, result, graph)
    run.save_model(fs, cfg, result, graph, metrics)
    return metrics


def evaluate_run(
    run: str | Path, manifest: str | Path | None = None, progress: bool = True
) -> dict:
    """Re-evaluate a saved run on its manifest's test split (or another manifest's).

    Raises:
        RunError: the run folder, its run.json, data_config.json or model is missing or
            damaged.
    """
    rd = RunDir(run)
    rd.require_dir()
    info = rd.info()
    data_config = rd.data_config()
    if manifest is None and "manifest" not in info:
        raise RunError(f"{rd.path / 'run.json'} names no manifest; pass one with --manifest")
    model = HUSEModel.load(rd.model_dir)
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


# -- the catalogue index -----------------------------------------------------------------------
CONTENT_VERSION = "huse-index-content/1"  # what an item's ``content`` digest is made of


def content_digests(items: pd.DataFrame, max_file_bytes: int) -> list[str]:
    """Per item, a digest of its image file's bytes, its text and its class path: what
    ``index_run(update=True)`` compares a manifest against. An unreadable image gives a
    digest of its path (the item is skipped when embedded anyway)."""
    import hashlib

    from huse.features import hash_image_files

    keys, _ = hash_image_files(
        items["image"].astype(str).tolist(), CONTENT_VERSION, max_file_bytes=max_file_bytes
    )
    out = []
    for key, path, text, cls in zip(
        keys, items["image"].astype(str), items["text"].astype(str), items["classes"].astype(str)
    ):
        h = hashlib.sha256(CONTENT_VERSION.encode())
        for part in (key or f"unreadable:{path}", text, cls):
            h.update(b"\0" + part.encode("utf-8", "surrogatepass"))
        out.append(h.hexdigest())
    return out


def embed_catalogue(
    model: HUSEModel,
    manifest: str | Path | Manifest,
    data_config: DataConfig | None = None,
    *,
    progress: bool = True,
    batch_size: int = 4096,
) -> tuple[pd.DataFrame, dict[str, np.ndarray], pd.DataFrame]:
    """Embed every valid item of a manifest with a trained model.

    Backbone features come from the content-keyed cache (computed once per image and
    text); only the towers run here. Every valid item is kept, also those of classes the
    model never saw: a catalogue is searched by its embeddings, not its labels.

    Returns:
        ``(items, {"image": (N, D), "text": (N, D)}, skipped rows)``; ``items`` has a
        ``content`` column (``content_digests``).
    """
    from tqdm.auto import tqdm

    if data_config is None:
        data_config = DataConfig(
            image_backbone=model.info.image_backbone, text_backbone=model.info.text_backbone
        )
    fs = build_feature_set(
        manifest, data_config, classes=None, tfidf_model=model.tfidf, progress=progress
    )
    n = len(fs)
    out = {m: np.zeros((n, model.info.model.embed_dim), np.float32) for m in MODALITIES}
    tfidf = fs.tfidf if model.tfidf is not None else None
    with tqdm(total=2 * n, desc="embedding", unit="vec", disable=not progress) as bar:
        for s in range(0, n, batch_size):
            e = slice(s, s + batch_size)
            out["image"][e] = model.embed_image_features(fs.image[e])
            bar.update(len(fs.image[e]))
            out["text"][e] = model.embed_text_features(
                fs.text[e], tfidf[e] if tfidf is not None else None
            )
            bar.update(len(fs.text[e]))
    items = fs.items.copy()
    items["content"] = content_digests(items, data_config.max_image_file_bytes)
    return items, out, fs.skipped


def index_run(
    run: str | Path,
    manifest: str | Path | None = None,
    config: IndexConfig | None = None,
    *,
    out: str | Path | None = None,
    progress: bool = True,
    update: bool = False,
    device: str | None = None,
) -> tuple[CatalogueIndex, Path]:
    """Embed a run's catalogue (its manifest, or another) and write ``RUN/index``.

    Args:
        run: a run folder from ``huse fit`` (or a bare model folder with ``manifest``).
        manifest: the catalogue; None: the manifest the run was trained on.
        config: index type (``keep_missing`` and ``retrain`` for an update).
        out: where to write the index folder (default ``RUN/index``).
        progress: show progress bars.
        update: bring the existing index up to date with ``manifest`` instead of building
            it anew (see ``update_index``); without an index there, build one.
        device: torch device of the towers and backbones (None: a CUDA GPU when present).

    Returns:
        The index and the folder it was written to. After an update, ``index.info
        ["update"]`` holds the added, changed, removed and unchanged counts and warnings.
    """
    rd = RunDir(run)
    config = config or IndexConfig()
    model_dir = rd.require_model_dir()
    target = Path(out) if out is not None else rd.index_dir
    # Every check that needs no embedding comes first: a bad --out or factory string is
    # reported in a second, not after the whole catalogue was embedded.
    check_output_dir(target)
    if manifest is None:
        manifest = rd.manifest()
    data_config = rd.data_config(required=False)
    model = HUSEModel.load(model_dir, device=device)
    check_factory(config.factory, model.info.model.embed_dim, config.search_params)
    # One writer from the read of the old index to the swap: a second `huse index` on
    # the same folder stops at once instead of embedding, then losing one of the updates.
    with writer_lock(target):
        if update and (target / "index.json").exists():
            return update_index(model, model_dir, target, manifest, data_config, config, progress)
        index = _build_full(model, model_dir, manifest, data_config, config, progress)
        if update:
            n = len(index)
            index.info["update"] = {"added": n, "changed": 0, "removed": 0, "unchanged": 0}
            index.info["update"] |= {"dropped": 0, "warnings": [], "rebuilt": True}
        index.save(target)
    if update:
        index.info["update"]["written"] = True
    return index, target


def _build_full(
    model: HUSEModel,
    model_dir: Path,
    manifest: str | Path,
    data_config: DataConfig | None,
    config: IndexConfig,
    progress: bool,
) -> CatalogueIndex:
    """Embed every item of ``manifest`` and build the index (not written)."""
    t0 = time.perf_counter()
    items, vectors, skipped = embed_catalogue(model, manifest, data_config, progress=progress)
    seconds_embed = time.perf_counter() - t0
    info = {
        "model": {
            "path": str(model_dir.resolve()),
            "sha256": model_fingerprint(model_dir),
            "method": model.info.method,
            "sep": model.info.sep,
        },
        "manifest": str(Path(manifest).resolve()),
        "skipped": int(len(skipped)),
        "seconds_embed": round(seconds_embed, 3),
    }
    return build_index(vectors, items, config, info)


def update_index(
    model: HUSEModel,
    model_dir: Path,
    target: Path,
    manifest: str | Path,
    data_config: DataConfig | None,
    config: IndexConfig,
    progress: bool = True,
) -> tuple[CatalogueIndex, Path]:
    """Bring the index at ``target`` up to date with ``manifest``, embedding only new and
    changed items.

    Items are matched by id; an item is changed when its content digest (image bytes,
    text, class path) differs. New items are added, changed ones replaced, and items no
    longer in the manifest removed (kept with ``config.keep_missing``). The FAISS indexes
    are updated in place (no retraining; ``config.retrain`` rebuilds them from all the
    items' vectors). The new state is written as a whole new folder swapped in at once,
    so a kill leaves the old index usable and a rerun finishes the update.
    """
    from dataclasses import replace

    from huse.data.manifest import read_manifest

    t0 = time.perf_counter()
    # The two columns a comparison needs: the item table is most of an update's reading.
    old_items, old_info = load_items(target, ["id", "content"])
    sha = model_fingerprint(model_dir)
    if old_info.get("model", {}).get("sha256") not in (None, sha):
        raise RunError(
            f"{target} was built with another model (the weights changed since); an update "
            "would mix two embedding spaces: rebuild it with `huse index RUN` (no --update)"
        )
    dc = data_config or DataConfig(
        image_backbone=model.info.image_backbone, text_backbone=model.info.text_backbone
    )
    man = read_manifest(manifest, dc.manifest)
    digests = content_digests(man.items, dc.max_image_file_bytes)
    fresh, replaced, replaced_rows, missing = diff_items(old_items, man.items["id"], digests)
    unchanged = len(man.items) - len(fresh) - len(replaced)
    remove = replaced_rows if config.keep_missing else np.concatenate([replaced_rows, missing])
    todo = np.sort(np.concatenate([fresh, replaced]))
    skipped = man.skipped
    new_items = old_items.iloc[:0].copy()
    vectors = {m: np.zeros((0, old_info["dim"]), np.float32) for m in old_info["modalities"]}
    n_skipped = len(skipped)
    if len(todo) and not config.retrain:
        sub = replace(man, items=man.items.iloc[todo].reset_index(drop=True), skipped=[])
        try:
            new_items, vectors, emb_skipped = embed_catalogue(model, sub, dc, progress=progress)
        except NoUsableRowsError as e:  # every new or changed image unreadable: all dropped
            emb_skipped = e.skipped
        n_skipped += len(emb_skipped)
    built = None
    if config.retrain:
        # Trained anew on every item's vectors: all of them embedded again (the towers
        # only: the backbone features of unchanged items come from the cache).
        requested = old_info.get("requested", config.factory)
        if config.factory == IndexConfig().factory:
            config = replace(config, factory=requested)
        built = _build_full(model, model_dir, manifest, data_config, config, progress)
        new_items = built.items
    # Which manifest items made it into the index (one lookup for all of them).
    landed = man.items["id"].astype(str).isin(set(new_items["id"].astype(str))).to_numpy()
    counts = {
        "added": int(landed[fresh].sum()),
        "changed": int(landed[replaced].sum()),
        "removed": len(missing) if not config.keep_missing else 0,
        "unchanged": unchanged,
        # A changed item whose new image cannot be read is dropped, as a fresh build would.
        "dropped": int(len(todo) - landed[todo].sum()),
    }
    if not len(todo) and not len(remove) and not config.retrain:
        old = CatalogueIndex({}, old_items, old_info)
        old.info["update"] = counts | {"warnings": [], "rebuilt": False, "written": False}
        return old, target
    fields = {
        "manifest": str(Path(manifest).resolve()),
        "skipped": int(n_skipped),
    }
    if built is not None:
        index = built
        index.save(target)
        warnings_: list[str] = []
    else:
        remove_rows = np.asarray(remove, np.int64)
        index, warnings_ = update_folder(
            target, remove_rows, new_items, vectors, config, fields, current=(old_items, old_info)
        )
    index.info["update"] = counts | {
        "warnings": warnings_,
        "rebuilt": bool(config.retrain),
        "written": True,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return index, target
