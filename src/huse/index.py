"""The catalogue index: every item's image and text embedding in FAISS, its metadata beside.

Design: one FAISS index per modality (``image.faiss``, ``text.faiss``), both holding the
same N items in the same order, so FAISS id ``i`` is row ``i`` of ``items.parquet`` in
either index. Searching ``image`` or ``text`` asks one index; ``both`` asks the two and
keeps each item once, at the better of its two scores (the hit's ``modality`` says which
vector matched). Two indexes rather than one of 2N vectors keep approximate types honest:
an IVF or HNSW structure trained on one modality's distribution, and no filtered search.

Vectors are L2-normalised, so the metric is inner product and a score is the cosine.

A built index is a folder::

    index/
      index.json      what was built: factory, dim, counts, model fingerprint, manifest
      items.parquet   row, id, image (absolute path), text, classes, split
      image.faiss     FAISS index of the image embeddings
      text.faiss      FAISS index of the text embeddings

It is written to a temporary sibling folder and swapped into place, so a reader sees the
old complete index or the new complete one, and an interrupted build leaves the old one.
``CatalogueIndex.load(path)`` reads it back in one call. FAISS is imported lazily:
``import huse`` never loads it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from huse.model import HUSEModel

FORMAT_VERSION = 1
MODALITIES = ("image", "text")
SEARCH_MODALITIES = ("image", "text", "both")
ITEM_COLUMNS = ("row", "id", "image", "text", "classes", "split")


class CatalogueIndexError(ValueError):
    """An index cannot be built or read; the message says why and what to do."""


# -- index types by name --------------------------------------------------------------
_INDEX_TYPES: dict[str, Callable[[int, int], str]] = {}


def register_index_type(name: str):
    """Register ``fn(n_vectors, dim) -> FAISS factory string`` under ``name``."""

    def deco(fn: Callable[[int, int], str]) -> Callable[[int, int], str]:
        _INDEX_TYPES[name] = fn
        return fn

    return deco


def list_index_types() -> list[str]:
    return sorted(_INDEX_TYPES)


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
    fn = _INDEX_TYPES.get(factory.strip().lower())
    return fn(n, d) if fn is not None else factory.strip()


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


@dataclass
class IndexConfig:
    """How the index is built.

    Args:
        factory: a registered type (``auto``, ``flat``, ``hnsw``, ``ivfflat``, ``ivfpq``;
            sized to the catalogue) or any FAISS factory string (``HNSW32``,
            ``IVF1024,PQ32``, ``IVF256,PQ16,RFlat``...), which overrides the sizing.
        train_size: types that need training (IVF, PQ) train on at most this many vectors,
            a seeded random sample.
        search_params: FAISS search parameters (``nprobe=32``, ``efSearch=256``); None:
            chosen by type for high recall.
        seed: seed of the training sample.
    """

    factory: str = "auto"
    train_size: int = 100_000
    search_params: str | None = None
    seed: int = 0


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - the extra is part of the dev install
        raise ImportError(
            "building or reading an index needs FAISS: pip install 'huse[index]'"
        ) from e
    return faiss


def _build_one(vectors: np.ndarray, factory: str, config: IndexConfig):
    faiss = _faiss()
    n, d = vectors.shape
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise CatalogueIndexError(
            f"FAISS cannot build {factory!r} for {d}-dim vectors: {_faiss_msg(e)}. "
            f"Use a registered type ({', '.join(list_index_types())}) or a valid factory "
            "string; PQm needs m to divide the dimension"
        ) from None
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
        index.add(np.ascontiguousarray(vectors[s : s + ADD_BLOCK], dtype=np.float32))
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

    def search(
        self, queries: np.ndarray, k: int = 10, modality: str = "image"
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nearest items of each query.

        Args:
            queries: (q, D) L2-normalised float32 vectors.
            k: results per query (clamped to the catalogue size).
            modality: ``image``, ``text`` or ``both`` (each item once, at its best score).

        Returns:
            ``(scores, rows, modalities)``, each (q, k); a missing result (an approximate
            index that found fewer than k) has row -1 and score -inf.
        """
        if modality not in SEARCH_MODALITIES:
            raise ValueError(f"modality must be one of {SEARCH_MODALITIES}, not {modality!r}")
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.dim))
        k = max(1, min(int(k), len(self)))
        names = MODALITIES if modality == "both" else (modality,)
        scores, rows, codes = [], [], []
        for name in names:
            s, r = self.indexes[name].search(q, k)
            scores.append(np.where(r >= 0, s, -np.inf).astype(np.float32))
            rows.append(r)
            codes.append(np.full(r.shape, MODALITIES.index(name)))
        if len(names) == 1:
            return scores[0], rows[0], np.array(MODALITIES)[codes[0]]
        return _merge_best(np.hstack(scores), np.hstack(rows), np.hstack(codes), k)

    # -- save / load -------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the index folder atomically (see the module docstring); returns its path."""
        faiss = _faiss()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
        try:
            self.items.to_parquet(tmp / "items.parquet", index=False)
            for m, ix in self.indexes.items():
                faiss.write_index(ix, str(tmp / f"{m}.faiss"))
            # index.json last: its presence marks a complete folder, and it holds the
            # SHA-256 of every other file, so a damaged one is caught on load.
            files = {f.name: _file_sha256(f) for f in sorted(tmp.iterdir())}
            info = self.info | {"files": files}
            (tmp / "index.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            os.chmod(tmp, 0o755)
            _swap_in(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | Path, search_params: str | None = None) -> CatalogueIndex:
        """Read an index folder, or a run folder's ``index/``.

        Args:
            path: the index folder or a run folder holding one.
            search_params: override the stored FAISS search parameters.
        """
        faiss = _faiss()
        path = resolve_index_dir(path)
        rebuild = "rebuild the index with `huse index RUN` (the model is not retrained)"
        try:
            info = json.loads((path / "index.json").read_text(encoding="utf-8"))
            if not isinstance(info, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise CatalogueIndexError(
                f"{path / 'index.json'} is damaged ({type(e).__name__}: {e}); {rebuild}"
            ) from None
        if info.get("format") != FORMAT_VERSION:
            raise CatalogueIndexError(
                f"{path}: index format {info.get('format')!r}, this huse reads "
                f"{FORMAT_VERSION}; rebuild it with `huse index RUN`"
            )
        names = ["items.parquet"] + [f"{m}.faiss" for m in info.get("modalities", [])]
        for name in names:
            f = path / name
            if not f.is_file():
                raise CatalogueIndexError(f"{f} is missing; {rebuild}")
            want = info.get("files", {}).get(name)  # indexes written before checksums: none
            if want is not None and _file_sha256(f) != want:
                raise CatalogueIndexError(
                    f"{f} is damaged (its SHA-256 differs from index.json's); {rebuild}"
                )
        try:
            items = pd.read_parquet(path / "items.parquet")
        except Exception as e:  # pyarrow raises several unrelated types
            raise CatalogueIndexError(
                f"{path / 'items.parquet'} is unreadable ({e}); {rebuild}"
            ) from None
        indexes = {}
        for m in info["modalities"]:
            try:
                indexes[m] = faiss.read_index(str(path / f"{m}.faiss"))
            except Exception as e:  # FAISS raises RuntimeError with its C++ message
                raise CatalogueIndexError(
                    f"{path / f'{m}.faiss'} is unreadable ({_faiss_msg(e)}); {rebuild}"
                ) from None
            if indexes[m].d != info.get("dim"):
                raise CatalogueIndexError(
                    f"{path / f'{m}.faiss'} holds {indexes[m].d}-dim vectors but index.json "
                    f"says {info.get('dim')}; {rebuild}"
                )
        params = info.get("search_params", "") if search_params is None else search_params
        for ix in indexes.values():
            _apply_search_params(ix, params)
        return cls(indexes, items, info)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def _swap_in(tmp: Path, path: Path) -> None:
    if not path.exists():
        os.replace(tmp, path)
        return
    if not (path / "index.json").exists() and any(path.iterdir()):
        raise CatalogueIndexError(
            f"{path} exists and is not a huse index; choose another --out or remove it"
        )
    old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
    os.replace(path, old / "index")
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def resolve_index_dir(path: str | Path) -> Path:
    """An index folder, or the ``index/`` of a run folder; a clear error when neither."""
    path = Path(path)
    if (path / "index.json").exists():
        return path
    if (path / "index" / "index.json").exists():
        return path / "index"
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
        "format": FORMAT_VERSION,
        "factory": factory,
        "requested": config.factory,
        "metric": "inner_product",
        "dim": int(d),
        "count": n,
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


def model_dir_of(run: str | Path) -> Path:
    run = Path(run)
    return run / "model" if (run / "model" / "config.json").exists() else run


def embed_catalogue(
    model: HUSEModel,
    manifest: str | Path,
    data_config=None,
    *,
    progress: bool = True,
    batch_size: int = 4096,
) -> tuple[pd.DataFrame, dict[str, np.ndarray], pd.DataFrame]:
    """Embed every valid item of a manifest with a trained model.

    Backbone features come from the content-keyed cache (computed once per image and
    text); only the towers run here. Every valid item is kept, also those of classes the
    model never saw: a catalogue is searched by its embeddings, not its labels.

    Returns:
        ``(items, {"image": (N, D), "text": (N, D)}, skipped rows)``.
    """
    from tqdm.auto import tqdm

    from huse.dataset import DataConfig, build_feature_set

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
    return fs.items, out, fs.skipped


def index_run(
    run: str | Path,
    manifest: str | Path | None = None,
    config: IndexConfig | None = None,
    *,
    out: str | Path | None = None,
    progress: bool = True,
) -> tuple[CatalogueIndex, Path]:
    """Embed a run's catalogue (its manifest, or another) and write ``RUN/index``.

    Args:
        run: a run folder from ``huse fit`` (or a bare model folder with ``manifest``).
        manifest: the catalogue; None: the manifest the run was trained on.
        config: index type.
        out: where to write the index folder (default ``RUN/index``).
        progress: show progress bars.

    Returns:
        The index and the folder it was written to.
    """
    from huse.dataset import DataConfig
    from huse.model import HUSEModel

    run = Path(run)
    model_dir = model_dir_of(run)
    model = HUSEModel.load(model_dir)
    if manifest is None:
        if not (run / "run.json").exists():
            raise CatalogueIndexError(f"{run} has no run.json naming its manifest; pass --manifest")
        manifest = json.loads((run / "run.json").read_text())["manifest"]
    data_config = None
    if (run / "data_config.json").exists():
        data_config = DataConfig.from_dict(json.loads((run / "data_config.json").read_text()))
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
    index = build_index(vectors, items, config, info)
    target = Path(out) if out is not None else run / "index"
    index.save(target)
    return index, target


def load_index(path: str | Path, search_params: str | None = None) -> CatalogueIndex:
    """Read an index folder or a run's ``index/`` (see ``CatalogueIndex.load``)."""
    return CatalogueIndex.load(path, search_params)
