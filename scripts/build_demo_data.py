#!/usr/bin/env python
"""Rebuild the bundled Openclipart demo set (data/openclipart-demo) from the Debian packages.

apt-get install openclipart-png openclipart-svg   # as root, once
python scripts/build_demo_data.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))  # runs from a checkout without `pip install -e .`

from huse.data.demo import DEMO_CLASSES, build_demo  # noqa: E402
from huse.data.openclipart import DEFAULT_ROOT, OpenclipartNotFoundError  # noqa: E402
from huse.errors import HuseError  # noqa: E402

SIZE_LIMIT_BYTES = 10_000_000


def _debian_versions() -> str:
    """Package versions for the README, when dpkg knows them."""
    try:
        out = subprocess.run(
            [
                "dpkg-query",
                "-W",
                "-f=${Package} ${Version}\\n",
                "openclipart-png",
                "openclipart-svg",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "Debian packages openclipart-png and openclipart-svg"
    versions = ", ".join(line.strip() for line in out.splitlines() if line.strip())
    return f"Debian packages {versions}" if versions else "Debian packages"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help="folder holding png/ and svg/"
    )
    parser.add_argument("--out", type=Path, default=REPO / "data" / "openclipart-demo")
    parser.add_argument("--per-class", type=int, default=16, help="most items per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-side", type=int, default=128, help="longest image side, pixels")
    args = parser.parse_args(argv)

    try:
        report = build_demo(
            args.root,
            args.out,
            classes=DEMO_CLASSES,
            per_class=args.per_class,
            seed=args.seed,
            max_side=args.max_side,
            source=_debian_versions()
            if args.root == DEFAULT_ROOT
            else f"extracted under {args.root}",
        )
    except (OpenclipartNotFoundError, HuseError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    if report.total_bytes >= SIZE_LIMIT_BYTES:
        print(
            f"error: the demo set takes {report.total_bytes / 1e6:.2f} MB; keep it under 10 MB "
            "(lower --per-class or --max-side)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
