"""Build huse manifests from Debian's Openclipart packages (openclipart-png, openclipart-svg).

The class of an item is its PNG folder under ``png/`` (``food/beverages/alcohol`` becomes
``food<beverages<alcohol``); its text comes from the RDF metadata of the SVG at the same
relative path under ``svg/``. Two manifests are written: one with the raw texts and one
with every word of the item's own class path removed from its text, because most
Openclipart keywords repeat the folder names and would otherwise leak the label.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException, EntitiesForbidden

from huse._io import atomic_write_csv
from huse.errors import ConfigError

__all__ = [
    "DEFAULT_ROOT",
    "EXCLUDED_FOLDERS",
    "MANIFEST_COLUMNS",
    "OpenclipartNotFoundError",
    "OpenclipartReport",
    "SvgText",
    "build_openclipart",
    "class_word_variants",
    "clean_text",
    "compose_text",
    "read_svg_text",
    "strip_class_words",
]

DEFAULT_ROOT = Path("/usr/share/openclipart")
MANIFEST_COLUMNS = ("id", "image", "text", "classes")
DROPPED_COLUMNS = ("path", "reason", "detail")

# Folders (relative to png/) whose items are generated patterns or unlabelled.
EXCLUDED_FOLDERS: tuple[str, ...] = ("shapes/stars", "special", "unsorted")

REASON_NO_CLASS = "no class folder"
REASON_DUPLICATE = "duplicate of a copy in a deeper folder"
REASON_NO_SVG = "no svg metadata"
REASON_MALFORMED_SVG = "malformed svg"
REASON_NO_TEXT = "no usable text"
REASON_SAME_IMAGE = "same image as an item kept in another folder"
REASON_SMALL_CLASS = "class smaller than min_class_size"
REASON_EMPTY_STRIPPED = "empty text after stripping class words (stripped manifest only)"

_NS_DC = "{http://purl.org/dc/elements/1.1/}"
_NS_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"

# Titles (and descriptions) that say nothing about the picture: placeholders, and the name
# of the icon set an item came with, repeated on every item of the set. Such a field is
# dropped, not the item.
GENERIC_TITLES = frozenset(
    {
        "",
        "untitled",
        "untitled document",
        "new document",
        "image",
        "picture",
        "drawing",
        "clipart",
        "clip art",
        "svg",
        "icon",
        "layer 1",
        "contact",
        "eps converted from",
        # icon-set names
        "lemon svg theme",
        "etiquette icons",
        "svg road signs",
        "aiga symbol signs",
        "blueberry - iconset",
        "gold-theme",
        "plastik-icon-theme",
        "various cliparts",
    }
)
# The Flat Icon titles differ only by an upload time stamp that tracks the sub-folder, so
# they would leak the class without saying what is drawn.
_BOILERPLATE = re.compile(r"^part of the .*\bcollection\b.*$", re.IGNORECASE)
_AUTHOR_PREFIX = re.compile(r"^clip ?art by [^-]{1,60}? - ", re.IGNORECASE)
# Keywords that are artefacts of the export, not descriptions.
JUNK_KEYWORDS = frozenset({"hash", "unsorted"})

# Perl stringified references leaked into the metadata, e.g. HASH(0x8589dd0).
_JUNK = re.compile(r"\b(?:HASH|ARRAY|SCALAR|CODE|REF|GLOB)\(0x[0-9a-f]+\)", re.IGNORECASE)
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_SPACE = re.compile(r"\s+")
_KEYWORDS_LABEL = "keywords:"

# Words that carry no label information; kept in the text when stripping class words.
_STOPWORDS = frozenset({"a", "an", "and", "of", "the", "in", "on", "for", "with", "to", "or"})
_WORD = re.compile(r"[^\W_]+")


class OpenclipartNotFoundError(FileNotFoundError):
    """The Openclipart packages are not where the builder was told to look."""


@dataclass(frozen=True)
class SvgText:
    """Text fields read from one SVG's RDF metadata (already cleaned)."""

    title: str = ""
    description: str = ""
    keywords: tuple[str, ...] = ()


