"""Safe image loading: any mode to RGB on white, huge images downscaled, bombs refused."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# PIL raises DecompressionBombError past 2× this; we apply our own limit instead.
DEFAULT_MAX_PIXELS = 180_000_000
DEFAULT_MAX_SIDE = 1024


class ImageError(ValueError):
    """An image that cannot be used; the message is the reason shown to the user."""


def _open(source: str | Path | bytes) -> Image.Image:
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except FileNotFoundError as e:
        raise ImageError("image file not found") from e
    except IsADirectoryError as e:
        raise ImageError("image path is a directory") from e
    except PermissionError as e:
        raise ImageError("image file not readable (permission denied)") from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"image too large (decompression bomb guard): {e}") from e
    except UnidentifiedImageError as e:
        raise ImageError("not an image (unrecognised format)") from e
    except OSError as e:
        raise ImageError(f"unreadable image: {e}") from e


def load_image(
    source: str | Path | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
) -> Image.Image:
    """Open an image as RGB, transparency composited on white, long side ≤ ``max_side``.

    Args:
        source: a path or the file's bytes.
        max_pixels: refuse images with more pixels than this before decoding them.
        max_side: downscale so the long side is at most this; JPEGs are decoded at a
            reduced scale directly (``draft``), so a huge JPEG never fills memory.

    Raises:
        ImageError: missing, unreadable, truncated, not an image, or over the pixel limit.
    """
    img = _open(source)
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError("image has zero size")
    if w * h > max_pixels:
        raise ImageError(f"image too large: {w}x{h} = {w * h:,} pixels > limit {max_pixels:,}")
    try:
        if img.format == "JPEG":
            img.draft("RGB", (max_side, max_side))
        img.load()
        if max(img.size) > max_side:
            # reduce() and thumbnail() take no palette images: expand them first, keeping
            # transparency so it can still be composited on white.
            if img.mode not in ("RGB", "RGBA", "L", "LA"):
                has_alpha = img.mode in ("PA", "La") or "transparency" in img.info
                img = img.convert("RGBA" if has_alpha else "RGB")
            # reduce() first: an integer box filter that is cheap on huge images.
            factor = max(img.size) // max_side
            if factor >= 2:
                img = img.reduce(factor)
            img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        return to_rgb_on_white(img)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e)
        if "truncated" in msg.lower() or "broken data stream" in msg.lower():
            raise ImageError(f"truncated or corrupt image: {msg}") from e
        raise ImageError(f"corrupt image: {msg}") from e


def to_rgb_on_white(img: Image.Image) -> Image.Image:
    """Any mode to RGB; transparent pixels become white rather than black."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img).convert("RGB")
    return img.convert("RGB")
