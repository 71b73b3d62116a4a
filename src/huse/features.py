"""The content-keyed, resumable feature cache and the extraction that fills it.

Frozen backbones run once per distinct input. A feature is stored under
``sha256(backbone version, content)`` where content is the image file's bytes or the text,
so a second run over the same manifest computes nothing, a changed row recomputes only
that row, and several manifests (or runs, or methods) share one cache.

Each extraction batch is written as its own shard file, atomically; an interrupted run
keeps every finished shard and resumes with the rest. Under ``torchrun`` each rank takes
a strided share of the missing items and writes its own shards. Independent processes
extracting into one cache at once claim each batch with a lock file first, so no item is
computed twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import stat
import time
import uuid
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from huse._dist import barrier
from huse._dist import setup as dist_setup
from huse._io import atomic_path
from huse.backbones.base import load_pixels
from huse.config import DEFAULT_MAX_IMAGE_FILE_BYTES
from huse.data.images import DEFAULT_MAX_PIXELS, ImageError

# A file listed as an image that is larger than this is refused from its size alone,
# before a byte is read: no picture a backbone can use needs more, and hashing or
# decoding a multi-gigabyte file only wastes time and memory.
_HASH_BLOCK = 2**20


def default_cache_dir() -> Path:
    """``$HUSE_CACHE``, else ``~/.cache/huse``."""
    return Path(os.environ.get("HUSE_CACHE", Path.home() / ".cache" / "huse"))


def _slug(version: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", version.split("/")[0])[:40]
    return f"{readable}-{hashlib.sha256(version.encode()).hexdigest()[:12]}"


def _key_hasher(version: str):
    h = hashlib.sha256()
    h.update(version.encode())
    h.update(b"\0")
    return h


def content_key(version: str, content: bytes) -> str:
    """``sha256(version, NUL, content)``: the cache key of one input."""
    h = _key_hasher(version)
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
# A batch lock older than this is taken over even when its holder looks alive (it runs on
# another host, or hangs): no batch takes this long. A lock whose holder died on this host
# is taken over at once.
STALE_LOCK_SECONDS = 1800
# The fields of huse's lock records; a file at a lock's name without them is not huse's.
LOCK_KEYS = frozenset({"pid", "host", "time", "token"})
# A lock is written right after it is created; an unreadable one older than this is foreign.
FOREIGN_LOCK_SECONDS = 60.0
_LOCK_POLL_SECONDS = 0.1

# Shards written since shard names were bound to their content: ``shard-<40 hex>.npz``,
# named for the batch's keys, with a ``name`` member repeating the file name. Older
# shards have random names of 32 hex digits and no ``name``; they are still read.
_NAMED_SHARD = re.compile(r"shard-[0-9a-f]{40}\.npz")


def shard_name(unit: Sequence[str]) -> str:
    """The file name of the shard holding the batch of keys ``unit`` (in order)."""
    h = hashlib.sha256()
    for k in unit:
        h.update(k.encode())
        h.update(b"\n")
    return f"shard-{h.hexdigest()[:40]}.npz"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


class FeatureStore:
    """Features of one backbone version, keyed by content hash, stored as npz shards.

    Each shard holds ``keys``, ``features``, ``sha256`` (a digest of the two) and ``name``
    (its own file name, which derives from its batch's keys). A shard that does not open,
    lacks a member, has mismatched shapes or fails its digest is *damaged*, and so is a
    valid shard found under another shard's name (*replaced*): it is renamed to
    ``*.npz.damaged``, listed in ``damaged`` with the reason, reported as a
    ``CacheWarning`` naming the file, and its items count as missing, so the next
    extraction recomputes exactly those items and nothing else. Keys and names are checked
    when the folder is scanned; the features' digest when a shard is first read
    (``verify`` or ``get``).

    Processes sharing the cache claim a batch before computing it with a lock file
    ``shard-<digest>.lock`` (``claim``); a lock whose process died, or older than
    ``STALE_LOCK_SECONDS``, is taken over.

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
        self._shards: set[Path] = set()  # the shards in the index
        self.damaged: list[tuple[Path, str]] = []
        self._token = uuid.uuid4().hex  # tells this store's locks from others' of this pid

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

    def _shard_keys(self, shard: Path) -> np.ndarray:
        """A shard's keys after the cheap checks; raises when it is damaged or replaced."""
        with open(shard, "rb") as fh:
            if fh.read(4) != b"PK\x03\x04":
                raise ValueError("not an npz file (no zip header)")
        with np.load(shard) as z:
            keys = z["keys"]
            missing = {"features"} - set(z.files)
            stored = str(z["name"]) if "name" in z.files else None
        if missing:
            raise ValueError(f"missing {sorted(missing)}")
        if keys.ndim != 1:
            raise ValueError(f"keys of shape {keys.shape}")
        if stored is not None and stored != shard.name:
            raise ValueError(f"replaced: it holds the items of shard {stored}")
        if stored is None and _NAMED_SHARD.fullmatch(shard.name):
            raise ValueError("replaced: an older shard without its own name under this name")
        return keys

    def _add(self, shard: Path, index: dict[str, tuple[Path, int]]) -> bool:
        try:
            keys = self._shard_keys(shard)
        except FileNotFoundError:  # moved aside by another process meanwhile
            return False
        except Exception as e:  # truncated, not a zip, a bad member: all mean damaged
            self._set_aside(shard, f"unreadable: {type(e).__name__}: {e}")
            return False
        for i, k in enumerate(keys):
            index[str(k)] = (shard, i)
        self._shards.add(shard)
        return True

    def _scan(self) -> dict[str, tuple[Path, int]]:
        self._remove_stale_tmp()
        for lock in self.dir.glob("shard-*.lock"):
            self._break_stale(lock)
        index: dict[str, tuple[Path, int]] = {}
        self._shards = set()
        for shard in sorted(self.dir.glob("shard-*.npz")):
            self._add(shard, index)
        return index

    def add_shard(self, shard: Path) -> bool:
        """Index one shard (written by another process since the scan), if it is there."""
        return shard.is_file() and self._add(shard, self.index)

    def update(self) -> None:
        """Index the shards other processes wrote since the last scan."""
        if self._index is None:
            return  # the next use scans everything anyway
        for shard in sorted(self.dir.glob("shard-*.npz")):
            if shard not in self._shards:
                self._add(shard, self._index)

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
        self._shards.discard(shard)
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

    def put(
        self, keys: Sequence[str], features: np.ndarray, *, unit: Sequence[str] | None = None
    ) -> Path | None:
        """Write one shard atomically, with the digest of its content and its own name.

        Args:
            unit: the keys of the batch claimed for this shard (``keys`` are the ones that
                succeeded); the shard is named for them. Defaults to ``keys``.
        """
        if len(keys) == 0:
            return None
        unit = list(keys if unit is None else unit)
        name = shard_name(unit)
        if (self.dir / name).exists() or (self.dir / f"{name}.damaged").exists():
            # Recomputing a damaged shard, or a batch another process wrote anyway (its
            # lock went stale): a fresh name, so no file is replaced or mistaken for it.
            name = shard_name([*unit, uuid.uuid4().hex])
        path = self.dir / name
        k = np.asarray(keys, dtype="U64")
        f32 = np.ascontiguousarray(features, dtype=np.float32)
        digest = np.asarray(_shard_digest(k, f32))
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, keys=k, features=f32, sha256=digest, name=np.asarray(name))
        self._verified.add(path)
        if self._index is not None:
            for i, key in enumerate(keys):
                self._index[key] = (path, i)
            self._shards.add(path)
        return path

    # --- batch locks: one process computes a batch, the others skip it ---------------

    def _lock_path(self, unit: Sequence[str]) -> Path:
        return self.dir / (shard_name(unit)[: -len(".npz")] + ".lock")

    @staticmethod
    def _read_lock(lock: Path) -> tuple[float, dict | None] | None:
        """(age in seconds, the lock record if it is one of huse's) or None when gone."""
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return None
        except OSError:
            return 0.0, None
        try:
            info = json.loads(lock.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return age, None
        ok = isinstance(info, dict) and set(info) >= LOCK_KEYS
        return age, info if ok else None

    def _lock_is_stale(self, lock: Path) -> bool:
        """True when ``lock`` is gone, or is huse's and its process died on this host or it
        is too old. Only huse's own lock records (checked by their fields) are ever broken."""
        read = self._read_lock(lock)
        if read is None:
            return True
        age, info = read
        if info is None:  # being written this instant, or not a lock of huse's
            return False
        if age > STALE_LOCK_SECONDS:
            return True
        try:
            if info["host"] == socket.gethostname():
                return not _pid_alive(int(info["pid"]))
        except (ValueError, TypeError):
            pass
        return False

    def _is_foreign(self, lock: Path) -> bool:
        """A file at a lock's name that huse did not write: not a lock record, and older
        than the moment between a lock's creation and its write. Left alone, never waited on."""
        read = self._read_lock(lock)
        return read is not None and read[1] is None and read[0] > FOREIGN_LOCK_SECONDS

    def _break_stale(self, lock: Path) -> bool:
        """Remove ``lock`` if stale; True when it is gone (the batch may be claimed)."""
        if not self._lock_is_stale(lock):
            return False
        aside = lock.with_name(f"{lock.name}.{uuid.uuid4().hex}.stale")
        try:
            os.rename(lock, aside)  # atomic: of two processes breaking it, one wins
        except FileNotFoundError:
            return True
        except OSError:
            return False
        if not self._lock_is_stale(aside):
            # Another process broke it first and wrote a fresh lock, which we just moved:
            # put that one back (link never replaces an existing file).
            with contextlib.suppress(OSError):
                os.link(aside, lock)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def claim(self, unit: Sequence[str]) -> Path | None:
        """Claim the batch ``unit`` with an atomic lock file holding pid, host and time.

        Returns the lock (give it to ``release``), or None while another live process
        holds the batch.
        """
        lock = self._lock_path(unit)
        for _ in range(3):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._is_foreign(lock):
                    # Compute the batch unclaimed; ``release`` leaves the file alone, as its
                    # token is not ours.
                    return lock
                if not self._break_stale(lock):
                    return None
                continue
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "time": time.time(),
                "token": self._token,
            }
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(info, f)
            return lock
        return None

    def release(self, lock: Path) -> None:
        """Remove a lock from ``claim``, unless another process has taken it over since."""
        try:
            if json.loads(lock.read_text(encoding="utf-8")).get("token") == self._token:
                lock.unlink()
        except (OSError, ValueError, AttributeError):
            pass

    def wait_unclaimed(self, unit: Sequence[str]) -> None:
        """Wait while another live process holds the batch ``unit`` (bounded by staleness)."""
        lock = self._lock_path(unit)
        while lock.exists() and not self._lock_is_stale(lock) and not self._is_foreign(lock):
            time.sleep(_LOCK_POLL_SECONDS)


