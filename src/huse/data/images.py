"""Safe image loading and the geometry of pictures: any mode to RGB on white, huge images
reduced while decoding, bombs refused; letterboxing and centre crops at a network's size."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from huse.errors import HuseError

# Pillow refuses, while opening, any image over 2 × Image.MAX_IMAGE_PIXELS (178,956,970
# pixels by default) with DecompressionBombError; our own limit is checked right after
# opening, from the header. The default sits just under Pillow's, so it is the one that
# takes effect; a larger ``max_pixels`` is capped at Pillow's (see ``effective_max_pixels``).
DEFAULT_MAX_PIXELS = 178_000_000
DEFAULT_MAX_SIDE = 1024
# Rows of the reduced image made per strip: a strip of the full-size image is a copy of
# (STRIP_ROWS × factor) rows, a few MB, where a whole-image conversion is another full copy.
STRIP_ROWS = 64
# ``load_image_for`` reduces a picture by whole factors (a box filter) only while it stays
# at least this many times the size the caller resizes it to: Pillow's ``reducing_gap``,
# at which Pillow's documentation calls the result indistinguishable from resampling the
# full picture. Measured: the very same pixels as one bicubic resize of the full picture
# where no reduction happens (every one of 64 Openclipart PNGs), a few levels off where
# one does (tests/data/test_images.py), at half the CPU time of ``load_image`` and a resize.
REDUCING_GAP = 3
WHITE = (255, 255, 255)


class ImageError(HuseError):
    """An image that cannot be used; the message is the reason shown to the user."""


def effective_max_pixels(max_pixels: int) -> int:
    """``max_pixels`` capped at Pillow's own hard limit, which refuses images first."""
    pil = Image.MAX_IMAGE_PIXELS
    return max_pixels if pil is None else min(max_pixels, 2 * int(pil))


def _open(source: str | Path | bytes, max_pixels: int) -> tuple[Image.Image, BinaryIO]:
    """The image, lazily opened, and its file: opened here rather than by Pillow, so that
    ``_decode`` closes it as soon as the pixels are loaded (Pillow keeps a file it opened
    itself until the image is collected)."""
    fp: BinaryIO | None = None
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp), fp
    except BaseException as e:
        if fp is not None:
            fp.close()
        err = _open_error(e, max_pixels)
        if err is e:
            raise
        raise err from e


def _open_error(e: BaseException, max_pixels: int) -> BaseException:
    """What a failure to open an image means, as an ``ImageError``; an interrupt as it is."""
    if isinstance(e, FileNotFoundError):
        return ImageError("image file not found")
    if isinstance(e, IsADirectoryError):
        return ImageError("image path is a directory")
    if isinstance(e, PermissionError):
        return ImageError("image file not readable (permission denied)")
    if isinstance(e, Image.DecompressionBombError):
        return ImageError(
            f"image too large: more than limit {effective_max_pixels(max_pixels):,} pixels "
            f"(Pillow's decompression bomb guard: {e})"
        )
    if isinstance(e, UnidentifiedImageError):
        return ImageError("not an image (unrecognised format)")
    if isinstance(e, OSError):
        return ImageError(f"unreadable image: {e}")
    if isinstance(e, Exception):  # a malformed header can raise almost anything from a plugin
        return ImageError(f"corrupt image header: {type(e).__name__}: {e}")
    return e


def load_image(
    source: str | Path | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
    resample: Image.Resampling | None = None,
) -> Image.Image:
    """Open an image as RGB, transparency composited on white, long side ≤ ``max_side``.

    Args:
        source: a path or the file's bytes.
        max_pixels: refuse images with more pixels than this before decoding them.
        max_side: downscale so the long side is at most this; JPEGs are decoded at a
            reduced scale directly (``draft``), so a huge JPEG never fills memory.
        resample: None (the default: features, uploads) reduces a large image strip by
            strip and finishes with bicubic resampling, never holding a second full-size
            copy. A Pillow filter (``LANCZOS``: the bundled demo set's thumbnails) first
            converts the whole image to RGB or RGBA, then shrinks it with that filter in
            one pass: sharper, for offline builds, at the cost of one full-size copy.

    Raises:
        ImageError: missing, unreadable, truncated, not an image, or over the pixel limit.
            Nothing else: any failure of a decoder on a malformed file becomes this.
    """

    def capped(img: Image.Image) -> Image.Image:
        if img.format == "JPEG":
            img.draft("RGB", (max_side, max_side))
        img.load()
        if resample is not None:
            img = img.convert("RGBA" if _has_alpha(img) else "RGB")
            img.thumbnail((max_side, max_side), resample)
        elif max(img.size) > max_side:
            factor = max(img.size) // max_side
            img = _reduce_in_strips(img, factor) if factor >= 2 else _reducible(img)
            img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        return to_rgb_on_white(img)

    return _decode(source, max_pixels, capped)


