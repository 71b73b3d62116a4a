"""Command-line flags derived from the config dataclasses: one declaration per setting.

Each flag defaults to "not given" so that the layers below it (the field's default, a
preset, a method's own defaults, ``--config FILE``) keep their values; ``--help`` still
shows the field's default.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import MISSING
from typing import Any

from huse._settings import Setting, walk

_DEST = "cfg__"


def _dest(s: Setting, prefix: str) -> str:
    return _DEST + prefix + "__".join(s.path)


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str):
        return repr(value) if value == "" or value != value.strip() else value
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    prefix: str = "",
    title: str | None = None,
    skip: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
    helps: dict[str, str] | None = None,
) -> None:
    """Add a flag for every setting of ``cls`` (and its nested configs) to ``parser``.

    Args:
        prefix: a namespace for the destinations (two configs in one parser).
        title: the help section for ``cls``'s own fields (nested configs get their own).
        skip: setting names (dotted) to leave out.
        defaults: shown defaults that differ from the field's (a preset's, say).
        helps: help texts that differ from the field's, for what a setting means in
            this command (``fit``'s one ``--device`` serves the backbones and training).
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for s in walk(cls):
        if not s.on_cli or s.name in skip:
            continue
        section = s.field.metadata.get("group") or (
            title if len(s.path) == 1 else s.path[-2].replace("_", " ")
        )
        g = groups.get(section)
        if g is None:
            g = groups[section] = parser.add_argument_group(section)
        default = (defaults or {}).get(s.name, s.default)
        help_ = (helps or {}).get(s.name, s.help)
        if s.name in (defaults or {}):  # the field's own default no longer applies
            help_ = re.sub(r"\s*\(default:[^)]*\)", "", help_)
        # A None default is explained by the help itself ("default: $HUSE_CACHE...").
        if default is not MISSING and not (default is None and "default" in help_):
            help_ = (
                f"{help_} (default: {_shown(default)})" if help_ else f"default: {_shown(default)}"
            )
        names = [s.flag, *("--" + a for a in s.field.metadata.get("aliases", ()))]
        if s.field.metadata.get("short"):
            names.insert(0, "-" + s.field.metadata["short"])
        kw: dict[str, Any] = {"dest": _dest(s, prefix), "default": None, "help": help_}
        if s.base_type() is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _parser_for(s)
            kw["metavar"] = s.field.metadata.get("metavar") or (
                "{" + ",".join(map(str, s.choices())) + "}"
                if s.choices()
                else s.base_type().__name__.upper()
            )
        g.add_argument(*names, **kw)


def _parser_for(s: Setting):
    def parse(text: str) -> Any:
        from huse.errors import ConfigError

        if s.optional() and text.lower() in ("none", ""):
            return None
        try:
            return s.parse(text, s.flag)
        except ConfigError as e:
            # argparse turns ArgumentTypeError into "argument --x: <message>".
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None

    parse.__name__ = s.base_type().__name__
    return parse


def given(args: argparse.Namespace, cls: type, *, prefix: str = "") -> dict[tuple[str, ...], Any]:
    """Setting paths → values for the flags of ``cls`` that were given on the command line."""
    out = {}
    for s in walk(cls):
        v = getattr(args, _dest(s, prefix), None)
        if v is not None:
            out[s.path] = v
    return out
