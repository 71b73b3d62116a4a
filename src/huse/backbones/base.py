"""The interface the rest of huse uses from a backbone, as ``typing.Protocol`` classes.

``features.py``, ``dataset.py``, ``model.py``, ``graph.py`` and ``run.py`` touch a backbone
only through these members; a new backbone (one small file and a ``register_backbone``)
implements exactly one of them. Nothing here loads weights: ``name``, ``dim`` and
``version`` must be cheap (configuration files at most), the weights load on the first
``forward``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from huse.data.images import DEFAULT_MAX_PIXELS, open_rgb


@runtime_checkable
class ImageBackbone(Protocol):
    """A frozen image feature extractor.

    Attributes:
        kind: ``"image"``.
        name: the registry name (``efficientnet-lite2``, ``hf:org/model``); shown in progress bars.
        dim: the feature size D of ``forward``'s output.
        version: the cache-key prefix: it names the weights (package version or hub commit
            or a digest of a local folder) and every preprocessing choice, so two backbones
            whose features differ never share a cache entry.
    """

    kind: str
    name: str

    @property
    def dim(self) -> int: ...

    @property
    def version(self) -> str: ...

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """An RGB PIL image to one C×H×W float tensor (run in DataLoader workers).

        A backbone may also define ``load(source, *, max_pixels)``: a path, bytes or PIL
        image to the same tensor, decoding the way its preprocessing wants (the offline
        backbones decode for one resize to their input, ``load_image_for``). Every caller
        goes through ``load_pixels``, so that a catalogue's pictures and a query picture
        are decoded alike.
        """
        ...

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """A stacked B×C×H×W batch of ``preprocess`` outputs to B×D float32 features on the CPU."""
        ...


@runtime_checkable
class TextBackbone(Protocol):
    """A frozen text feature extractor.

    Attributes:
        kind: ``"text"``.
        name: the registry name.
        dim: the feature size D of ``forward``'s output.
        version: the cache-key prefix (weights, pooling, truncation rule, token limit).
        max_tokens: the encoder's limit, special tokens included.
    """

    kind: str
    name: str

    @property
    def dim(self) -> int: ...

    @property
    def version(self) -> str: ...

    @property
    def max_tokens(self) -> int: ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` without special tokens."""
        ...

    def prepare(self, text: str) -> str:
        """Shorten ``text`` to fit ``max_tokens`` (the cache is keyed by the raw text)."""
        ...

    def forward(self, texts: list[str]) -> torch.Tensor:
        """Prepared texts to B×D float32 features on the CPU."""
        ...

    def embed_sentences(self, texts: list[str]) -> torch.Tensor:
        """Short texts (class names) to L2-normalised sentence embeddings, B×E on the CPU."""
        ...


def load_pixels(
    backbone: ImageBackbone,
    source: str | Path | bytes | Image.Image,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """One picture to ``backbone.forward``'s input: the backbone's own ``load`` where it has
    one, else ``preprocess`` of the picture as ``load_image`` opens it (RGB on white).

    Raises:
        huse.data.images.ImageError: the picture cannot be used.
    """
    load = getattr(backbone, "load", None)
    if load is not None:
        return load(source, max_pixels=max_pixels)
    return backbone.preprocess(open_rgb(source, max_pixels=max_pixels))
