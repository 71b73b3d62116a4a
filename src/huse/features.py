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
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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


class CacheWarning(UserWarning):
    """A damaged cache file was found, set aside, and its items will be recomputed."""


def _shard_digest(keys: np.ndarray, features: np.ndarray) -> str:
    """SHA-256 of a shard's content: the keys (UTF-32 array), the shape and the float32 rows."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(keys, dtype="U64").tobytes())
    h.update(np.asarray(features.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(features, dtype=np.float32).tobytes())
    return h.hexdigest()


# A temporary shard file older than this belongs to a writer that died (SIGKILL, power
# loss); younger ones may be another process's write in progress.
STALE_TMP_SECONDS = 3600


class FeatureStore:
    """Features of one backbone version, keyed by content hash, stored as npz shards.

    Each shard holds ``keys``, ``features`` and ``sha256`` (a digest of the two). A shard
    that does not open, lacks a member, has mismatched shapes or fails its digest is
    *damaged*: it is renamed to ``*.npz.damaged``, listed in ``damaged`` with the reason,
    reported as a ``CacheWarning`` naming the file, and its items count as missing, so
    the next extraction recomputes exactly those items and nothing else. Keys are checked
    when the folder is scanned; the features' digest when a shard is first read
    (``verify`` or ``get``).

    Args:
        root: the cache folder (shared by all backbones; each gets a subfolder).
        version: the backbone's version string (name, weights, preprocessing).
    """

    def __init__(self, root: str | Path, version: str) -> None:
        self.version = version
        self.dir = Path(root) / _slug(version)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, tuple[Path, int]] | None = None
        self._verified: set[Path] = set()
        self.damaged: list[tuple[Path, str]] = []

    def _set_aside(self, shard: Path, reason: str) -> None:
        """Report a damaged shard by name and move it out of the way of later scans."""
        target = shard.with_name(shard.name + ".damaged")
        try:
            os.replace(shard, target)
            where = f"moved to {target.name}"
        except OSError:  # another process moved it already, or a read-only cache
            where = "left in place"
        self.damaged.append((shard, reason))
        warnings.warn(
            f"damaged feature cache shard {shard} ({reason}); {where}, its items will be "
            "recomputed",
            CacheWarning,
            stacklevel=3,
        )

    def _remove_stale_tmp(self) -> None:
        now = time.time()
        for tmp in self.dir.glob(".shard-*.tmp"):
            try:
                if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                    tmp.unlink()
            except OSError:
                pass

    def _scan(self) -> dict[str, tuple[Path, int]]:
        self._remove_stale_tmp()
        index: dict[str, tuple[Path, int]] = {}
        for shard in sorted(self.dir.glob("shard-*.npz")):
            try:
                with open(shard, "rb") as fh:
                    if fh.read(4) != b"PK\x03\x04":
                        raise ValueError("not an npz file (no zip header)")
                with np.load(shard) as z:
                    keys = z["keys"]
                    missing = {"features"} - set(z.files)
                if missing:
                    raise ValueError(f"missing {sorted(missing)}")
                if keys.ndim != 1:
                    raise ValueError(f"keys of shape {keys.shape}")
            except Exception as e:  # truncated, not a zip, a bad member: all mean damaged
                self._set_aside(shard, f"unreadable: {type(e).__name__}: {e}")
                continue
            for i, k in enumerate(keys):
                index[str(k)] = (shard, i)
        return index

    def _read(self, shard: Path) -> np.ndarray | None:
        """A shard's features after checking its digest; None (and set aside) when damaged.

        A shard this store already verified (or wrote) is not hashed again: extraction
        verifies the shards it needs up front and reads them once more at the end.
        """
        try:
            with np.load(shard) as z:
                keys, feats = z["keys"], z["features"]
                # Shards written before digests existed rely on the zip's CRC-32 alone.
                digest = str(z["sha256"]) if "sha256" in z.files else None
            if feats.ndim != 2 or len(feats) != len(keys):
                raise ValueError(f"{len(keys)} keys but features of shape {feats.shape}")
            if (
                digest is not None
                and shard not in self._verified
                and _shard_digest(keys, feats) != digest
            ):
                raise ValueError("sha256 checksum mismatch")
        except Exception as e:
            self._set_aside(shard, f"{type(e).__name__}: {e}")
            self._forget(shard)
            return None
        self._verified.add(shard)
        return feats

    def _forget(self, shard: Path) -> None:
        if self._index is not None:
            self._index = {k: v for k, v in self._index.items() if v[0] != shard}

    @property
    def index(self) -> dict[str, tuple[Path, int]]:
        if self._index is None:
            self._index = self._scan()
        return self._index

    def refresh(self) -> None:
        self._index = None
        self._verified.clear()

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def verify(self, keys: Sequence[str | None]) -> list[Path]:
        """Check the digest of every shard holding one of ``keys`` (each shard once).

        A damaged shard is set aside and its keys leave the index, so ``key in store`` is
        False for them afterwards. Returns the damaged shards found by this call.
        """
        before = len(self.damaged)
        shards = {self.index[k][0] for k in keys if k is not None and k in self.index}
        for shard in sorted(shards - self._verified):
            self._read(shard)
        return [p for p, _ in self.damaged[before:]]

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Features for ``keys`` (all must be present), in order, as float32.

        Raises:
            KeyError: a key is missing, or its shard turned out to be damaged (it was set
                aside and reported; extract again to recompute its items).
        """
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for pos, k in enumerate(keys):
            shard, row = self.index[k]
            by_shard.setdefault(shard, []).append((pos, row))
        out: np.ndarray | None = None
        for shard, pairs in by_shard.items():
            feats = self._read(shard)
            if feats is None:
                raise KeyError(
                    f"feature cache shard {shard} is damaged and was set aside; run the "
                    "extraction again to recompute its items"
                )
            if out is None:
                out = np.empty((len(keys), feats.shape[1]), dtype=np.float32)
            pos, rows = zip(*pairs)
            out[list(pos)] = feats[list(rows)]
        if out is None:
            return np.empty((0, 0), dtype=np.float32)
        return out

    def put(self, keys: Sequence[str], features: np.ndarray) -> None:
        """Write one shard atomically, with the digest of its content."""
        if len(keys) == 0:
            return
        path = self.dir / f"shard-{uuid.uuid4().hex}.npz"
        k = np.asarray(keys, dtype="U64")
        f32 = np.ascontiguousarray(features, dtype=np.float32)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, keys=k, features=f32, sha256=np.asarray(_shard_digest(k, f32)))
        self._verified.add(path)
        if self._index is not None:
            for i, key in enumerate(keys):
                self._index[key] = (path, i)


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
    # Damaged cache shards found (set aside, their items recomputed), by file name.
    damaged_shards: list[str] = field(default_factory=list)


def _verify(store: FeatureStore, keys: Sequence[str | None], stats: ExtractStats | None) -> None:
    """Check the shards this extraction will read, so a damaged one is recomputed now."""
    store.verify(keys)
    if stats is not None:
        stats.damaged_shards += [
            str(p) for p, _ in store.damaged if str(p) not in stats.damaged_shards
        ]


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
    _verify(store, keys, stats)
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
    _verify(store, keys, stats)
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
