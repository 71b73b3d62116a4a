"""Backbones from the Hugging Face hub (or a local folder) through transformers.

``hf:<model id>[@revision]`` or ``hf:/path/to/folder`` names a model; the same prefix
serves images (this module) and texts (``text.py``). The image features are each family's
own:

* CLIP, SigLIP (and any model with ``get_image_features``): the projected image embedding.
* DINOv2: the CLS token concatenated with the mean of the patch tokens (register tokens
  left out), as the DINOv2 authors do for linear probes; 2×hidden dims.
* any other vision model: its pooled output.

Preprocessing is the model's own image processor (the PIL backend, for results that do not
depend on whether torchvision is installed). ``image_fit="pad"`` (the default, as for the
offline backbones) first letterboxes the whole picture on white at the model's input size
and keeps only the processor's rescaling and normalisation, so wide or tall catalogue
pictures are not cut; ``image_fit="crop"`` is the processor unchanged (CLIP's resize and
centre crop, SigLIP's squash to a square).

The version string (the feature cache key) holds the weights' identity (hub id and commit,
or a digest of a local folder's files), the head, the fit and a digest of the processor
settings. A hub snapshot folder (``.../models--org--name/snapshots/<commit>``) gets the
same key as its id, so a folder copied from the hub cache reuses the features.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from huse.backbones._registry import register_backbone
from huse.data.images import (
    DEFAULT_MAX_PIXELS,
    letterbox,
    load_image_for,
    open_rgb,
    to_rgb_or_rgba,
)
from huse.errors import ConfigError, RunError

IMAGE_FITS = ("pad", "crop")
# Bump when a head's pooling changes: it is part of every cache key.
HEAD_VERSIONS = {
    "features": "image-features-v1",
    "dinov2": "dinov2-cls+patchmean-v1",
    "pooled": "pooled-output-v1",
}
# pad-white-v2: one resize from the decoded picture (huse.data.images.load_image_for).
FIT_VERSIONS = {"pad": "pad-white-v2", "crop": "processor-crop-v1"}
_SNAPSHOT = re.compile(
    r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<commit>[0-9a-f]{40})"
)
# Families whose image tower should not be handed texts and the reverse (model_type).
_DINO_TYPES = ("dinov2", "dinov2_with_registers", "dinov3_vit")


@dataclass(frozen=True)
class HubSource:
    """What follows ``hf:``: a local folder or a hub id with an optional revision."""

    spec: str
    path: str
    revision: str | None
    local: bool

    @classmethod
    def parse(cls, spec: str, revision: str | None = None) -> HubSource:
        expanded = os.path.expanduser(spec)
        if Path(expanded).is_dir():
            return cls(spec, expanded, None, True)
        if spec.startswith(("/", ".", "~")) or spec.partition("@")[0].count("/") > 1:
            raise ConfigError(
                f"model folder {spec!r} does not exist; give an existing folder "
                "(hf:/path/to/folder) or a hub id (hf:org/name)"
            )
        path, _, rev = spec.partition("@")
        return cls(spec, path, revision or rev or None, False)

    def where(self) -> str:
        return f"folder {self.path}" if self.local else f"hub model {self.path!r}"


def _one_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unreachable(src: HubSource, e: BaseException) -> RunError:
    """The error for a hub id that cannot be fetched (offline, unknown id, no network)."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    why = "HF_HUB_OFFLINE is set and it is not in the local hub cache" if offline else _one_line(e)
    return RunError(
        f"hub model {src.path!r} cannot be reached ({why}); to use it offline, download it "
        f"where there is internet (`huggingface-cli download {src.path} --local-dir DIR`, or "
        "`save_pretrained(DIR)`) and pass hf:DIR (a local folder works exactly as an id)"
    )


def hub_call(src: HubSource, what: str, fn, *args: Any, **kwargs: Any) -> Any:
    """Call a transformers loader, turning its failures into one-line huse errors."""
    kw = dict(kwargs)
    if src.revision:
        kw["revision"] = src.revision
    try:
        return fn(src.path, *args, **kw)
    except OSError as e:
        if not src.local:
            raise unreachable(src, e) from None
        raise ConfigError(
            f"{src.where()} has no usable {what}: {_one_line(e)}; a model folder is what "
            "`save_pretrained` or `huggingface-cli download --local-dir` writes"
        ) from None
    except ValueError as e:  # an unrecognised model type, an invalid id
        raise ConfigError(f"{src.where()}: cannot load its {what}: {_one_line(e)}") from None