@dataclass
class OpenclipartReport:
    """What :func:`build_openclipart` kept and dropped.

    Args:
        root: the Openclipart folder read (holds ``png/`` and ``svg/``).
        out_dir: where the manifests were written.
        kept: rows in ``manifest.csv``.
        kept_stripped: rows in ``manifest_stripped.csv``.
        dropped: PNG files left out of both manifests, counted by reason.
        dropped_stripped: rows of ``manifest.csv`` left out of the stripped manifest, by reason.
        class_sizes: items per class path in ``manifest.csv``.
        distinct_images: distinct PNG contents among the kept items.
        duplicate_images: kept items whose PNG is byte-identical to another kept item's (the
            same picture filed under unrelated folders; ``duplicates.csv`` lists the groups,
            and a split should keep each group on one side).
    """

    root: Path
    out_dir: Path
    kept: int = 0
    kept_stripped: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_stripped: dict[str, int] = field(default_factory=dict)
    class_sizes: dict[str, int] = field(default_factory=dict)
    distinct_images: int = 0
    duplicate_images: int = 0

    @property
    def manifest(self) -> Path:
        return self.out_dir / "manifest.csv"

    @property
    def manifest_stripped(self) -> Path:
        return self.out_dir / "manifest_stripped.csv"

    @property
    def dropped_csv(self) -> Path:
        return self.out_dir / "dropped.csv"

    @property
    def duplicates_csv(self) -> Path:
        return self.out_dir / "duplicates.csv"

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    @property
    def n_classes(self) -> int:
        return len(self.class_sizes)

    def classes_with_at_least(self, n: int) -> int:
        return sum(1 for size in self.class_sizes.values() if size >= n)

    @property
    def n_classes_min10(self) -> int:
        return self.classes_with_at_least(10)

    @property
    def n_top_level(self) -> int:
        return len({c.split("<", 1)[0] for c in self.class_sizes})

    def summary(self) -> str:
        lines = [
            f"Openclipart from {self.root}",
            f"  kept {self.kept} items in {self.n_classes} classes "
            f"({self.n_classes_min10} with >= 10 items, {self.n_top_level} top-level) "
            f"-> {self.manifest}",
            f"  stripped texts: kept {self.kept_stripped} -> {self.manifest_stripped}",
        ]
        for reason, count in sorted(self.dropped_stripped.items()):
            lines.append(f"    dropped {count:5d}  {reason}")
        lines.append(f"  dropped {self.n_dropped} PNG files -> {self.dropped_csv}")
        for reason, count in sorted(self.dropped.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {count:5d}  {reason}")
        if self.duplicate_images:
            lines.append(
                f"  note: {self.kept} items hold {self.distinct_images} distinct images; "
                f"{self.duplicate_images} items share their PNG bytes with another kept item "
                f"-> {self.duplicates_csv}"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------- text cleaning


def clean_text(text: str | None) -> str:
    """Remove export junk (``HASH(0x…)``, URLs, e-mail addresses), underscores and extra space."""
    if not text:
        return ""
    text = _JUNK.sub(" ", text)
    text = _URL.sub(" ", text)
    text = _EMAIL.sub(" ", text)
    text = text.replace("_", " ")
    return _SPACE.sub(" ", text).strip()


def _clean_field(text: str | None) -> str:
    """Clean a title or description; empty when it is a placeholder or a set's name."""
    text = _AUTHOR_PREFIX.sub("", clean_text(text)).strip()
    if text.lower().strip(" .:;,") in GENERIC_TITLES or _BOILERPLATE.match(text):
        return ""
    return text


def _clean_keywords(keywords: Iterable[str | None]) -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    for raw in keywords:
        for part in (raw or "").split(","):
            kw = clean_text(part).strip(" .;:")
            key = kw.lower()
            if not kw or key in JUNK_KEYWORDS or key in seen:
                continue
            seen.add(key)
            out.append(kw)
    return tuple(out)


def compose_text(fields: SvgText) -> str:
    """Join the fields as ``"title. description. keywords: k1, k2"``, skipping empty ones."""
    parts: list[str] = []
    title = fields.title.rstrip(" .")
    if title:
        parts.append(title)
    description = fields.description.rstrip(" .")
    if description and description.lower() != title.lower():
        parts.append(description)
    if fields.keywords:
        parts.append(f"{_KEYWORDS_LABEL} " + ", ".join(fields.keywords))
    return ". ".join(parts)


# --------------------------------------------------------------------------- SVG metadata


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _parse_svg(path: Path) -> Element:
    try:
        return SafeET.parse(path).getroot()
    except EntitiesForbidden:
        # Adobe Illustrator exports declare internal entities (&ns_flows; …) for their
        # namespaces. External entities and network access stay forbidden; expat itself
        # guards against entity-expansion bombs.
        return SafeET.parse(path, forbid_entities=False).getroot()


def read_svg_text(path: Path) -> SvgText:
    """Read title, description and keywords from an SVG's ``cc:Work`` RDF metadata.

    Raises:
        ValueError: the file is not well-formed XML or is refused by defusedxml.
    """
    try:
        root = _parse_svg(path)
    except (ParseError, DefusedXmlException, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path}: {type(err).__name__}: {err}") from err
    works = [el for el in root.iter() if _local(el.tag) == "Work"]
    title = description = ""
    keywords: list[str | None] = []
    for work in works:  # a few files repeat the cc:Work block; the first non-empty wins
        title = title or _clean_field(work.findtext(f"{_NS_DC}title"))
        description = description or _clean_field(work.findtext(f"{_NS_DC}description"))
        for subject in work.findall(f"{_NS_DC}subject"):
            items = list(subject.iter(f"{_NS_RDF}li"))
            if items:
                keywords.extend(li.text for li in items)
            else:
                keywords.append(subject.text)
    return SvgText(title=title, description=description, keywords=_clean_keywords(keywords))


# --------------------------------------------------------------------------- class words


def class_word_variants(word: str) -> set[str]:
    """A word with its simple singular/plural variants (``bug``/``bugs``, ``fly``/``flies``)."""
    w = word.lower()
    out = {w, w + "s", w + "es"}
    if w.endswith("ies") and len(w) > 4:
        out.add(w[:-3] + "y")
    if w.endswith("y") and len(w) > 2:
        out.add(w[:-1] + "ies")
    if w.endswith("es") and len(w) > 3:
        out.add(w[:-2])
    if w.endswith("s") and len(w) > 3:
        out.add(w[:-1])
    if w.endswith("ves") and len(w) > 4:
        out.update({w[:-3] + "f", w[:-3] + "fe"})
    if w.endswith("f"):
        out.add(w[:-1] + "ves")
    if w.endswith("fe"):
        out.add(w[:-2] + "ves")
    if w.endswith("men"):
        out.add(w[:-3] + "man")
    if w.endswith("man"):
        out.add(w[:-3] + "men")
    return out


def _class_words(class_path: str, sep: str) -> set[str]:
    words: set[str] = set()
    for part in class_path.split(sep):
        for word in _WORD.findall(part.lower()):
            if word not in _STOPWORDS:
                words |= class_word_variants(word)
    return words


_GAP = "\x00"  # marks where a class word was removed, so tidying touches only those spots
_TIDY_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # "signs and symbols" -> "" rather than "and"; "Canada - Alberta" -> "Alberta"
    (re.compile(rf"{_GAP}(?:\s*(?:[-&/+_]|\b(?:and|or|of|the)\b)\s*{_GAP})+", re.IGNORECASE), _GAP),
    (re.compile(rf"{_GAP}\s*[-&/+_]+(?=\s|$)|(?:(?<=\s)|^)[-&/+_]+\s*{_GAP}"), _GAP),
    (re.compile(rf"\(\s*{_GAP}\s*\)"), _GAP),
    (re.compile(_GAP), " "),
    (re.compile(r"\s+([,.;:!?)])"), r"\1"),
    (re.compile(r"([,;])(?:\s*[,;])+"), r"\1"),
    (re.compile(r"[,;]\s*\."), "."),
    (re.compile(r":\s*[,;]"), ":"),
    (re.compile(r"\.(?:\s*\.)+"), "."),
    (re.compile(r"(?:^|(?<=\.))\s*[,;:]+"), " "),
    (re.compile(rf"(?:^|(?<=\.))\s*{_KEYWORDS_LABEL}\s*(?=$|\.)", re.IGNORECASE), " "),
)


def _tidy(text: str) -> str:
    text = text.replace("\t", " ")
    for pattern, repl in _TIDY_RULES:
        text = pattern.sub(repl, text)
        text = _SPACE.sub(" ", text)
    return text.lstrip(" ,;:.").rstrip(" ,;:.")


def strip_class_words(text: str, class_path: str, sep: str = "<") -> str:
    """Remove every word of ``class_path`` from ``text`` (case-insensitive, whole words).

    Simple plural/singular variants go too (``animals`` removes ``animal``; ``bugs``
    removes ``bug``). Stop words such as ``and`` carry no label and stay, unless they only
    joined removed words. The punctuation left behind is tidied, so
    ``"Ant. keywords: ant, bug, insect"`` under ``animals<bugs`` becomes
    ``"Ant. keywords: ant, insect"``.
    """
    text = (text or "").replace(_GAP, " ")
    words = _class_words(class_path, sep)
    if not words:
        return _SPACE.sub(" ", text).strip()
    alternation = "|".join(sorted((re.escape(w) for w in words), key=lambda w: (-len(w), w)))
    pattern = re.compile(rf"(?<![^\W_])(?:{alternation})(?![^\W_])", re.IGNORECASE)
    return _tidy(pattern.sub(_GAP, text))


def _has_words(text: str) -> bool:
    body = re.sub(re.escape(_KEYWORDS_LABEL), " ", text, flags=re.IGNORECASE)
    return any(w.lower() not in _STOPWORDS for w in _WORD.findall(body))


# --------------------------------------------------------------------------- the builder


def _check_root(root: Path) -> None:
    missing = [sub for sub in ("png", "svg") if not (root / sub).is_dir()]
    if missing:
        raise OpenclipartNotFoundError(
            f"Openclipart not found: {', '.join(str(root / m) for m in missing)} missing. "
            "Install the Debian packages with `apt-get install openclipart-png openclipart-svg` "
            "(as root), or without root: `apt-get download openclipart-png openclipart-svg`, "
            "then `dpkg -x FILE.deb DIR` for each file and pass --root DIR/usr/share/openclipart."
        )


def _excluded_by(folder: PurePosixPath, excluded: Sequence[str]) -> str | None:
    for prefix in excluded:
        prefix_parts = PurePosixPath(prefix).parts
        if folder.parts[: len(prefix_parts)] == prefix_parts:
            return prefix
    return None


def _item_id(rel: PurePosixPath) -> str:
    return "__".join(rel.with_suffix("").parts)


def build_openclipart(
    root: Path = DEFAULT_ROOT,
    out_dir: Path | None = None,
    *,
    min_class_size: int = 1,
    exclude: Sequence[str] = EXCLUDED_FOLDERS,
    drop_duplicate_images: bool = False,
) -> OpenclipartReport:
    """Write ``manifest.csv``, ``manifest_stripped.csv`` and ``dropped.csv`` to ``out_dir``.

    Args:
        root: folder holding ``png/`` and ``svg/`` (Debian installs it under
            ``/usr/share/openclipart``).
        out_dir: output folder (created; required). Image paths in the manifests are absolute paths
            into ``root/png``; nothing is copied.
        min_class_size: classes with fewer kept items are dropped as a whole.
        exclude: folders under ``png/`` left out (generated patterns, unlabelled items).
        drop_duplicate_images: keep one item per byte-identical PNG (the one in the deepest
            folder, then the first in sorted order). By default all copies are kept, each
            under its own folder's class, and listed in ``duplicates.csv``.

    Raises:
        ConfigError: no ``out_dir``.
        OpenclipartNotFoundError: ``root/png`` or ``root/svg`` is missing.
    """
    if out_dir is None:
        # Optional only because ``root`` before it has a default; there is no sensible
        # default folder to write three manifests into.
        raise ConfigError(
            "build_openclipart needs out_dir: the folder for manifest.csv and its companions "
            "(`huse data openclipart --out DIR`)"
        )
    root = Path(root).expanduser().resolve()
    out_dir = Path(out_dir)
    _check_root(root)
    png_root, svg_root = root / "png", root / "svg"
    report = OpenclipartReport(root=root, out_dir=out_dir)
    dropped: list[tuple[str, str, str]] = []

    def drop(rel: PurePosixPath, reason: str, detail: str = "") -> None:
        dropped.append((f"png/{rel.as_posix()}", reason, detail))

    pngs = sorted(
        PurePosixPath(p.relative_to(png_root).as_posix()) for p in png_root.rglob("*.png")
    )
    candidates: list[PurePosixPath] = []
    for rel in pngs:
        prefix = _excluded_by(rel.parent, exclude)
        if not rel.parent.parts:
            drop(rel, REASON_NO_CLASS, "directly under png/, outside any class folder")
        elif prefix is not None:
            drop(rel, f"excluded folder {prefix}")
        else:
            candidates.append(rel)

    # The same file name in a folder and in one of its ancestors: keep the deepest copy.
    folders_by_name: dict[str, list[PurePosixPath]] = defaultdict(list)
    for rel in candidates:
        folders_by_name[rel.name].append(rel.parent)
    unique: list[PurePosixPath] = []
    for rel in candidates:
        deeper = [
            f for f in folders_by_name[rel.name] if f != rel.parent and rel.parent in f.parents
        ]
        if deeper:
            drop(
                rel, REASON_DUPLICATE, f"png/{(max(deeper, key=lambda f: len(f.parts)) / rel.name)}"
            )
        else:
            unique.append(rel)

    items: list[tuple[PurePosixPath, str, str]] = []  # (rel, text, classes)
    for rel in unique:
        svg = svg_root / rel.with_suffix(".svg")
        if not svg.is_file():
            drop(rel, REASON_NO_SVG, f"svg/{rel.with_suffix('.svg')} not found")
            continue
        try:
            fields = read_svg_text(svg)
        except ValueError as err:
            drop(rel, REASON_MALFORMED_SVG, str(err).replace(str(root) + "/", ""))
            continue
        text = compose_text(fields)
        if not _has_words(text):
            drop(rel, REASON_NO_TEXT, "no title, description or keywords left after cleaning")
            continue
        items.append((rel, text, "<".join(rel.parent.parts)))

    digests = {rel: hashlib.sha1((png_root / rel).read_bytes()).hexdigest() for rel, _, _ in items}
    if drop_duplicate_images:
        keeper: dict[str, PurePosixPath] = {}
        for rel, _, _ in sorted(items, key=lambda item: (-len(item[0].parts), item[0])):
            keeper.setdefault(digests[rel], rel)
        for rel, _, _ in items:
            if keeper[digests[rel]] != rel:
                drop(rel, REASON_SAME_IMAGE, f"png/{keeper[digests[rel]]}")
        items = [item for item in items if keeper[digests[item[0]]] == item[0]]

    sizes = Counter(classes for _, _, classes in items)
    if min_class_size > 1:
        small = {c for c, n in sizes.items() if n < min_class_size}
        for rel, _, classes in items:
            if classes in small:
                drop(rel, REASON_SMALL_CLASS, f"{classes}: {sizes[classes]} < {min_class_size}")
        items = [item for item in items if item[2] not in small]
        sizes = Counter(classes for _, _, classes in items)

    raw_rows: list[tuple[str, str, str, str]] = []
    stripped_rows: list[tuple[str, str, str, str]] = []
    dropped_stripped: list[tuple[str, str, str]] = []
    for rel, text, classes in items:
        row_id, image = _item_id(rel), str(png_root / rel)
        raw_rows.append((row_id, image, text, classes))
        stripped = strip_class_words(text, classes)
        if _has_words(stripped):
            stripped_rows.append((row_id, image, stripped, classes))
        else:
            dropped_stripped.append((f"png/{rel.as_posix()}", REASON_EMPTY_STRIPPED, text))

    ids = [r[0] for r in raw_rows]
    if len(set(ids)) != len(ids):  # cannot happen unless a file name contains "__" oddly
        raise RuntimeError("Openclipart item ids are not unique; report this as a bug")

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(report.manifest, MANIFEST_COLUMNS, raw_rows)
    atomic_write_csv(report.manifest_stripped, MANIFEST_COLUMNS, stripped_rows)
    all_dropped = sorted(dropped) + sorted(dropped_stripped)
    atomic_write_csv(report.dropped_csv, DROPPED_COLUMNS, all_dropped)

    copies = Counter(digests[rel] for rel, _, _ in items)
    duplicate_rows = sorted(
        (digests[rel], _item_id(rel), classes)
        for rel, _, classes in items
        if copies[digests[rel]] > 1
    )
    atomic_write_csv(report.duplicates_csv, ("sha1", "id", "classes"), duplicate_rows)
    report.kept = len(raw_rows)
    report.kept_stripped = len(stripped_rows)
    report.dropped = dict(Counter(reason for _, reason, _ in dropped))
    report.dropped_stripped = dict(Counter(reason for _, reason, _ in dropped_stripped))
    report.class_sizes = dict(sorted(sizes.items()))
    report.distinct_images = len(copies)
    report.duplicate_images = len(duplicate_rows)
    return report
