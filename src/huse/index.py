"""The catalogue index: every item's image and text embedding in FAISS, its metadata beside.

Design: one FAISS index per modality (``image.faiss``, ``text.faiss``), both holding the
same N items in the same order, so FAISS id ``i`` is row ``i`` of ``items.parquet`` in
either index. Searching ``image`` or ``text`` asks one index; ``both`` asks the two and
keeps each item once, at the better of its two scores (the hit's ``modality`` says which
vector matched). Two indexes rather than one of 2N vectors keep approximate types honest:
an IVF or HNSW structure trained on one modality's distribution, and no filtered search.

Vectors are L2-normalised, so the metric is inner product and a score is the cosine.

Filters. ``search(..., allowed=mask)`` restricts a search to some items (a branch of the
class tree: ``filter_mask(under=..., classes=...)``) inside FAISS: the mask becomes an
``IDSelectorBitmap`` passed through ``SearchParameters``, so FAISS skips the other items
while it scans and returns the exact top k of the allowed ones (Flat), or of those in the
probed lists (IVF, HNSW: the search widens until k are found or everything was probed).

Updates. ``update_folder(path, remove, items, vectors)`` changes a saved index without
rewriting it: the new vectors go into a small new segment (``d1.image.faiss``...; IVF:
the base's trained lists, empty, holding the new vectors), the removed rows' slots into
``removed.npy``, and the unchanged segment files are hard-linked into the new version, so
an update writes what changed, not the catalogue. ``load`` merges the segments (IVF
lists by ``merge_from``) and drops the removed slots. Past ``MAX_SEGMENTS`` or
``COMPACT_FRACTION`` an update compacts: ``updated`` in memory (Flat compacts its
vectors, IVF removes the ids from its lists, renumbers the rest and adds the new vectors
to the lists they fall in; other types are rebuilt from their stored vectors), then one
segment is written. No type is retrained. ``items.parquet``'s ``content`` column (a
digest of each item's image bytes, text and class) is what an update compares a
manifest against.

A built index is a folder::

    index/
      index.json      what was built: factory, dim, counts, model fingerprint, manifest
      items.parquet   row, id, image (absolute path), text, classes, split
      image.faiss     FAISS index of the image embeddings
      text.faiss      FAISS index of the text embeddings

It is written to a temporary sibling folder and swapped into place, so a reader sees the
old complete index or the new complete one, and an interrupted build leaves the old one.
``index.json`` is also the folder's ownership marker: it says ``"format": "huse-index"``
and lists every other file with its SHA-256. A folder is replaced only when it is empty or
is such an index with no file it does not list, so ``--out`` never deletes a user's files.
``CatalogueIndex.load(path)`` reads it back in one call and checks every checksum. FAISS
is imported lazily: ``import huse`` never loads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from huse._registry import Registry
from huse.config import IndexConfig
from huse.errors import HuseError, UnsafeOutputError

FORMAT = "huse-index"  # index.json's marker: this folder was written by huse
FORMAT_VERSION = 2  # 2: format marker, version and a checksum for every file
# 3: an updated folder of segments (the first built, the others appended by updates) and
# the removed slots; a folder of one segment is still written as version 2.
SEGMENTED_VERSION = 3
READ_VERSIONS = (FORMAT_VERSION, SEGMENTED_VERSION)
REMOVED_FILE = "removed.npy"
# An update appends a segment until the folder would hold more than this many, or the
# appended and removed vectors would pass this fraction of the items: then it writes
# one compacted segment (every vector rewritten).
MAX_SEGMENTS = 8
COMPACT_FRACTION = 0.25
# What huse 0.x (``"format": 1``) wrote: such a folder may be replaced, not read.
_LEGACY_FILES = frozenset({"index.json", "items.parquet", "image.faiss", "text.faiss"})
_SHA256 = frozenset("0123456789abcdef")
MODALITIES = ("image", "text")
SEARCH_MODALITIES = ("image", "text", "both")
ITEM_COLUMNS = ("row", "id", "image", "text", "classes", "split", "content")
DEFAULT_SEP = "<"
# Filters kept per index: a page that browses a branch asks for the same one again.
_FILTER_CACHE = 64


class CatalogueIndexError(HuseError):
    """An index cannot be built or read; the message says why and what to do."""


class IndexBusyError(CatalogueIndexError):
    """Another process is writing the same index folder."""


# -- index types by name --------------------------------------------------------------
_INDEX_TYPES: Registry[Callable[[int, int], str]] = Registry("index type")


def register_index_type(name: str) -> Callable:
    """Register ``fn(n_vectors, dim) -> FAISS factory string`` under ``name`` (once)."""
    return _INDEX_TYPES.register(name)


def list_index_types() -> list[str]:
    return sorted(_INDEX_TYPES.names())


def _nlist_for(n: int) -> int:
    # FAISS's rule of thumb is ~4·sqrt(n) lists, each with at least ~39 training points.
    nlist = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    cap = 2 ** math.floor(math.log2(max(1.0, n / 39)))
    return int(min(nlist, cap, 65536))


def _pq_m_for(d: int) -> int:
    # 8 dimensions per sub-quantiser (one byte each), at most 64 bytes per vector.
    for m in (64, 48, 32, 24, 16, 12, 8, 4, 2, 1):
        if d % m == 0 and d // m >= 4:
            return m
    return 1


@register_index_type("flat")
def _flat(n: int, d: int) -> str:
    """Exact search; what ``auto`` picks up to 200k items."""
    return "Flat"


@register_index_type("hnsw")
def _hnsw(n: int, d: int) -> str:
    """Graph search: fast and accurate, keeps full vectors (memory ≈ flat + links)."""
    return "HNSW32"


@register_index_type("ivfflat")
def _ivfflat(n: int, d: int) -> str:
    """Inverted lists over full vectors, sized to the catalogue."""
    return f"IVF{_nlist_for(n)},Flat"


@register_index_type("ivfsq")
def _ivfsq(n: int, d: int) -> str:
    """Inverted lists over 8-bit scalar-quantised vectors: a quarter of Flat's memory,
    near-exact scores."""
    return f"IVF{_nlist_for(n)},SQ8"


@register_index_type("ivfpq")
def _ivfpq(n: int, d: int) -> str:
    """Inverted lists over product-quantised codes: millions of items in little memory.

    8-bit codes need ~39·256 training vectors per sub-quantiser; a smaller catalogue gets
    4-bit codes (16 centroids), which train in a blink and fit the data they have.
    """
    bits = "" if n >= 39 * 256 else "x4"
    return f"IVF{_nlist_for(n)},PQ{_pq_m_for(d)}{bits}"


# Where ``auto`` changes type (benchmarks/RESULTS.md, "Scale": 512 dims, one thread).
# Flat is exact but reads every vector per query: ~23 ms for one query over 100k items,
# ~160 ms over 1M. IVF over 8-bit scalar-quantised vectors kept recall@10 ≈ 0.99 at 1M
# with a quarter of Flat's memory (d bytes a vector), ~2.5 ms a query and a 77 s build,
# where HNSW32 needed 4·d + 256 bytes a vector, a 10-minute build and reached 0.94. Past
# 20M items (~10 GB of SQ8 codes per modality) only PQ's 64-byte codes fit, at a recall
# cost (0.60 at 1M on the same data).
AUTO_FLAT_MAX = 200_000
AUTO_SQ_MAX = 20_000_000
ADD_BLOCK = 65_536  # vectors added to an index at once


@register_index_type("auto")
def _auto(n: int, d: int) -> str:
    """By catalogue size: Flat up to 200k items, IVF-SQ8 up to 20M, IVF-PQ beyond."""
    if n <= AUTO_FLAT_MAX:
        return _flat(n, d)
    if n <= AUTO_SQ_MAX:
        return _ivfsq(n, d)
    return _ivfpq(n, d)


def index_memory_bytes(factory: str, n: int, d: int) -> int | None:
    """Approximate memory of one FAISS index of ``n`` ``d``-dim vectors (None: unknown type).

    Flat: 4·d bytes a vector; HNSWM: the vectors plus 2·M int32 links on level 0; IVF: an
    int64 id a vector plus its codes (4·d for Flat, d·bits/8 for SQ, m·bits/8 for PQm),
    the centroids and the PQ codebooks.
    """
    parts = factory.split(",")
    head = parts[0]
    if factory == "Flat":
        return 4 * d * n
    if head.startswith("HNSW"):
        m = int("".join(ch for ch in head[4:] if ch.isdigit()) or 32)
        return n * (4 * d + 8 * m)
    if head.startswith("IVF") and len(parts) >= 2:
        nlist = int("".join(ch for ch in head[3:] if ch.isdigit()) or 1)
        fixed = 4 * d * nlist  # the coarse centroids
        code = parts[1]
        if code == "Flat":
            per = 4 * d
        elif code.startswith("PQ"):
            m_str, _, bits = code[2:].partition("x")
            per = math.ceil(int(m_str) * int(bits or 8) / 8)
            fixed += 4 * d * 2 ** int(bits or 8)  # the codebooks
        elif code[2:].isdigit() and code.startswith("SQ"):
            per = math.ceil(d * int(code[2:]) / 8)
        else:
            return None
        if any(p.startswith(("RFlat", "Refine")) for p in parts[2:]):
            per += 4 * d
        return n * (per + 8) + fixed
    return None


def resolve_factory(factory: str, n: int, d: int) -> str:
    """A registered name (``auto``, ``flat``, ``hnsw``, ``ivfflat``, ``ivfpq``) or a FAISS
    factory string, passed through (the user's override of every size rule)."""
    name = factory.strip().lower()
    return _INDEX_TYPES.get(name)(n, d) if name in _INDEX_TYPES else factory.strip()


def default_search_params(factory: str) -> str:
    """Search-time parameters that give high recall for a factory string."""
    parts = factory.split(",")
    params = []
    head = parts[0]
    if head.startswith("IVF"):
        digits = "".join(ch for ch in head[3:] if ch.isdigit())
        nlist = int(digits) if digits else 1
        params.append(f"nprobe={min(nlist, max(16, nlist // 16))}")
    elif head.startswith("HNSW"):
        params.append("efSearch=128")
    if any(p.startswith(("RFlat", "Refine")) for p in parts[1:]):
        # Re-rank 8·k candidates with the exact vectors.
        params.append("k_factor_rf=8")
    return ",".join(params)


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - the extra is part of the dev install
        raise ImportError(
            "building or reading an index needs FAISS: pip install 'huse[index]'"
        ) from e
    return faiss


def _new_index(factory: str, d: int):
    """An empty FAISS index of ``factory`` (untrained, no vectors), or a clear error."""
    faiss = _faiss()
    try:
        return faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        hint = "; PQm needs m to divide the dimension" if "PQ" in factory.upper() else ""
        raise CatalogueIndexError(
            f"FAISS cannot build {factory!r} for {d}-dim vectors: {_faiss_msg(e)}. "
            f"Use a registered type ({', '.join(list_index_types())}) or a valid FAISS "
            f"factory string such as HNSW32 or IVF256,SQ8{hint}"
        ) from None


def check_factory(factory: str, d: int, search_params: str | None = None) -> None:
    """Fail fast on a factory string (and search parameters) FAISS cannot use.

    Builds the empty index only, which costs nothing next to embedding a catalogue; a
    registered type's string depends on the catalogue size and is always valid.
    """
    if factory.strip().lower() in _INDEX_TYPES:
        return
    index = _new_index(factory.strip(), d)
    if search_params:
        _apply_search_params(index, search_params)


def _build_one(vectors: np.ndarray, factory: str, config: IndexConfig):
    faiss = _faiss()
    n, d = vectors.shape
    index = _new_index(factory, d)
    if not index.is_trained:
        rng = np.random.default_rng(config.seed)
        size = min(n, config.train_size)
        sample = vectors[np.sort(rng.choice(n, size, replace=False))] if size < n else vectors
        ivf = _ivf_of(index)
        if ivf is not None and ivf.nlist > len(sample):
            raise CatalogueIndexError(
                f"{factory!r} has {ivf.nlist} inverted lists but only {len(sample)} training "
                f"vectors; use fewer lists (for {n} items: IVF{_nlist_for(n)}) or 'flat'"
            )
        # Small k-means jobs gain nothing from OpenMP threads, and on a busy machine their
        # spin-waiting made a 453-item IVF-PQ train 5x slower (48 s against 9 s).
        threads = faiss.omp_get_max_threads()
        if len(sample) < 20_000:
            faiss.omp_set_num_threads(1)
        try:
            index.train(np.ascontiguousarray(sample))
        except RuntimeError as e:
            raise CatalogueIndexError(f"training {factory!r} failed: {_faiss_msg(e)}") from None
        finally:
            faiss.omp_set_num_threads(threads)
    # In blocks: a memory-mapped or very large array is never copied whole.
    for s in range(0, n, ADD_BLOCK):
        try:
            index.add(np.ascontiguousarray(vectors[s : s + ADD_BLOCK], dtype=np.float32))
        except RuntimeError as e:  # e.g. an IDMap wrapper, which wants ids
            raise CatalogueIndexError(
                f"FAISS cannot add vectors to {factory!r}: {_faiss_msg(e)}; use a registered "
                f"type ({', '.join(list_index_types())}) or another factory string"
            ) from None
    return index


def _ivf_of(index):
    faiss = _faiss()
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _faiss_msg(e: Exception) -> str:
    # FAISS messages carry the C++ location first; the reason is the last line's tail.
    msg = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
    return msg.rsplit(": ", 1)[-1] if "Error in" in msg else msg


def _apply_search_params(index, params: str) -> None:
    if params:
        faiss = _faiss()
        try:
            faiss.ParameterSpace().set_index_parameters(index, params)
        except RuntimeError as e:
            raise CatalogueIndexError(
                f"search parameters {params!r} do not apply to this index: {_faiss_msg(e)}"
            ) from None


class CatalogueIndex:
    """Image and text vectors of a catalogue in FAISS, with the items' metadata.

    Args:
        indexes: one FAISS index per modality, each over the same items in the same order.
        items: the items, one row per FAISS id (columns ``ITEM_COLUMNS``).
        info: what was built (``index.json``).
    """

    def __init__(self, indexes: dict, items: pd.DataFrame, info: dict) -> None:
        for m, ix in indexes.items():
            if ix.ntotal != len(items):
                raise CatalogueIndexError(
                    f"{m} index holds {ix.ntotal} vectors but the metadata has {len(items)} "
                    "items; rebuild it with `huse index RUN`"
                )
        self.indexes = indexes
        self.items = items.reset_index(drop=True)
        self.info = info
        self._row_of_id: dict[str, int] | None = None
        self._filters: dict[tuple, np.ndarray] = {}
        self._class_codes: tuple[np.ndarray, list[str]] | None = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    def row_of(self, item_id: str) -> int | None:
        """The row of an item id, or None: a dictionary look-up, never a file path."""
        if self._row_of_id is None:
            self._row_of_id = {str(v): i for i, v in enumerate(self.items["id"].tolist())}
        return self._row_of_id.get(item_id)

    @property
    def sep(self) -> str:
        """The class path separator of the items' ``classes``."""
        return str(self.info.get("model", {}).get("sep", DEFAULT_SEP))

    def class_paths(self) -> list[str]:
        """The distinct class paths of the items, sorted."""
        return list(self._codes()[1])

    def _codes(self) -> tuple[np.ndarray, list[str]]:
        if self._class_codes is None:
            codes, uniques = pd.factorize(self.items["classes"].astype(str), sort=True)
            self._class_codes = (codes.astype(np.int64), [str(u) for u in uniques])
        return self._class_codes

    def filter_mask(
        self, under: tuple[str, ...] | list[str] = (), classes: tuple[str, ...] | list[str] = ()
    ) -> np.ndarray:
        """Rows whose class is one of ``classes`` or lies in a branch of ``under``.

        A branch ``a<b`` holds the class ``a<b`` itself and every class below it
        (``a<b<c``), never ``a<bc``. Several branches and classes are a union.

        Returns:
            A boolean mask over the rows (cached per filter).
        """
        key = (tuple(under), tuple(classes))
        mask = self._filters.get(key)
        if mask is None:
            codes, paths = self._codes()
            sep = self.sep
            wanted = set(classes)
            prefixes = tuple(b + sep for b in under)
            heads = set(under)
            hit = np.array(
                [p in wanted or p in heads or p.startswith(prefixes) for p in paths], dtype=bool
            )
            mask = hit[codes] if len(paths) else np.zeros(len(self), dtype=bool)
            if len(self._filters) >= _FILTER_CACHE:
                self._filters.pop(next(iter(self._filters)))
            self._filters[key] = mask
        return mask

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        modality: str = "image",
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nearest items of each query.

        Args:
            queries: (q, D) L2-normalised float32 vectors.
            k: results per query (clamped to the catalogue size, or the allowed items).
            modality: ``image``, ``text`` or ``both`` (each item once, at its best score).
            allowed: a boolean mask over the rows (``filter_mask``): only those items are
                searched, inside FAISS.

        Returns:
            ``(scores, rows, modalities)``, each (q, k); a missing result (an approximate
            index that found fewer than k) has row -1 and score -inf.
        """
        if modality not in SEARCH_MODALITIES:
            raise ValueError(f"modality must be one of {SEARCH_MODALITIES}, not {modality!r}")
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.dim))
        n_allowed = len(self) if allowed is None else int(np.count_nonzero(allowed))
        k = max(1, min(int(k), n_allowed or 1))
        names = MODALITIES if modality == "both" else (modality,)
        scores, rows, codes = [], [], []
        for name in names:
            if allowed is None:
                s, r = self.indexes[name].search(q, k)
            elif n_allowed == 0:
                s = np.full((len(q), k), -np.inf, np.float32)
                r = np.full((len(q), k), -1, np.int64)
            else:
                s, r = _filtered_search(self.indexes[name], q, k, allowed, n_allowed)
            scores.append(np.where(r >= 0, s, -np.inf).astype(np.float32))
            rows.append(r)
            codes.append(np.full(r.shape, MODALITIES.index(name)))
        if len(names) == 1:
            return scores[0], rows[0], np.array(MODALITIES)[codes[0]]
        return _merge_best(np.hstack(scores), np.hstack(rows), np.hstack(codes), k)

    # -- updates ------------------------------------------------------------------------
    def updated(
        self,
        remove: np.ndarray,
        items: pd.DataFrame,
        vectors: dict[str, np.ndarray],
        config: IndexConfig | None = None,
    ) -> tuple[CatalogueIndex, list[str]]:
        """This index without the rows ``remove`` and with ``items`` appended, in place.

        Kept rows keep their order and come first; the new items follow in their order.
        No type is retrained: IVF vectors go into the trained lists (the warnings say when
        the catalogue outgrew them).

        Args:
            remove: rows to drop (changed items are dropped and re-added).
            items: the new rows' metadata (columns ``ITEM_COLUMNS``).
            vectors: ``{"image": (m, D), "text": (m, D)}`` for ``items``.
            config: the training settings of a type that has to be rebuilt (HNSW...).

        Returns:
            The updated index (this object's FAISS indexes, changed) and warnings.
        """
        config = config or IndexConfig()
        remove = np.unique(np.asarray(remove, dtype=np.int64))
        if len(remove) and (remove[0] < 0 or remove[-1] >= len(self)):
            raise ValueError("rows to remove lie outside the index")
        keep = np.ones(len(self), dtype=bool)
        keep[remove] = False
        n = int(keep.sum()) + len(items)
        if n == 0:
            raise CatalogueIndexError("no items left: the update would remove every item")
        new_items = pd.concat(
            [self.items[keep], items[[c for c in self.items.columns if c in items.columns]]],
            ignore_index=True,
        )
        warnings_: list[str] = []
        for m, ix in self.indexes.items():
            add = np.ascontiguousarray(vectors[m], dtype=np.float32).reshape(-1, self.dim)
            if len(add) != len(items):
                raise CatalogueIndexError(f"{len(add)} {m} vectors for {len(items)} new items")
            self.indexes[m], warn = _update_one(ix, remove, keep, add, self.info, config)
            warnings_ += [w for w in warn if w not in warnings_]
        info = self.info | {
            "count": n,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return CatalogueIndex(self.indexes, new_items, info), warnings_

    # -- save / load -------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the index folder atomically (see the module docstring); returns its path."""
        path = Path(path)
        check_output_dir(path)
        with writer_lock(path):
            return self._save(path)

    def _save(self, path: Path) -> Path:
        faiss = _faiss()
        path.parent.mkdir(parents=True, exist_ok=True)
        with _staging(path) as tmp:
            self.items.to_parquet(tmp / "items.parquet", index=False)
            for m, ix in self.indexes.items():
                faiss.write_index(ix, str(tmp / f"{m}.faiss"))
            # index.json last: its presence marks a complete folder, and it holds the
            # SHA-256 of every other file, so a damaged one is caught on load and a
            # folder holding anything else is never taken for huse's own.
            files = {
                f.name: _file_sha256(f) for f in sorted(tmp.iterdir()) if f.name != STAGING_MARKER
            }
            info = {k: v for k, v in self.info.items() if k not in ("segments", "removed")}
            info |= {"format": FORMAT, "version": FORMAT_VERSION, "files": files}
            (tmp / "index.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
            _publish(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path, search_params: str | None = None) -> CatalogueIndex:
        """Read an index folder (a run folder's is found by ``huse.runs.find_index``).

        Args:
            path: the index folder.
            search_params: override the stored FAISS search parameters.
        """
        _faiss()  # the clear ImportError first
        path = resolve_index_dir(path)
        info = _read_info(path / "index.json")
        for name, want in info["files"].items():
            f = path / name
            if not f.is_file():
                raise CatalogueIndexError(f"{f} is missing; {_REBUILD}")
            if _file_sha256(f) != want:
                raise CatalogueIndexError(
                    f"{f} is damaged (its SHA-256 differs from index.json's); {_REBUILD}"
                )
        items = _read_items(path, info)
        indexes = {}
        segments = _segments(info)
        removed = _read_removed(path, info)
        for m in info["modalities"]:
            parts = [
                _read_faiss(path / f"{prefix}{m}.faiss", info["dim"]) for prefix, _ in segments
            ]
            indexes[m] = _merged(parts, segments, removed, path)
        if len(items) != info["count"]:
            raise CatalogueIndexError(
                f"{path / 'items.parquet'} holds {len(items)} items but index.json says "
                f"{info['count']}; {_REBUILD}"
            )
        params = info["search_params"] if search_params is None else search_params
        for ix in indexes.values():
            _apply_search_params(ix, params)
        return cls(indexes, items, info)


_REBUILD = "rebuild the index with `huse index RUN` (the model is not retrained)"


def _read_info(file: Path) -> dict:
    """``index.json``, checked field by field: a wrong shape is a clear error, not a KeyError."""
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CatalogueIndexError(
            f"{file} is damaged ({type(e).__name__}: {e}); {_REBUILD}"
        ) from None

    def bad(why: str) -> CatalogueIndexError:
        return CatalogueIndexError(f"{file} is damaged or not a huse index: {why}; {_REBUILD}")

    if not isinstance(info, dict):
        raise bad(f"it holds a JSON {type(info).__name__}, not an object")
    if info.get("format") == 1:
        raise CatalogueIndexError(f"{file} was written by an older huse (format 1); {_REBUILD}")
    if info.get("format") != FORMAT:
        raise bad(f"its format is {info.get('format')!r}, not {FORMAT!r}")
    if info.get("version") not in READ_VERSIONS:
        raise CatalogueIndexError(
            f"{file}: index version {info.get('version')!r}, this huse reads "
            f"{' and '.join(map(str, READ_VERSIONS))}; {_REBUILD}"
        )

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    mods = info.get("modalities")
    if not (isinstance(mods, list) and mods and len(set(mods)) == len(mods)) or not all(
        m in MODALITIES for m in mods
    ):
        raise bad(f"'modalities' must be a list of {MODALITIES}, not {mods!r}")
    for key, ok, what in (
        ("dim", lambda v: is_int(v) and v > 0, "a positive whole number"),
        ("count", lambda v: is_int(v) and v >= 0, "a whole number"),
        ("factory", lambda v: isinstance(v, str), "a string"),
        ("search_params", lambda v: isinstance(v, str), "a string"),
        ("model", lambda v: isinstance(v, dict), "an object"),
    ):
        if key == "model" and key not in info:  # an index of vectors from elsewhere
            continue
        if not ok(info.get(key)):
            raise bad(f"{key!r} must be {what}, not {info.get(key)!r}")
    files = info.get("files")
    if not isinstance(files, dict):
        # Without the list nothing could be checked, so a damaged file would pass.
        raise bad("it has no 'files' list of SHA-256 checksums")
    for name, sha in files.items():
        if not _plain_name(name) or name == "index.json":
            raise bad(f"'files' names {name!r}, not a file of the index folder")
        if not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= _SHA256):
            raise bad(f"the checksum of {name} is {sha!r}, not a SHA-256")
    segs = info.get("segments", [["", info.get("count")]])
    if not (
        isinstance(segs, list)
        and segs
        and segs[0][0] == ""
        and all(
            isinstance(g, list) and len(g) == 2 and _plain_name(g[0] + "x") and is_int(g[1])
            for g in segs
        )
    ):
        raise bad(f"'segments' must be a list of [prefix, slots] pairs, not {segs!r}")
    needed = [f"{g[0]}items.parquet" for g in segs] + [
        f"{g[0]}{m}.faiss" for g in segs for m in mods
    ]
    if info.get("removed"):
        needed.append(REMOVED_FILE)
    for name in needed:
        if name not in files:
            raise bad(f"'files' has no checksum for {name}")
    return info


def _read_items(path: Path, info: dict, columns: list[str] | None = None) -> pd.DataFrame:
    """The items of the alive slots in order: each segment's ``{prefix}items.parquet``
    holds the items of all its slots (a removed one stays there, listed in
    ``removed.npy``). ``columns``: only those of them that the files hold."""
    import pyarrow.parquet as pq

    segments = _segments(info)
    frames = []
    for prefix, n in segments:
        f = path / f"{prefix}items.parquet"
        try:
            if columns is None:
                frames.append(pd.read_parquet(f))
            else:  # Arrow-backed columns: a third of the time of a conversion to pandas'
                cols = [c for c in columns if c in pq.read_schema(f).names]
                frames.append(pd.read_parquet(f, columns=cols, dtype_backend="pyarrow"))
        except Exception as e:  # pyarrow raises several unrelated types
            raise CatalogueIndexError(f"{f} is unreadable ({e}); {_REBUILD}") from None
        if len(segments) > 1 and len(frames[-1]) != n:
            raise CatalogueIndexError(
                f"{f} holds {len(frames[-1])} items but index.json says {n}; {_REBUILD}"
            )
    if len(frames) == 1 and not info.get("removed"):
        return frames[0]
    items = pd.concat(frames, ignore_index=True)
    alive = np.ones(len(items), dtype=bool)
    alive[_read_removed(path, info)] = False
    return items[alive].reset_index(drop=True)


def _segments(info: dict) -> list[tuple[str, int]]:
    """``(file prefix, slots)`` of each segment, the built one first."""
    return [(str(p), int(n)) for p, n in info.get("segments", [["", info["count"]]])]


def _read_removed(path: Path, info: dict) -> np.ndarray:
    if not info.get("removed"):
        return np.zeros(0, np.int64)
    try:
        removed = np.load(path / REMOVED_FILE, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CatalogueIndexError(
            f"{path / REMOVED_FILE} is unreadable ({e}); {_REBUILD}"
        ) from None
    return np.asarray(removed, dtype=np.int64)


def _read_faiss(file: Path, dim: int):
    faiss = _faiss()
    try:
        ix = faiss.read_index(str(file))
    except Exception as e:  # FAISS raises RuntimeError with its C++ message
        raise CatalogueIndexError(f"{file} is unreadable ({_faiss_msg(e)}); {_REBUILD}") from None
    if ix.d != dim:
        raise CatalogueIndexError(
            f"{file} holds {ix.d}-dim vectors but index.json says {dim}; {_REBUILD}"
        )
    return ix


def _merged(parts: list, segments: list[tuple[str, int]], removed: np.ndarray, path: Path):
    """One FAISS index of the segments' vectors, the removed slots dropped, its ids the
    rows of ``items.parquet`` (alive slots in order)."""
    faiss = _faiss()
    for ix, (prefix, n) in zip(parts, segments):
        if ix.ntotal != n:
            raise CatalogueIndexError(
                f"{path / (prefix + '...faiss')} holds {ix.ntotal} vectors but index.json says "
                f"{n}; {_REBUILD}"
            )
    total = sum(n for _, n in segments)
    if len(parts) == 1 and not len(removed):
        return parts[0]
    base = faiss.downcast_index(parts[0])
    if isinstance(base, faiss.IndexFlat):
        # In place: the appended segments' few vectors after the base's, then one pass
        # that compacts the storage over the removed slots (order kept).
        for p in parts[1:]:
            base.add(p.reconstruct_n(0, p.ntotal))
        if len(removed):
            base.remove_ids(faiss.IDSelectorBatch(removed))
        return parts[0]
    if isinstance(base, faiss.IndexIVF):
        for p in parts[1:]:
            base.merge_from(faiss.downcast_index(p), 0)  # their ids are global slots
        if len(removed):
            _drop_ivf_rows(base, removed, total)
        return parts[0]
    raise CatalogueIndexError(f"{path}: segments of a {type(base).__name__}; {_REBUILD}")


def _drop_ivf_rows(ivf, remove: np.ndarray, n_before: int) -> None:
    """Remove ids ``remove`` from an IVF's lists and renumber the rest to be contiguous
    (old id minus the removed ids before it): IVF keeps each vector's id as given."""
    faiss = _faiss()
    ivf.remove_ids(faiss.IDSelectorBatch(remove))
    new_of_old = np.arange(n_before) - np.searchsorted(remove, np.arange(n_before))
    inv = ivf.invlists
    for lst in range(ivf.nlist):
        size = inv.list_size(lst)
        if size:
            ids = faiss.rev_swig_ptr(inv.get_ids(lst), size)
            ids[:] = new_of_old[ids]


def _plain_name(name) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in ("/", os.sep, "\x00"))
    )


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _selector(allowed: np.ndarray):
    """An ``IDSelectorBitmap`` over ``allowed`` and the bitmap it points into (which the
    caller keeps alive: FAISS holds only the pointer)."""
    faiss = _faiss()
    bits = np.packbits(allowed, bitorder="little")  # FAISS reads bit i of byte i >> 3
    return faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits)), bits


