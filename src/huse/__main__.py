"""``python -m huse``, so that ``torchrun -m huse extract|train|fit ...`` works."""

import sys

from huse.cli import main

if __name__ == "__main__":
    sys.exit(main())
