"""``python -m huse.cli``: the command line (the same as ``huse`` and ``python -m huse``)."""

import sys

from huse.cli import main

if __name__ == "__main__":
    sys.exit(main())