def load_config(src: HubSource):
    """The model's transformers configuration (config.json only: no weights)."""
    from transformers import AutoConfig

    if src.local and not (Path(src.path) / "config.json").is_file():
        raise ConfigError(
            f"folder {src.path} has no config.json, so it is not a transformers model "
            "folder; write one with `model.save_pretrained(folder)` or "
            "`huggingface-cli download <id> --local-dir folder`"
        )
    return hub_call(src, "config.json", AutoConfig.from_pretrained)


def modalities(config) -> set[str]:
    """``{"image"}``, ``{"text"}`` or both, from a configuration alone."""
    mods = set()
    if getattr(config, "vision_config", None) is not None or hasattr(config, "num_channels"):
        mods.add("image")
    if getattr(config, "text_config", None) is not None or hasattr(config, "vocab_size"):
        mods.add("text")
    return mods


def require_modality(src: HubSource, config, kind: str) -> None:
    """Refuse a text model as an image backbone and the reverse, naming the fix."""
    mods = modalities(config)
    if kind in mods:
        return
    other = "text" if kind == "image" else "image"
    raise ConfigError(
        f"{src.where()} is {article(other)} model ({config.model_type}), not "
        f"{article(kind)} model; use it as --{other}-backbone hf:{src.spec}, or give "
        f"{article(kind)} model here"
    )