class _Claims:
    """Batches (lists of item positions) claimed one at a time in a shared store.

    ``batches`` yields, for each batch it could claim, the positions still missing from
    the store (another process may have written them meanwhile); a batch another process
    holds is deferred. ``next_round`` waits for the deferred ones and hands them back to
    check again, so every item ends up computed by exactly one process.
    """

    def __init__(self, store: FeatureStore, keys: Sequence[str | None], crowded: bool) -> None:
        self.store, self.keys = store, keys
        self.held: dict[int, tuple[Path, list[str]]] = {}
        self.deferred: list[list[int]] = []
        # Once another process is seen at work, look for its new shards before each
        # batch: its batches need not line up with ours.
        self.crowded = crowded

    def _missing(self, unit: list[int]) -> list[int]:
        return [i for i in unit if self.keys[i] not in self.store]

    def batches(self, units: list[list[int]]):
        for unit in units:
            ukeys = [self.keys[i] for i in unit]
            lock = self.store.claim(ukeys)
            if lock is None:
                self.crowded = True
                self.deferred.append(unit)
                continue
            if self.store.add_shard(self.store.dir / shard_name(ukeys)):
                self.crowded = True
            if self.crowded:
                self.store.update()
            todo = self._missing(unit)
            if not todo:
                self.store.release(lock)
                continue
            self.held[todo[0]] = (lock, [self.keys[i] for i in todo])
            yield todo

    def unit_keys(self, first: int) -> list[str]:
        return self.held[first][1]

    def finish(self, first: int) -> None:
        lock, _ = self.held.pop(first)
        self.store.release(lock)

    def next_round(self) -> list[list[int]]:
        units, self.deferred = self.deferred, []
        for unit in units:
            self.store.wait_unclaimed([self.keys[i] for i in unit])
        return units

    def release_all(self) -> None:
        for lock, _ in self.held.values():
            self.store.release(lock)
        self.held.clear()


