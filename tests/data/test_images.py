"""Safe image loading: transparency on white, any mode to RGB, huge images, broken files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from huse.data.images import ImageError, load_image, to_rgb_on_white


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w×h but holds no pixel data: opening it reads only the header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# --- modes ----------------------------------------------------------------------------


def test_rgba_transparent_pixels_become_white(tmp_path):
    a = np.zeros((2, 2, 4), dtype=np.uint8)
    a[0, 0] = (0, 0, 0, 0)  # fully transparent black → white, not black
    a[0, 1] = (255, 0, 0, 255)  # opaque red stays red
    a[1, 0] = (0, 0, 255, 128)  # half-transparent blue over white
    a[1, 1] = (10, 20, 30, 255)
    path = tmp_path / "rgba.png"
    Image.fromarray(a, "RGBA").save(path)
    img = load_image(path)
    assert img.mode == "RGB"
    out = np.asarray(img).astype(int)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (255, 0, 0)
    # 0·128/255 + 255·127/255 = 127 for red and green; blue stays 255.
    np.testing.assert_allclose(out[1, 0], (127, 127, 255), atol=1)
    assert tuple(out[1, 1]) == (10, 20, 30)


def test_la_mode_transparency_becomes_white():
    img = Image.fromarray(np.array([[[0, 0], [50, 255]]], dtype=np.uint8), "LA")
    out = np.asarray(load_image(png_bytes(img)))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (50, 50, 50)


def test_palette_with_transparency_becomes_white():
    img = Image.new("P", (3, 1))
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))
    img.putdata([0, 1, 2])
    data = png_bytes(img, transparency=0)  # palette index 0 (black) is transparent
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = np.asarray(load_image(data))
    assert [tuple(p) for p in out[0]] == [(255, 255, 255), (255, 0, 0), (0, 255, 0)]


def test_palette_without_transparency_keeps_colours():
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    img.putdata([0, 1])
    out = np.asarray(load_image(png_bytes(img)))
    assert [tuple(p) for p in out[0]] == [(0, 0, 0), (0, 0, 255)]


def test_grayscale_to_rgb():
    img = Image.fromarray(np.array([[0, 128, 255]], dtype=np.uint8), "L")
    out = np.asarray(load_image(png_bytes(img)))
    assert out.shape == (1, 3, 3)
    assert [tuple(p) for p in out[0]] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_cmyk_to_rgb(tmp_path):
    img = Image.new("CMYK", (3, 1))
    img.putdata([(0, 0, 0, 0), (0, 255, 255, 0), (0, 0, 0, 255)])
    path = tmp_path / "cmyk.tif"
    img.save(path)
    out = np.asarray(load_image(path))
    assert [tuple(p) for p in out[0]] == [(255, 255, 255), (255, 0, 0), (0, 0, 0)]


def test_to_rgb_on_white_accepts_rgb_unchanged():
    img = noise(5, 4)
    np.testing.assert_array_equal(np.asarray(to_rgb_on_white(img)), np.asarray(img))


# --- size -----------------------------------------------------------------------------


def test_huge_png_is_downscaled_to_max_side(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("RGB", (4000, 2000), (10, 200, 30)).save(path)
    img = load_image(path, max_side=1024)
    assert img.size == (1024, 512)
    assert img.mode == "RGB"
    out = np.asarray(img)
    assert (out == (10, 200, 30)).all()


def test_huge_jpeg_is_decoded_at_reduced_scale(tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (4000, 3000), (240, 240, 240)).save(path, quality=90)
    img = load_image(path, max_side=500)
    assert max(img.size) == 500
    assert img.size == (500, 375)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "I;16", "L"])
@pytest.mark.parametrize("factor", [2, 3, 7])
def test_strip_reduction_equals_whole_image_reduction(mode, factor):
    """The strips tile the image on the reduction's own grid: the same pixels as one
    conversion and reduce() of the whole image, on sizes that do not divide evenly."""
    from huse.data.images import STRIP_ROWS, _reduce_in_strips, _reducible

    rng = np.random.default_rng(factor)
    h, w = STRIP_ROWS * factor * 2 + 5, 301
    if mode == "P":
        img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).convert("P")
        img.info["transparency"] = 7
    elif mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16))
    else:
        shape = (h, w, len(mode)) if len(mode) > 1 else (h, w)
        img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
    got, want = _reduce_in_strips(img, factor), _reducible(img).reduce(factor)
    assert (got.mode, got.size) == (want.mode, want.size)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


_PEAK = """
import resource, sys
from huse.data.images import load_image
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
img = load_image(data, max_pixels=40_000_000)
print(img.size[0], (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


@pytest.mark.parametrize(
    ("mode", "colour", "decoded_mb"),
    [("RGBA", (200, 30, 30, 128), 64.0), ("P", 3, 16.0)],
)
def test_decoding_a_large_png_peaks_near_its_decoded_size(tmp_path, mode, colour, decoded_mb):
    """A 16 MP upload of a few kB: decoded once, then reduced without full-size copies
    (whole-image reduce() doubles an RGBA image; converting a palette image to RGBA
    quadruples it)."""
    import subprocess
    import sys

    path = tmp_path / "big.png"
    Image.new(mode, (4000, 4000), colour).save(path)
    assert path.stat().st_size < 200_000
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    side, peak_mb = out.stdout.split()
    assert int(side) == 1024
    assert float(peak_mb) < 1.3 * decoded_mb + 12, (peak_mb, decoded_mb)


def test_thumbnail_bytes_is_bounded_and_encoded(tmp_path):
    from huse.data.images import thumbnail_bytes

    path = tmp_path / "wide.png"
    Image.new("RGBA", (3000, 1000), (0, 0, 255, 0)).save(path)
    for fmt in ("WEBP", "JPEG"):
        thumb = Image.open(io.BytesIO(thumbnail_bytes(path, 96, fmt=fmt)))
        assert thumb.format == fmt and thumb.size[0] == 96 and thumb.size[1] in (32, 33)
        # Transparent on white, as everywhere else.
        assert np.asarray(thumb.convert("RGB")).mean() > 250
    with pytest.raises(ImageError, match="too large"):
        thumbnail_bytes(path, 96, max_pixels=1000)


def test_lanczos_thumbnail_is_the_whole_image_shrunk_then_flattened(tmp_path):
    """The demo set's thumbnails: convert to RGBA, one Lanczos pass, composite on white
    (computed here with Pillow directly), stored in the smaller of JPEG and PNG."""
    from huse.data.images import thumbnail_bytes

    path = tmp_path / "big.png"
    im = Image.new("RGBA", (400, 200), (0, 0, 0, 0))
    im.paste((255, 0, 0, 255), (100, 50, 300, 150))
    im.save(path)
    expected = im.copy()
    expected.thumbnail((100, 100), Image.Resampling.LANCZOS)
    white = Image.new("RGBA", expected.size, (255, 255, 255, 255))
    expected = Image.alpha_composite(white, expected).convert("RGB")
    kw = {"quality": 85, "resample": Image.Resampling.LANCZOS}
    data = thumbnail_bytes(path, 100, fmt=("JPEG", "PNG"), **kw)
    jpeg, png = (thumbnail_bytes(path, 100, fmt=f, **kw) for f in ("JPEG", "PNG"))
    assert data == min(jpeg, png, key=len)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(expected))
    thumb = Image.open(io.BytesIO(data)).convert("RGB")
    assert thumb.size == (100, 50) and thumb.getpixel((2, 2)) == (255, 255, 255)
    r, g, b = thumb.getpixel((50, 25))
    assert r > 240 and g < 15 and b < 15
    with pytest.raises(ImageError, match="too large"):
        thumbnail_bytes(path, 100, max_pixels=10_000, **kw)


def test_small_images_are_not_upscaled():
    img = load_image(png_bytes(noise(30, 20)), max_side=1024)
    assert img.size == (30, 20)


def test_over_max_pixels_is_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (2000, 1000), "white").save(path)
    with pytest.raises(ImageError, match=r"image too large: 2000x1000 = 2,000,000 pixels > limit"):
        load_image(path, max_pixels=1_000_000)


