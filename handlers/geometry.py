"""Preprocessing geometry and its exact inverse.

* Classification: resize the shorter side to ``size / crop_pct`` then centre-crop ``size``
  (timm's eval transform; ``crop_pct`` comes from the checkpoint metadata). Any aspect ratio is
  accepted: an extreme one is centre-cropped like any other, at the cost of the crop alone.
* Detection/segmentation: *letterbox* into a shape bucket (any aspect ratio; a side that would
  shrink below one pixel keeps one): scale by ``s`` (aspect kept) so the
  image fits, place it at the top-left, pad the rest. The inverse maps network-input pixels back
  to original pixels exactly: ``x_orig = x_net / s`` (boxes), and the valid region of a logit map
  is ``[:round(h*s), :round(w*s)]`` (masks).
* OpenMMLab checkpoints (``resize: keep_ratio`` presets): mmcv's ``imrescale`` to fit a
  ``(long, short)`` scale (``s = min(long / max(h, w), short / min(h, w))``, sides
  ``int(side * s + 0.5)``), bilinear without antialiasing as OpenCV's ``INTER_LINEAR``, then padding
  bottom-right to a multiple of ``pad_divisor``. Each image keeps its own shape; the inverse is the
  same per-axis mapping.

Resampling uses Pillow, except the keep-ratio path (torch, to follow OpenCV); images are
``[H, W, 3]`` uint8 arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = [
    "Letterbox",
    "choose_bucket",
    "classify_transform",
    "keep_ratio_resize",
    "letterbox",
    "resample_filter",
]

_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def resample_filter(name: str) -> Image.Resampling:
    try:
        return _FILTERS[name]
    except KeyError:
        raise ValueError(
            f"unknown interpolation {name!r}; expected one of {sorted(_FILTERS)}"
        ) from None


def classify_transform(
    image: np.ndarray, size: tuple[int, int], crop_pct: float = 1.0, interpolation: str = "bicubic"
) -> np.ndarray:
    """Resize (shorter side to ``size / crop_pct``) and centre-crop to ``size = (H, W)``.

    Only the region that survives the crop is resampled (Pillow's ``box``), straight to
    ``size``: the same pixels as resizing the whole image and cropping, but the work and memory
    stay ``O(H * W)`` whatever the aspect ratio (a 1x16000 image would otherwise be resized to
    256x4096000 first)."""
    h, w = image.shape[:2]
    th, tw = size
    scale = max(th / crop_pct / h, tw / crop_pct / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    top, left = (nh - th) // 2, (nw - tw) // 2
    sy, sx = h / nh, w / nw  # original pixels per resized pixel
    region = (left * sx, top * sy, (left + tw) * sx, (top + th) * sy)
    out = Image.fromarray(image).resize((tw, th), resample_filter(interpolation), box=region)
    return np.ascontiguousarray(np.asarray(out))


@dataclass(frozen=True)
class Letterbox:
    """Where an original ``(orig_h, orig_w)`` image sits inside a ``bucket`` input."""

    orig_h: int
    orig_w: int
    bucket: tuple[int, int]
    scale: float
    resized: tuple[int, int] | None = None  # the content's size where it is not round(side * s)

    @property
    def valid_hw(self) -> tuple[int, int]:
        """Size of the image content inside the bucket (the rest is padding)."""
        if self.resized is not None:
            return self.resized
        return (
            min(self.bucket[0], max(1, round(self.orig_h * self.scale))),
            min(self.bucket[1], max(1, round(self.orig_w * self.scale))),
        )

    def boxes_to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``[n, 4]`` xyxy boxes from network-input pixels to original pixels, clipped."""
        vh, vw = self.valid_hw  # the resize rounds each side, so use the exact per-axis scales
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        b[:, 0::2] *= self.orig_w / vw
        b[:, 1::2] *= self.orig_h / vh
        b[:, 0::2] = np.clip(b[:, 0::2], 0, self.orig_w)
        b[:, 1::2] = np.clip(b[:, 1::2], 0, self.orig_h)
        return b


def choose_bucket(h: int, w: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket that keeps the most image pixels (largest letterbox scale); ties go to the
    smaller bucket (less padding)."""
    if not buckets:
        raise ValueError("at least one shape bucket is needed")
    return max(buckets, key=lambda b: (min(b[0] / h, b[1] / w), -b[0] * b[1]))


def letterbox(
    image: np.ndarray,
    buckets: Sequence[tuple[int, int]],
    interpolation: str = "bilinear",
    pad_value: Sequence[int] = (0, 0, 0),
) -> tuple[np.ndarray, Letterbox]:
    """Scale ``image`` (aspect kept) into its bucket, top-left aligned, padding the rest."""
    h, w = image.shape[:2]
    bucket = choose_bucket(h, w, buckets)
    scale = min(bucket[0] / h, bucket[1] / w)
    box = Letterbox(h, w, (int(bucket[0]), int(bucket[1])), scale)
    vh, vw = box.valid_hw
    out = np.empty((bucket[0], bucket[1], 3), np.uint8)
    out[...] = np.asarray(pad_value, np.uint8)
    if (vh, vw) == (h, w):
        out[:h, :w] = image
    else:
        resized = Image.fromarray(image).resize((vw, vh), resample_filter(interpolation))
        out[:vh, :vw] = np.asarray(resized)
    return out, box


def keep_ratio_resize(
    image: np.ndarray, scale: tuple[int, int], pad_divisor: int = 1
) -> tuple[np.ndarray, Letterbox]:
    """mmcv's keep-ratio ``imrescale`` to fit ``scale`` (two sides, in any order), then zero
    padding bottom-right to a multiple of ``pad_divisor``.

    The resize is bilinear with half-pixel centres and no antialiasing (OpenCV ``INTER_LINEAR``,
    what mmdet/mmseg use), rounded to uint8. Returns the padded image and its :class:`Letterbox`
    (``valid_hw`` is the resized content).
    """
    import torch
    import torch.nn.functional as F

    h, w = image.shape[:2]
    s = min(max(scale) / max(h, w), min(scale) / min(h, w))
    nh, nw = max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5))
    if (nh, nw) == (h, w):
        resized = image
    else:
        t = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)
        t = F.interpolate(t[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)
        resized = t[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()
    d = max(1, int(pad_divisor))
    ph, pw = -(-nh // d) * d, -(-nw // d) * d
    out = np.zeros((ph, pw, 3), np.uint8)
    out[:nh, :nw] = resized
    return out, Letterbox(h, w, (ph, pw), s, resized=(nh, nw))