def _filtered_search(index, q: np.ndarray, k: int, allowed: np.ndarray, n_allowed: int):
    """Top ``k`` of the allowed rows, filtered inside FAISS.

    Flat is exact. An approximate type can find fewer than k allowed items in the part
    of the catalogue it looks at (IVF's probed lists, HNSW's visited nodes); the search is
    then repeated with 4x wider settings until k are found or it looked everywhere, so
    ``k`` results come back whenever the filter allows at least k items.
    """
    faiss = _faiss()
    sel, bits = _selector(allowed)  # ``bits`` stays referenced while FAISS reads it
    base = faiss.downcast_index(index)
    ivf = base if isinstance(base, faiss.IndexIVF) else None
    hnsw = base if isinstance(base, faiss.IndexHNSW) else None
    nprobe = int(ivf.nprobe) if ivf is not None else 0
    ef = int(hnsw.hnsw.efSearch) if hnsw is not None else 0
    want = min(k, n_allowed)
    while True:
        if ivf is not None:
            params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
        elif hnsw is not None:
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=ef)
        else:
            params = faiss.SearchParameters(sel=sel)
        try:
            s, r = base.search(q, k, params=params)
        except RuntimeError as e:  # a wrapper type (IndexPreTransform...) without filters
            raise CatalogueIndexError(
                f"this index type cannot filter a search ({_faiss_msg(e)}); rebuild it with "
                "a registered type (flat, ivfflat, ivfsq, ivfpq, hnsw)"
            ) from None
        if int((r >= 0).sum(axis=1).min()) >= want:
            break
        if ivf is not None and nprobe < ivf.nlist:
            nprobe = min(int(ivf.nlist), nprobe * 4)
        elif hnsw is not None and ef < hnsw.ntotal:
            ef = min(int(hnsw.ntotal), ef * 4)
        else:
            break
    del bits
    return s, r


