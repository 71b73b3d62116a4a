"""``huse report RUN [RUN2 ...] [--out FILE]``: the run report page from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_report(args: argparse.Namespace) -> int:
    try:
        from huse.report import write_report
        from huse.report.analysis import ReportError
    except ImportError as e:
        print(f"error: {e}; install the report extra: pip install 'huse[report]'", file=sys.stderr)
        return 2

    runs = [Path(r) for r in args.runs]
    for r in runs:
        if not r.is_dir():
            print(f"error: {r} is not a run folder (written by `huse fit --out`)", file=sys.stderr)
            return 2
    try:
        path = write_report(runs[0], runs[1:], out=Path(args.out) if args.out else None)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to the ``huse`` command's subparsers."""
    p = sub.add_parser(
        "report",
        help="write a run's self-contained HTML report (other runs compared beside it)",
        description="Write RUN/report.html: metrics beside the raw backbones and any other "
        "runs given, training curves, a 2-D map of the test embeddings, the semantic graph "
        "against the learned distances, retrieval examples and per-class accuracy.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders; the first is reported")
    p.add_argument("--out", default=None, help="HTML file (default FIRST_RUN/report.html)")
    p.set_defaults(func=cmd_report)
    return p
