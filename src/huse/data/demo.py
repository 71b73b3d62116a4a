"""The small Openclipart demo set bundled with huse (``data/openclipart-demo``).

It is rebuilt from Debian's openclipart-png and openclipart-svg packages by
``python scripts/build_demo_data.py``: a few hundred items over a few dozen classes, with
sibling classes under shared parents so the hierarchy matters, each picture downscaled and
composited on white so the whole set stays small enough to live in the repository.
"""

from __future__ import annotations

import csv
import random
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from huse._io import atomic_write_csv, atomic_write_text
from huse.data.images import ImageError, thumbnail_bytes
from huse.data.openclipart import DEFAULT_ROOT, MANIFEST_COLUMNS, build_openclipart
from huse.errors import DataError

__all__ = [
    "DEMO_CLASSES",
    "DemoReport",
    "build_demo",
]

# Ten top-level classes; most have two to five children here, so a mistake between
# siblings (birds vs bugs) can be told apart from one across the tree (birds vs boats).
DEMO_CLASSES: tuple[str, ...] = (
    "animals<birds",
    "animals<bugs",
    "animals<dinosaurs",
    "animals<mammals",
    "buildings<homes",
    "computer<hardware",
    "food<beverages",
    "food<breads_and_carbs",
    "food<desserts",
    "food<fruit",
    "food<meats_and_eggs",
    "people<bodypart",
    "people<clothing<hats",
    "people<smilies",
    "people<stickmen",
    "plants<flowers",
    "plants<trees",
    "recreation<games<chess",
    "recreation<music",
    "recreation<sports",
    "recreation<toys",
    "signs_and_symbols<clocks",
    "signs_and_symbols<flags<africa",
    "signs_and_symbols<flags<europe",
    "signs_and_symbols<weather",
    "tools<weapons",
    "transportation<boating",
    "transportation<roadsigns",
    "transportation<vehicles",
)

# Decoding a PNG needs width × height × 4 bytes whatever size is asked for (only JPEG can
# decode at a reduced scale), and Openclipart holds PNGs of 168 and 623 megapixels: the
# demo passes over anything above this rather than use huse.data.images' default limit.
DEMO_MAX_PIXELS = 50_000_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class DemoReport:
    """What :func:`build_demo` wrote.

    Args:
        out_dir: the demo folder.
        class_sizes: items per class.
        skipped: candidate items passed over, by reason.
        image_bytes: total size of the image files.
        total_bytes: total size of everything under ``out_dir``.
    """

    out_dir: Path
    class_sizes: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    image_bytes: int = 0
    total_bytes: int = 0

    @property
    def n_items(self) -> int:
        return sum(self.class_sizes.values())

    @property
    def n_classes(self) -> int:
        return len(self.class_sizes)

    def summary(self) -> str:
        top = {c.split("<", 1)[0] for c in self.class_sizes}
        lines = [
            f"Openclipart demo set in {self.out_dir}",
            f"  {self.n_items} items, {self.n_classes} classes under {len(top)} top-level "
            f"classes, {self.total_bytes / 1e6:.2f} MB ({self.image_bytes / 1e6:.2f} MB images)",
        ]
        for reason, count in sorted(self.skipped.items()):
            lines.append(f"  not eligible: {count} items ({reason})")
        return "\n".join(lines)


def _image_suffix(data: bytes) -> str:
    return ".png" if data.startswith(PNG_SIGNATURE) else ".jpg"


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _readme(report: DemoReport, *, per_class: int, seed: int, max_side: int, source: str) -> str:
    classes = "\n".join(f"| `{c}` | {n} |" for c, n in sorted(report.class_sizes.items()))
    return f"""# Openclipart demo set

{report.n_items} clip-art pictures in {report.n_classes} classes, each with a short text, for
trying huse end to end in minutes. The class of an item is its Openclipart folder
(`food/fruit` becomes `food<fruit`); its text is the title, description and keywords of
the matching SVG's metadata.

- `manifest.csv`: columns `id`, `image` (relative to this folder), `text`, `classes`.
- `manifest_stripped.csv`: the same items, with every word of an item's own class path
  removed from its text. Openclipart keywords often repeat the folder names, so the raw
  texts leak the label; compare methods on the stripped texts.
- `images/`: each picture shrunk to at most {max_side} px on its long side, transparency
  composited on white, stored as JPEG (quality 85) or PNG, whichever is smaller.

## Source and licence

The pictures and texts come from the [Openclipart](https://openclipart.org) library, whose
works are dedicated to the **public domain**, as packaged by Debian in `openclipart-png`
and `openclipart-svg` ({source}). Thanks to the Openclipart artists.

## Rebuilding

```
apt-get install openclipart-png openclipart-svg   # as root, once
python scripts/build_demo_data.py                 # rewrites this folder
```

The selection is deterministic: up to {per_class} items per class, drawn with seed {seed} from
the items whose stripped text is not empty, whose picture is not shared with another
item, and that decode within the pixel limit. See `huse.data.demo.DEMO_CLASSES` and
`python scripts/build_demo_data.py --help`.

| class | items |
|---|---|
{classes}
"""


