"""From a manifest to a feature set: valid items, split, hierarchy, cached backbone features
and the sparse TF-IDF matrix. Everything a model needs, nothing it must recompute."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from huse._dist import all_reduce_sum
from huse._io import atomic_path, atomic_write_text
from huse.config import DataConfig
from huse.data.hierarchy import Hierarchy
from huse.data.manifest import Manifest, Skipped, read_manifest, records_frame
from huse.data.split import stratified_split
from huse.data.text import TfidfFeatures
from huse.errors import DataError, HuseError, RunError
from huse.features import (
    ExtractStats,
    FeatureStore,
    default_cache_dir,
    extract_images,
    extract_texts,
    hash_image_files,
)

# What ``FeatureSet.save`` writes and ``load`` needs (notes.csv is optional: older sets).
FEATURE_FILES = (
    "items.parquet",
    "image.npy",
    "text.npy",
    "tfidf.npz",
    "tfidf.json",
    "classes.json",
    "skipped.csv",
    "data_config.json",
    "extract_stats.json",
)


class NoUsableRowsError(DataError):
    """No row of a manifest survived reading and checking; ``skipped`` says why.

    The caller may write ``skipped`` (a row, id, column, reason frame) as skipped.csv.
    """

    def __init__(self, message: str, skipped: pd.DataFrame) -> None:
        super().__init__(message)
        self.skipped = skipped


def _require_rows(items: pd.DataFrame, skipped: list[Skipped], path: Path) -> None:
    """Stop before any backbone or TF-IDF work when no row is left, saying why."""
    if len(items):
        return
    frame = records_frame(sorted(skipped, key=lambda s: s.row))
    if not len(frame):
        raise NoUsableRowsError(
            f"{path}: the manifest has no data rows; add rows of image, text and classes "
            "below the header",
            frame,
        )
    reasons = frame["reason"].str.split(":").str[0].value_counts()
    top = ", ".join(f"{r!r} x{c}" for r, c in reasons.head(3).items())
    first = frame.iloc[0]
    where = f"row {first['row']}" + (f", column {first['column']!r}" if first["column"] else "")
    raise NoUsableRowsError(
        f"{path}: no usable row: all {len(frame)} rows were skipped (top reasons: {top}; "
        f"first: {where}: {first['reason']}). Fix those rows (each is listed in skipped.csv "
        "in the output folder) or point --image-col/--text-col/--classes-col at the right "
        "columns",
        frame,
    )


@dataclass
class FeatureSet:
    """Valid items with their features, split and labels.

    ``items`` columns: row, id, image, text, classes, split, label. ``skipped`` lists the
    rows left out and ``notes`` the kept rows that were changed (a text cut to
    ``ManifestConfig.max_text_chars``), both as (row, id, column, reason) frames.
    """

    items: pd.DataFrame
    image: np.ndarray
    text: np.ndarray
    tfidf: sp.csr_matrix
    tfidf_model: TfidfFeatures
    hierarchy: Hierarchy
    skipped: pd.DataFrame
    config: DataConfig
    stats: dict = field(default_factory=dict)
    notes: pd.DataFrame = field(default_factory=lambda: records_frame([]))

    def __len__(self) -> int:
        return len(self.items)

    def split_indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.items["split"].to_numpy() == split)

    @property
    def labels(self) -> np.ndarray:
        return self.items["label"].to_numpy(dtype=np.int64)

    def save(self, out: str | Path) -> None:
        """Write the set to a folder, each file atomically."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "items.parquet") as tmp:
            self.items.to_parquet(tmp, index=False)
        for name, arr in (("image.npy", self.image), ("text.npy", self.text)):
            with atomic_path(out / name) as tmp, open(tmp, "wb") as f:
                np.save(f, arr)
        with atomic_path(out / "tfidf.npz") as tmp, open(tmp, "wb") as f:
            sp.save_npz(f, self.tfidf)
        self.tfidf_model.save(out / "tfidf.json")
        atomic_write_text(
            out / "classes.json",
            json.dumps({"sep": self.hierarchy.sep, "classes": self.hierarchy.classes}, indent=1),
        )
        write_skipped(self.skipped, out / "skipped.csv")
        write_skipped(self.notes, out / "notes.csv")
        atomic_write_text(out / "data_config.json", json.dumps(asdict(self.config), indent=2))
        atomic_write_text(out / "extract_stats.json", json.dumps(self.stats, indent=2))

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> FeatureSet:
        """Read a folder written by ``save``.

        Args:
            path: the folder.
            mmap: open the image and text features as read-only memory maps: pages load
                when rows are read, and the ranks of a torchrun job share one copy in the
                page cache. False reads them into memory.
        """
        path = Path(path)
        if not path.is_dir():
            raise RunError(
                f"{path}: no such feature folder; write one with `huse extract MANIFEST "
                f"--out {path}`"
            )
        missing = [n for n in FEATURE_FILES if not (path / n).is_file()]
        if missing:
            raise RunError(
                f"{path}: not a complete feature folder (missing {', '.join(missing)}); "
                f"rerun `huse extract MANIFEST --out {path}` (cached features are reused)"
            )
        try:
            return cls._load(path, mmap)
        except (OSError, ValueError, KeyError, TypeError) as e:
            if isinstance(e, HuseError):
                raise
            raise RunError(
                f"{path}: a feature file is damaged ({type(e).__name__}: {str(e)[:120]}); "
                f"rerun `huse extract MANIFEST --out {path}` (cached features are reused)"
            ) from None

    @classmethod
    def _load(cls, path: Path, mmap: bool) -> FeatureSet:
        classes = json.loads((path / "classes.json").read_text())
        mode = "r" if mmap else None
        notes = path / "notes.csv"  # absent in sets written before notes existed
        return cls(
            items=pd.read_parquet(path / "items.parquet"),
            image=np.load(path / "image.npy", mmap_mode=mode),
            text=np.load(path / "text.npy", mmap_mode=mode),
            tfidf=sp.load_npz(path / "tfidf.npz").tocsr(),
            tfidf_model=TfidfFeatures.load(path / "tfidf.json"),
            hierarchy=Hierarchy(classes["classes"], sep=classes["sep"]),
            skipped=pd.read_csv(path / "skipped.csv", dtype=str, keep_default_na=False),
            config=DataConfig.from_dict(json.loads((path / "data_config.json").read_text())),
            notes=(
                pd.read_csv(notes, dtype=str, keep_default_na=False)
                if notes.exists()
                else records_frame([])
            ),
        )


