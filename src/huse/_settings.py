"""The machinery behind ``huse.config``: a field that carries its own help, and walks over
nested config dataclasses (flags, config files, overrides). Standard library only, so the
command line can build its parser without importing torch or pandas.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Iterator
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

from huse.errors import ConfigError


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    default_factory: Any = MISSING,
    flag: str | None = None,
    short: str | None = None,
    aliases: tuple[str, ...] = (),
    cli: bool = True,
    group: str | None = None,
    metavar: str | None = None,
) -> Any:
    """A config field with what the command line needs to offer it.

    Args:
        default: the one default of this setting (or ``default_factory``).
        help: one line for ``--help``; the default is appended to it.
        flag: the flag name without dashes (default: the field name, ``_`` → ``-``).
        short: an extra short flag (``k`` → ``-k``).
        aliases: older flag names (without dashes) that still work.
        cli: False keeps the field out of the command line (set it in ``--config``).
        group: the ``--help`` section; default: the dataclass's own.
        metavar: the value's name in ``--help``.
    """
    meta = {"help": help, "flag": flag, "short": short, "cli": cli, "group": group}
    meta["aliases"] = tuple(aliases)
    meta["metavar"] = metavar
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Setting:
    """One leaf setting of a nested config: where it lives and how to parse it."""

    path: tuple[str, ...]  # field names from the root config down to this field
    field: Field
    type: Any  # the resolved annotation
    owner: type  # the dataclass that declares it

    @property
    def name(self) -> str:
        return ".".join(self.path)

    @property
    def flag(self) -> str:
        return "--" + (self.field.metadata.get("flag") or self.path[-1].replace("_", "-"))

    @property
    def help(self) -> str:
        return self.field.metadata.get("help", "")

    @property
    def on_cli(self) -> bool:
        return self.field.metadata.get("cli", True)

    @property
    def default(self) -> Any:
        if self.field.default is not MISSING:
            return self.field.default
        if self.field.default_factory is not MISSING:
            return self.field.default_factory()
        return MISSING

    def choices(self) -> tuple | None:
        t = _strip_optional(self.type)
        if typing.get_origin(t) is Literal:
            return typing.get_args(t)
        return None

    def base_type(self) -> type:
        t = _strip_optional(self.type)
        if typing.get_origin(t) is Literal:
            return type(typing.get_args(t)[0])
        return t if isinstance(t, type) else str

    def optional(self) -> bool:
        return type(None) in typing.get_args(self.type)

    def parse(self, value: Any, where: str) -> Any:
        """``value`` (a string from a flag, or a JSON/TOML value) as this setting's type."""
        if value is None:
            if self.optional():
                return None
            raise ConfigError(f"{where}: {self.name} cannot be empty")
        kind = self.base_type()
        try:
            if kind is bool:
                if isinstance(value, bool):
                    out: Any = value
                elif str(value).lower() in ("1", "true", "yes", "on"):
                    out = True
                elif str(value).lower() in ("0", "false", "no", "off"):
                    out = False
                else:
                    raise ValueError(value)
            elif kind is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(value)
                if isinstance(value, bool):
                    raise ValueError(value)
                out = int(value)
            elif kind is float:
                if isinstance(value, bool):
                    raise ValueError(value)
                out = float(value)
            elif kind is str:
                if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                    raise ValueError(value)
                out = str(value)
            else:  # pragma: no cover - every declared setting has one of the kinds above
                out = value
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}: {self.name} must be {_kind_name(kind)}, not {value!r}"
            ) from None
        choices = self.choices()
        if choices is not None and out not in choices:
            raise ConfigError(
                f"{where}: {self.name} {out!r} is not one of {', '.join(map(str, choices))}"
            )
        return out


def _kind_name(kind: type) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text"}.get(
        kind, kind.__name__
    )


def _strip_optional(t: Any) -> Any:
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return args[0] if len(args) == 1 else t
    return t


def walk(cls: type, prefix: tuple[str, ...] = ()) -> Iterator[Setting]:
    """Every leaf setting of the config dataclass ``cls``, nested ones depth first."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        t = hints[f.name]
        if isinstance(t, type) and is_dataclass(t):
            yield from walk(t, (*prefix, f.name))
        else:
            yield Setting((*prefix, f.name), f, t, cls)


def get_path(obj: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


def with_values(obj: Any, values: dict[tuple[str, ...], Any]) -> Any:
    """A copy of the (nested) dataclass ``obj`` with ``values`` set at their paths."""
    if not values:
        return obj
    here = {p[0]: v for p, v in values.items() if len(p) == 1}
    deeper: dict[str, dict] = {}
    for p, v in values.items():
        if len(p) > 1:
            deeper.setdefault(p[0], {})[p[1:]] = v
    for name, sub in deeper.items():
        here[name] = with_values(getattr(obj, name), sub)
    return replace(obj, **here)


def to_dict(obj: Any) -> dict:
    """``dataclasses.asdict`` with non-finite floats spelled as strings (valid JSON)."""
    d = dataclasses.asdict(obj)

    def fix(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        return v

    return fix(d)


def read_config_file(path: str | Path) -> dict:
    """A JSON or TOML config file as a dict; errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        raw = path.read_bytes()
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib

            data = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config {path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except Exception as e:  # tomllib.TOMLDecodeError names the line in its message
        raise ConfigError(f"--config {path}: not valid TOML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: the top level must be a table of settings")
    return data


def values_from_mapping(
    cls: type, data: dict, where: str, prefix: tuple[str, ...] = ()
) -> dict[tuple[str, ...], Any]:
    """Setting paths → parsed values from a nested mapping; unknown keys are an error."""
    known = {s.path: s for s in walk(cls)}
    out: dict[tuple[str, ...], Any] = {}

    def visit(d: dict, at: tuple[str, ...]) -> None:
        for key, value in d.items():
            p = (*at, str(key).replace("-", "_"))
            if isinstance(value, dict) and any(k[: len(p)] == p and len(k) > len(p) for k in known):
                visit(value, p)
            elif p in known:
                out[(*prefix, *p)] = known[p].parse(value, where)
            else:
                names = sorted(".".join(k) for k in known)
                raise ConfigError(
                    f"{where}: unknown setting {'.'.join(p)!r}; known: {', '.join(names)}"
                )

    visit(data, ())
    return out
