"""``python -m huse.serve RUN [--host] [--port]``: the same as ``huse serve``."""

from __future__ import annotations

import argparse
import sys

from huse.cli.search import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m huse.serve")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    serve = sub.choices["serve"]
    serve.prog = "python -m huse.serve"
    args = serve.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
