"""The content-keyed, resumable feature cache and the extraction that fills it.

Frozen backbones run once per distinct input. A feature is stored under
``sha256(backbone version, content)`` where content is the image file's bytes or the text,
so a second run over the same manifest computes nothing, a changed row recomputes only
that row, and several manifests (or runs, or methods) share one cache.

Each extraction batch is written as its own shard file, atomically; an interrupted run
keeps every finished shard and resumes with the rest. Under ``torchrun`` each rank takes
a strided share of the missing items and writes its own shards.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from huse._dist import barrier
from huse._dist import setup as dist_setup
from huse._io import atomic_path
from huse.data.images import DEFAULT_MAX_PIXELS, ImageError, load_image


def default_cache_dir() -> Path:
    """``$HUSE_CACHE``, else ``~/.cache/huse``."""
    return Path(os.environ.get("HUSE_CACHE", Path.home() / ".cache" / "huse"))


def _slug(version: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", version.split("/")[0])[:40]
    return f"{readable}-{hashlib.sha256(version.encode()).hexdigest()[:12]}"


def content_key(version: str, content: bytes) -> str:
    h = hashlib.sha256()
    h.update(version.encode())
    h.update(b"\0")
    h.update(content)
    return h.hexdigest()


class FeatureStore:
    """Features of one backbone version, keyed by content hash, stored as npz shards.

    Args:
        root: the cache folder (shared by all backbones; each gets a subfolder).
        version: the backbone's version string (name, weights, preprocessing).
    """

    def __init__(self, root: str | Path, version: str) -> None:
        self.version = version
        self.dir = Path(root) / _slug(version)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, tuple[Path, int]] | None = None

    def _scan(self) -> dict[str, tuple[Path, int]]:
        index: dict[str, tuple[Path, int]] = {}
        for shard in sorted(self.dir.glob("shard-*.npz")):
            try:
                with np.load(shard) as z:
                    keys = z["keys"]
            except Exception:  # a damaged shard only costs a recompute of its items
                continue
            for i, k in enumerate(keys):
                index[str(k)] = (shard, i)
        return index

    @property
    def index(self) -> dict[str, tuple[Path, int]]:
        if self._index is None:
            self._index = self._scan()
        return self._index

    def refresh(self) -> None:
        self._index = None

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Features for ``keys`` (all must be present), in order, as float32."""
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for pos, k in enumerate(keys):
            shard, row = self.index[k]
            by_shard.setdefault(shard, []).append((pos, row))
        out: np.ndarray | None = None
        for shard, pairs in by_shard.items():
            with np.load(shard) as z:
                feats = z["features"]
            if out is None:
                out = np.empty((len(keys), feats.shape[1]), dtype=np.float32)
            pos, rows = zip(*pairs)
            out[list(pos)] = feats[list(rows)]
        if out is None:
            return np.empty((0, 0), dtype=np.float32)
        return out

    def put(self, keys: Sequence[str], features: np.ndarray) -> None:
        """Write one shard atomically."""
        if len(keys) == 0:
            return
        path = self.dir / f"shard-{uuid.uuid4().hex}.npz"
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, keys=np.asarray(keys, dtype="U64"), features=features.astype(np.float32))
        if self._index is not None:
            for i, k in enumerate(keys):
                self._index[k] = (path, i)


class _ImageDataset(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], preprocess: Callable, max_pixels: int) -> None:
        self.paths, self.preprocess, self.max_pixels = paths, preprocess, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.preprocess(load_image(self.paths[i], max_pixels=self.max_pixels)), ""
        except ImageError as e:
            return i, None, str(e)
        except Exception as e:  # never let one file stop the run
            return i, None, f"unreadable image: {type(e).__name__}: {e}"


def _collate(batch):
    return batch


@dataclass
class ExtractStats:
    images_total: int = 0
    images_computed: int = 0
    texts_total: int = 0
    texts_computed: int = 0
    seconds_images: float = 0.0
    seconds_texts: float = 0.0


def hash_image_files(paths: Sequence[str], version: str) -> tuple[list[str | None], dict[int, str]]:
    """Content keys of image files; unreadable files give None and a reason."""
    keys: list[str | None] = []
    errors: dict[int, str] = {}
    for i, p in enumerate(paths):
        try:
            keys.append(content_key(version, Path(p).read_bytes()))
        except OSError as e:
            keys.append(None)
            errors[i] = f"image file not readable: {e.strerror or e}"
    return keys, errors


