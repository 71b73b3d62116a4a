"""Frozen backbones, chosen by name. Importing this package registers the built-in ones."""

from huse.backbones import image as _image  # noqa: F401  (registers)
from huse.backbones import text as _text  # noqa: F401  (registers)
from huse.backbones._registry import get_backbone, list_backbones, register_backbone

__all__ = ["get_backbone", "list_backbones", "register_backbone"]
