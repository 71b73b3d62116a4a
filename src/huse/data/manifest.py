"""Reading and validating a manifest: CSV, JSONL or Parquet rows of (image, text, classes).

A malformed manifest (unreadable file, missing column) stops with a ``ManifestError`` that
names the file and the fix. A bad row never stops a run: it is skipped and recorded with
its row number, id, column and reason. Row numbers are 1-based data rows (the header of a
CSV is not counted), so row 1 is the first item.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from huse.data.text import has_letters, normalize_text

SPLITS = ("train", "val", "test")
# Python's csv module refuses fields over 128 KiB by default; a long text is still a text.
MAX_CSV_FIELD = 64 * 1024 * 1024


class ManifestError(ValueError):
    """The manifest as a whole cannot be read; the message says where and what to do."""


@dataclass
class ManifestConfig:
    """Column names and the class-path separator of a manifest.

    Args:
        image_col: image path column (relative paths resolve against the manifest's folder).
        text_col: item text column.
        classes_col: class path column, levels joined by ``sep``.
        id_col: optional id column; without it the row number is the id.
        split_col: optional split column with values train/val/test.
        sep: the separator between hierarchy levels.
    """

    image_col: str = "image"
    text_col: str = "text"
    classes_col: str = "classes"
    id_col: str = "id"
    split_col: str = "split"
    sep: str = "<"


@dataclass
class Skipped:
    row: int
    id: str
    column: str
    reason: str


@dataclass
class Manifest:
    """Valid rows of a manifest and the rows that were skipped.

    ``items`` has columns ``row, id, image, text, classes`` and ``split`` when the file had
    one; ``image`` holds resolved absolute paths.
    """

    path: Path
    config: ManifestConfig
    items: pd.DataFrame
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def has_split(self) -> bool:
        return "split" in self.items.columns

    def skipped_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [asdict(s) for s in self.skipped], columns=["row", "id", "column", "reason"]
        )


def _read_records(path: Path) -> tuple[list[str], list[tuple[int, dict | None, str]]]:
    """Return (columns, [(row, record or None, error)]) for any supported format."""
    suffix = path.suffix.lower()
    rows: list[tuple[int, dict | None, str]] = []
    if suffix in (".csv", ".tsv"):
        delim = "\t" if suffix == ".tsv" else ","
        old_limit = csv.field_size_limit(MAX_CSV_FIELD)
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f, delimiter=delim)
                header = next(reader, None)
                if header is None:
                    raise ManifestError(f"{path}: the file is empty; expected a header row")
                header = [h.strip() for h in header]
                i = 0
                while True:
                    i += 1
                    try:
                        values = next(reader)
                    except StopIteration:
                        break
                    except csv.Error as e:  # a NUL byte, an oversized field: this row only
                        rows.append((i, None, f"malformed CSV row: {e}"))
                        continue
                    if not values or all(not v.strip() for v in values):
                        continue
                    if len(values) != len(header):
                        rows.append(
                            (
                                i,
                                None,
                                f"malformed row: {len(values)} fields, header has {len(header)}",
                            )
                        )
                        continue
                    rows.append((i, dict(zip(header, values)), ""))
        except UnicodeDecodeError as e:
            raise ManifestError(f"{path}: not UTF-8 text ({e}); save the CSV as UTF-8") from e
        except csv.Error as e:
            raise ManifestError(f"{path}: CSV parse error: {e}") from e
        finally:
            csv.field_size_limit(old_limit)
        return header, rows
    if suffix in (".jsonl", ".ndjson"):
        columns: dict[str, None] = {}
        try:
            with open(path, encoding="utf-8") as f:
                for i, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        rows.append((i, None, f"malformed JSON: {e.msg}"))
                        continue
                    except (ValueError, RecursionError) as e:  # a 5000-digit number, deep nesting
                        rows.append((i, None, f"malformed JSON: {type(e).__name__}: {e}"))
                        continue
                    if not isinstance(rec, dict):
                        rows.append((i, None, "malformed row: not a JSON object"))
                        continue
                    columns.update(dict.fromkeys(rec))
                    rows.append((i, rec, ""))
        except UnicodeDecodeError as e:
            raise ManifestError(f"{path}: not UTF-8 text ({e})") from e
        return list(columns), rows
    if suffix in (".parquet", ".pq"):
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several unrelated types
            raise ManifestError(f"{path}: unreadable Parquet file: {e}") from e
        recs = df.to_dict(orient="records")
        return list(df.columns), [(i, r, "") for i, r in enumerate(recs, start=1)]
    raise ManifestError(
        f"{path}: unknown manifest format {suffix!r}; use .csv, .tsv, .jsonl or .parquet"
    )


def _as_str(value: object) -> str | None:
    """A cell as text, or None when it is missing or not text (numbers, lists...)."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN from Parquet
        return None
    if isinstance(value, str):
        return value
    return None


def _bad_unicode(value: str) -> bool:
    """Lone surrogates (JSON's "\\ud800") decode but cannot be written as UTF-8 later."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _id_of(value: object, row: int) -> tuple[str, str]:
    """(the id, or the row number when there is none; the reason it is unusable, or "")."""
    try:
        rid = str(value).strip() if value is not None else ""
    except ValueError as e:  # str() of a 5000-digit integer
        return str(row), f"id not usable: {e}"
    if _bad_unicode(rid):
        return str(row), "id is not valid Unicode (a lone surrogate)"
    return rid or str(row), ""


def read_manifest(path: str | Path, config: ManifestConfig | None = None) -> Manifest:
    """Read and validate a manifest file.

    Rows with an empty or non-text text, an empty or invalid class path, an empty image
    path, a missing image file, a bad split value or a duplicate id are skipped and
    listed in ``Manifest.skipped``. Images are only checked for existence here; decoding
    errors are found (and skipped) during feature extraction.

    Raises:
        ManifestError: the file is missing or unreadable, or a required column is absent.
    """
    config = config or ManifestConfig()
    if not config.sep:
        raise ManifestError("the class path separator (--sep) must not be empty")
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found")
    if path.is_dir():
        raise ManifestError(f"{path}: is a directory; pass the manifest file inside it")
    try:
        columns, records = _read_records(path)
    except OSError as e:
        raise ManifestError(f"{path}: cannot read manifest: {e}") from e
    required = {
        "image": config.image_col,
        "text": config.text_col,
        "classes": config.classes_col,
    }
    missing = [col for col in required.values() if col not in columns]
    if missing:
        opts = {"image": "--image-col", "text": "--text-col", "classes": "--classes-col"}
        hints = ", ".join(f"{opts[k]} NAME" for k, v in required.items() if v in missing)
        raise ManifestError(
            f"{path}: missing column(s) {missing}; the file has {columns}. "
            f"Rename the columns or pass {hints}."
        )
    has_id = config.id_col in columns
    has_split = config.split_col in columns
    base = path.resolve().parent
    sep = config.sep
    out: list[dict] = []
    skipped: list[Skipped] = []
    seen: dict[str, int] = {}
    for row, rec, error in records:
        if rec is None:
            skipped.append(Skipped(row, "", "", error))
            continue
        rid, id_error = _id_of(rec.get(config.id_col) if has_id else None, row)

        def skip(column: str, reason: str, _row=row, _rid=rid) -> None:
            skipped.append(Skipped(_row, _rid, column, reason))

        if id_error:
            skip(config.id_col, id_error)
            continue
        if rid in seen:
            skip(config.id_col, f"duplicate id (first seen at row {seen[rid]})")
            continue
        text = _as_str(rec.get(config.text_col))
        if text is None:
            skip(config.text_col, "text is missing or not a string")
            continue
        bad = [
            col
            for col in (config.text_col, config.classes_col, config.image_col, config.split_col)
            if isinstance(rec.get(col), str) and _bad_unicode(rec[col])
        ]
        if bad:
            skip(bad[0], "not valid Unicode (a lone surrogate)")
            continue
        text = normalize_text(text)
        if not text:
            skip(config.text_col, "empty text")
            continue
        if not has_letters(text):
            skip(config.text_col, "text has no words (no letters)")
            continue
        classes = _as_str(rec.get(config.classes_col))
        classes = classes.strip() if classes else ""
        if not classes:
            skip(config.classes_col, "empty class")
            continue
        levels = [p.strip() for p in classes.split(sep)]
        if any(not p for p in levels):
            skip(config.classes_col, f"invalid class path {classes!r}: empty level")
            continue
        classes = sep.join(levels)
        image = _as_str(rec.get(config.image_col))
        image = image.strip() if image else ""
        if not image:
            skip(config.image_col, "empty image path")
            continue
        try:
            image_path = Path(image).expanduser()  # "~nobody/x.png": RuntimeError
            if not image_path.is_absolute():
                image_path = base / image_path
            found = image_path.is_file()
        except (OSError, ValueError, RuntimeError) as e:  # a name too long, an unknown ~user
            skip(config.image_col, f"image path not usable: {type(e).__name__}: {e}"[:300])
            continue
        if not found:
            skip(config.image_col, f"image file not found: {image_path}")
            continue
        item = {"row": row, "id": rid, "image": str(image_path), "text": text, "classes": classes}
        if has_split:
            split = (_as_str(rec.get(config.split_col)) or "").strip().lower()
            if split not in SPLITS:
                skip(config.split_col, f"split {split!r} is not one of {list(SPLITS)}")
                continue
            item["split"] = split
        seen[rid] = row
        out.append(item)
    cols = ["row", "id", "image", "text", "classes"] + (["split"] if has_split else [])
    items = pd.DataFrame(out, columns=cols)
    return Manifest(path=path, config=config, items=items, skipped=skipped)
