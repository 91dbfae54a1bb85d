"""Metrics: our COCO mAP against pycocotools, segmentation metrics and top-k by hand."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from sepvit.evaluate import BoxPrediction, coco_map, segmentation_metrics, topk_accuracy


def _random_case(seed: int, n_images: int = 25, n_classes: int = 4):
    rng = np.random.default_rng(seed)
    gts_b, gts_l, preds = [], [], []
    for _ in range(n_images):
        g = int(rng.integers(0, 6))
        xy = rng.uniform(0, 200, (g, 2))
        wh = rng.uniform(8, 80, (g, 2))
        gb = np.concatenate([xy, xy + wh], 1)
        gl = rng.integers(0, n_classes, g)
        # predictions: jittered copies of gt (some missed), plus false positives; score ties too
        keep = rng.random(g) < 0.8
        jit = gb[keep] + rng.normal(0, 6, (int(keep.sum()), 4))
        jit[:, 2:] = np.maximum(jit[:, 2:], jit[:, :2] + 1)
        fp_n = int(rng.integers(0, 4))
        fxy = rng.uniform(0, 200, (fp_n, 2))
        fp = np.concatenate([fxy, fxy + rng.uniform(8, 60, (fp_n, 2))], 1)
        boxes = np.concatenate([jit, fp]).reshape(-1, 4)
        labels = np.concatenate([gl[keep], rng.integers(0, n_classes, fp_n)]).astype(int)
        wrong = rng.random(len(labels)) < 0.1
        labels[wrong] = rng.integers(0, n_classes, int(wrong.sum()))
        scores = np.round(rng.uniform(0.05, 1.0, len(labels)), 1)  # rounding creates ties
        preds.append(BoxPrediction(boxes, scores, labels))
        gts_b.append(gb)
        gts_l.append(gl)
    return preds, gts_b, gts_l


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_map_matches_pycocotools(seed: int) -> None:
    n_classes = 4
    preds, gts_b, gts_l = _random_case(seed, n_classes=n_classes)
    gt = {"images": [], "annotations": [], "categories": [{"id": c} for c in range(n_classes)]}
    dets = []
    for i, (p, gb, gl) in enumerate(zip(preds, gts_b, gts_l, strict=True)):
        gt["images"].append({"id": i, "width": 300, "height": 300})
        for b, label in zip(gb, gl, strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": i,
                    "category_id": int(label),
                    "bbox": [b[0], b[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for b, s, label in zip(p.boxes, p.scores, p.labels, strict=True):
            dets.append(
                {
                    "image_id": i,
                    "category_id": int(label),
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "score": float(s),
                }
            )
    _assert_equals_cocoeval(coco_map(preds, gts_b, gts_l, n_classes), gt, dets, "bbox")


def _assert_equals_cocoeval(ours: dict, gt: dict, dets: list, iou_type: str) -> float:
    """Our mAP, mAP50 and mAP75 against ``COCOeval(iou_type)`` on the same data; returns
    pycocotools' mAP50."""
    coco_mod = pytest.importorskip("pycocotools.coco")
    cocoeval_mod = pytest.importorskip("pycocotools.cocoeval")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = coco_mod.COCO()
        coco.dataset = gt
        coco.createIndex()
        res = coco.loadRes(dets)
        ev = cocoeval_mod.COCOeval(coco, res, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ours["mAP"] == pytest.approx(ev.stats[0], abs=1e-6)
    assert ours["mAP50"] == pytest.approx(ev.stats[1], abs=1e-6)
    assert ours["mAP75"] == pytest.approx(ev.stats[2], abs=1e-6)
    return float(ev.stats[1])


def _random_mask_case(seed: int, n_images: int = 12, n_classes: int = 3, size: int = 40):
    """Random L-shaped instance masks and predictions that shift, thin or invent them, with score
    ties."""
    rng = np.random.default_rng(seed)
    preds, gts_b, gts_l, gts_m = [], [], [], []
    for _ in range(n_images):
        g = int(rng.integers(0, 5))
        gm = np.zeros((g, size, size), bool)
        for k in range(g):
            x, y = rng.integers(0, size - 8, 2)
            w, h = rng.integers(4, 16, 2)
            gm[k, y : y + h, x : x + w] = True
            gm[k, y : y + h // 2, x : x + w // 2] = False  # L-shaped
        gl = rng.integers(0, n_classes, g)
        pm, labels_l = [], []
        for k in range(g):
            if rng.random() < 0.8:
                m = np.roll(gm[k], tuple(rng.integers(-1, 2, 2)), axis=(0, 1))
                pm.append(m & (rng.random(m.shape) < 0.95))
                labels_l.append(gl[k] if rng.random() < 0.9 else rng.integers(0, n_classes))
        for _ in range(int(rng.integers(0, 3))):  # false positives
            m = np.zeros((size, size), bool)
            x, y = rng.integers(0, size - 8, 2)
            m[y : y + 6, x : x + 6] = True
            pm.append(m)
            labels_l.append(rng.integers(0, n_classes))
        masks = np.stack(pm) if pm else np.zeros((0, size, size), bool)
        labels = np.array(labels_l, dtype=int)
        scores = np.round(rng.uniform(0.05, 1.0, len(pm)), 1)
        boxes = np.array([_mask_box(m) for m in masks]).reshape(-1, 4)
        preds.append(BoxPrediction(boxes, scores, labels, masks))
        gts_b.append(np.array([_mask_box(m) for m in gm]).reshape(-1, 4))
        gts_l.append(gl)
        gts_m.append(gm)
    return preds, gts_b, gts_l, gts_m


def _mask_box(m: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(m)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


@pytest.mark.parametrize("seed", [0, 1])
def test_mask_map_matches_pycocotools_segm(seed: int) -> None:
    mask_util = pytest.importorskip("pycocotools.mask")
    n_classes = 3
    preds, gts_b, gts_l, gts_m = _random_mask_case(seed, n_classes=n_classes)

    def rle(m: np.ndarray) -> dict:
        return mask_util.encode(np.asfortranarray(m.astype(np.uint8)))

    gt = {"images": [], "annotations": [], "categories": [{"id": c} for c in range(n_classes)]}
    dets = []
    for i, (p, gb, gl, gm) in enumerate(zip(preds, gts_b, gts_l, gts_m, strict=True)):
        gt["images"].append({"id": i, "width": 40, "height": 40})
        for b, label, m in zip(gb, gl, gm, strict=True):
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": i,
                    "category_id": int(label),
                    "segmentation": rle(m),
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "area": float(m.sum()),
                    "iscrowd": 0,
                }
            )
        for s, label, m in zip(p.scores, p.labels, p.masks, strict=True):
            dets.append(
                {
                    "image_id": i,
                    "category_id": int(label),
                    "segmentation": rle(m),
                    "score": float(s),
                }
            )
    ours = coco_map(preds, gts_b, gts_l, n_classes, gt_masks=gts_m)
    assert _assert_equals_cocoeval(ours, gt, dets, "segm") > 0.3  # matches at .5: not trivial


def test_mask_map_uses_the_masks_not_the_boxes() -> None:
    gm = np.zeros((1, 20, 20), bool)
    gm[0, 2:12, 2:12] = True
    gb, gl = [np.array([[2.0, 2, 12, 12]])], [np.array([0])]
    ring = gm.copy()
    ring[0, 4:10, 4:10] = False  # the right box, but a mask of IoU 64 / 100 < 0.75
    pred = [BoxPrediction(gb[0].copy(), np.array([0.9]), np.array([0]), ring)]
    assert coco_map(pred, gb, gl, 1)["mAP75"] == pytest.approx(1.0)
    segm = coco_map(pred, gb, gl, 1, gt_masks=[gm])
    assert segm["mAP50"] == pytest.approx(1.0) and segm["mAP75"] == 0.0
    with pytest.raises(ValueError, match="masks"):
        coco_map([BoxPrediction(gb[0], np.array([0.9]), np.array([0]))], gb, gl, 1, gt_masks=[gm])


def test_coco_map_perfect_and_empty() -> None:
    gb = [np.array([[0.0, 0, 10, 10], [20, 20, 40, 50]])]
    gl = [np.array([0, 1])]
    perfect = [BoxPrediction(gb[0].copy(), np.array([0.9, 0.8]), gl[0].copy())]
    r = coco_map(perfect, gb, gl, 3)
    assert r["mAP"] == pytest.approx(1.0) and r["per_class"][2] is None
    none = [BoxPrediction(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))]
    assert coco_map(none, gb, gl, 3)["mAP"] == 0.0