def write_skipped(skipped: pd.DataFrame, path: str | Path) -> None:
    """Write a skipped (or notes) frame as CSV, atomically."""
    with atomic_path(path) as tmp:
        skipped.to_csv(tmp, index=False)


def build_feature_set(
    manifest: str | Path | Manifest,
    config: DataConfig | None = None,
    *,
    classes: list[str] | None = None,
    tfidf_model: TfidfFeatures | None = None,
    progress: bool = True,
) -> FeatureSet:
    """Read a manifest, split it, run (or reuse) the backbones and build the TF-IDF matrix.

    Args:
        manifest: a manifest path or an already read ``Manifest``.
        config: the data configuration.
        classes: a fixed class list (a trained model's): rows of other classes are skipped
            as "unknown class". None: the classes are read from the manifest.
        tfidf_model: a fitted vectoriser (a trained model's). None: fit one on train rows.
        progress: show progress bars.

    Raises:
        NoUsableRowsError: no row is left to extract (before any backbone is loaded) or
            none survived image decoding (before TF-IDF); the message gives the top
            reasons and the error carries the skipped rows.
    """
    from huse.backbones import get_backbone

    config = config or DataConfig()
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest, config.manifest)
    items = manifest.items.copy()
    skipped: list[Skipped] = list(manifest.skipped)

    def drop(mask: np.ndarray, column: str, reasons) -> None:
        nonlocal items
        bad = items[mask]
        for (_, r), why in zip(bad.iterrows(), reasons):
            skipped.append(Skipped(int(r["row"]), str(r["id"]), column, why))
        items = items[~mask].reset_index(drop=True)

    if classes is not None:
        known = set(classes)
        mask = ~items["classes"].isin(known).to_numpy()
        drop(
            mask,
            config.manifest.classes_col,
            ["unknown class: " + c for c in items["classes"][mask]],
        )
    _require_rows(items, skipped, Path(manifest.path))

    cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    stats = ExtractStats()
    image_bb = get_backbone(config.image_backbone, "image", **config.image_options())
    text_bb = get_backbone(config.text_backbone, "text", **config.text_options())
    image_store = FeatureStore(cache / "features", image_bb.version)
    paths = items["image"].tolist()
    keys, key_errors = hash_image_files(
        paths, image_store.version, max_file_bytes=config.max_image_file_bytes
    )
    image, errors = extract_images(
        paths,
        image_bb,
        image_store,
        batch_size=config.image_batch_size,
        num_workers=config.num_workers,
        progress=progress,
        stats=stats,
        keys=keys,
        key_errors=key_errors,
    )
    if errors:
        mask = np.zeros(len(items), dtype=bool)
        mask[list(errors)] = True
        reasons = [errors[i] for i in sorted(errors)]
        image = image[~mask]
        keys = [k for k, bad in zip(keys, mask) if not bad]
        drop(mask, config.manifest.image_col, reasons)
        _require_rows(items, skipped, Path(manifest.path))
    text_store = FeatureStore(cache / "features", text_bb.version)
    text = extract_texts(
        items["text"].tolist(),
        text_bb,
        text_store,
        batch_size=config.text_batch_size,
        progress=progress,
        stats=stats,
    )
    if classes is None:
        hierarchy = Hierarchy.from_paths(items["classes"], sep=config.manifest.sep)
    else:
        hierarchy = Hierarchy(classes, sep=config.manifest.sep)
    items["label"] = items["classes"].map(hierarchy.index).astype(np.int64)
    split_report = None
    if "split" not in items.columns:
        splits, split_report = stratified_split(
            items["id"].tolist(), items["classes"].tolist(), config.split, groups=keys
        )
        items["split"] = splits
    if tfidf_model is None:
        t0 = time.perf_counter()
        train_texts = items.loc[items["split"] == "train", "text"].tolist()
        tfidf_model = TfidfFeatures(config.tfidf_max_features, config.tfidf_min_df).fit(
            train_texts or items["text"].tolist()
        )
        stats_tfidf = time.perf_counter() - t0
    else:
        stats_tfidf = 0.0
    tfidf = tfidf_model.transform(items["text"].tolist())
    skipped_df = records_frame(sorted(skipped, key=lambda s: s.row))
    kept = set(items["row"].tolist())
    notes_df = records_frame([n for n in manifest.notes if n.row in kept])
    # Under torchrun each rank counted its own share of the forward passes.
    stats.images_computed, stats.texts_computed = all_reduce_sum(
        [stats.images_computed, stats.texts_computed]
    )
    info = asdict(stats) | {
        "manifest": str(Path(manifest.path).resolve()),
        "seconds_tfidf": stats_tfidf,
        "items": len(items),
        "skipped": len(skipped_df),
        "texts_truncated": int(notes_df["reason"].str.startswith("text truncated").sum()),
        "splits": items["split"].value_counts().to_dict(),
        "train_only_classes": split_report.train_only_classes if split_report else [],
    }
    return FeatureSet(
        items=items,
        image=image,
        text=text,
        tfidf=tfidf,
        tfidf_model=tfidf_model,
        hierarchy=hierarchy,
        skipped=skipped_df,
        config=config,
        stats=info,
        notes=notes_df,
    )
