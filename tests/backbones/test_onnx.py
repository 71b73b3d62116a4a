"""The ONNX Runtime backend: features within tolerance of eager torch, the export cache,
the fallbacks, and the decoding that overlaps the forward pass."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from huse.backbones import get_backbone, runtime
from huse.backbones.runtime import TOLERANCE, ExportRejected, OnnxRunner, cosines, relative_errors
from huse.config import DataConfig
from huse.data.images import load_image
from huse.errors import ConfigError
from huse.features import PREFETCH_BATCHES, FeatureStore, extract_images

pytest.importorskip("onnxruntime")

DEMO = Path(__file__).resolve().parents[2] / "data" / "openclipart-demo"


@pytest.fixture(autouse=True)
def _fresh_lines():
    """Each test sees the one-line messages again (they are said once per process)."""
    runtime._said.clear()
    yield
    runtime._said.clear()


def _demo_rows(n: int) -> list[dict]:
    with open(DEMO / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    # Every 23rd row: birds, buildings, food... not one class.
    return rows[:: max(1, len(rows) // n)][:n]


# --- real backbones on real pictures and texts -------------------------------------------


@pytest.mark.slow
def test_lite2_onnx_features_agree_with_eager_on_real_pictures():
    bb = get_backbone("efficientnet-lite2", "image", backend="onnx")
    eager = get_backbone("efficientnet-lite2", "image", backend="torch")
    assert bb.backend == "onnx"
    # Within tolerance, so one cache key serves both backends.
    assert bb.version == eager.version
    rows = _demo_rows(12)
    x = torch.stack([bb.preprocess(load_image(DEMO / r["image"])) for r in rows])
    got = bb.forward(x).numpy()
    ref = bb.forward_torch(x).numpy()
    assert got.shape == (12, 1280) and got.dtype == np.float32
    assert relative_errors(got, ref).max() <= TOLERANCE
    assert cosines(got, ref).min() >= 0.9999
    # A batch of one gives that item's features (dynamic batch axis).
    np.testing.assert_allclose(bb.forward(x[3:4]).numpy()[0], got[3], rtol=1e-4, atol=1e-5)
    rec = json.loads(bb.onnx.record_path.read_text())
    assert rec["probe_worst_relative_error"] <= TOLERANCE
    assert rec["sha256"] == runtime._sha256(bb.onnx.model_path)


@pytest.mark.slow
def test_minilm_onnx_features_agree_with_eager_last4_pooling():
    bb = get_backbone("minilm-l6", "text", backend="onnx")
    assert bb.backend == "onnx" and bb.pooling == "last4"
    texts = [r["text"] for r in _demo_rows(10)]
    texts.append(" ".join(["A long description of a vintage silk dress with buttons."] * 6))
    enc = bb.tokenize(texts)
    assert enc["input_ids"].shape[1] == 96  # the long text pads the batch to 3 × 32 tokens
    got = bb.forward(texts).numpy()
    ref = bb.forward_torch(enc).numpy()
    assert got.shape == (11, 1536)
    assert relative_errors(got, ref).max() <= TOLERANCE
    assert cosines(got, ref).min() >= 0.9999
    # Padding is ignored by the exported pooling too: a text alone gives its batch row.
    np.testing.assert_allclose(bb.forward(texts[:1]).numpy()[0], got[0], rtol=1e-4, atol=1e-5)


# --- the export cache, on a tiny network (exports in a fraction of a second) ---------------


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(pixels)).mean(dim=(2, 3))


def _runner(root: Path, module=_Tiny, key: str = "tiny/v1") -> OnnxRunner:
    rng = np.random.default_rng(0)
    probe = [{"pixels": rng.normal(size=(b, 3, 12, 12)).astype(np.float32)} for b in (2, 5)]
    return OnnxRunner(
        key=key,
        name="tiny",
        module=lambda: module().eval(),
        probe=probe,
        input_names=["pixels"],
        output_name="features",
        dynamic_axes={"pixels": {0: "batch"}},
        threads=1,
        root=root,
    )


def _expected(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return _Tiny().eval()(torch.from_numpy(x)).numpy()


def test_an_export_is_built_once_and_reused(tmp_path):
    first = _runner(tmp_path)
    x = np.random.default_rng(1).normal(size=(3, 3, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(first.run(pixels=x), _expected(x), rtol=1e-5, atol=1e-6)
    assert first.rebuilt_because == "missing"
    mtime = first.model_path.stat().st_mtime_ns
    again = _runner(tmp_path)
    assert again.check() is None
    again.run(pixels=x)
    assert again.rebuilt_because is None and again.model_path.stat().st_mtime_ns == mtime
    # Only the two files remain: the atomic writes left no temporary file.
    assert sorted(p.name for p in first.dir.iterdir()) == ["export.json", "model.onnx"]
    # Another key, another folder.
    assert _runner(tmp_path, key="tiny/v2").dir != first.dir


def test_a_damaged_export_is_rebuilt(tmp_path):
    r = _runner(tmp_path)
    r.session  # noqa: B018
    data = bytearray(r.model_path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    r.model_path.write_bytes(bytes(data))
    again = _runner(tmp_path)
    assert again.check() == "damaged model file (sha256 mismatch)"
    x = np.ones((2, 3, 12, 12), np.float32)
    np.testing.assert_allclose(again.run(pixels=x), _expected(x), rtol=1e-5, atol=1e-6)
    assert again.rebuilt_because.startswith("damaged") and _runner(tmp_path).check() is None
    # A truncated model file and an unreadable record are damaged too.
    r.model_path.write_bytes(r.model_path.read_bytes()[:100])
    assert _runner(tmp_path).check().startswith("damaged")
    r.record_path.write_text("{not json")
    assert _runner(tmp_path).check().startswith("damaged record")
    assert _runner(tmp_path).session is not None and _runner(tmp_path).check() is None


def test_a_stale_export_is_rebuilt(tmp_path):
    r = _runner(tmp_path)
    r.session  # noqa: B018
    rec = json.loads(r.record_path.read_text())
    rec["torch"] = "1.0.0"  # built by another torch
    r.record_path.write_text(json.dumps(rec))
    again = _runner(tmp_path)
    assert again.check() == f"stale (torch '1.0.0', now {torch.__version__!r})"
    again.session  # noqa: B018
    assert again.rebuilt_because.startswith("stale")
    assert json.loads(r.record_path.read_text())["torch"] == torch.__version__


class _BatchDependent(_Tiny):
    """Python control flow on the batch size: tracing bakes in the branch of the probe's
    first batch, so the export is wrong for other batch sizes."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = super().forward(pixels)
        return out * 2 if pixels.shape[0] > 2 else out