class _ImageDataset(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], backbone, max_pixels: int) -> None:
        # The backbone pickles without its network or ONNX session (``__getstate__``), so
        # worker processes get its preprocessing only.
        self.paths, self.backbone, self.max_pixels = paths, backbone, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            x = load_pixels(self.backbone, self.paths[i], max_pixels=self.max_pixels)
            return i, x, ""
        except ImageError as e:
            return i, None, str(e)
        except Exception as e:  # never let one file stop the run
            return i, None, f"unreadable image: {type(e).__name__}: {e}"


def _collate(batch):
    return batch


# Batches decoded ahead of the one in the forward pass: enough to hide a slow picture,
# few enough that the loader holds at most this many + 1 batches of pixels.
PREFETCH_BATCHES = 2


def default_decode_threads() -> int:
    """Decoding threads when none are asked for: two (PIL and numpy release the GIL, so
    they overlap the forward pass; more only take cores from it on a small machine)."""
    return 2


def _decoded(
    units: Iterable[list[int]], ds: _ImageDataset, threads: int
) -> Iterator[list[tuple[int, torch.Tensor | None, str]]]:
    """Batches of ``ds`` items, in order, decoded by ``threads`` threads ahead of the consumer.

    A unit is pulled from ``units`` (which claims it in the store) only when it is about
    to be decoded, and at most ``PREFETCH_BATCHES`` wait decoded or decoding while the
    caller runs the network on the last one yielded.
    """
    it = iter(units)
    with ThreadPoolExecutor(threads, thread_name_prefix="huse-decode") as pool:
        pending: deque[list] = deque()

        def fill() -> None:
            while len(pending) < PREFETCH_BATCHES:
                unit = next(it, None)
                if unit is None:
                    return
                pending.append([pool.submit(ds.__getitem__, i) for i in unit])

        try:
            fill()
            while pending:
                batch = [f.result() for f in pending.popleft()]
                fill()  # the next batches decode while the caller runs this one
                yield batch
        finally:
            for futs in pending:
                for f in futs:
                    f.cancel()


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


