"""Inference backends for the offline backbones: eager torch, or an ONNX export run by ONNX Runtime.

On a CPU the forward pass of a frozen backbone is almost all of ``huse fit``'s cost, and
ONNX Runtime runs the same network several times faster than eager PyTorch (EfficientNet-
Lite2: ~3-7x on 2 cores). ``backend="onnx"`` exports the backbone's forward pass (the
pooling included) once per backbone version, torch version and export format, checks the
export against eager torch on a fixed probe batch, and caches it atomically under
``$HUSE_CACHE/onnx`` (beside the default feature cache; shared by every ``--cache``, as
an export depends on the backbone only).

Why the feature cache key does not name the backend: an export is accepted only when
every probe item's features are within ``TOLERANCE`` (relative L2 error) of eager
torch's, so features from either backend are interchangeable to that tolerance; an
export that misses it is refused and the backbone runs on torch, with one line saying so.

``backend="auto"`` (what ``huse extract`` and ``huse fit`` use) is ONNX Runtime on a CPU
when it is installed, and torch on a GPU or without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from huse._io import atomic_path, atomic_write_text
from huse.errors import ConfigError

BACKENDS = ("auto", "torch", "onnx")
# Per item, ||onnx - eager|| / ||eager|| on the probe batch must not exceed this (cosine
# similarity >= 1 - TOLERANCE**2 / 2 follows). Measured: ~1e-5 for EfficientNet-Lite and
# MiniLM in float32, so a hundredfold margin; a wrong graph is off by far more.
TOLERANCE = 1e-3
# Bump when the exported graph or the probe changes: part of every export's folder name.
EXPORT_FORMAT = "onnx-export-v1"
OPSET = 17
_said: set[str] = set()


def say(msg: str) -> None:
    """One line on stderr, once per process: the backend chosen, a fallback."""
    if msg not in _said:
        _said.add(msg)
        print(msg, file=sys.stderr, flush=True)


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def cpu_count() -> int:
    """CPUs this process may run on (a container's limit, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_export_dir() -> Path:
    """``$HUSE_CACHE/onnx``, else ``~/.cache/huse/onnx``."""
    return Path(os.environ.get("HUSE_CACHE", Path.home() / ".cache" / "huse")) / "onnx"


def resolve_backend(backend: str | None, device: torch.device, name: str, bf16: bool) -> str:
    """The backend a backbone runs on: ``"torch"`` or ``"onnx"``.

    ``auto`` (or None): ONNX Runtime on a CPU when it is installed and no bf16 is asked
    for, else torch. An explicit ``onnx`` that cannot run here (not installed, a GPU
    device) falls back to torch with one line saying why.

    Raises:
        ConfigError: an unknown backend, or ``onnx`` together with ``bf16``.
    """
    backend = "auto" if backend is None else backend
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "torch":
        return "torch"
    if backend == "onnx" and bf16:
        raise ConfigError(
            f"{name}: the onnx backend runs in float32; drop bf16 or use --backend torch"
        )
    if device.type != "cpu" or bf16:
        if backend == "onnx":
            say(f"{name}: the onnx backend runs on the CPU only; running on torch ({device})")
        return "torch"
    if not onnxruntime_available():
        say(
            f"{name}: onnxruntime is not installed; running on torch "
            "(pip install onnxruntime for a several times faster CPU extraction)"
        )
        return "torch"
    return "onnx"


def set_torch_threads(threads: int | None) -> int:
    """Torch's intra-op threads: ``threads`` when given (else torch's own choice)."""
    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _slug(key: str) -> str:
    head = "".join(c if c.isalnum() or c in "._-" else "_" for c in key.split("/")[0])[:40]
    return f"{head}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def relative_errors(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per row ``||got - ref|| / ||ref||`` (a zero reference row counts its own norm)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    den = np.linalg.norm(ref, axis=1)
    return np.linalg.norm(got - ref, axis=1) / np.where(den > 0, den, 1.0)


def cosines(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per row cosine similarity of ``got`` and ``ref``."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    den = np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1)
    return (got * ref).sum(1) / np.where(den > 0, den, 1.0)


class BackendSetup:
    """What the offline backbones share: set up the chosen backend once (its export, its
    threads), fall back to torch with one line when the export is refused, and say which
    runs. The backbone provides ``name``, ``backend``, ``onnx``, ``threads``, ``device``
    and ``_announce``."""

    def _ready(self) -> str:
        if self.backend == "onnx":
            try:
                self.onnx.session  # noqa: B018 - builds or loads the export
            except ExportRejected as e:
                say(f"{self.name}: the ONNX export was refused ({e}); running on torch")
                self.backend = "torch"
            else:
                say(
                    f"{self.name}: onnxruntime {onnxruntime_version()} on "
                    f"{self.onnx.threads} threads (export {self.onnx.dir})"
                )
                return self.backend
        n = set_torch_threads(self.threads)
        if self._announce:
            say(f"{self.name}: torch {torch.__version__} on {n} threads ({self.device})")
        return self.backend

    @cached_property
    def _backend_ready(self) -> str:
        return self._ready()


class ExportRejected(RuntimeError):
    """An export that could not be built, or whose features miss ``TOLERANCE``."""


class OnnxRunner:
    """A torch module's forward pass exported to ONNX once, checked, cached, run by ORT.

    The export lives in ``root/<slug of key>/``: ``model.onnx`` and ``export.json`` (the key,
    format, torch and onnxruntime versions, the model file's SHA-256 and the probe's worst
    error). A folder whose record is missing, unreadable, for another key or versions
    (stale), or whose model file fails its digest (damaged) is rebuilt; both files are
    written atomically, so a reader never sees half an export.

    Args:
        key: what the export is of (the backbone's version string).
        name: the backbone's name, for messages.
        module: builds the eval-mode torch module to export (called only when building).
        probe: named numpy inputs used to trace the export and to check it.
        input_names / output_name: the graph's inputs (in ``module``'s argument order) and
            its one output.
        dynamic_axes: per input, the axes that vary (batch, sequence).
        threads: ONNX Runtime intra-op threads (None: every CPU this process may use).
        root: the exports folder (None: ``default_export_dir()``).
    """

    def __init__(
        self,
        *,
        key: str,
        name: str,
        module: Callable[[], torch.nn.Module],
        probe: Sequence[dict[str, np.ndarray]],
        input_names: Sequence[str],
        output_name: str,
        dynamic_axes: dict[str, dict[int, str]],
        threads: int | None = None,
        root: str | Path | None = None,
    ) -> None:
        self.key, self.name = key, name
        self._module, self._probe = module, list(probe)
        self.input_names, self.output_name = list(input_names), output_name
        self.dynamic_axes = dynamic_axes
        self.threads = int(threads) if threads else cpu_count()
        self.root = Path(root) if root is not None else default_export_dir()
        self.dir = self.root / _slug(f"{key}/{EXPORT_FORMAT}")
        self.rebuilt_because: str | None = None  # why the last load built the export

    @property
    def model_path(self) -> Path:
        return self.dir / "model.onnx"

    @property
    def record_path(self) -> Path:
        return self.dir / "export.json"

    def expected_record(self) -> dict:
        import onnxruntime

        return {
            "key": self.key,
            "format": EXPORT_FORMAT,
            "opset": OPSET,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        }

    def check(self) -> str | None:
        """Why the cached export cannot be used (missing, stale, damaged), or None if it can."""
        try:
            rec = json.loads(self.record_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return "missing"
        except (OSError, ValueError) as e:
            return f"damaged record ({type(e).__name__})"
        if not isinstance(rec, dict):
            return "damaged record (not an object)"
        for k, v in self.expected_record().items():
            if rec.get(k) != v:
                return f"stale ({k} {rec.get(k)!r}, now {v!r})"
        try:
            digest = _sha256(self.model_path)
        except OSError as e:
            return f"damaged model file ({type(e).__name__})"
        if digest != rec.get("sha256"):
            return "damaged model file (sha256 mismatch)"
        return None

    def _session(self, path: Path):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3  # its warnings are about graph details, not ours
        # Spinning worker threads would burn the cores that image decoding runs on
        # while the network waits for the next batch.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def _export(self, path: Path, module: torch.nn.Module) -> None:
        args = tuple(torch.from_numpy(self._probe[0][n]) for n in self.input_names)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            torch.no_grad(),
        ):
            warnings.simplefilter("ignore")
            # The TorchScript exporter: seconds for these networks, no onnxscript needed,
            # and dynamic axes that hold for every batch and sequence length.
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=False,
                input_names=self.input_names,
                output_names=[self.output_name],
                dynamic_axes={**self.dynamic_axes, self.output_name: {0: "batch"}},
                opset_version=OPSET,
            )

    def _build(self) -> dict:
        t0 = time.perf_counter()
        module = self._module()
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.model_path) as tmp:
            try:
                self._export(tmp, module)
                sess = self._session(tmp)
            except Exception as e:
                raise ExportRejected(f"export failed: {type(e).__name__}: {e}") from e
            worst_err, worst_cos = 0.0, 1.0
            with torch.no_grad():
                for inputs in self._probe:
                    ref = module(*(torch.from_numpy(inputs[n]) for n in self.input_names))
                    got = sess.run([self.output_name], inputs)[0]
                    err = relative_errors(got, ref.float().numpy())
                    worst_err = max(worst_err, float(err.max()))
                    worst_cos = min(worst_cos, float(cosines(got, ref.float().numpy()).min()))
            if not worst_err <= TOLERANCE:  # NaN fails too
                raise ExportRejected(
                    f"its features differ from eager torch's by {worst_err:.2g} (relative), "
                    f"over the tolerance {TOLERANCE:g}"
                )
            digest = _sha256(tmp)
        rec = {
            **self.expected_record(),
            "sha256": digest,
            "probe_worst_relative_error": worst_err,
            "probe_worst_cosine": worst_cos,
            "build_seconds": round(time.perf_counter() - t0, 2),
        }
        atomic_write_text(self.record_path, json.dumps(rec, indent=1))
        return rec

    @cached_property
    def session(self):
        """The ORT session of the checked export (built first when needed).

        Raises:
            ExportRejected: the export cannot be built or misses the tolerance.
        """
        why = self.check()
        if why is not None:
            self.rebuilt_because = why
            try:
                self._build()
            except OSError as e:
                raise ExportRejected(f"cannot write the export to {self.dir}: {e}") from e
        return self._session(self.model_path)

    def run(self, **inputs: np.ndarray) -> np.ndarray:
        """The module's output for named numpy inputs."""
        return self.session.run([self.output_name], inputs)[0]


def onnxruntime_version() -> str:
    try:
        return importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