def test_segmentation_metrics_by_hand() -> None:
    t = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    p = np.array([[0, 1, 1, 1], [0, 0, 0, 0]])
    m = segmentation_metrics([p], [t], num_classes=3)
    # valid pixels: 7. class 0: tp 3 (gt 4, pred 4) -> iou 3/5; class 1: tp 2 (gt 3, pred 3) -> 2/4
    assert m["per_class_iou"][:2] == pytest.approx([0.6, 0.5])
    assert m["per_class_iou"][2] is None  # absent from both: excluded from the mean
    assert m["mIoU"] == pytest.approx(0.55)
    assert m["pixel_accuracy"] == pytest.approx(5 / 7)


def test_topk_accuracy_by_hand() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
    targets = torch.tensor([1, 2, 0])
    acc = topk_accuracy(logits, targets, ks=(1, 2))
    assert acc["top1"] == pytest.approx(1 / 3)
    assert acc["top2"] == pytest.approx(2 / 3)  # row 1: class 2 is 2nd (hit); row 2: class 0 is 3rd


def test_detection_recall_counts_only_served_detections_of_the_right_class() -> None:
    from sepvit.evaluate import detection_recall

    gt = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([[0, 0, 8, 8]], float)]
    gl = [np.array([0, 1]), np.array([2])]
    preds = [
        BoxPrediction(
            np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], float),
            np.array([0.9, 0.8, 0.2]),  # a duplicate, and a hit below the served threshold
            np.array([0, 0, 1]),
        ),
        BoxPrediction(np.array([[0, 0, 8, 8]], float), np.array([0.5]), np.array([3])),  # class
    ]
    out = detection_recall(preds, gt, gl, score_threshold=0.3)
    assert out == {"recall50": 1 / 3, "precision50": 1 / 3}
    assert detection_recall(preds, gt, gl, score_threshold=0.1)["recall50"] == 2 / 3
