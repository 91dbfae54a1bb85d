"""Decoding what real clients send, and refusing what they should not."""

from __future__ import annotations

import io
import os
import zlib

import numpy as np
import pytest
from PIL import Image

from handlers.decode import DecodeLimits, decode_image
from handlers.errors import (
    DECODE_KINDS,
    ErrorKind,
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageError,
)


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(w: int = 40, h: int = 30) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (200, 30, 30)
    arr[:, w // 2 :] = (20, 40, 220)
    return Image.fromarray(arr)


@pytest.mark.parametrize(
    ("fmt", "kw", "exact"),
    [
        ("PNG", {}, True),
        ("BMP", {}, True),
        ("TIFF", {}, True),
        ("WEBP", {"lossless": True}, True),
        ("JPEG", {"quality": 95}, False),
        ("GIF", {}, False),
    ],
)
def test_formats_decode_to_rgb(fmt: str, kw: dict, exact: bool) -> None:
    src = _rgb()
    out = decode_image(_encode(src, fmt, **kw))
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8
    err = np.abs(out.astype(int) - np.asarray(src).astype(int))
    if exact:
        assert err.max() <= 1
    else:  # lossy: chroma subsampling smears the colour edge, so bound the mean error
        assert err.mean() < 8


def test_grayscale_cmyk_and_16_bit() -> None:
    gray = Image.fromarray(np.full((8, 9), 77, np.uint8))
    assert (decode_image(_encode(gray, "PNG")) == 77).all()
    cmyk = Image.new("CMYK", (5, 4), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(_encode(cmyk, "JPEG", quality=100))
    assert out[0, 0, 0] > 200 and out[0, 0, 1] < 60
    deep = Image.fromarray(np.full((6, 7), 65535, np.uint16))  # 16-bit white PNG
    assert (decode_image(_encode(deep, "PNG")) == 255).all()
    half = Image.fromarray(np.full((6, 7), 32896, np.uint16))  # 0x8080 -> 128
    assert (decode_image(_encode(half, "PNG")) == 128).all()


def test_alpha_and_palette_transparency_composite_over_white() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    out = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[3, 0]) == (255, 255, 255)
    la = Image.fromarray(
        np.stack([np.full((3, 3), 10, np.uint8), np.zeros((3, 3), np.uint8)], -1), "LA"
    )
    assert (decode_image(_encode(la, "PNG")) == 255).all()
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.info["transparency"] = 1
    assert (decode_image(_encode(pal, "PNG", transparency=1)) == 255).all()


def test_animated_gif_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    out = decode_image(buf.getvalue())
    assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


def test_exif_orientation_is_applied() -> None:
    src = _rgb(40, 20)  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise for display
    out = decode_image(_encode(src, "JPEG", quality=95, exif=exif))
    assert out.shape == (40, 20, 3)  # width and height swapped
    assert out[2, 10, 0] > 150  # the red half is now on top
    assert out[37, 10, 2] > 150


@pytest.mark.parametrize(
    "data",
    [b"", os.urandom(2048), b"GIF89a" + b"\x00" * 10, b"\xff\xd8\xff\xe0" + b"\x00" * 20],
)
def test_garbage_is_undecodable(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_images(fmt: str) -> None:
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = _encode(noisy, fmt)
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2])


def test_byte_and_pixel_limits() -> None:
    data = _encode(_rgb(), "PNG")
    with pytest.raises(ImageTooLargeError, match="bytes"):
        decode_image(data, DecodeLimits(max_bytes=len(data) - 1))
    with pytest.raises(ImageTooLargeError, match="pixels"):
        decode_image(data, DecodeLimits(max_pixels=40 * 30 - 1))
    with pytest.raises(ImageTooLargeError, match="per side"):
        decode_image(data, DecodeLimits(max_side=39))


def _png_bomb(side: int) -> bytes:
    """A valid greyscale PNG of side x side zeros: a few hundred KB for 20000 x 20000."""

    def chunk(tag: bytes, payload: bytes) -> bytes:
        body = tag + payload
        return len(payload).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    raw = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = _png_bomb(20000)
    assert len(bomb) < 2_000_000
    with pytest.raises(ImageTooLargeError):
        decode_image(bomb)


def test_unsupported_format() -> None:
    with pytest.raises(UnsupportedImageError):
        decode_image(_encode(_rgb(16, 16), "ICO"))


def test_errors_carry_kinds() -> None:
    assert ImageDecodeError("x").kind is ErrorKind.UNDECODABLE_IMAGE
    assert ImageTooLargeError("x").code == "image_too_large"
    assert UnsupportedImageError("x").kind in DECODE_KINDS


def test_pixel_budget_bounds_decoded_pixels_across_threads() -> None:
    """Holds add up to the budget at most; a hold larger than the budget takes all of it (and
    waits for it) instead of deadlocking; the header gives the pixel count without decoding."""
    import threading
    import time

    from handlers.decode import PixelBudget, image_pixels

    budget = PixelBudget(100)
    peak, lock = [0], threading.Lock()

    def hold(n: int) -> None:
        with budget.hold(n):
            with lock:
                peak[0] = max(peak[0], budget.total - budget.free)
            time.sleep(0.02)

    threads = [threading.Thread(target=hold, args=(n,)) for n in (60, 60, 30, 500, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert peak[0] <= 100 and budget.free == 100
    buf = io.BytesIO()
    Image.new("RGB", (123, 45)).save(buf, format="PNG")
    assert image_pixels(buf.getvalue()) == 123 * 45 and image_pixels(b"junk") == 0
