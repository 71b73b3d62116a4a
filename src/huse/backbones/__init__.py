"""Frozen backbones, chosen by name. Importing this package registers the built-in ones."""

from huse.backbones import hf as _hf  # noqa: F401  (registers hf: for images)
from huse.backbones import image as _image  # noqa: F401  (registers)
from huse.backbones import text as _text  # noqa: F401  (registers)
from huse.backbones._registry import (
    describe_backbones,
    get_backbone,
    list_backbones,
    register_backbone,
)
from huse.backbones.base import ImageBackbone, TextBackbone

__all__ = [
    "ImageBackbone",
    "TextBackbone",
    "describe_backbones",
    "get_backbone",
    "list_backbones",
    "register_backbone",
]
