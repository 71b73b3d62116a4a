"""Backbones by name: ``get_backbone("efficientnet-lite0")``, ``list_backbones()``.

A name is registered once per kind (one ``huse._registry.Registry`` per kind; a second
registration of a name is an error), so one prefix (``hf:``) can serve both image and text
backbones. Each entry declares the options it takes (``image_fit``, ``text_pooling``,
``bf16``...): ``get_backbone`` drops options whose value is None (the backbone's default)
and rejects, with a ``ConfigError``, an option the backbone does not take.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from huse._registry import Registry
from huse.errors import ConfigError

KINDS = ("image", "text")


@dataclass(frozen=True)
class BackboneEntry:
    """One registered backbone (or prefix) of one kind."""

    name: str
    kind: str
    factory: Callable[..., Any]
    options: tuple[str, ...]
    dim: int | None = None
    module: str | None = None
    needs: str = ""
    summary: str = ""

    @property
    def is_prefix(self) -> bool:
        return self.name.endswith(":")

    @property
    def display_name(self) -> str:
        return self.name + "<model-id-or-folder>" if self.is_prefix else self.name


_REGISTRIES: dict[str, Registry[BackboneEntry]] = {k: Registry(f"{k} backbone") for k in KINDS}


def register_backbone(
    name: str,
    kind: str,
    *,
    options: tuple[str, ...] | None = None,
    dim: int | None = None,
    module: str | None = None,
    needs: str = "",
    summary: str = "",
) -> Callable:
    """Register a factory under ``name`` for ``kind``; a name ending in ``:`` is a prefix.

    Args:
        options: keyword arguments the factory takes; None reads them from its signature
            (a factory with only ``**kw`` then takes any).
        dim: the feature size when it is known without loading anything.
        module: the importable module that holds the weights; its presence means the
            backbone works offline.
        needs: what it needs, in words (for ``huse backbones``).
        summary: one line on what it is.

    Raises:
        ValueError: an unknown kind, or a name already registered for this kind.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")

    def wrap(factory: Callable[..., Any]) -> Callable[..., Any]:
        opts = options if options is not None else _signature_options(factory)
        _REGISTRIES[kind].add(
            name,
            BackboneEntry(
                name, kind, factory, tuple(opts), dim, module, needs, summary or _doc(factory)
            ),
        )
        return factory

    return wrap


def _signature_options(factory: Callable[..., Any]) -> tuple[str, ...]:
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return ("*",)
    return tuple(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def _doc(factory: Callable[..., Any]) -> str:
    return (inspect.getdoc(factory) or "").split("\n")[0]


def _entries(kind: str | None = None) -> list[BackboneEntry]:
    """Entries of one kind (or all), by name then kind."""
    kinds = [k for k in KINDS if kind in (None, k)]
    return sorted(
        (e for k in kinds for e in _REGISTRIES[k].values()), key=lambda e: (e.name, e.kind)
    )


def list_backbones(kind: str | None = None) -> list[str]:
    """Registered names and prefixes (``hf:<model-id-or-folder>``), optionally of one kind."""
    return sorted({e.display_name for e in _entries(kind)})


def describe_backbones(kind: str | None = None) -> list[dict[str, Any]]:
    """One row per backbone and kind, loading no weights.

    Each row: ``name``, ``kind``, ``dim`` (None when it depends on the model or setting),
    ``offline`` (True when its weight package is installed, None for hub prefixes, which
    work offline from a local folder or the hub cache), ``options``, ``needs``, ``summary``.
    """
    rows = []
    for e in _entries(kind):
        offline = None if e.module is None else importlib.util.find_spec(e.module) is not None
        rows.append(
            {
                "name": e.display_name,
                "kind": e.kind,
                "dim": e.dim,
                "offline": offline,
                "options": [o for o in e.options if o != "*"],
                "needs": e.needs,
                "summary": e.summary,
            }
        )
    return rows


def _article(kind: str | None) -> str:
    return f"an {kind}" if str(kind)[0] in "aeiou" else f"a {kind}"


def _lookup(name: str, kind: str | None) -> tuple[BackboneEntry, tuple]:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a backbone name must be a non-empty string, not {name!r}")
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"backbone kind must be one of {KINDS}, not {kind!r}")
    matches: list[tuple[BackboneEntry, tuple]] = []
    for e in _entries(kind):
        if e.is_prefix and name.startswith(e.name):
            matches.append((e, (name[len(e.name) :],)))
        elif e.name == name:
            matches.append((e, ()))
    if not matches:
        other = [e.kind for e in _entries() if e.name == name]
        if other:
            raise ConfigError(
                f"backbone {name!r} is {_article(other[0])} backbone, not {_article(kind)} one; "
                f"known {kind} backbones: {', '.join(list_backbones(kind))}"
            )
        what = f"{kind} backbone" if kind else "backbone"
        raise ConfigError(
            f"unknown {what} {name!r}; known: {', '.join(list_backbones(kind))} "
            "(see `huse backbones`)"
        )
    if len(matches) > 1:
        kinds = sorted({e.kind for e, _ in matches})
        raise ConfigError(
            f"backbone {name!r} exists as {' and '.join(kinds)}; say which kind "
            f"(get_backbone({name!r}, {kinds[0]!r}))"
        )
    if matches[0][1] == ("",):
        raise ConfigError(
            f"backbone {name!r} needs a model after the prefix: {name}<hub model id> or "
            f"{name}/path/to/folder"
        )
    return matches[0]


def get_backbone(name: str, kind: str | None = None, **kwargs: Any) -> Any:
    """Build a backbone by name (weights load lazily, on the first forward pass).

    Args:
        name: a registered name, or a prefix and its argument (``hf:openai/clip-vit-base-patch32``,
            ``hf:/path/to/folder``).
        kind: ``"image"`` or ``"text"``; needed for names registered as both (``hf:``).
        **kwargs: backbone options (``device``, ``image_fit``, ``text_pooling``, ``bf16``,
            ``max_tokens``); a None value means the backbone's default.

    Raises:
        ConfigError: unknown name (the message lists the known ones), wrong kind, or an
            option this backbone does not take.
    """
    entry, arg = _lookup(name, kind)
    given = {k: v for k, v in kwargs.items() if v is not None}
    if "*" not in entry.options:
        bad = sorted(set(given) - set(entry.options))
        if bad:
            raise ConfigError(
                f"{entry.kind} backbone {name!r} does not take {', '.join(bad)} "
                f"(it takes: {', '.join(entry.options) or 'nothing'})"
            )
    return entry.factory(*arg, **given)
