"""Segmentation output encodings: COCO RLE, PNG label map, colour overlay; for instance masks
(Mask R-CNN) RLE from a mask crop, an instance-id PNG and an instance overlay with boxes.

COCO RLE: the mask is read in column-major order and stored as run lengths that alternate
zeros/ones, starting with zeros. ``counts`` uses COCO's compressed string form: each run is
delta-coded against the run two places back (from the fourth on) and written as 5-bit groups
with a continuation bit, offset by 48 into printable ASCII. ``pycocotools.mask.decode`` reads it,
and :func:`rle_decode` inverts it exactly (both are tested).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "InstanceMask",
    "instance_map",
    "instance_map_png",
    "instance_overlay_png",
    "label_map_png",
    "overlay_png",
    "palette",
    "rle_decode",
    "rle_encode",
    "rle_encode_crop",
    "segments_from_labels",
]


def _runs(mask: np.ndarray) -> list[int]:
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0]:  # counts always start with a (possibly empty) run of zeros
        runs.insert(0, 0)
    return [int(r) for r in runs]


def _encode_counts(runs: Sequence[int]) -> str:
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative deltas terminate at -1
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def _decode_counts(s: str) -> list[int]:
    runs: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE ``{"size": [H, W], "counts": str}`` of a 2-D boolean mask."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": _encode_counts(_runs(mask))}


@dataclass
class InstanceMask:
    """A boolean mask ``crop`` whose top-left pixel sits at ``(x0, y0)`` of the image; every
    pixel outside the crop is background."""

    crop: np.ndarray
    x0: int
    y0: int


def rle_encode_crop(mask: InstanceMask, size: tuple[int, int]) -> dict[str, Any]:
    """COCO RLE of the full ``size = (H, W)`` image holding ``mask``, built from the crop's
    columns only (work ~ H x crop width, never the whole image)."""
    h, w = size
    ch, cw = mask.crop.shape
    x0 = min(max(mask.x0, 0), w)
    cw = max(min(cw, w - x0), 0)
    ch = max(min(ch, h - mask.y0), 0)
    if ch == 0 or cw == 0:
        return {"size": [h, w], "counts": _encode_counts([h * w])}
    columns = np.zeros((h, cw), dtype=bool)
    columns[mask.y0 : mask.y0 + ch] = mask.crop[:ch, :cw]
    runs = _runs(columns)
    runs[0] += x0 * h  # the all-zero columns on the left
    trailing = (w - x0 - cw) * h
    if len(runs) % 2 == 1:  # ends with zeros
        runs[-1] += trailing
    elif trailing:
        runs.append(trailing)
    return {"size": [h, w], "counts": _encode_counts(runs)}


def instance_map(masks: Sequence[InstanceMask], size: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` map of instance ids: 0 background, ``i + 1`` for ``masks[i]``; where masks
    overlap, the earlier (higher-scoring) one wins."""
    out = np.zeros(size, dtype=np.uint16 if len(masks) > 255 else np.uint8)
    for i in range(len(masks) - 1, -1, -1):
        m = masks[i]
        ch, cw = m.crop.shape
        region = out[m.y0 : m.y0 + ch, m.x0 : m.x0 + cw]
        region[m.crop[: region.shape[0], : region.shape[1]]] = i + 1
    return out


def instance_map_png(masks: Sequence[InstanceMask], size: tuple[int, int]) -> bytes:
    """:func:`instance_map` as a grayscale PNG (8-bit, or 16-bit past 255 instances)."""
    ids = instance_map(masks, size)
    mode = "I;16" if ids.dtype == np.uint16 else "L"
    return _png(Image.fromarray(ids, mode=mode))


def instance_overlay_png(
    image: np.ndarray,
    masks: Sequence[InstanceMask],
    boxes: Sequence[Sequence[float]],
    alpha: float = 0.5,
) -> bytes:
    """Each instance in its own colour blended over the image, with its box outlined."""
    ids = instance_map(masks, image.shape[:2]).astype(np.int64)
    colours = palette()[(ids % 255) + (ids > 0)]  # skip the black entry for instances
    blend = image.astype(np.float32)
    on = ids > 0
    blend[on] = blend[on] * (1 - alpha) + colours[on].astype(np.float32) * alpha
    img = Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    pal = palette()
    for i, box in enumerate(boxes):
        colour = tuple(int(c) for c in pal[(i + 1) % 255 + 1])
        draw.rectangle([float(v) for v in box], outline=colour, width=2)
    return _png(img)


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`rle_encode` (also accepts uncompressed ``counts`` lists)."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    runs = _decode_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if sum(runs) != h * w:
        raise ValueError(f"RLE covers {sum(runs)} pixels, size is {h}x{w}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    return np.repeat(values, runs).reshape((h, w), order="F")


def segments_from_labels(
    labels: np.ndarray, label_names: Sequence[str] | None, background: int | None = 0
) -> list[dict[str, Any]]:
    """One ``{label, index, area, rle}`` per class present in a ``[H, W]`` label map, by index;
    the ``background`` index (if any) is left out."""
    out = []
    for idx in np.unique(labels).tolist():
        if background is not None and idx == background:
            continue
        mask = labels == idx
        name = label_names[idx] if label_names and idx < len(label_names) else str(idx)
        out.append(
            {"label": name, "index": int(idx), "area": int(mask.sum()), "rle": rle_encode(mask)}
        )
    return out


def palette(n: int = 256) -> np.ndarray:
    """A fixed ``[n, 3]`` colour table: index 0 black, then well-separated hues (PASCAL VOC's
    bit-interleaving scheme)."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


OVERLAY_CHUNK_PIXELS = 1 << 20


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=1)  # fast: outputs can be big
    return buf.getvalue()


def label_map_png(labels: np.ndarray) -> bytes:
    """The label map as an 8-bit palette PNG: pixel value = class index, colours for viewing."""
    if labels.max(initial=0) > 255:
        raise ValueError("label maps with more than 256 classes need another encoding")
    img = Image.fromarray(labels.astype(np.uint8), mode="L").convert("P")
    img.putpalette(palette().ravel().tolist())
    return _png(img)


def overlay_png(
    image: np.ndarray, labels: np.ndarray, alpha: float = 0.5, background: int | None = 0
) -> bytes:
    """Class colours blended over the image (``alpha`` on labelled pixels), as RGB PNG."""
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    pal = palette().astype(np.float32)
    out = np.empty_like(image)
    rows = max(1, OVERLAY_CHUNK_PIXELS // max(1, labels.shape[1]))
    for top in range(0, labels.shape[0], rows):  # in bands: float work stays O(chunk)
        lab, img = labels[top : top + rows], image[top : top + rows]
        blend = img.astype(np.float32) * (1 - alpha) + pal[lab.astype(np.int64) % 256] * alpha
        band = np.clip(blend + 0.5, 0, 255).astype(np.uint8)
        if background is not None:
            band[lab == background] = img[lab == background]
        out[top : top + rows] = band
    return _png(Image.fromarray(out))