def test_an_export_that_misses_the_tolerance_is_refused(tmp_path):
    r = _runner(tmp_path, module=_BatchDependent)
    with pytest.raises(ExportRejected, match="differ from eager torch's by 0.5 "):
        r.session  # noqa: B018
    assert not r.model_path.exists() and not r.record_path.exists()


# --- choosing the backend ------------------------------------------------------------------


def test_auto_is_onnx_on_a_cpu_and_torch_elsewhere():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert runtime.resolve_backend("auto", cpu, "x", bf16=False) == "onnx"
    assert runtime.resolve_backend(None, cpu, "x", bf16=False) == "onnx"
    assert runtime.resolve_backend("auto", gpu, "x", bf16=False) == "torch"
    assert runtime.resolve_backend("auto", cpu, "x", bf16=True) == "torch"
    assert runtime.resolve_backend("torch", cpu, "x", bf16=False) == "torch"
    with pytest.raises(ConfigError, match="float32"):
        runtime.resolve_backend("onnx", cpu, "x", bf16=True)
    with pytest.raises(ConfigError, match="backend must be one of auto, torch, onnx"):
        runtime.resolve_backend("tensorrt", cpu, "x", bf16=False)


def test_a_missing_onnxruntime_falls_back_to_torch_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(runtime, "onnxruntime_available", lambda: False)
    bb = get_backbone("efficientnet-lite0", "image", backend="onnx")
    assert bb.backend == "torch"
    get_backbone("efficientnet-lite0", "image", backend="auto")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "efficientnet-lite0: onnxruntime is not installed; running on torch "
        "(pip install onnxruntime for a several times faster CPU extraction)"
    ]
    assert get_backbone("minilm-l6", "text", backend="onnx").backend == "torch"


