"""The one family of user-facing errors.

Every mistake a user can make (a bad manifest, a missing run folder, an unknown backbone, a
checkpoint from other settings, a damaged index) raises a ``HuseError`` whose message says
what was wrong, where, and what to do. The command line prints that message on one line
and exits with code 2; anything else is a bug and keeps its traceback.

This module imports nothing heavy, so ``huse --help`` stays fast.
"""

from __future__ import annotations


class HuseError(ValueError):
    """A user mistake or bad input: the message names what, where and the fix.

    A ``ValueError`` so that code written against the older, per-module error classes
    (all of which now derive from this one) keeps working.
    """


class ConfigError(HuseError):
    """A setting out of range or of the wrong kind (``--lr nan``, ``--train-batch-size 0``)."""


class RunError(HuseError):
    """A run folder, feature folder or model directory that is missing, foreign or damaged."""


class UnsafeOutputError(HuseError):
    """Writing would delete or overwrite a file that huse did not write (or an input)."""


class DataError(HuseError):
    """Data that cannot be used as asked (no usable row, splits too small to train on)."""


class QueryError(HuseError):
    """A search query that cannot be answered (empty after normalisation, unknown class)."""
