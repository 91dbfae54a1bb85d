"""Letterbox geometry (exact inverse), classification crop, RLE round trips, PNG outputs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from handlers.geometry import (
    choose_bucket,
    classify_transform,
    keep_ratio_resize,
    letterbox,
    resample_filter,
)
from handlers.outputs import (
    label_map_png,
    overlay_png,
    rle_decode,
    rle_encode,
    segments_from_labels,
)


def test_letterbox_places_content_top_left_and_inverts_boxes() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    img[20:60, 50:150] = 255  # a white box at x 50-150, y 20-60
    out, lb = letterbox(img, [(128, 128)], interpolation="nearest")
    assert out.shape == (128, 128, 3)
    assert lb.scale == pytest.approx(0.64) and lb.valid_hw == (64, 128)
    assert (out[64:] == 0).all()  # padding below the content
    ys, xs = np.nonzero(out[..., 0] > 127)
    net_box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], float)
    back = lb.boxes_to_original(net_box)
    assert np.allclose(back, [[50, 20, 150, 60]], atol=1.0)
    # exact inverse for any box: forward scale then back
    box = np.array([[10.0, 5.0, 190.0, 95.0]])
    fwd = box * np.array([128 / 200, 64 / 100, 128 / 200, 64 / 100])
    assert np.allclose(lb.boxes_to_original(fwd), box)
    assert np.allclose(
        lb.boxes_to_original(np.array([[-5.0, -5.0, 500.0, 500.0]])), [[0, 0, 200, 100]]
    )


@pytest.mark.parametrize(
    ("hw", "resized", "padded"),
    [
        ((480, 640), (800, 1067), (800, 1088)),  # landscape: the short side reaches 800
        ((640, 480), (1067, 800), (1088, 800)),  # portrait: the same, turned
        ((300, 1500), (267, 1333), (288, 1344)),  # panorama: the long side stops at 1333
    ],
)
def test_keep_ratio_resize_follows_mmcv_rescale(
    hw: tuple[int, int], resized: tuple[int, int], padded: tuple[int, int]
) -> None:
    img = np.random.default_rng(0).integers(0, 255, (*hw, 3), dtype=np.uint8)
    out, lb = keep_ratio_resize(img, (800, 1333), pad_divisor=32)
    assert lb.valid_hw == resized and out.shape[:2] == padded == lb.bucket
    assert not out[resized[0] :].any() and not out[:, resized[1] :].any()
    # boxes go back by the per-axis scale of the rounded size, as mmdet's scale_factor does
    sy, sx = resized[0] / hw[0], resized[1] / hw[1]
    box = np.array([[10.0, 20.0, 100.0, 200.0]])
    assert np.allclose(lb.boxes_to_original(box * [sx, sy, sx, sy]), box)


def test_keep_ratio_resize_is_opencv_bilinear() -> None:
    # 2x upscaling with half-pixel centres: output pixel 1 sits at input 0.25 between 0 and 1
    img = np.zeros((2, 2, 3), np.uint8)
    img[:, 1] = 200
    out, lb = keep_ratio_resize(img, (4, 4))
    assert lb.valid_hw == (4, 4) and out.shape == (4, 4, 3)
    assert out[0, :, 0].tolist() == [0, 50, 150, 200]


def test_bucket_choice_keeps_most_pixels() -> None:
    buckets = [(256, 256), (192, 320), (320, 192)]
    assert choose_bucket(480, 800, buckets) == (192, 320)  # landscape
    assert choose_bucket(800, 480, buckets) == (320, 192)  # portrait
    assert choose_bucket(500, 500, buckets) == (256, 256)
    with pytest.raises(ValueError):
        choose_bucket(1, 1, [])


def test_letterbox_identity_when_image_fits_exactly() -> None:
    img = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    out, lb = letterbox(img, [(64, 96)])
    assert np.array_equal(out, img) and lb.scale == 1.0


def test_classify_transform_centre_crop() -> None:
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, 100:200] = 255  # white centre third
    out = classify_transform(img, (50, 50), crop_pct=1.0, interpolation="nearest")
    assert out.shape == (50, 50, 3) and (out == 255).all()  # the crop is the centre square
    wide = classify_transform(img, (50, 50), crop_pct=0.5, interpolation="nearest")
    assert wide.shape == (50, 50, 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rle_round_trip_and_pycocotools_compatibility(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = [
        rng.random((37, 53)) > 0.5,  # many short runs (negative deltas)
        np.zeros((20, 30), bool),
        np.ones((20, 30), bool),  # starts with ones: leading zero run
        np.pad(np.ones((100, 80), bool), 200),  # long runs (multi-group numbers)
    ]
    for mask in masks:
        rle = rle_encode(mask)
        assert rle["size"] == list(mask.shape)
        assert np.array_equal(rle_decode(rle), mask)
    mask_api = pytest.importorskip("pycocotools.mask")
    for mask in masks:
        theirs = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert rle_encode(mask)["counts"] == theirs["counts"].decode()
        assert np.array_equal(
            mask_api.decode(
                {"size": list(mask.shape), "counts": rle_encode(mask)["counts"].encode()}
            ),
            mask,
        )


def test_segments_from_labels() -> None:
    labels = np.zeros((4, 5), np.uint8)
    labels[0, :2] = 3
    labels[2:, 3:] = 1
    segs = segments_from_labels(labels, ["background", "circle", "square", "star"])
    assert [(s["label"], s["index"], s["area"]) for s in segs] == [("circle", 1, 4), ("star", 3, 2)]
    assert np.array_equal(rle_decode(segs[1]["rle"]), labels == 3)


def test_png_outputs_decode_back() -> None:
    labels = np.random.default_rng(0).integers(0, 9, (30, 40)).astype(np.uint8)
    png = Image.open(io.BytesIO(label_map_png(labels)))
    assert png.mode == "P" and np.array_equal(np.asarray(png), labels)
    img = np.full((30, 40, 3), 100, np.uint8)
    over = np.asarray(Image.open(io.BytesIO(overlay_png(img, labels))))
    assert over.shape == (30, 40, 3)
    assert (over[labels == 0] == 100).all()  # background untouched
    assert not (over[labels == 1] == 100).all()


@pytest.mark.parametrize("shape", [(480, 640), (300, 200), (50, 60), (1, 16_000), (16_000, 1)])
def test_classify_transform_resamples_only_the_crop(shape: tuple[int, int]) -> None:
    """Resampling only the crop region gives the pixels of resizing the whole image and then
    cropping (within 2 levels of rounding), while its cost no longer grows with the aspect
    ratio: the whole-image resize of a 1x16000 image would be 256 x 4 096 000 pixels."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (max(1, shape[0] // 4), max(1, shape[1] // 4), 3), np.uint8)
    img = np.asarray(Image.fromarray(small).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))
    for interp in ("bicubic", "bilinear"):
        out = classify_transform(img, (32, 32), 0.875, interp)
        assert out.shape == (32, 32, 3)
        if max(shape) / min(shape) < 100:  # the reference itself stays affordable
            h, w = shape
            scale = max(32 / 0.875 / h, 32 / 0.875 / w)
            nh, nw = max(32, round(h * scale)), max(32, round(w * scale))
            full = np.asarray(Image.fromarray(img).resize((nw, nh), resample_filter(interp)))
            top, left = (nh - 32) // 2, (nw - 32) // 2
            ref = full[top : top + 32, left : left + 32].astype(int)
            assert np.abs(ref - out.astype(int)).max() <= 2