def test_bomb_header_is_refused_without_decoding():
    # The files hold only a header: a refusal here proves nothing was decoded.
    with pytest.raises(ImageError, match="image too large: 4000x3000"):
        load_image(png_header_only(4000, 3000), max_pixels=10_000_000)
    # 30000×30000 = 900 M pixels: over the default limit (and PIL's own bomb check).
    with pytest.raises(ImageError, match="image too large"):
        load_image(png_header_only(30000, 30000))


# --- broken files ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(tmp_path, fmt):
    buf = io.BytesIO()
    noise(300, 300).save(buf, format=fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(path)


def test_text_file_named_png_is_not_an_image(tmp_path):
    path = tmp_path / "fake.png"
    path.write_text("this is not a picture\n")
    with pytest.raises(ImageError, match="not an image"):
        load_image(path)


def test_empty_file_is_not_an_image(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="not an image"):
        load_image(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="image file not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_image_error_is_a_value_error():
    assert issubclass(ImageError, ValueError)


# --- load_image_for, letterbox, center_crop: one resize from the decoded picture ---


def _fair_letterbox(img: Image.Image, side: int) -> np.ndarray:
    """The reference by hand: the full picture as RGBA, one bicubic resize, alpha
    composite on white with Pillow's own compositing."""
    from huse.data.images import to_rgb_or_rgba

    rgba = to_rgb_or_rgba(img).convert("RGBA")
    w, h = rgba.size
    scale = side / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = rgba.resize((nw, nh), Image.Resampling.BICUBIC)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(small, ((side - nw) // 2, (side - nh) // 2))
    return np.asarray(canvas.convert("RGB")).astype(int)


def _blobs(w: int, h: int, seed: int = 0) -> Image.Image:
    """Smooth colour with soft transparency: clip art's kind of picture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    rgba = np.zeros((h, w, 4), dtype=np.uint8)
    for c in range(3):
        f = rng.uniform(2, 6, 2)
        rgba[..., c] = (127.5 + 127.5 * np.sin(f[0] * 6.3 * xx + f[1] * 6.3 * yy + c)).astype(
            np.uint8
        )
    r = np.hypot(xx - 0.5 * w / max(w, h), yy - 0.5 * h / max(w, h))
    rgba[..., 3] = np.clip(255 * (1.6 - 4 * r), 0, 255).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")


@pytest.mark.parametrize("size", [(600, 400), (3000, 2000), (5000, 700)])
def test_load_image_for_then_letterbox_is_one_resize_of_the_whole_picture(size):
    """Reduced by whole factors only while ≥ 3× the target, composited after resizing:
    within rounding of one bicubic resize of the full picture composited by hand."""
    from huse.data.images import REDUCING_GAP, letterbox, load_image_for

    img = _blobs(*size)
    side = 128
    decoded = load_image_for(png_bytes(img), side)
    assert decoded.mode == "RGBA"
    assert max(decoded.size) >= REDUCING_GAP * side
    # Reduced only when the picture is at least twice the floor: 3000 → 1000, 5000 → 1000.
    want_long = max(size) // (max(size) // (REDUCING_GAP * side)) if max(size) >= 768 else 600
    assert max(decoded.size) in (want_long, want_long + 1)
    got = np.asarray(letterbox(decoded, side, side)).astype(int)
    diff = np.abs(got - _fair_letterbox(img, side))
    if max(size) < 2 * REDUCING_GAP * side:  # not reduced: the very same pixels
        assert diff.max() == 0
    else:  # the box filter's share: a few levels at most (measured: max 6, mean 0.47)
        assert diff.max() <= 8 and diff.mean() < 0.6, (diff.max(), diff.mean())


def test_compositing_after_the_resize_equals_compositing_first():
    """Pillow resizes RGBA premultiplied, so composite(resize(x)) = resize(composite(x))
    up to rounding: the reason ``load_image_for`` keeps transparency."""
    from huse.data.images import letterbox

    img = _blobs(400, 300, seed=3)
    after = np.asarray(letterbox(img, 100, 100)).astype(int)
    first = np.asarray(letterbox(to_rgb_on_white(img), 100, 100)).astype(int)
    assert np.abs(after - first).max() <= 2


def test_load_image_for_reduces_by_the_side_asked_for():
    from huse.data.images import load_image_for

    data = png_bytes(Image.new("RGB", (4000, 1000), (10, 200, 30)))
    # Long side: 4000 // (3 × 260) = 5 → 800 × 200; short side: 1000 // 780 = 1, untouched.
    assert load_image_for(data, 260).size == (800, 200)
    assert load_image_for(data, 260, by="short").size == (4000, 1000)
    with pytest.raises(ValueError, match="by must be"):
        load_image_for(data, 260, by="middle")


def test_load_image_for_decodes_a_huge_jpeg_at_a_reduced_scale(tmp_path):
    from huse.data.images import load_image_for

    path = tmp_path / "big.jpg"
    noise(4000, 3000).save(path, quality=80)
    img = load_image_for(path, 224)
    # JPEG draft picks 1/2: still ≥ 3 × 224 on the long side, far from the full size.
    assert img.mode == "RGB"
    assert 3 * 224 <= max(img.size) <= 2000


@pytest.mark.parametrize(
    ("img", "mode"),
    [
        (Image.new("LA", (50, 40), (90, 0)), "RGBA"),
        (Image.new("L", (50, 40), 90), "RGB"),
        (Image.new("RGB", (50, 40), (1, 2, 3)), "RGB"),
        (Image.new("I;16", (50, 40), 65535), "RGB"),
    ],
)
def test_load_image_for_keeps_transparency_only_where_there_is_some(img, mode):
    from huse.data.images import load_image_for

    out = load_image_for(png_bytes(img), 32)
    assert out.mode == mode and out.size == (50, 40)
    # The same picture given as a PIL image comes out the same.
    same = load_image_for(img, 32)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(out))
    if img.mode == "I;16":  # scaled, not clipped: white
        assert (np.asarray(out) == 255).all()


def test_load_image_for_palette_transparency_and_errors(tmp_path):
    from huse.data.images import letterbox, load_image_for

    p = Image.new("P", (20, 10), 0)
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((0, 0), 1)
    out = load_image_for(png_bytes(p, transparency=0), 10)
    assert out.mode == "RGBA"
    # The transparent red becomes white; the opaque blue pixel stays blue-ish.
    boxed = np.asarray(letterbox(out, 20, 20))
    assert (boxed[10:15, 10:20] == 255).all()
    with pytest.raises(ImageError, match="not an image"):
        load_image_for(b"not an image", 10)
    with pytest.raises(ImageError, match="too large"):
        load_image_for(png_bytes(noise(100, 100)), 10, max_pixels=1000)
    with pytest.raises(ImageError, match="not found"):
        load_image_for(tmp_path / "missing.png", 10)


def test_center_crop_composites_after_the_crop():
    from huse.data.images import center_crop

    img = Image.new("RGBA", (300, 100), (0, 0, 255, 0))
    img.paste((255, 0, 0, 255), (140, 0, 160, 100))  # an opaque red bar in the middle
    out = np.asarray(center_crop(img, 50))
    assert out.shape == (50, 50, 3)
    assert (out[:, :15] == 255).all() and (out[:, -15:] == 255).all()  # transparent: white
    assert (out[:, 23:27] == (255, 0, 0)).all()
    # An RGB picture: resized and cut alone.
    rgb = np.asarray(center_crop(Image.new("RGB", (300, 100), (5, 6, 7)), 50))
    assert (rgb == (5, 6, 7)).all()