class _Refused(Exception):
    """A file that is not hashed: the message is the reason shown for its row."""


def _image_file_key(path: str | Path, version: str, max_bytes: int) -> str:
    """The content key of an image file, read in 1 MiB blocks after its header is checked.

    Equal to ``content_key(version, Path(path).read_bytes())``, without holding the file.

    Raises:
        OSError: the file cannot be opened or read.
        _Refused: not a regular file, over ``max_bytes``, or not an image by its header.
    """
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise _Refused("image file not readable: Is a directory")
    if not stat.S_ISREG(st.st_mode):  # a pipe or device would block or never end
        raise _Refused("image path is not a regular file (a pipe, socket or device)")
    limit = f"limit {max_bytes:,} bytes; shrink or re-encode the file, or raise the limit"
    if st.st_size > max_bytes:
        raise _Refused(f"image file too large: {st.st_size:,} bytes > {limit}")
    with open(path, "rb") as fh:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Image.open(fh)  # reads the header only
        except UnidentifiedImageError:
            raise _Refused("not an image (unrecognised format)") from None
        except Exception:  # a bad header past the magic: decoding reports it precisely
            pass
        fh.seek(0)
        h = _key_hasher(version)
        buf = bytearray(_HASH_BLOCK)
        view = memoryview(buf)
        total = 0
        while n := fh.readinto(buf):
            total += n
            if total > max_bytes:  # grew since the stat
                raise _Refused(f"image file too large: over {limit}")
            h.update(view[:n])
    return h.hexdigest()


