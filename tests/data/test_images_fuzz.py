"""Fuzzed images (property-based): random bytes, mutated and truncated files of every
accepted format, zero sizes, enormous declared dimensions, CMYK, 16-bit, animated GIF.
``load_image`` returns a small RGB image or raises ``ImageError`` (nothing else), and
extraction over such files never stops: each bad file is one reported failure."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from huse.data.images import DEFAULT_MAX_PIXELS, ImageError, effective_max_pixels, load_image

FUZZ = settings(
    max_examples=int(os.environ.get("HUSE_FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow],
)
MAX_SIDE = 64


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_header(w: int, h: int, depth: int = 8, colour: int = 2) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 32, 3), np.uint8))
    frames = [Image.new("RGB", (12, 12), (60 * i + 30, 0, 0)) for i in range(4)]
    info = PngImagePlugin.PngInfo()
    info.add_text("note", "hello", zip=True)
    return {
        "png": encoded(rgb, "PNG", pnginfo=info),
        "jpeg": encoded(rgb, "JPEG"),
        "progressive-jpeg": encoded(rgb, "JPEG", progressive=True),
        "cmyk-jpeg": encoded(rgb.convert("CMYK"), "JPEG"),
        "gif-animated": encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "webp": encoded(rgb, "WEBP"),
        "bmp": encoded(rgb, "BMP"),
        "tiff-16bit": encoded(
            Image.fromarray(rng.integers(0, 65535, (20, 20)).astype(np.uint16)), "TIFF"
        ),
        "png-16bit": encoded(
            Image.fromarray(rng.integers(0, 65535, (20, 20)).astype(np.uint16)), "PNG"
        ),
        "png-palette-alpha": encoded(rgb.convert("P"), "PNG", transparency=0),
        "png-la": encoded(rgb.convert("LA"), "PNG"),
        "ico": encoded(rgb, "ICO"),
    }


SEEDS = _seeds()


def check(data: bytes) -> None:
    try:
        img = load_image(data, max_side=MAX_SIDE, max_pixels=4_000_000)
    except ImageError as e:
        assert str(e)  # a reason for the skipped.csv or the 4xx
        return
    assert img.mode == "RGB" and max(img.size) <= MAX_SIDE and min(img.size) >= 1
    img.tobytes()  # fully decoded


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "zero-run"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            data = data[:at]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:
            data[at : at + draw(st.integers(1, 64))] = b"\x00" * 8
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_images_load_or_give_an_image_error(data):
    check(data)


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_load_or_give_an_image_error(data):
    check(data)


@FUZZ
@given(
    w=st.integers(0, 2**31 - 1),
    h=st.integers(0, 2**31 - 1),
    depth=st.sampled_from([1, 2, 4, 8, 16]),
    colour=st.sampled_from([0, 2, 3, 4, 6]),
)
def test_declared_dimensions_of_any_size_are_refused_or_loaded(w, h, depth, colour):
    check(png_header(w, h, depth, colour))


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_format_loads(name):
    img = load_image(SEEDS[name], max_side=MAX_SIDE)
    assert img.mode == "RGB"


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    a = np.full((8, 8), 32768, np.uint16)  # mid-grey in 16 bits
    img = load_image(encoded(Image.fromarray(a), "PNG"))
    assert tuple(np.asarray(img)[0, 0]) == (128, 128, 128)  # not clipped to white


def test_zero_size_and_huge_text_chunk_are_image_errors():
    with pytest.raises(ImageError):
        load_image(png_header(0, 10))
    info = PngImagePlugin.PngInfo()
    info.add_text("bomb", "x" * (2 * 1024 * 1024), zip=True)  # over Pillow's text limit
    with pytest.raises(ImageError):
        load_image(encoded(Image.new("RGB", (4, 4)), "PNG", pnginfo=info))


def test_the_pixel_limit_is_coherent_with_pillows_own():
    # The default takes effect (it is under Pillow's hard limit), and a larger request
    # is reported as capped rather than silently ignored.
    assert effective_max_pixels(DEFAULT_MAX_PIXELS) == DEFAULT_MAX_PIXELS
    pil = 2 * Image.MAX_IMAGE_PIXELS
    assert effective_max_pixels(10 * pil) == pil
    side = int(DEFAULT_MAX_PIXELS**0.5) + 10  # just over the default, under Pillow's
    assert side * side < pil
    with pytest.raises(ImageError, match=f"> limit {DEFAULT_MAX_PIXELS:,}"):
        load_image(png_header(side, side))
    with pytest.raises(ImageError, match=f"more than limit {pil:,} pixels"):
        load_image(png_header(20_000, 20_000), max_pixels=10 * pil)


class MeanColour:
    name, kind, dim, version = "mean-colour", "image", 3, "mean-colour/v1"

    def preprocess(self, img):
        return torch.from_numpy(np.asarray(img, dtype=np.float32).mean(axis=(0, 1)) / 255.0)

    def forward(self, batch):
        return 2.0 * batch


def test_extraction_over_fuzzed_files_never_stops(tmp_path):
    from huse.features import FeatureStore, extract_images

    rng = np.random.default_rng(1)
    files = []
    for name, data in sorted(SEEDS.items()):
        good = tmp_path / f"good-{name}"
        good.write_bytes(data)
        bad = tmp_path / f"bad-{name}"
        cut = bytearray(data[: max(1, len(data) * 2 // 3)])
        cut[len(cut) // 2] ^= 0xFF
        bad.write_bytes(bytes(cut))
        files += [str(good), str(bad)]
    for i in range(10):
        p = tmp_path / f"random-{i}.png"
        p.write_bytes(rng.integers(0, 256, rng.integers(0, 500), np.uint8).tobytes())
        files.append(str(p))
    files.append(str(tmp_path))  # a directory
    (tmp_path / "bomb.png").write_bytes(png_header(60_000, 60_000))
    files.append(str(tmp_path / "bomb.png"))
    bb = MeanColour()
    feats, errors = extract_images(
        files, bb, FeatureStore(tmp_path / "cache", bb.version), batch_size=5, progress=False
    )
    assert feats.shape == (len(files), 3)
    good = [i for i, f in enumerate(files) if "good-" in f]
    assert not set(good) & set(errors)  # every good file has its features
    assert all(np.abs(feats[i]).sum() > 0 for i in good)
    assert {i for i, f in enumerate(files) if "random-" in f or "bomb" in f} <= set(errors)
    assert all(isinstance(r, str) and r for r in errors.values())
    np.testing.assert_array_equal(feats[sorted(errors)], 0)
