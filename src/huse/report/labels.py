"""Class names as the report shows them: bounded in length and in path levels.

A class path comes from the user's manifest and can be anything: 10,000 characters, 500
levels. Drawn in full, such a name makes matplotlib lay out and save a figure as wide as
the text (minutes, megabytes) and repeats the whole string in every table cell. Plots get
short labels, tables longer ones; the full name goes into a tooltip only when it is short
enough to read.
"""

from __future__ import annotations

PLOT_CHARS = 60
TABLE_CHARS = 200
MAX_LEVELS = 6  # levels shown of a deeper path: the top, "…", then the deepest ones
TOOLTIP_CHARS = 500


def ellipsize(text: str, n: int) -> str:
    """``text`` in at most ``n`` characters: its start and its end around "…"."""
    text = " ".join(str(text).split())
    if len(text) <= n:
        return text
    head = (n - 1) // 2
    tail = n - 1 - head
    return text[:head] + "…" + (text[-tail:] if tail else "")


def class_label(name: str, sep: str = "<", n: int = PLOT_CHARS, levels: int = MAX_LEVELS) -> str:
    """A class path in at most ``n`` characters and ``levels`` levels.

    A deeper path keeps its top level and its deepest ``levels - 2`` (the class itself and
    its parents), with "…" for the levels between; then the whole is cut to ``n``.
    """
    parts = str(name).split(sep)
    if len(parts) > levels:
        parts = [parts[0], "…", *parts[len(parts) - (levels - 2) :]]
    return ellipsize(sep.join(parts), n)


def table_label(name: str, sep: str = "<") -> str:
    """A class path for a table cell (``TABLE_CHARS`` characters at most)."""
    return class_label(name, sep, TABLE_CHARS)


def tooltip(name: str, shown: str) -> str | None:
    """The full name as a tooltip, when it was shortened and is short enough to read."""
    name = str(name)
    return name if name != shown and len(name) <= TOOLTIP_CHARS else None


def leaf_label(name: str, sep: str = "<", n: int = PLOT_CHARS, levels: int = MAX_LEVELS) -> str:
    """A class path without its top level, for a plot that labels the top-level groups
    itself (``food<breads_and_carbs`` → ``breads_and_carbs``); a top-level class keeps its
    name."""
    parts = str(name).split(sep)
    return class_label(sep.join(parts[1:]) if len(parts) > 1 else parts[0], sep, n, levels - 1)


def breakable_html(shown: str, sep: str = "<") -> str:
    """``shown`` escaped for HTML with line-break opportunities (``<wbr>``) after each
    level separator and underscore, so a narrow box wraps a class path between levels
    and words, never inside a word that fits on a line of its own."""
    import html

    def part(p: str) -> str:
        return "_<wbr>".join(html.escape(w, quote=True) for w in p.split("_"))

    return (html.escape(sep, quote=True) + "<wbr>").join(part(p) for p in shown.split(sep))