def load_image_for(
    source: str | Path | bytes | Image.Image,
    side: int,
    *,
    by: str = "long",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Open an image that the caller resizes once, so that one of its sides becomes ``side``.

    What the offline backbones decode with: one resampling from the decoded picture to
    the network's input, where ``load_image`` resamples twice (to ``max_side``, then to the
    input) and composites the full-size picture on white. The picture is reduced by whole
    factors (a box filter, strip by strip; JPEGs at a reduced scale while decoding) only
    while its ``by`` side stays at least ``REDUCING_GAP`` × ``side``, and transparency is
    kept: ``letterbox`` and ``center_crop`` composite on white after resizing, which equals
    compositing first up to rounding (Pillow resizes transparent pictures premultiplied,
    and compositing on white is affine in premultiplied colour).

    Args:
        source: a path, the file's bytes, or a PIL image (reduced and converted alike).
        side: the size the caller resizes the ``by`` side to.
        by: ``"long"`` (a letterbox: the long side) or ``"short"`` (a centre crop).
        max_pixels: refuse images with more pixels than this before decoding them.

    Returns:
        An RGB image, or RGBA where the picture has transparency; 16-bit and float
        greyscale scaled to 8 bits as ``to_rgb_on_white`` does.

    Raises:
        ImageError: as ``load_image``.
    """
    if by not in ("long", "short"):
        raise ValueError(f"by must be 'long' or 'short', not {by!r}")
    if side < 1:
        raise ValueError(f"side must be at least 1, not {side!r}")
    pick = max if by == "long" else min
    floor = REDUCING_GAP * side

    def for_one_resize(img: Image.Image) -> Image.Image:
        if img.format == "JPEG":
            w, h = img.size
            r = floor / pick(w, h)
            if r < 1:  # draft keeps both sides at least the size asked for
                img.draft("RGB", (math.ceil(w * r), math.ceil(h * r)))
        img.load()
        factor = pick(img.size) // floor
        img = _reduce_in_strips(img, factor) if factor >= 2 else _reducible(img)
        return to_rgb_or_rgba(img)

    if isinstance(source, Image.Image):
        return _guarded(lambda: for_one_resize(source))
    return _decode(source, max_pixels, for_one_resize)


def _decode(
    source: str | Path | bytes, max_pixels: int, body: Callable[[Image.Image], Image.Image]
) -> Image.Image:
    """``body`` of the opened image, after the size checks, with every decoder failure
    turned into an ``ImageError``."""
    img, fp = _open(source, max_pixels)
    try:
        w, h = img.size
        if w <= 0 or h <= 0:
            raise ImageError("image has zero size")
        if w * h > max_pixels:
            raise ImageError(f"image too large: {w}x{h} = {w * h:,} pixels > limit {max_pixels:,}")
        return _guarded(lambda: body(img))
    finally:
        fp.close()


def _guarded(body: Callable[[], Image.Image]) -> Image.Image:
    try:
        return body()
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e)
        if "truncated" in msg.lower() or "broken data stream" in msg.lower():
            raise ImageError(f"truncated or corrupt image: {msg}") from e
        raise ImageError(f"corrupt image: {msg}") from e
    except MemoryError as e:
        raise ImageError("image too large to decode in memory") from e
    except Exception as e:  # decoders of malformed files: struct.error, IndexError...
        raise ImageError(f"corrupt image: {type(e).__name__}: {e}") from e


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info


def _reducible(img: Image.Image) -> Image.Image:
    """``img`` in a mode that reduce() and thumbnail() take (not P, 1, I;16...), keeping
    transparency so that it can still be composited on white."""
    if img.mode.startswith("I;16"):  # lossless; reduce() takes I but not I;16
        return img.convert("I")
    if img.mode not in ("RGB", "RGBA", "L", "LA", "I", "F"):
        has_alpha = img.mode in ("PA", "La") or "transparency" in img.info
        return img.convert("RGBA" if has_alpha else "RGB")
    return img


def _reduce_in_strips(img: Image.Image, factor: int) -> Image.Image:
    """``img.reduce(factor)`` (after ``_reducible``), computed a strip of rows at a time.

    The same pixels as converting and reducing the whole image, without the full-size
    copies that a mode conversion or reduce() itself makes (it premultiplies alpha
    images into a second full-size image): a 40 MP RGBA upload then peaks at its decoded
    size, not twice that.
    """
    w, h = img.size
    step = STRIP_ROWS * factor  # a multiple of factor: the strips' boxes tile the image's
    out = None
    for y in range(0, h, step):
        part = _reducible(img.crop((0, y, w, min(h, y + step)))).reduce(factor)
        if out is None:
            out = Image.new(part.mode, (-(-w // factor), -(-h // factor)))
        out.paste(part, (0, y // factor))
    return out


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale to 8-bit L by scaling, not clipping
    (Pillow's own conversion clips, turning most 16-bit pictures white)."""
    a = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        top = 1.0 if a.size and np.nanmax(a) <= 1.0 else 255.0
    elif img.mode.startswith("I;16"):
        top = 65535.0
    else:  # "I": 16-bit files open as I; other ranges by their maximum
        peak = float(a.max()) if a.size else 0.0
        top = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
    a = np.nan_to_num(a, nan=0.0) * (255.0 / top)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def open_rgb(
    source: str | Path | bytes | Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """A path, bytes or PIL image as RGB on white: ``load_image``, or ``to_rgb_on_white``
    of an image already open."""
    if isinstance(source, Image.Image):
        return to_rgb_on_white(source)
    return load_image(source, max_pixels=max_pixels)


def to_rgb_or_rgba(img: Image.Image) -> Image.Image:
    """Any mode to RGB, or to RGBA where it has transparency (``to_rgb_on_white`` without
    the compositing, for a caller that composites after resizing)."""
    if img.mode == "F" or img.mode == "I" or img.mode.startswith("I;16"):
        img = _to_8bit(img)
    if img.mode in ("RGB", "RGBA"):
        return img
    return img.convert("RGBA" if _has_alpha(img) else "RGB")


def letterbox(img: Image.Image, width: int, height: int) -> Image.Image:
    """The whole image, resized (bicubic) and centred on a white ``width``×``height`` canvas.

    Catalogue pictures (clip art, products) are often wide or tall with the object
    filling the frame; a centre crop would cut it, so the networks see it letterboxed.
    An RGBA image is composited on white as it is pasted, after resizing.
    """
    w, h = img.size
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (width, height), WHITE)
    canvas.paste(img, ((width - nw) // 2, (height - nh) // 2), img if img.mode == "RGBA" else None)
    return canvas


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the short side to ``size`` (bicubic) and cut the centre ``size``×``size``
    square; an RGBA image is composited on white after resizing."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    if img.mode != "RGBA":
        return img
    canvas = Image.new("RGB", img.size, WHITE)
    canvas.paste(img, (0, 0), img)
    return canvas


def to_rgb_on_white(img: Image.Image) -> Image.Image:
    """Any mode to RGB; transparent pixels become white rather than black."""
    if img.mode == "F" or img.mode == "I" or img.mode.startswith("I;16"):
        img = _to_8bit(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img).convert("RGB")
    return img.convert("RGB")


def thumbnail_bytes(
    source: str | Path | bytes,
    side: int,
    *,
    fmt: str | tuple[str, ...] = "WEBP",
    quality: int = 82,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    resample: Image.Resampling | None = None,
) -> bytes:
    """An image as an encoded thumbnail whose long side is at most ``side`` pixels.

    The one thumbnailer of the report, the web app and the demo set: the same safe
    decoding as ``load_image`` (pixel limit, reduced-scale decoding, transparency on white).

    Args:
        fmt: a Pillow format, or several: the smallest encoding wins, the first on a tie
            (the demo set stores ``("JPEG", "PNG")``).
        quality: for the lossy formats.
        resample: as ``load_image``'s.

    Raises:
        ImageError: as ``load_image``.
    """
    img = load_image(source, max_pixels=max_pixels, max_side=side, resample=resample)
    encoded = [_encode(img, f, quality) for f in ((fmt,) if isinstance(fmt, str) else fmt)]
    return min(encoded, key=len)


def _encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "WEBP":
        img.save(buf, fmt, quality=quality, method=4)
    else:  # PNG ignores quality
        img.save(buf, fmt, quality=quality, optimize=True)
    return buf.getvalue()