def build_demo(
    root: Path = DEFAULT_ROOT,
    out_dir: Path = Path("data/openclipart-demo"),
    *,
    classes: Sequence[str] = DEMO_CLASSES,
    per_class: int = 16,
    seed: int = 0,
    max_side: int = 128,
    max_pixels: int = DEMO_MAX_PIXELS,
    quality: int = 85,
    source: str = "Debian packages openclipart-png and openclipart-svg",
) -> DemoReport:
    """Build the demo set from the Openclipart packages into ``out_dir``.

    Args:
        root: the Openclipart folder (holds ``png/`` and ``svg/``).
        out_dir: the demo folder; its ``images/`` and manifests are rewritten.
        classes: class paths to draw from (``<``-joined).
        per_class: most items per class.
        seed: seeds the draw within each class.
        max_side: longest image side in pixels.
        max_pixels: larger source images are passed over rather than decoded.
        quality: JPEG quality.
        source: how the packages were obtained, for the README (e.g. their versions).

    Raises:
        OpenclipartNotFoundError: the packages are not installed under ``root``.
        DataError: a requested class has no usable item.
    """
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="huse-openclipart-") as tmp:
        full = build_openclipart(root, Path(tmp))
        raw = {r["id"]: r for r in _read_rows(full.manifest)}
        stripped = {r["id"]: r for r in _read_rows(full.manifest_stripped)}
        shared = {r["id"] for r in _read_rows(full.duplicates_csv)}

    missing = [c for c in classes if c not in full.class_sizes]
    if missing:
        raise DataError(f"no items under {root} for demo classes: {', '.join(missing)}")

    skipped: Counter[str] = Counter()
    chosen: list[tuple[str, str, bytes]] = []  # (id, class, encoded thumbnail)
    for cls in sorted(classes):
        ids = sorted(i for i, r in raw.items() if r["classes"] == cls)
        usable = [i for i in ids if i in stripped and i not in shared]
        skipped["text empty once class words are stripped"] += sum(i not in stripped for i in ids)
        skipped["picture shared with another item"] += sum(
            i in stripped and i in shared for i in ids
        )
        # One generator per class, so adding a class does not change the others' draw.
        random.Random(f"{seed}:{cls}").shuffle(usable)
        taken = 0
        for item_id in usable:
            if taken == per_class:
                break
            try:
                # Sharp Lanczos thumbnails, stored as JPEG or lossless PNG, whichever is smaller.
                thumb = thumbnail_bytes(
                    raw[item_id]["image"],
                    max_side,
                    fmt=("JPEG", "PNG"),
                    quality=quality,
                    max_pixels=max_pixels,
                    resample=Image.Resampling.LANCZOS,
                )
            except ImageError as err:
                too_big = str(err).startswith("image too large")
                skipped["picture too many pixels" if too_big else "picture undecodable"] += 1
                continue
            chosen.append((item_id, cls, thumb))
            taken += 1
        if taken == 0:
            raise DataError(f"demo class {cls} has no usable item under {root}")

    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for old in images_dir.iterdir():  # a rebuild must not leave last run's files behind
        if old.is_file() and old.suffix in (".jpg", ".png"):
            old.unlink()

    raw_rows: list[tuple[str, str, str, str]] = []
    stripped_rows: list[tuple[str, str, str, str]] = []
    image_bytes = 0
    for item_id, cls, data in sorted(chosen, key=lambda c: c[0]):
        rel = f"images/{item_id}{_image_suffix(data)}"
        (out_dir / rel).write_bytes(data)
        image_bytes += len(data)
        raw_rows.append((item_id, rel, raw[item_id]["text"], cls))
        stripped_rows.append((item_id, rel, stripped[item_id]["text"], cls))
    atomic_write_csv(out_dir / "manifest.csv", MANIFEST_COLUMNS, raw_rows)
    atomic_write_csv(out_dir / "manifest_stripped.csv", MANIFEST_COLUMNS, stripped_rows)

    report = DemoReport(
        out_dir=out_dir,
        class_sizes=dict(sorted(Counter(cls for _, cls, _ in chosen).items())),
        skipped={k: v for k, v in skipped.items() if v},
        image_bytes=image_bytes,
    )
    readme = _readme(report, per_class=per_class, seed=seed, max_side=max_side, source=source)
    atomic_write_text(out_dir / "README.md", readme)
    report.total_bytes = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    return report
