"""Instance masks (Mask R-CNN): RLE from crops, instance-id maps, and the /detect pipeline."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from handlers.errors import BadParameterError
from handlers.outputs import InstanceMask, instance_map, rle_decode, rle_encode, rle_encode_crop
from handlers.pipeline import Pipeline, PipelineConfig
from sepvit import create_model
from sepvit.heads.mask_rcnn import paste_mask, paste_masks

LABELS = ["circle", "square"]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("x0", "y0", "ch", "cw"),
    [(0, 0, 7, 5), (3, 2, 4, 6), (10, 5, 5, 2), (11, 6, 4, 1), (4, 0, 10, 3)],
)
def test_rle_from_crop_equals_rle_of_the_full_mask(x0: int, y0: int, ch: int, cw: int) -> None:
    h, w = 10, 12
    crop = np.random.default_rng(x0 * 31 + y0).random((ch, cw)) > 0.4
    crop[0, 0] = True
    full = np.zeros((h, w), dtype=bool)
    full[y0 : y0 + ch, x0 : x0 + cw] = crop[: h - y0, : w - x0]
    rle = rle_encode_crop(InstanceMask(crop, x0, y0), (h, w))
    assert rle == rle_encode(full)
    assert np.array_equal(rle_decode(rle), full)


def test_rle_from_an_empty_crop_is_all_background() -> None:
    rle = rle_encode_crop(InstanceMask(np.zeros((0, 0), bool), 3, 3), (4, 5))
    assert not rle_decode(rle).any() and rle["size"] == [4, 5]


def test_instance_map_puts_higher_scoring_instances_on_top() -> None:
    a = InstanceMask(np.ones((3, 3), bool), 0, 0)  # detection 0 (best score)
    b = InstanceMask(np.ones((3, 3), bool), 1, 1)
    ids = instance_map([a, b], (5, 5))
    assert ids[0, 0] == 1 and ids[2, 2] == 1 and ids[3, 3] == 2 and ids[4, 4] == 0


def test_paste_mask_crops_to_the_box_and_matches_full_pasting() -> None:
    probs = torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor(
        [[10.3, 5.5, 40.2, 30.1], [0.0, 0.0, 63.9, 47.9], [50.0, 40.0, 70.0, 60.0]]
    )
    full = paste_masks(probs, boxes, (48, 64))
    for i in range(3):
        crop, x0, y0 = paste_mask(probs[i], boxes[i], (48, 64))
        assert x0 == max(int(boxes[i, 0]) - 1, 0) and y0 == max(int(boxes[i, 1]) - 1, 0)
        assert crop.shape[0] <= 48 - y0 and crop.shape[1] <= 64 - x0
        assert full[i].sum() == crop.sum() > 0
        assert torch.equal(full[i, y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]], crop)


@pytest.fixture(scope="module")
def mask_rcnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(
        "sepvit_lite",
        task="detect",
        head="mask_rcnn",
        num_classes=2,
        img_size=96,
        fpn_channels=16,
        fc_channels=32,
        label_names=LABELS,
    ).eval()


def test_detect_adds_rle_masks_in_original_pixels(mask_rcnn: torch.nn.Module) -> None:
    pipe = Pipeline(mask_rcnn, PipelineConfig(max_detections=15))
    image = np.random.default_rng(1).integers(0, 255, (60, 150, 3), dtype=np.uint8)
    one = _png(image)
    out = pipe.handle([one, one], [None, {"max_detections": 4}])
    dets = out[0]["detections"]
    assert 5 <= len(dets) <= 15 and len(out[1]["detections"]) == 4  # the request caps the work
    assert out[1]["detections"] == dets[:4]  # the capped answer is the head of the full one
    # each mask is the detection's 28x28 mask pasted at the original size, inside its box + 1 px
    arr, box = pipe.preprocess(image)
    assert box is not None
    with torch.no_grad():
        (det,) = mask_rcnn.predict(pipe._to_batch([arr]), max_detections=15)
    orig = torch.from_numpy(box.boxes_to_original(det["boxes"].numpy())).float()
    keep = (orig[:, 2] > orig[:, 0]) & (orig[:, 3] > orig[:, 1])  # boxes in the letterbox padding
    assert not keep.all()  # (this image has some, and they are left out)
    want = paste_masks(det["mask_probs"][keep], orig[keep], (60, 150))
    assert len(want) == len(dets)
    for i, d in enumerate(dets):
        mask = rle_decode(d["mask"])
        assert d["mask"]["size"] == [60, 150]
        assert np.array_equal(mask, want[i].numpy())
        ys, xs = np.nonzero(mask)
        if len(xs):
            x1, y1, x2, y2 = d["box"]
            assert xs.min() >= np.floor(x1) - 1 and xs.max() <= np.ceil(x2) + 1
            assert ys.min() >= np.floor(y1) - 1 and ys.max() <= np.ceil(y2) + 1
    assert any(rle_decode(d["mask"]).any() for d in dets)


def test_detect_png_and_overlay_formats(mask_rcnn: torch.nn.Module) -> None:
    pipe = Pipeline(mask_rcnn, PipelineConfig(max_detections=10))
    image = _png(np.random.default_rng(2).integers(0, 255, (70, 50, 3), dtype=np.uint8))
    rle, png, over = pipe.handle([image] * 3, [None, {"format": "png"}, {"format": "overlay"}])
    ids = np.asarray(Image.open(io.BytesIO(png["data"])))
    assert png["media_type"] == "image/png" and ids.shape == (70, 50)
    masks = [rle_decode(d["mask"]) for d in rle["detections"]]
    expected = np.zeros((70, 50), np.uint8)
    for i in range(len(masks) - 1, -1, -1):
        expected[masks[i]] = i + 1
    assert np.array_equal(ids, expected) and ids.max() > 0
    assert np.asarray(Image.open(io.BytesIO(over["data"]))).shape == (70, 50, 3)


def test_format_is_refused_for_box_only_detectors() -> None:
    model = create_model(
        "sepvit_lite", task="detect", num_classes=2, img_size=64, fpn_channels=16,
        head_channels=16, head_convs=1,
    )  # fmt: skip
    (res,) = Pipeline(model).handle([_png(np.zeros((32, 32, 3), np.uint8))], [{"format": "png"}])
    assert isinstance(res, BadParameterError)


@pytest.mark.slow  # the ONNX export alone takes minutes on two busy cores
def test_onnxruntime_serves_the_dense_part_with_parity(mask_rcnn: torch.nn.Module) -> None:
    pytest.importorskip("onnxruntime")
    pipe = Pipeline(mask_rcnn, PipelineConfig(runtime="onnxruntime", on_parity_failure="fail"))
    assert pipe.runtime.name == "onnxruntime"
    assert pipe.parity is not None and pipe.parity.metrics["mask_prob"] <= 0.02
    eager = Pipeline(mask_rcnn)
    image = _png(np.random.default_rng(4).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    (got,), (want,) = pipe.handle([image]), eager.handle([image])
    assert [d["label"] for d in got["detections"]] == [d["label"] for d in want["detections"]]
    for g, w in zip(got["detections"], want["detections"], strict=True):
        assert g["box"] == pytest.approx(w["box"], abs=0.05)
        a, b = rle_decode(g["mask"]), rle_decode(w["mask"])
        assert (a & b).sum() >= 0.95 * max((a | b).sum(), 1)
