"""Backbones by name: ``get_backbone("efficientnet-lite0")``, ``list_backbones()``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_REGISTRY: dict[str, tuple[str, Callable[..., Any]]] = {}
_PREFIXES: dict[str, tuple[str, Callable[..., Any]]] = {}


def register_backbone(name: str, kind: str) -> Callable:
    """Register a factory under ``name``; a name ending in ``:`` is a prefix (``hf:``)."""

    def wrap(factory: Callable[..., Any]) -> Callable[..., Any]:
        table = _PREFIXES if name.endswith(":") else _REGISTRY
        table[name] = (kind, factory)
        return factory

    return wrap


def list_backbones(kind: str | None = None) -> list[str]:
    """Registered names, optionally only ``"image"`` or ``"text"`` ones."""
    names = [n for n, (k, _) in _REGISTRY.items() if kind in (None, k)]
    names += [n + "<model-id>" for n, (k, _) in _PREFIXES.items() if kind in (None, k)]
    return sorted(names)


def get_backbone(name: str, kind: str | None = None, **kwargs: Any) -> Any:
    """Build a backbone by name; raises ``KeyError`` listing the known names."""
    entry = _REGISTRY.get(name)
    arg: tuple = ()
    if entry is None:
        for prefix, e in _PREFIXES.items():
            if name.startswith(prefix):
                entry, arg = e, (name[len(prefix) :],)
                break
    if entry is None or (kind is not None and entry[0] != kind):
        raise KeyError(f"unknown {kind or ''} backbone {name!r}; known: {list_backbones(kind)}")
    return entry[1](*arg, **kwargs)