def extract_images(
    paths: Sequence[str],
    backbone,
    store: FeatureStore,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    stats: ExtractStats | None = None,
    keys: Sequence[str | None] | None = None,
    key_errors: dict[int, str] | None = None,
) -> tuple[np.ndarray, dict[int, str]]:
    """Image features for ``paths`` (rows of failed images are zero) and the failures.

    Args:
        keys: content keys from ``hash_image_files`` when the caller has them already
            (with ``key_errors``), so files are not read twice.

    Returns:
        (N×D features, {position: reason} for images that could not be used).
    """
    import time

    t0 = time.perf_counter()
    if keys is None:
        keys, errors = hash_image_files(paths, store.version)
    else:
        keys, errors = list(keys), dict(key_errors or {})
    rank, world = dist_setup()
    seen: set[str] = set()
    todo = []
    for i, k in enumerate(keys):
        if k is not None and k not in store and k not in seen:
            seen.add(k)
            todo.append(i)
    mine = todo[rank::world]
    if stats is not None:
        stats.images_total += len(paths)
    if mine:
        ds = _ImageDataset([paths[i] for i in mine], backbone.preprocess, max_pixels)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate
        )
        bar = tqdm(
            total=len(mine),
            desc=f"images ({backbone.name})",
            unit="img",
            disable=not progress or rank != 0,
            dynamic_ncols=True,
        )
        for batch in loader:
            ok = [(j, x) for j, x, err in batch if x is not None]
            for j, x, err in batch:
                if x is None:
                    errors[mine[j]] = err
            if ok:
                feats = backbone.forward(torch.stack([x for _, x in ok])).numpy()
                store.put([keys[mine[j]] for j, _ in ok], feats)
                # Only forward passes count: an undecodable file is retried (cheaply) on
                # every run, but a rerun over a cached manifest still computes nothing.
                if stats is not None:
                    stats.images_computed += len(ok)
            bar.update(len(batch))
        bar.close()
    barrier()
    if world > 1:
        store.refresh()
        # Failures found by other ranks: decoding again is cheap next to the forward pass.
        for i in todo:
            if i not in errors and keys[i] not in store:
                errors[i] = "image could not be decoded"
    # Items whose content failed elsewhere but share a key with a failed one.
    good = [i for i, k in enumerate(keys) if i not in errors and k in store]
    for i, k in enumerate(keys):
        if i not in errors and k not in store:
            errors[i] = "image could not be decoded"
    dim = backbone.dim
    out = np.zeros((len(paths), dim), dtype=np.float32)
    if good:
        out[good] = store.get([keys[i] for i in good])
    if stats is not None:
        stats.seconds_images += time.perf_counter() - t0
    return out, errors


def extract_texts(
    texts: Sequence[str],
    backbone,
    store: FeatureStore,
    *,
    batch_size: int = 64,
    progress: bool = True,
    stats: ExtractStats | None = None,
) -> np.ndarray:
    """Text features for ``texts`` (N×D), computed once per distinct text."""
    import time

    t0 = time.perf_counter()
    keys = [content_key(store.version, t.encode("utf-8")) for t in texts]
    rank, world = dist_setup()
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k not in store and k not in first:
            first[k] = i
    todo = list(first.values())[rank::world]
    if stats is not None:
        stats.texts_total += len(texts)
        stats.texts_computed += len(todo)
    if todo:
        prepared = {i: backbone.prepare(texts[i]) for i in todo}
        # Similar lengths together: less padding, faster batches.
        todo.sort(key=lambda i: len(prepared[i]))
        bar = tqdm(
            total=len(todo),
            desc=f"texts ({backbone.name})",
            unit="text",
            disable=not progress or rank != 0,
            dynamic_ncols=True,
        )
        for s in range(0, len(todo), batch_size):
            chunk = todo[s : s + batch_size]
            feats = backbone.forward([prepared[i] for i in chunk]).numpy()
            store.put([keys[i] for i in chunk], feats)
            bar.update(len(chunk))
        bar.close()
    barrier()
    if world > 1:
        store.refresh()
    out = store.get(keys) if keys else np.zeros((0, backbone.dim), dtype=np.float32)
    if stats is not None:
        stats.seconds_texts += time.perf_counter() - t0
    return out
