"""Reading and validating a manifest: CSV, JSONL or Parquet rows of (image, text, classes).

A malformed manifest (unreadable file, missing column) stops with a ``ManifestError`` that
names the file and the fix. A bad row never stops a run: it is skipped and recorded with
its row number, id, column and reason. Row numbers are 1-based data rows (the header of a
CSV is not counted), so row 1 is the first item.

A row that is kept but changed (a text cut to ``ManifestConfig.max_text_chars``) is
listed in ``Manifest.notes``, in the same (row, id, column, reason) form.
"""

from __future__ import annotations

import collections
import csv
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from huse.config import ManifestConfig
from huse.data.text import has_letters, normalize_text
from huse.errors import ConfigError, HuseError

SPLITS = ("train", "val", "test")
# Python's csv module refuses fields over 128 KiB by default; a long text is still a text.
MAX_CSV_FIELD = 64 * 1024 * 1024


class ManifestError(HuseError):
    """The manifest as a whole cannot be read; the message says where and what to do."""


@dataclass
class Skipped:
    row: int
    id: str
    column: str
    reason: str


@dataclass
class Manifest:
    """Valid rows of a manifest, the rows that were skipped and notes on kept rows.

    ``items`` has columns ``row, id, image, text, classes`` and ``split`` when the file had
    a usable one; ``image`` holds resolved absolute paths. ``notes`` lists kept rows that
    were changed (a text cut to ``max_text_chars``).
    """

    path: Path
    config: ManifestConfig
    items: pd.DataFrame
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[Skipped] = field(default_factory=list)

    @property
    def has_split(self) -> bool:
        return "split" in self.items.columns

    def skipped_frame(self) -> pd.DataFrame:
        return records_frame(self.skipped)

    def notes_frame(self) -> pd.DataFrame:
        return records_frame(self.notes)


def records_frame(records: list[Skipped]) -> pd.DataFrame:
    """Skipped rows or notes as a (row, id, column, reason) frame, the skipped.csv form."""
    return pd.DataFrame([asdict(s) for s in records], columns=["row", "id", "column", "reason"])


def _check_unique(path: Path, columns: list[str]) -> None:
    """Two columns of one name: which one a row's value came from would be a guess."""
    dup = [(c, n) for c, n in Counter(columns).items() if n > 1 and c]
    if dup:
        name, n = dup[0]
        raise ManifestError(
            f"{path}: column {name!r} appears {n} times in the header {columns}; "
            "rename or remove the extra one(s)"
        )


def _quote_damaged(lines: list[str], delim: str) -> bool:
    """Whether a record read over several lines only parses leniently.

    A quote that is never closed swallows the next lines up to some later quote, which is
    then taken as the closing one and followed by that row's text instead of a
    delimiter; or the field runs to the end of the file. A strict parse refuses both,
    while a properly quoted field with newlines passes it.
    """
    try:
        for _ in csv.reader(lines, delimiter=delim, strict=True):
            pass
    except csv.Error:
        return True
    return False


def _read_csv(path: Path, delim: str) -> tuple[list[str], list[tuple[int, dict | None, str]]]:
    rows: list[tuple[int, dict | None, str]] = []
    old_limit = csv.field_size_limit(MAX_CSV_FIELD)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            block: list[str] = []  # the physical lines of the record being read
            pending: collections.deque[str] = collections.deque()  # lines to read again

            class Lines:
                # Not a generator: one that has ended cannot be resumed, and lines pushed
                # back after the end of the file must still be read.
                def __iter__(self):
                    return self

                def __next__(self) -> str:
                    line = pending.popleft() if pending else next(f, None)
                    if line is None:
                        raise StopIteration
                    block.append(line)
                    return line

            reader = csv.reader(Lines(), delimiter=delim)
            header = next(reader, None)
            if header is None:
                raise ManifestError(f"{path}: the file is empty; expected a header row")
            header = [h.strip() for h in header]
            _check_unique(path, header)
            i = 0
            while True:
                i += 1
                block.clear()
                try:
                    values = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:  # a NUL byte, an oversized field: this row only
                    rows.append((i, None, f"malformed CSV row: {e}"))
                    continue
                if len(block) > 1 and _quote_damaged(block, delim):
                    # The open quote swallowed the lines after it, each meant as a row: skip
                    # this row alone and read those lines again, as rows of their own.
                    rows.append(
                        (
                            i,
                            None,
                            f"unterminated quote in row {i} (it would have swallowed rows "
                            f"{i + 1}-{i + len(block) - 1}, which are read on their own); close "
                            f'the quote or double a quote that is part of the text ("")',
                        )
                    )
                    pending.extendleft(reversed(block[1:]))
                    continue
                if not values or all(not v.strip() for v in values):
                    continue
                if len(values) != len(header):
                    why = f"malformed row: {len(values)} fields, header has {len(header)}"
                    if _quote_damaged(block, delim):  # a quote opened in the last row
                        why = f"unterminated quote in row {i}; {why}"
                    rows.append((i, None, why))
                    continue
                rows.append((i, dict(zip(header, values)), ""))
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text ({e}); save the CSV as UTF-8") from e
    except csv.Error as e:
        raise ManifestError(f"{path}: CSV parse error: {e}") from e
    finally:
        csv.field_size_limit(old_limit)
    return header, rows


