"""The one registry helper: named things of one kind (backbones, methods, index types).

``NAMES = Registry("method")``, then ``@NAMES.register("huse")`` on a factory (or
``NAMES.add("huse", value)``), ``NAMES.get("huse")`` and ``NAMES.names()``. A name is
registered once: a second registration is a bug in the code that makes it, so it raises
rather than replacing the first one silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from huse.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Things of one kind by name, in the order they were registered.

    Args:
        kind: what the things are, for messages (``"method"``, ``"index type"``).
        hint: appended to the unknown-name message, e.g. ``" (see `huse backbones`)"``.
    """

    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind = kind
        self.hint = hint
        self._entries: dict[str, T] = {}

    def add(self, name: str, value: T) -> T:
        """Register ``value`` under ``name`` and return it.

        Raises:
            ValueError: ``name`` is empty or already registered.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, not {name!r}")
        if name in self._entries:
            raise ValueError(
                f"{self.kind} {name!r} is registered twice; give one of them another name"
            )
        self._entries[name] = value
        return value

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that registers the decorated object under ``name``, unchanged."""

        def wrap(value: T) -> T:
            return self.add(name, value)

        return wrap

    def get(self, name: str) -> T:
        """The thing registered under ``name``.

        Raises:
            ConfigError: no such name; the message lists the known ones.
        """
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        raise ConfigError(
            f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}{self.hint}"
        )

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def values(self) -> list[T]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