def _outgrown(info: dict, n: int, nlist: int) -> list[str]:
    """The warning when a catalogue outgrew the IVF lists it was trained for."""
    trained = int(info.get("trained_count") or info.get("count") or n)
    if _nlist_for(n) >= 2 * nlist or n > 4 * trained:
        return [
            f"the catalogue has grown to {n:,} items since the IVF lists were trained on "
            f"{trained:,} ({nlist} lists); search stays correct but slower and less "
            "accurate: rebuild with `huse index RUN --update MANIFEST --retrain`"
        ]
    return []


def _update_one(index, remove: np.ndarray, keep: np.ndarray, add: np.ndarray, info: dict, config):
    """One modality's FAISS index without ``remove`` and with ``add`` appended."""
    faiss = _faiss()
    warnings_: list[str] = []
    base = faiss.downcast_index(index)
    n_new = int(keep.sum()) + len(add)
    if isinstance(base, faiss.IndexFlat):
        if len(remove):
            # Flat compacts its storage in order: row r becomes r minus the removed rows
            # before it, the order the metadata is kept in.
            base.remove_ids(faiss.IDSelectorBatch(remove))
        for s in range(0, len(add), ADD_BLOCK):
            base.add(add[s : s + ADD_BLOCK])
        # ``index`` itself, not ``base``: the downcast view does not own the C++ object.
        return index, warnings_
    if isinstance(base, faiss.IndexIVF):
        ivf = base
        if len(remove):
            _drop_ivf_rows(ivf, remove, len(keep))
        # ntotal is now the kept count, so add numbers the new vectors from there.
        for s in range(0, len(add), ADD_BLOCK):
            ivf.add(add[s : s + ADD_BLOCK])
        return index, _outgrown(info, n_new, ivf.nlist)
    # Graph and other types cannot drop vectors: rebuilt from their stored vectors.
    try:
        old = index.reconstruct_n(0, index.ntotal)
    except RuntimeError as e:
        raise CatalogueIndexError(
            f"a {info.get('factory')!r} index cannot be updated ({_faiss_msg(e)}); rebuild "
            "it with `huse index RUN`"
        ) from None
    vectors = np.vstack([old[keep], add]).astype(np.float32)
    rebuilt = _build_one(vectors, str(info["factory"]), config)
    _apply_search_params(rebuilt, str(info.get("search_params", "")))
    return rebuilt, warnings_