def hash_image_files(
    paths: Sequence[str],
    version: str,
    *,
    max_file_bytes: int = DEFAULT_MAX_IMAGE_FILE_BYTES,
) -> tuple[list[str | None], dict[int, str]]:
    """Content keys of image files; unusable files give None and a reason.

    A file over ``max_file_bytes`` is refused from its size, and one whose header is not
    an image's from its first bytes: neither is read in full. Memory stays at one 1 MiB
    block whatever the file's size.
    """
    keys: list[str | None] = []
    errors: dict[int, str] = {}
    for i, p in enumerate(paths):
        try:
            keys.append(_image_file_key(p, version, max_file_bytes))
        except _Refused as e:
            keys.append(None)
            errors[i] = str(e)
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
    decode_threads: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_IMAGE_FILE_BYTES,
    progress: bool = True,
    stats: ExtractStats | None = None,
    keys: Sequence[str | None] | None = None,
    key_errors: dict[int, str] | None = None,
) -> tuple[np.ndarray, dict[int, str]]:
    """Image features for ``paths`` (rows of failed images are zero) and the failures.

    Args:
        num_workers: decoding worker processes (a torch DataLoader); 0: threads instead.
        decode_threads: with ``num_workers=0``, threads that decode and preprocess the
            next batches while the network runs this one (None: ``default_decode_threads``;
            0: decode in line, one batch at a time).
        max_file_bytes: files larger than this are refused unread (``hash_image_files``).
        keys: content keys from ``hash_image_files`` when the caller has them already
            (with ``key_errors``), so files are not read twice.

    Returns:
        (N×D features, {position: reason} for images that could not be used).
    """
    t0 = time.perf_counter()
    if keys is None:
        keys, errors = hash_image_files(paths, store.version, max_file_bytes=max_file_bytes)
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
        ds = _ImageDataset(list(paths), backbone, max_pixels)
        bar = tqdm(
            total=len(mine),
            desc=f"images ({backbone.name})",
            unit="img",
            disable=not progress or rank != 0,
            dynamic_ncols=True,
        )
        claims = _Claims(store, keys, crowded=_others_at_work(store, world))
        units = [mine[s : s + batch_size] for s in range(0, len(mine), batch_size)]
        try:
            threads = default_decode_threads() if decode_threads is None else decode_threads
            while units:
                if num_workers == 0 and threads > 0:
                    loader = _decoded(claims.batches(units), ds, threads)
                else:
                    loader = torch.utils.data.DataLoader(
                        ds,
                        batch_sampler=claims.batches(units),
                        num_workers=num_workers,
                        collate_fn=_collate,
                    )
                for batch in loader:
                    ok = [(i, x) for i, x, err in batch if x is not None]
                    for i, x, err in batch:
                        if x is None:
                            errors[i] = err
                    if ok:
                        feats = backbone.forward(torch.stack([x for _, x in ok])).numpy()
                        unit = claims.unit_keys(batch[0][0])
                        store.put([keys[i] for i, _ in ok], feats, unit=unit)
                        # Only forward passes count: an undecodable file is retried
                        # (cheaply) on every run, but a rerun over a cached manifest
                        # still computes nothing.
                        if stats is not None:
                            stats.images_computed += len(ok)
                    claims.finish(batch[0][0])
                    bar.update(len(batch))
                units = claims.next_round()
        finally:
            claims.release_all()
        bar.update(bar.total - bar.n)  # batches another process computed
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


def _others_at_work(store: FeatureStore, world: int) -> bool:
    """Whether another extraction holds batch locks in ``store`` (torchrun's ranks share
    no batches, so their locks do not count)."""
    return world <= 1 and any(store.dir.glob("shard-*.lock"))


def _text_batches(
    chunks: Iterable[list[int]], prepared: dict[int, str], backbone
) -> Iterator[tuple[list[int], np.ndarray]]:
    """(chunk, features) in order; a backbone with ``tokenize``/``forward_tokens`` has the
    next chunk tokenised on a thread while the encoder runs this one."""
    if not (hasattr(backbone, "tokenize") and hasattr(backbone, "forward_tokens")):
        for chunk in chunks:
            yield chunk, backbone.forward([prepared[i] for i in chunk]).numpy()
        return
    it = iter(chunks)
    with ThreadPoolExecutor(1, thread_name_prefix="huse-tokenize") as pool:

        def ahead():
            chunk = next(it, None)
            if chunk is None:
                return None
            return chunk, pool.submit(backbone.tokenize, [prepared[i] for i in chunk])

        nxt = ahead()
        while nxt is not None:
            chunk, fut = nxt
            enc = fut.result()
            nxt = ahead()
            yield chunk, backbone.forward_tokens(enc).numpy()


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
        claims = _Claims(store, keys, crowded=_others_at_work(store, world))
        units = [todo[s : s + batch_size] for s in range(0, len(todo), batch_size)]
        try:
            while units:
                for chunk, feats in _text_batches(claims.batches(units), prepared, backbone):
                    store.put([keys[i] for i in chunk], feats)
                    if stats is not None:
                        stats.texts_computed += len(chunk)
                    claims.finish(chunk[0])
                    bar.update(len(chunk))
                units = claims.next_round()
        finally:
            claims.release_all()
        bar.update(bar.total - bar.n)
        bar.close()
    barrier()
    if world > 1:
        store.refresh()
    out = store.get(keys) if keys else np.zeros((0, backbone.dim), dtype=np.float32)
    if stats is not None:
        stats.seconds_texts += time.perf_counter() - t0
    return out
