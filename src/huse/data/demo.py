"""The small Openclipart demo set bundled with huse (``data/openclipart-demo``).

It is rebuilt from Debian's openclipart-png and openclipart-svg packages by
``python scripts/build_demo_data.py``: a few hundred items over a few dozen classes, with
sibling classes under shared parents so the hierarchy matters, each picture downscaled and
composited on white so the whole set stays small enough to live in the repository.
"""

from __future__ import annotations

import contextlib
import csv
import io
import random
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from huse.data.openclipart import DEFAULT_ROOT, MANIFEST_COLUMNS, build_openclipart

__all__ = [
    "DEMO_CLASSES",
    "DemoReport",
    "build_demo",
    "encode_smallest",
    "load_thumbnail",
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
# decode at a reduced scale), and Openclipart holds PNGs of 168 and 623 megapixels.
DEFAULT_MAX_PIXELS = 50_000_000


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


@contextlib.contextmanager
def _pixel_guard(max_pixels: int) -> Iterator[None]:
    # PIL warns above MAX_IMAGE_PIXELS and refuses above twice that; make both refuse.
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def load_thumbnail(
    path: Path,
    max_side: int = 128,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Open an image, shrink it to at most ``max_side`` pixels on its long side, flatten on white.

    Transparent pixels (RGBA, LA, palette transparency) are composited on ``background``.

    Raises:
        ValueError: the image has more than ``max_pixels`` pixels, or cannot be decoded.
    """
    try:
        with _pixel_guard(max_pixels), Image.open(path) as im:
            im.draft("RGB", (max_side, max_side))  # JPEG decodes at 1/2..1/8 scale; no-op else
            has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
            work = im.convert("RGBA" if has_alpha else "RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(f"{path}: more than {max_pixels / 1e6:.0f} megapixels") from err
    except (OSError, SyntaxError) as err:  # PIL raises SyntaxError for some broken files
        raise ValueError(f"{path}: cannot decode image: {err}") from err
    work.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    if has_alpha:
        flat = Image.new("RGBA", work.size, (*background, 255))
        flat.alpha_composite(work)
        work = flat
    return work.convert("RGB")


def encode_smallest(image: Image.Image, *, quality: int = 85) -> tuple[bytes, str]:
    """Encode as JPEG (``quality``) and as lossless PNG; return the smaller and its suffix."""
    jpeg, png = io.BytesIO(), io.BytesIO()
    image.save(jpeg, format="JPEG", quality=quality, optimize=True)
    image.save(png, format="PNG", optimize=True)
    if png.tell() < jpeg.tell():
        return png.getvalue(), ".png"
    return jpeg.getvalue(), ".jpg"


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _write_manifest(path: Path, rows: Sequence[Sequence[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)


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
    max_pixels: int = DEFAULT_MAX_PIXELS,
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
        ValueError: a requested class has no usable item.
    """
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="huse-openclipart-") as tmp:
        full = build_openclipart(root, Path(tmp))
        raw = {r["id"]: r for r in _read_rows(full.manifest)}
        stripped = {r["id"]: r for r in _read_rows(full.manifest_stripped)}
        shared = {r["id"] for r in _read_rows(full.duplicates_csv)}

    missing = [c for c in classes if c not in full.class_sizes]
    if missing:
        raise ValueError(f"no items under {root} for demo classes: {', '.join(missing)}")

    skipped: Counter[str] = Counter()
    chosen: list[tuple[str, str, Image.Image]] = []  # (id, class, thumbnail)
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
                thumb = load_thumbnail(Path(raw[item_id]["image"]), max_side, max_pixels=max_pixels)
            except ValueError as err:
                reason = "too many pixels" if "megapixels" in str(err) else "undecodable"
                skipped[f"picture {reason}"] += 1
                continue
            chosen.append((item_id, cls, thumb))
            taken += 1
        if taken == 0:
            raise ValueError(f"demo class {cls} has no usable item under {root}")

    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for old in images_dir.iterdir():  # a rebuild must not leave last run's files behind
        if old.is_file() and old.suffix in (".jpg", ".png"):
            old.unlink()

    raw_rows: list[tuple[str, str, str, str]] = []
    stripped_rows: list[tuple[str, str, str, str]] = []
    image_bytes = 0
    for item_id, cls, thumb in sorted(chosen, key=lambda c: c[0]):
        data, suffix = encode_smallest(thumb, quality=quality)
        rel = f"images/{item_id}{suffix}"
        (out_dir / rel).write_bytes(data)
        image_bytes += len(data)
        raw_rows.append((item_id, rel, raw[item_id]["text"], cls))
        stripped_rows.append((item_id, rel, stripped[item_id]["text"], cls))
    _write_manifest(out_dir / "manifest.csv", raw_rows)
    _write_manifest(out_dir / "manifest_stripped.csv", stripped_rows)

    report = DemoReport(
        out_dir=out_dir,
        class_sizes=dict(sorted(Counter(cls for _, cls, _ in chosen).items())),
        skipped={k: v for k, v in skipped.items() if v},
        image_bytes=image_bytes,
    )
    readme = _readme(report, per_class=per_class, seed=seed, max_side=max_side, source=source)
    (out_dir / "README.md").write_text(readme, encoding="utf-8")
    report.total_bytes = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    return report