def _read_records(path: Path) -> tuple[list[str], list[tuple[int, dict | None, str]]]:
    """Return (columns, [(row, record or None, error)]) for any supported format."""
    suffix = path.suffix.lower()
    rows: list[tuple[int, dict | None, str]] = []
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, "\t" if suffix == ".tsv" else ",")
    if suffix in (".jsonl", ".ndjson"):
        columns: dict[str, None] = {}
        try:
            # utf-8-sig: a byte order mark (Windows editors write one) is not part of line 1.
            with open(path, encoding="utf-8-sig") as f:
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
        _check_unique(path, [str(c) for c in df.columns])
        recs = df.to_dict(orient="records")
        return list(df.columns), [(i, r, "") for i, r in enumerate(recs, start=1)]
    raise ManifestError(
        f"{path}: unknown manifest format {suffix!r}; use .csv, .tsv, .jsonl or .parquet"
    )


def _missing(value: object) -> bool:
    """None, NaN (Parquet's missing number) or pandas' NA."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def _as_str(value: object) -> str | None:
    """A cell as text, or None when it is missing or not text (numbers, lists...)."""
    if isinstance(value, str):
        return value
    return None


def _split_of(value: object) -> str | None:
    """A split cell stripped and lower-cased; "" when missing; None when not text."""
    if _missing(value):
        return ""
    if isinstance(value, str):
        return value.strip().lower()
    return None


def _bad_unicode(value: str) -> bool:
    """Lone surrogates (JSON's "\\ud800") decode but cannot be written as UTF-8 later."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _id_of(value: object, row: int) -> tuple[str, str]:
    """(the id, or the row number when there is none; the reason it is unusable, or "").

    A missing id (None, NaN, blank) takes the row number, as an absent id column does.
    An integer-valued float id reads as the integer ("3.0" -> "3"): Parquet and pandas
    turn an integer column with one gap into floats, and its ids were integers.
    """
    if _missing(value):
        return str(row), ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        rid = str(value).strip()
    except ValueError as e:  # str() of a 5000-digit integer
        return str(row), f"id not usable: {e}"
    if _bad_unicode(rid):
        return str(row), "id is not valid Unicode (a lone surrogate)"
    return rid or str(row), ""


def read_manifest(path: str | Path, config: ManifestConfig | None = None) -> Manifest:
    """Read and validate a manifest file.

    Rows with an empty or non-text text, an empty or invalid class path, an empty image
    path, a missing image file, a bad split value, a duplicate id or broken CSV quoting
    are skipped and listed in ``Manifest.skipped``. Images are only checked for existence
    here; decoding errors are found (and skipped) during feature extraction. A text
    longer than ``config.max_text_chars`` is cut to it and the row listed in
    ``Manifest.notes``. The split column is used when at least one row has a
    train/val/test value; otherwise the rows are split later, as without the column.

    Raises:
        ManifestError: the file is missing or unreadable, a required column is absent or
            a column name appears twice.
        ConfigError: ``max_text_chars`` is not a positive integer.
    """
    config = config or ManifestConfig()
    if not config.sep:
        raise ManifestError("the class path separator (--sep) must not be empty")
    limit = config.max_text_chars
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"max_text_chars must be a positive integer, not {limit!r}")
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
    # One stray value (a JSON record's "split": 123) must not skip every row lacking one.
    has_split = config.split_col in columns and any(
        rec is not None and _split_of(rec.get(config.split_col)) in SPLITS for _, rec, _ in records
    )
    base = path.resolve().parent
    sep = config.sep
    out: list[dict] = []
    skipped: list[Skipped] = []
    notes: list[Skipped] = []
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
        # Cut before any work so that no step sees more than ~2x the limit; cleaning can
        # shorten a text (markup, runs of spaces), hence the margin and the cut after it.
        n_raw = len(text)
        text = text[: 2 * limit]
        bad = [config.text_col] if _bad_unicode(text) else []
        bad += [
            col
            for col in (config.classes_col, config.image_col, config.split_col)
            if isinstance(rec.get(col), str) and _bad_unicode(rec[col])
        ]
        if bad:
            skip(bad[0], "not valid Unicode (a lone surrogate)")
            continue
        text = normalize_text(text)
        cut = n_raw > 2 * limit or len(text) > limit
        text = text[:limit].rstrip()
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
        value = rec.get(config.split_col)
        split = _split_of(value)
        # Without a usable split column an empty value is fine; any other value is
        # a mistake worth reporting.
        if split is None or (split not in SPLITS and (has_split or split)):
            shown = repr(split) if split is not None else repr(value)
            skip(config.split_col, f"split {shown} is not one of {list(SPLITS)}")
            continue
        if has_split:
            item["split"] = split
        if cut:
            notes.append(
                Skipped(
                    row, rid, config.text_col, f"text truncated to {limit} characters (was {n_raw})"
                )
            )
        seen[rid] = row
        out.append(item)
    cols = ["row", "id", "image", "text", "classes"] + (["split"] if has_split else [])
    items = pd.DataFrame(out, columns=cols)
    return Manifest(path=path, config=config, items=items, skipped=skipped, notes=notes)
