"""``huse backbones``: the registered image and text backbones, or one hub model's details.

``register(sub)`` adds the command to the main parser's subcommands. Listing loads no
weights and imports no transformers; describing one ``hf:`` model reads its configuration
files only.
"""

from __future__ import annotations

import argparse
import json


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _table(rows: list[dict], cols: list[str]) -> str:
    cells = [cols] + [[_cell(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _one(name: str, kind: str | None) -> list[dict]:
    """Details of one backbone per kind it has: dim and cache key from its config files."""
    from huse.backbones import get_backbone
    from huse.backbones._registry import KINDS, _lookup
    from huse.errors import ConfigError

    kinds = [kind] if kind else []
    if not kinds:
        for k in KINDS:
            try:
                _lookup(name, k)
                kinds.append(k)
            except ConfigError:
                pass
    if not kinds:
        _lookup(name, None)  # raises the message listing the known names
    rows, errors = [], []
    for k in kinds:
        bb = get_backbone(name, k)
        try:
            row = {"name": name, "kind": k, "dim": bb.dim, "version": bb.version}
        except ConfigError as e:  # hf: is both kinds; a given model is usually one
            errors.append(e)
            continue
        for opt in ("image_fit", "pooling", "bf16"):
            if hasattr(bb, opt):
                row[opt] = getattr(bb, opt)
        rows.append(row)
    if not rows:
        raise errors[0]
    return rows


def cmd_backbones(args: argparse.Namespace) -> int:
    from huse.backbones import describe_backbones

    if args.name:
        rows = _one(args.name, args.kind)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                print("\n".join(f"{k}: {_cell(v)}" for k, v in r.items()))
        return 0
    rows = describe_backbones(args.kind)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(_table(rows, ["name", "kind", "dim", "offline", "needs"]))
    print(
        "\ndim '-': read from the model's config (huse backbones hf:<model> shows it). "
        "offline '-': works offline from a local folder (hf:/path/to/folder)."
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``backbones`` subcommand to ``huse``'s parser."""
    p = sub.add_parser(
        "backbones",
        help="list the image and text backbones, or show one model's size and cache key",
        description="Without NAME: every registered backbone with its kind, feature size, "
        "whether its weights ship with an installed package, and what it needs. With NAME "
        "(e.g. hf:/path/to/folder): its feature size and cache key, read from its "
        "configuration files without loading weights.",
    )
    p.add_argument("name", nargs="?", default=None, help="a backbone name, e.g. hf:org/model")
    p.add_argument("--kind", choices=("image", "text"), default=None, help="only this kind")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_backbones)