def article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def folder_digest(folder: str | Path) -> str:
    """A digest of a model folder: small JSON/text files by content, others by name and size.

    Cheap (weights are not read) and independent of where the folder lives.
    """
    root = Path(folder)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel.startswith((".git/", ".cache/")) or "/." in "/" + rel:
            continue
        size = p.stat().st_size
        h.update(rel.encode() + b"\0")
        if p.suffix in (".json", ".txt", ".model") and size < 4 << 20:
            h.update(p.read_bytes())
        else:
            h.update(str(size).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def weights_tag(src: HubSource) -> str:
    """What identifies the weights in cache keys: ``hf:org/name@<commit>`` or a folder digest."""
    if src.local:
        m = _SNAPSHOT.search(Path(src.path).resolve().as_posix())
        if m:
            return f"hf:{m['org']}/{m['name']}@{m['commit']}"
        return f"hf:folder-{folder_digest(src.path)}"
    commit = None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(src.path, "config.json", revision=src.revision)
        if isinstance(cached, str):
            m = _SNAPSHOT.search(Path(cached).as_posix())
            commit = m["commit"] if m else None
    except Exception:  # an odd cache layout: fall back to the revision name
        commit = None
    return f"hf:{src.path}@{commit or src.revision or 'default'}"


def digest_dict(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def default_bf16(device: torch.device) -> bool:
    """Half precision by default on a GPU that has bfloat16, full precision elsewhere."""
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def processor_input_size(proc) -> tuple[int, int]:
    """(width, height) of the pixels the processor hands the model."""

    def wh(size) -> tuple[int, int] | None:
        if isinstance(size, int):
            return size, size

        def get(k: str):
            return size.get(k) if isinstance(size, dict) else getattr(size, k, None)

        if size is None:
            return None
        if get("height") and get("width"):
            return int(get("width")), int(get("height"))
        if get("shortest_edge"):
            return int(get("shortest_edge")), int(get("shortest_edge"))
        return None

    if getattr(proc, "do_center_crop", False):
        crop = wh(getattr(proc, "crop_size", None))
        if crop:
            return crop
    size = wh(getattr(proc, "size", None))
    if size is None:
        raise ConfigError(
            f"cannot tell the input size of image processor {type(proc).__name__}; "
            "use image_fit='crop'"
        )
    return size


class HFImageBackbone:
    """A transformers vision model used as a frozen image backbone.

    Args:
        spec: what follows ``hf:`` (a hub id, ``id@revision``, or a local folder).
        image_fit: ``"pad"`` (letterbox on white at the model's input size, then the
            processor's normalisation) or ``"crop"`` (the processor as it is).
        bf16: run the forward pass in bfloat16 autocast; default: on CUDA when supported.
        device: torch device.
        revision: a hub branch, tag or commit (also ``hf:id@revision``).
    """

    kind = "image"

    def __init__(
        self,
        spec: str,
        image_fit: str = "pad",
        bf16: bool | None = None,
        device: str = "cpu",
        revision: str | None = None,
    ) -> None:
        if image_fit not in IMAGE_FITS:
            raise ConfigError(f"image_fit must be one of {IMAGE_FITS}, not {image_fit!r}")
        self.source = HubSource.parse(spec, revision)
        self.name = f"hf:{spec}"
        self.image_fit = image_fit
        self.device = torch.device(device)
        self.bf16 = default_bf16(self.device) if bf16 is None else bool(bf16)

    @cached_property
    def config(self):
        cfg = load_config(self.source)
        require_modality(self.source, cfg, "image")
        return cfg

    @cached_property
    def head(self) -> str:
        """``features`` (get_image_features), ``dinov2`` or ``pooled``."""
        mt = self.config.model_type
        if mt in _DINO_TYPES:
            return "dinov2"
        if getattr(self.config, "vision_config", None) is not None:
            return "features"
        return "pooled"

    @cached_property
    def dim(self) -> int:
        cfg = self.config
        if self.head == "dinov2":
            return 2 * int(cfg.hidden_size)
        if self.head == "features":
            if hasattr(cfg, "projection_dim"):  # CLIP and its relatives project
                return int(cfg.projection_dim)
            return int(cfg.vision_config.hidden_size)  # SigLIP: the pooling head's output
        if getattr(cfg, "hidden_sizes", None):  # convolutional nets (ResNet, ConvNeXt)
            return int(cfg.hidden_sizes[-1])
        return int(cfg.hidden_size)

    @cached_property
    def processor(self):
        from transformers import AutoImageProcessor

        self.config  # noqa: B018 - a text model fails here with the clearer message
        return hub_call(
            self.source,
            "image processor (preprocessor_config.json)",
            AutoImageProcessor.from_pretrained,
            backend="pil",
        )

    @cached_property
    def image_size(self) -> tuple[int, int]:
        return processor_input_size(self.processor)

    @cached_property
    def weights_tag(self) -> str:
        return weights_tag(self.source)

    @property
    def version(self) -> str:
        w, h = self.image_size
        proc = digest_dict(self.processor.to_dict())
        parts = [
            self.weights_tag,
            HEAD_VERSIONS[self.head],
            f"{FIT_VERSIONS[self.image_fit]}-proc{proc}",
            f"{w}x{h}",
        ]
        if self.bf16:
            parts.append("bf16")
        return "/".join(parts)

    @cached_property
    def model(self) -> torch.nn.Module:
        from transformers import AutoModel

        m = hub_call(self.source, "weights", AutoModel.from_pretrained, config=self.config)
        return m.eval().to(self.device)

    def load(
        self, source: str | Path | bytes | Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> torch.Tensor:
        """A picture (a path, its bytes or a PIL image) to the model's C×H×W pixel tensor.

        ``pad`` decodes for one resize to the input size (``load_image_for``); ``crop``
        hands the processor the picture as ``load_image`` opens it.

        Raises:
            huse.data.images.ImageError: the picture cannot be used.
        """
        if self.image_fit == "pad":
            img = load_image_for(source, max(self.image_size), max_pixels=max_pixels)
        else:
            img = open_rgb(source, max_pixels=max_pixels)
        return self.preprocess(img)

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """A PIL image to the model's C×H×W pixel tensor (``pad``: RGB, or RGBA composited
        on white after resizing; ``crop``: RGB)."""
        if self.image_fit == "pad":
            w, h = self.image_size
            out = self.processor(
                images=letterbox(to_rgb_or_rgba(img), w, h),
                do_resize=False,
                do_center_crop=False,
                return_tensors="pt",
            )
        else:
            out = self.processor(images=img, return_tensors="pt")
        return out["pixel_values"][0].float()

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The family's own image features for a pixel batch already on the device."""
        m = self.model
        if self.head == "features":
            out = m.get_image_features(pixel_values=pixels)
            # transformers 5 returns a model output whose pooler_output is the embedding;
            # older versions return the tensor itself.
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        out = m(pixel_values=pixels)
        if self.head == "dinov2":
            tokens = out.last_hidden_state
            first_patch = 1 + int(getattr(self.config, "num_register_tokens", 0) or 0)
            return torch.cat([tokens[:, 0], tokens[:, first_patch:].mean(dim=1)], dim=-1)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            raise ConfigError(
                f"{self.source.where()} ({self.config.model_type}) gives no pooled output, "
                "so huse does not know which image features to take"
            )
        return pooled.flatten(1)

    @torch.no_grad()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """B×C×H×W pixels to B×dim float32 features on the CPU."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            feats = self.features(batch.to(self.device))
        if feats.shape[-1] != self.dim:
            raise RunError(
                f"{self.source.where()} gave {feats.shape[-1]}-d image features but its "
                f"config says {self.dim}; this model family is not supported as an image backbone"
            )
        return feats.float().cpu()


@register_backbone(
    "hf:",
    "image",
    options=("device", "image_fit", "bf16", "revision"),
    needs="transformers; a hub id (internet or the hub cache) or a local model folder",
    summary="CLIP/SigLIP image features, DINOv2 CLS+mean patch, else the pooled output",
)
def hf_image(spec: str, **kw: Any) -> HFImageBackbone:
    """Any transformers vision model: a hub id (``org/name[@rev]``) or a local folder."""
    return HFImageBackbone(spec, **kw)
