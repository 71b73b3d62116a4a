"""Training checkpoints: their digest, save, load and the rules for resuming one.

A checkpoint is ``RUN/checkpoints/last.pt`` (and the one before it, ``prev.pt``), each
with a JSON sidecar (``last.pt.json``) holding the SHA-256 of the file's bytes. The bytes
are checked against a sidecar before anything is deserialised, and then read with
``torch.load(weights_only=True)``: tensors and plain types only, so a file someone else
put there is set aside as damaged and never run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from huse._io import atomic_path, atomic_write_text
from huse.errors import HuseError
from huse.methods import TrainConfig

if TYPE_CHECKING:
    from huse.dataset import FeatureSet

# Settings that may change between a run and its resume; any other difference is refused.
RESUMABLE_SETTINGS = ("epochs", "patience", "min_epochs", "device", "bf16")
CHECKPOINT_KEYS = ("net", "loss", "opt", "epoch", "best_score", "best_epoch", "bad", "history")
SIDECAR_SUFFIX = ".json"


class CheckpointError(HuseError):
    """A checkpoint that cannot be resumed with these settings; the message says why."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was set aside; training falls back to the previous one."""


def _digest_update(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        h.update(f"A{obj.dtype}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode() + b":")
            _digest_update(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _digest_update(h, v)
        h.update(b"]")
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def state_digest(state: dict) -> str:
    """SHA-256 over a checkpoint's content (tensors by their bytes), its ``sha256`` aside."""
    h = hashlib.sha256()
    _digest_update(h, {k: v for k, v in state.items() if k != "sha256"})
    return h.hexdigest()


def data_fingerprint(fs: FeatureSet) -> str:
    """What a checkpoint was trained on: items, labels, split and feature shapes."""
    h = hashlib.sha256()
    for col in ("id", "label", "split"):
        h.update("\x1f".join(map(str, fs.items[col].tolist())).encode("utf-8", "replace"))
        h.update(b"\x1e")
    h.update(repr((fs.image.shape, fs.text.shape, fs.tfidf.shape, len(fs.hierarchy))).encode())
    return h.hexdigest()


def sidecar(path: Path) -> Path:
    """The JSON file beside a checkpoint that holds the SHA-256 of its bytes."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` with its digests, atomically; the one before it becomes ``prev.pt``.

    The ``.pt`` is written first and its sidecar after it: a crash in between leaves a
    checkpoint without a sidecar, which is set aside on resume (one epoch is redone).
    """
    path = Path(path)
    state = dict(state)
    state["sha256"] = state_digest(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    prev = path.with_name("prev.pt")
    if path.exists():
        os.replace(path, prev)
        # A crash here leaves prev.pt beside last.pt.json: _trusted_digests reads both.
        if sidecar(path).exists():
            os.replace(sidecar(path), sidecar(prev))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    record = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "format": 1}
    atomic_write_text(sidecar(path), json.dumps(record, indent=1))


def _trusted_digests(folder: Path) -> set[str]:
    """Byte digests recorded by huse in this folder's sidecars (unreadable ones: none)."""
    found = set()
    for name in ("last.pt", "prev.pt"):
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            found.add(str(json.loads(sidecar(folder / name).read_text())["sha256"]))
    return found


def _read_checkpoint(path: Path, trusted: set[str]) -> dict:
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() not in trusted:
        has = sidecar(path).exists()
        raise ValueError(
            f"its bytes do not match {sidecar(path).name}"
            if has
            else f"no {sidecar(path).name} digest beside it (not written by this huse)"
        )
    # weights_only: tensors and plain containers only; nothing in the file can run code.
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own message suggests weights_only=False: the one thing never to do here.
        raise ValueError(
            "it holds objects other than tensors and plain types; refused unread, since "
            "loading them could run code"
        ) from e
    if not isinstance(state, dict):
        raise ValueError("not a huse checkpoint (not a dictionary)")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"not a huse checkpoint (missing {missing})")
    if "sha256" in state and state_digest(state) != state["sha256"]:
        raise ValueError("sha256 checksum mismatch")
    return state


def load_checkpoint(path: Path, cfg: TrainConfig, data: str | None = None, *, rank: int = 0):
    """The newest intact checkpoint of ``path`` and ``prev.pt`` beside it, or None.

    A damaged one (no or a mismatching digest sidecar, truncated, unreadable, not plain
    tensors) is reported with its file name as a ``CheckpointWarning``, renamed to
    ``*.damaged`` and skipped, so training resumes from the one before it (or from
    scratch): only the lost epochs are recomputed.

    Raises:
        CheckpointError: the checkpoint was made with other settings or other data.
    """
    path = Path(path)
    trusted = _trusted_digests(path.parent)
    for p in (path, path.with_name("prev.pt")):
        if not p.exists():
            continue
        try:
            state = _read_checkpoint(p, trusted)
        except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError...
            fallback = "prev.pt" if p == path else "no checkpoint: training starts over"
            why = " ".join(str(e).split())[:200]
            warnings.warn(
                f"damaged checkpoint {p} ({type(e).__name__}: {why}); set aside as "
                f"{p.name}.damaged, resuming from {fallback}",
                CheckpointWarning,
                stacklevel=2,
            )
            if rank == 0:
                with contextlib.suppress(OSError):
                    os.replace(p, p.with_name(p.name + ".damaged"))
            continue
        check_resumable(p, state, cfg, data)
        return state
    return None


def check_resumable(path: Path, state: dict, cfg: TrainConfig, data: str | None) -> None:
    """Refuse a checkpoint made with other settings, other data, or without the averaged
    weights these settings need.

    Raises:
        CheckpointError: what differs and what to do.
    """
    saved, now = state.get("config") or {}, asdict(cfg)
    diff = [
        f"{k}: checkpoint {saved[k]!r}, now {now[k]!r}"
        for k in now
        if k in saved and k not in RESUMABLE_SETTINGS and saved[k] != now[k]
    ]
    if diff:
        raise CheckpointError(
            f"{path} was made with other training settings ({'; '.join(diff)}). Resume with "
            "the same settings, or train into a new --out folder (or delete "
            f"{path.parent}) to start over."
        )
    if data is not None and state.get("data") not in (None, data):
        raise CheckpointError(
            f"{path} was trained on other data (items, classes, split or features differ). "
            f"Train into a new --out folder, or delete {path.parent} to start over."
        )
    if cfg.ema_decay > 0 and state.get("ema") is None:
        raise CheckpointError(
            f"{path} holds no averaged weights (it was trained without ema_decay); "
            "resume with ema_decay 0 or train into a new --out folder"
        )