def _merge_best(
    scores: np.ndarray, rows: np.ndarray, mods: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query, keep each row once at its best score, then the top k (vectorised)."""
    q = len(scores)
    order = np.argsort(-scores, axis=1, kind="stable")
    s = np.take_along_axis(scores, order, 1)
    r = np.take_along_axis(rows, order, 1)
    m = np.take_along_axis(mods, order, 1)
    # First occurrence of each (query, row) key in score order is its best.
    key = np.arange(q)[:, None] * (int(rows.max(initial=0)) + 2) + (r + 1)
    _, first = np.unique(key.ravel(), return_index=True)
    keep = np.zeros(key.size, dtype=bool)
    keep[first] = True
    keep = keep.reshape(key.shape) & (r >= 0)
    s = np.where(keep, s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    s = np.take_along_axis(s, order, 1)
    r = np.where(np.isfinite(s), np.take_along_axis(r, order, 1), -1)
    m = np.array(MODALITIES)[np.take_along_axis(m, order, 1)]
    return s, r, m


def _not_owned_because(path: Path) -> str | None:
    """Why the existing folder ``path`` is not an index huse wrote (None: it is, or empty).

    huse's own: ``index.json`` parses, carries the format marker, and lists every other
    entry of the folder, each a plain file. The files' contents are not checked: a damaged
    index is still huse's to replace.
    """
    entries = sorted(path.iterdir())
    if not entries:
        return None
    info_file = path / "index.json"
    if not info_file.is_file() or info_file.is_symlink():
        return "it has no index.json"
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        # A damaged index.json (truncated, bit-flipped) beside nothing but the files an
        # index holds is huse's own damaged index: rebuilding it is the promised repair.
        if all(e.name in _LEGACY_FILES and e.is_file() and not e.is_symlink() for e in entries):
            return None
        return "its index.json is not valid JSON"
    if not isinstance(info, dict):
        return "its index.json is not a huse index's"
    if info.get("format") == FORMAT and isinstance(info.get("files"), dict):
        listed = {"index.json", *info["files"]}
    elif info.get("format") == 1:  # written before the marker: it held exactly these
        listed = _LEGACY_FILES
    else:
        return "its index.json has no huse-index format marker"
    for e in entries:
        if e.name not in listed:
            return f"it holds {e.name}, which its index.json does not list"
        if e.is_symlink() or not e.is_file():
            return f"{e.name} is not a plain file"
    return None


def check_output_dir(path: str | Path) -> None:
    """Raise ``UnsafeOutputError`` unless an index may be written to ``path``.

    Fine: a path that does not exist (under folders), an empty folder, or an index folder
    huse wrote (see ``_not_owned_because``). Anything else would be deleted or shadowed.
    """
    path = Path(path)
    fix = "choose another --out or remove it by hand"
    if path.is_symlink():
        raise UnsafeOutputError(f"{path} is a symbolic link; {fix}")
    if path.exists():
        if not path.is_dir():
            raise UnsafeOutputError(f"{path} is a file, not a folder; {fix}")
        why = _not_owned_because(path)
        if why is not None:
            raise UnsafeOutputError(
                f"{path} is not an index folder huse wrote ({why}); refusing to replace it: {fix}"
            )
        return
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UnsafeOutputError(
                    f"{path} cannot be a folder: {parent} is a file; choose another --out"
                )
            return


# The files an index folder (any version) can hold; only these are ever deleted from a
# folder that an interrupted write left behind.
_INDEX_FILE = re.compile(
    r"(index\.json|removed\.npy|(d\d+\.)?(image\.faiss|text\.faiss|items\.parquet))"
)
# Index folders this process holds the writer lock of, with its re-entry depth.
_HELD: dict[Path, int] = {}
# The marker of huse's lock records.
_LOCK = {"format": "huse-index-lock"}


def _lock_file(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def writer_lock(path: str | Path) -> Iterator[None]:
    """Hold the one writer's place of the index folder ``path`` for the block.

    The lock is ``flock`` on ``.NAME.lock`` beside the folder, so the kernel releases it
    when its process dies: a killed update never leaves a lock to break by hand. Readers
    take no lock (a folder is swapped in whole). Re-entrant in one process. On taking it,
    the temporary folders an interrupted write left beside ``path`` are removed (see
    ``remove_leftovers``): with the lock held, no live writer owns them.

    Raises:
        IndexBusyError: another process holds it; the message names it.
    """
    path = Path(path).absolute()
    if path in _HELD:
        _HELD[path] += 1
        try:
            yield
        finally:
            _HELD[path] -= 1
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: one writer is the user's to ensure
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock_file(path)
    while True:
        try:  # never through a link: the lock is a file huse makes beside the index
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise UnsafeOutputError(
                f"{lock} cannot be opened as huse's lock file ({e.strerror}); move it away"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_lock_record(fd)
            os.close(fd)
            raise IndexBusyError(
                f"another huse process{holder} is writing the index {path}; wait for it to "
                "finish, then run this again"
            ) from None
        # The file may have been unlinked by its last holder between our open and flock:
        # then the lock is on a dead inode, and we take the lock file anew.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    # Empty (just created, or its writer killed before writing) or huse's own record:
    # anything else at that name is a user's file, never truncated or removed.
    if os.fstat(fd).st_size and not _read_lock_record(fd):
        os.close(fd)
        raise UnsafeOutputError(
            f"{lock} exists and is not huse's lock file; move it away, then run this again"
        )
    try:
        record = json.dumps({**_LOCK, "pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})  # fmt: skip
        os.ftruncate(fd, 0)
        os.write(fd, record.encode())
        _HELD[path] = 1
        remove_leftovers(path)
        yield
    finally:
        _HELD.pop(path, None)
        with contextlib.suppress(OSError):
            os.unlink(lock)  # ours: written by this process, removed while still held
        os.close(fd)


def _read_lock_record(fd: int) -> str:
    """`` (pid N on HOST, since T)`` from huse's lock record in ``fd``; "" if it holds none."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        info = _huse_record(os.pread(fd, 4096, 0).decode(), _LOCK)
        if info is not None:
            return f" (pid {int(info['pid'])} on {info['host']}, since {info['since']})"
    return ""


def _huse_record(text: str, fields: dict) -> dict | None:
    """The JSON object in ``text`` if it carries these fields (a huse marker), else None."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    ok = isinstance(data, dict) and all(data.get(k) == v for k, v in fields.items())
    return data if ok else None


# Written first into every folder a build or update stages, removed just before the
# swap: what marks a temporary folder as huse's, whatever its name.
STAGING_MARKER = ".huse-staging"
_STAGING = {"format": "huse-index-staging"}


def _is_huse_record(file: Path, fields: dict) -> bool:
    """``file`` is a plain file holding a JSON object with these fields (huse's marker)."""
    try:
        if file.is_symlink() or not file.is_file() or file.stat().st_size > 4096:
            return False
        return _huse_record(file.read_text(encoding="utf-8"), fields) is not None
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _staging(path: Path) -> Iterator[Path]:
    """A new folder beside ``path`` to write the next version of the index into, marked
    as huse's (``STAGING_MARKER``); ``_publish`` swaps it in. Removed if the block fails."""
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        (tmp / STAGING_MARKER).write_text(json.dumps(_STAGING | {"pid": os.getpid()}))
        yield tmp
    finally:
        if tmp.exists():  # made by mkdtemp above, in this process: ours to remove
            shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, path: Path, synced: set[str] = frozenset()) -> None:
    """Sync the staged files (but ``synced``), unmark the folder and swap it in."""
    (tmp / STAGING_MARKER).unlink()
    for f in tmp.iterdir():
        if f.name not in synced:
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    os.chmod(tmp, 0o755)
    _swap_in(tmp, path)


def _leftover_is_ours(d: Path, old: bool) -> bool:
    """A ``.tmp-`` folder marked by ``_staging`` (or already a complete huse index:
    killed between unmarking and the swap), or an ``.old-`` folder holding a huse index.
    Empty ones too: only ``rmdir`` touches them."""
    if old:
        inner = d / "index"
        entries = list(d.iterdir())
        return not entries or (
            entries == [inner]
            and inner.is_dir()
            and not inner.is_symlink()
            and (_not_owned_because(inner) is None)
        )
    if _is_huse_record(d / STAGING_MARKER, _STAGING):
        return True
    return _not_owned_because(d) is None


def remove_leftovers(path: str | Path) -> list[Path]:
    """Remove the ``.NAME.tmp-*`` and ``.NAME.old-*`` folders that a killed build or
    update left beside the index folder ``path``; returns those removed.

    Call only with the writer lock held. A folder is touched only when its marker says
    huse wrote it (``_leftover_is_ours``); then only its index files (``_INDEX_FILE``
    names, plain files) and the marker are deleted, and the emptied folders removed: a
    folder holding anything else stays.
    """
    path = Path(path)
    gone: list[Path] = []
    if not path.parent.is_dir():
        return gone
    for d in sorted(path.parent.iterdir()):
        old = d.name.startswith(f".{path.name}.old-")
        if not (old or d.name.startswith(f".{path.name}.tmp-")):
            continue
        with contextlib.suppress(OSError):
            if d.is_symlink() or not d.is_dir() or not _leftover_is_ours(d, old):
                continue
            for folder in (d / "index", d):
                if folder.is_dir() and not folder.is_symlink():
                    for f in folder.iterdir():
                        ours = _INDEX_FILE.fullmatch(f.name) or f.name == STAGING_MARKER
                        if ours and f.is_file() and not f.is_symlink():
                            f.unlink()
                    folder.rmdir()
            gone.append(d)
    return gone


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False when the
    system or file system cannot."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _swap_in(tmp: Path, path: Path) -> None:
    check_output_dir(path)
    if not path.exists() or not any(path.iterdir()):
        os.replace(tmp, path)  # rename(2) replaces an empty folder
        return
    checked = [e.name for e in path.iterdir()]
    old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
    if _exchange(tmp, path):
        # One step: a reader, or a kill, sees the old folder or the new one, never none.
        os.replace(tmp, old / "index")
    else:
        os.replace(path, old / "index")
        os.replace(tmp, path)
    # Delete by name only the files just checked to be huse's, never a tree: rmdir fails,
    # and keeps the folder, if anything else appeared in between.
    with contextlib.suppress(OSError):
        for name in checked:
            (old / "index" / name).unlink()
        (old / "index").rmdir()
        old.rmdir()


def resolve_index_dir(path: str | Path) -> Path:
    """``path`` when it holds an index; a clear error when not."""
    path = Path(path)
    if (path / "index.json").exists():
        return path
    raise CatalogueIndexError(f"no index at {path}; build one with `huse index RUN`")


def build_index(
    vectors: dict[str, np.ndarray],
    items: pd.DataFrame,
    config: IndexConfig | None = None,
    info: dict | None = None,
) -> CatalogueIndex:
    """Build the per-modality FAISS indexes over precomputed embeddings.

    Args:
        vectors: ``{"image": (N, D), "text": (N, D)}`` L2-normalised float32 arrays, row i
            of each belonging to row i of ``items``.
        items: the items' metadata.
        config: index type and training sample.
        info: extra fields for ``index.json`` (model fingerprint, manifest...).
    """
    config = config or IndexConfig()
    n = len(items)
    if n == 0:
        raise CatalogueIndexError("no items to index: every row of the manifest was skipped")
    shapes = {m: v.shape for m, v in vectors.items()}
    if any(s[0] != n for s in shapes.values()) or len({s[1] for s in shapes.values()}) != 1:
        raise CatalogueIndexError(f"vector shapes {shapes} do not match {n} items of one dimension")
    d = next(iter(shapes.values()))[1]
    factory = resolve_factory(config.factory, n, d)
    params = (
        config.search_params if config.search_params is not None else default_search_params(factory)
    )
    t0 = time.perf_counter()
    indexes = {}
    for m in MODALITIES:
        if m in vectors:
            indexes[m] = _build_one(np.asarray(vectors[m], dtype=np.float32), factory, config)
            _apply_search_params(indexes[m], params)
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "factory": factory,
        "requested": config.factory,
        "metric": "inner_product",
        "dim": int(d),
        "count": n,
        "trained_count": n,  # what IVF lists were trained for; an update warns past it
        "modalities": list(indexes),
        "search_params": params,
        "config": asdict(config),
        "seconds_build": round(time.perf_counter() - t0, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    } | (info or {})
    cols = [c for c in ITEM_COLUMNS if c in items.columns]
    return CatalogueIndex(indexes, items[cols].copy(), meta)


def model_fingerprint(model_dir: str | Path) -> str:
    """SHA-256 of the model weights: an index remembers which model made its vectors."""
    h = hashlib.sha256()
    with open(Path(model_dir) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_items(path: str | Path, columns: list[str] | None = None) -> tuple[pd.DataFrame, dict]:
    """The items and ``index.json`` of a saved index, without its FAISS files (checked:
    ``items.parquet``'s checksum); what an update compares a manifest against.
    ``columns``: read only these (those the files hold), e.g. ``["id", "content"]``."""
    path = resolve_index_dir(path)
    info = _read_info(path / "index.json")
    names = [f"{prefix}items.parquet" for prefix, _ in _segments(info)]
    for name in names + ([REMOVED_FILE] if info.get("removed") else []):
        f = path / name
        if not f.is_file() or _file_sha256(f) != info["files"][name]:
            raise CatalogueIndexError(f"{f} is missing or damaged; {_REBUILD}")
    items = _read_items(path, info, columns)
    if len(items) != info["count"]:
        raise CatalogueIndexError(
            f"{path}: the items files hold {len(items)} items but index.json says "
            f"{info['count']}; {_REBUILD}"
        )
    return items, info


def _like(part: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """``part``'s columns cast to ``table``'s dtypes where that works: concatenating
    Arrow-backed columns with other string columns converts every row to Python objects
    (tens of ms for 100k rows), the few new rows cast first cost nothing."""
    out = part.copy()
    for c in part.columns:
        if c in table.columns and part[c].dtype != table[c].dtype:
            with contextlib.suppress(TypeError, ValueError, ArithmeticError):
                out[c] = part[c].astype(table[c].dtype)
    return out


def _appendable(factory: str) -> bool:
    """Whether an update can append a segment to this type (Flat, plain IVF)."""
    if factory == "Flat":
        return True
    parts = factory.split(",")
    return len(parts) == 2 and parts[0].startswith("IVF") and parts[0][3:].isdigit()


def diff_items(
    old_items: pd.DataFrame, ids: np.ndarray, digests: list[str] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """How a catalogue (item ``ids`` with their content ``digests``) differs from an
    index's ``old_items`` (columns ``id`` and, if it has one, ``content``).

    Returns:
        ``(fresh, changed, changed_rows, missing_rows)``: positions in ``ids`` of the new
        items and of the changed ones (same id, other digest; all of them when the index
        has no digests), the old rows of the changed ones, and the old rows whose id is
        no longer in ``ids``. Every other position is unchanged.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    # Arrow's hash lookups, without a conversion to Python strings: pandas' ``isin`` on
    # Arrow-backed strings loops in Python (seconds for 100k items). Ids are unique in
    # an index huse wrote (the manifest's are); a repeated one would match its first row.
    def strings(values) -> pa.Array:
        arr = None
        with contextlib.suppress(pa.ArrowException, TypeError):
            # Arrow-backed strings: no copy; Python strings: one pass in C.
            arr = pa.array(values if isinstance(values, pd.Series) else list(values))
        if arr is None or not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            arr = pa.array(pd.Series(list(values)).astype(str).tolist(), type=pa.large_string())
        # 32-bit offsets hash and compare in about half the time of 64-bit ones; a column
        # over 2 GiB keeps them.
        with contextlib.suppress(pa.ArrowException):
            return arr.cast(pa.string())
        return arr.cast(pa.large_string())

    old_ids, ids = strings(old_items["id"]), strings(ids)
    found = pc.index_in(ids, value_set=old_ids)
    known = found.is_valid().to_numpy(zero_copy_only=False)
    rows = found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    fresh = np.flatnonzero(~known)
    at = np.flatnonzero(known)
    if "content" in old_items.columns:
        same = pc.equal(
            pc.take(strings(old_items["content"]), pa.array(rows[at])),
            pc.take(strings(digests), pa.array(at)),
        )
        changed = at[~same.to_numpy(zero_copy_only=False)]
    else:  # an index from before content digests: every item re-embedded
        changed = at
    # An old row no manifest id found is missing (one hash table, built on the old ids).
    hit = np.zeros(len(old_ids), dtype=bool)
    hit[rows[at]] = True
    missing = np.flatnonzero(~hit)
    return fresh, changed, rows[changed], missing


def update_folder(
    path: str | Path,
    remove: np.ndarray,
    items: pd.DataFrame,
    vectors: dict[str, np.ndarray],
    config: IndexConfig | None = None,
    info: dict | None = None,
    current: tuple[pd.DataFrame, dict] | None = None,
) -> tuple[CatalogueIndex, list[str]]:
    """Update the saved index at ``path``: drop the rows ``remove``, append ``items``.

    Writes a new version of the folder holding the old segment files (hard links, not
    copies), one new segment of ``vectors`` and the new ``items.parquet``, swapped in at
    once like ``save``; or, past ``MAX_SEGMENTS`` / ``COMPACT_FRACTION`` or for a type
    that cannot append (HNSW...), loads the index, updates it in memory (``updated``)
    and saves it whole. The FAISS files of an appended update are not read: a damaged
    one fails its checksum when the index is loaded, as before.

    Args:
        path: a saved index folder.
        remove: rows of its ``items.parquet`` to drop.
        items: the new rows (columns ``ITEM_COLUMNS``).
        vectors: ``{"image": (m, D), "text": (m, D)}`` for ``items``.
        config: the settings of a type that has to be rebuilt.
        info: fields to set in ``index.json`` (the manifest, counts...).
        current: ``load_items(path)`` as the caller read it (the rows ``remove`` refers
            to): not read again when the folder still holds that version. It may hold
            some columns only (``load_items(path, ["id", "content"])``, what an update
            needs to compare): then so do the returned index's items.

    Returns:
        The updated index (its FAISS indexes are not loaded when a segment was
        appended: ``indexes`` is empty; ``load_index(path)`` reads it whole) and
        warnings (an IVF outgrown by the catalogue).
    """
    path = resolve_index_dir(path)
    with writer_lock(path):
        return _update_folder(path, remove, items, vectors, config, info, current)


def _update_folder(path, remove, items, vectors, config, info, current):
    faiss = _faiss()
    old_info = _read_info(path / "index.json")
    files = old_info["files"]
    if current is not None and current[1].get("files") == files:
        old_items = current[0]
    else:
        old_items, _ = load_items(path)  # checksums of the items and removed files checked
    remove = np.unique(np.asarray(remove, dtype=np.int64))
    segments = _segments(old_info)
    removed_old = _read_removed(path, old_info)
    total = sum(n for _, n in segments)
    is_alive = np.ones(total, dtype=bool)
    is_alive[removed_old] = False
    alive = np.flatnonzero(is_alive)  # the slot of each row
    if len(alive) != len(old_items):
        raise CatalogueIndexError(f"{path}: the segments and items.parquet disagree; {_REBUILD}")
    removed = np.union1d(removed_old, alive[remove]).astype(np.int64)
    n_new = len(old_items) - len(remove) + len(items)
    if n_new == 0:
        raise CatalogueIndexError("no items left: the update would remove every item")
    appended = total - segments[0][1] + len(items)
    factory = str(old_info["factory"])
    if (
        not _appendable(factory)
        or len(segments) + 1 > MAX_SEGMENTS
        or appended + len(removed) > COMPACT_FRACTION * n_new
    ):
        index = CatalogueIndex.load(path)
        updated, warnings_ = index.updated(remove, items, vectors, config)
        updated.info |= info or {}
        updated.save(path)
        return updated, warnings_

    import pyarrow.parquet as pq

    keep = np.ones(len(old_items), dtype=bool)
    keep[remove] = False
    # The new segment's items in the built segment's columns, which ``current`` may not
    # all hold.
    schema = pq.read_schema(path / "items.parquet")
    if len(items) == 0:  # removals only: an empty segment of the stored columns and types
        items = schema.empty_table().to_pandas()
    cols = [c for c in schema.names if c in items.columns]
    shared = items[[c for c in old_items.columns if c in items.columns]]
    new_items = pd.concat([old_items[keep], _like(shared, old_items)], ignore_index=True)
    number = int(old_info.get("next_segment", 1))
    prefix = f"d{number}."
    slots = np.arange(total, total + len(items), dtype=np.int64)
    warnings_: list[str] = []
    check_output_dir(path)
    with _staging(path) as tmp:
        new_files = {}
        linked = set()
        for name, sha in files.items():
            if name != REMOVED_FILE:  # segments: unchanged, linked rather than copied
                try:
                    os.link(path / name, tmp / name)
                except OSError:  # a file system without hard links
                    shutil.copy2(path / name, tmp / name)
                new_files[name] = sha
                linked.add(name)
        for m in old_info["modalities"]:
            add = np.ascontiguousarray(vectors[m], dtype=np.float32).reshape(-1, old_info["dim"])
            if factory == "Flat":
                seg = _new_index("Flat", old_info["dim"])
                seg.add(add)
            else:
                # The trained lists of the built segment, emptied (its centroids and
                # quantiser; the codes of one modality, d bytes a vector for SQ8, are read
                # and dropped).
                seg = faiss.read_index(str(path / f"{m}.faiss"))
                seg.reset()
                seg.add_with_ids(add, slots)
                if m == old_info["modalities"][0]:
                    warnings_ += _outgrown(old_info, n_new, seg.nlist)
            faiss.write_index(seg, str(tmp / f"{prefix}{m}.faiss"))
        np.save(tmp / REMOVED_FILE, removed)
        # Only the new segment's items: the others' files are linked.
        items[cols].reset_index(drop=True).to_parquet(tmp / f"{prefix}items.parquet", index=False)
        for f in sorted(tmp.iterdir()):
            if f.name not in new_files and f.name != STAGING_MARKER:
                new_files[f.name] = _file_sha256(f)
        meta = {k: v for k, v in old_info.items() if k != "files"} | (info or {})
        meta |= {
            "version": SEGMENTED_VERSION,
            "count": n_new,
            "segments": [[p, n] for p, n in segments] + [[prefix, len(items)]],
            "next_segment": number + 1,
            "removed": int(len(removed)),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": new_files,
        }
        (tmp / "index.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        _publish(tmp, path, synced=linked)  # the linked files were synced when first written
    return CatalogueIndex({}, new_items, meta), warnings_


def load_index(path: str | Path, search_params: str | None = None) -> CatalogueIndex:
    """Read an index folder (see ``CatalogueIndex.load``)."""
    return CatalogueIndex.load(path, search_params)
