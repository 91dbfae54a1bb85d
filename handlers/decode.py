"""Image decoding for untrusted request bodies.

``decode_image(data, limits)`` returns an ``[H, W, 3]`` uint8 RGB array in the orientation a
person sees (EXIF orientation applied), or raises a typed :mod:`handlers.errors` error:

* the byte size is checked before anything is parsed (``max_bytes``);
* the pixel count is read from the header and checked *before* pixel data is decoded
  (``max_pixels``); Pillow's own decompression-bomb guard stays on as a second line;
* accepted formats: JPEG, PNG (8/16-bit, palette, alpha), WebP, BMP, GIF (first frame), TIFF;
* grayscale, CMYK, 16-bit and float images are converted to 8-bit RGB; transparency is
  composited over white (what an image viewer shows);
* truncated or corrupt data raises :class:`ImageDecodeError` with the reason, never a traceback.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageDecodeError, ImageTooLargeError, UnsupportedImageError

__all__ = ["ALLOWED_FORMATS", "DecodeLimits", "PixelBudget", "decode_image", "image_pixels"]

ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000  # decoded width x height
    max_side: int = 16_384


# what one decoded pixel costs at the peak of decode + preprocess: Pillow's 4-byte RGB(X) image
# plus the 3-byte numpy copy, plus a mode conversion or EXIF rotation of the Pillow image (4
# more) while decoding; then the 3-byte array plus the keep-ratio resize's float32 copy (12)
# while preprocessing: at most 15
DECODE_BYTES_PER_PIXEL = 15


class PixelBudget:
    """Decoded pixels alive at once, across threads: :meth:`hold` blocks until ``n`` pixels of
    the budget are free. A thread holds one reservation at a time and never waits on anything
    else while holding it, so a request for at most the whole budget always gets its turn."""

    def __init__(self, pixels: int) -> None:
        self.total = max(1, pixels)
        self.free = self.total
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        n = min(max(pixels, 0), self.total)
        with self._cond:
            self._cond.wait_for(lambda: self.free >= n)
            self.free -= n
        try:
            yield
        finally:
            with self._cond:
                self.free += n
                self._cond.notify_all()


def image_pixels(data: bytes) -> int:
    """Width x height from the image header (0 when it cannot be read: decoding will say why)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
    except Exception:  # anything unreadable is decode_image's to report
        return 0
    return max(0, w * h)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale a high-bit-depth or float array to 0-255 uint8."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16 or (arr.dtype.kind in "iu" and arr.max(initial=0) > 255):
        top = 65535.0 if arr.max(initial=0) <= 65535 else float(arr.max())
        return np.clip(arr.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if arr.dtype.kind == "f":
        hi = 1.0 if arr.max(initial=0.0) <= 1.0 else 255.0
        return np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _flatten_alpha(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        return np.asarray(_flatten_alpha(img.convert("RGBA")))
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = _to_uint8(np.asarray(img))
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"):
        return np.asarray(img.convert("RGB"))
    raise UnsupportedImageError(f"unsupported image mode {mode!r}")


def decode_image(data: bytes, limits: DecodeLimits | None = None) -> np.ndarray:
    """Decode request bytes into an ``[H, W, 3]`` uint8 RGB array (see the module docstring)."""
    lim = limits or DecodeLimits()
    if not data:
        raise ImageDecodeError("empty image body")
    if len(data) > lim.max_bytes:
        raise ImageTooLargeError(f"image is {len(data)} bytes; the limit is {lim.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            fmt = img.format or "unknown"
            if fmt not in ALLOWED_FORMATS:
                raise UnsupportedImageError(f"image format {fmt} is not accepted")
            w, h = img.size
            if w < 1 or h < 1:
                raise ImageDecodeError(f"image has no pixels ({w}x{h})")
            if w * h > lim.max_pixels or max(w, h) > lim.max_side:
                raise ImageTooLargeError(
                    f"image is {w}x{h} = {w * h} pixels; the limit is {lim.max_pixels} pixels "
                    f"and {lim.max_side} per side"
                )
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)  # animated GIF/WebP/TIFF: first frame
            img.load()
            img = ImageOps.exif_transpose(img) or img
            arr = _to_rgb(img)
    except (ImageTooLargeError, UnsupportedImageError, ImageDecodeError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image rejected as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("data is not a recognised image") from exc
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as exc:
        raise ImageDecodeError(f"image could not be decoded: {exc}") from exc
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageDecodeError(f"decoded image has unexpected shape {arr.shape}")
    return np.ascontiguousarray(arr)