def test_a_refused_export_falls_back_to_torch_with_one_line(monkeypatch, capsys, tmp_path):
    def refuse(self):
        raise ExportRejected("its features differ from eager torch's by 0.5 (relative)")

    monkeypatch.setattr(OnnxRunner, "_build", refuse)
    bb = get_backbone("efficientnet-lite0", "image", backend="onnx", export_dir=str(tmp_path))
    x = torch.zeros(1, 3, 224, 224)
    out = bb.forward(x)
    assert bb.backend == "torch"
    torch.testing.assert_close(out, bb.forward_torch(x), rtol=0, atol=0)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == (
        "efficientnet-lite0: the ONNX export was refused (its features differ from eager "
        "torch's by 0.5 (relative)); running on torch"
    )
    assert lines[1].startswith("efficientnet-lite0: torch ") and len(lines) == 2


def test_data_config_passes_the_backend_to_offline_backbones_only():
    cfg = DataConfig(threads=3)
    assert cfg.image_options()["backend"] == "auto" and cfg.image_options()["threads"] == 3
    hub = DataConfig(image_backbone="hf:openai/clip-vit-base-patch32")
    assert "backend" not in hub.image_options()  # hub backbones stay on torch
    assert DataConfig(image_backbone="hf:x", backend="onnx").image_options()["backend"] == "onnx"
    with pytest.raises(ConfigError, match="threads 0"):
        DataConfig(threads=0)
    with pytest.raises(ConfigError, match="does not take backend"):
        get_backbone("hf:openai/clip-vit-base-patch32", "image", backend="onnx")


# --- decoding overlapped with the forward pass ---------------------------------------------


class _CountingBackbone:
    """A cheap image backbone that records how many decoded items wait for the network."""

    kind, name, dim, version = "image", "counting", 4, "counting/v1"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting = self.most_waiting = 0
        self.threads: set[str] = set()

    def preprocess(self, img):
        with self.lock:
            self.waiting += 1
            self.most_waiting = max(self.most_waiting, self.waiting)
            self.threads.add(threading.current_thread().name)
        a = np.asarray(img.resize((8, 8)), dtype=np.float32)
        return torch.from_numpy(a.transpose(2, 0, 1).copy())

    def forward(self, batch):
        with self.lock:
            self.waiting -= len(batch)
        return torch.stack([batch.mean(dim=(1, 2, 3)), batch.amax(dim=(1, 2, 3))] * 2, dim=1)


def test_threaded_decoding_gives_the_same_features_and_holds_few_batches(tmp_path):
    from PIL import Image

    paths = []
    for i in range(23):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (16 + i, 12), (10 * i, 255 - 5 * i, 3 * i)).save(p)
        paths.append(str(p))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    paths.insert(7, str(tmp_path / "bad.png"))
    results = {}
    for threads in (0, 3):
        bb = _CountingBackbone()
        store = FeatureStore(tmp_path / f"cache{threads}", bb.version)
        feats, errors = extract_images(
            paths, bb, store, batch_size=4, decode_threads=threads, progress=False
        )
        results[threads] = (feats, errors, bb)
    (f0, e0, in_line), (f3, e3, threaded) = results[0], results[3]
    np.testing.assert_array_equal(f0, f3)
    assert list(e0) == list(e3) == [7]
    assert in_line.threads == {"MainThread"} and in_line.most_waiting <= 4
    assert threaded.threads and "MainThread" not in threaded.threads
    # The batch in the network plus at most PREFETCH_BATCHES decoded ahead.
    assert threaded.most_waiting <= 4 * (PREFETCH_BATCHES + 1)
    expected = np.asarray(load_image(paths[0]).resize((8, 8)), dtype=np.float32)
    assert f3[0, 0] == pytest.approx(expected.mean(), rel=1e-6)
