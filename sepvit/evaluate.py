"""Evaluation metrics: top-1/top-5, COCO-style box mAP, mIoU and pixel accuracy.

The box mAP follows pycocotools' ``COCOeval`` (bbox, area "all", ``maxDets=100``): per image and
class, detections sorted by score (stable) are greedily matched to the unmatched ground truth of
highest IoU at each threshold 0.50:0.05:0.95; precision is made monotone and sampled at 101 recall
points; classes without ground truth are left out of the mean.
``tests/sepvit/test_evaluate.py`` checks it against pycocotools on the same predictions. The mask
mAP (``COCOeval`` segm) is the same computation with mask IoU in place of box IoU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "BoxPrediction",
    "coco_map",
    "detection_recall",
    "evaluate",
    "segmentation_metrics",
    "topk_accuracy",
]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
SERVED_SCORE_THRESHOLD = 0.3  # the demo detector's handler setting (model-config.yaml)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass
class BoxPrediction:
    boxes: np.ndarray  # [n, 4] xyxy
    scores: np.ndarray  # [n]
    labels: np.ndarray  # [n]
    masks: np.ndarray | None = None  # [n, H, W] bool (instance segmentation)


def topk_accuracy(logits: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Fraction of rows whose target is among the top-k logits, for each k."""
    out = {}
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    for k in ks:
        hit = (top[:, : min(k, maxk)] == targets[:, None]).any(dim=1)
        out[f"top{k}"] = float(hit.float().mean())
    return out


def _iou_matrix(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """IoU ``[D, G]`` of xyxy boxes."""
    if len(d) == 0 or len(g) == 0:
        return np.zeros((len(d), len(g)))
    lt = np.maximum(d[:, None, :2], g[None, :, :2])
    rb = np.minimum(d[:, None, 2:], g[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    ad = (d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1])
    ag = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
    union = ad[:, None] + ag[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _mask_iou_matrix(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """IoU ``[D, G]`` of ``[D, H, W]`` and ``[G, H, W]`` bool masks."""
    if len(d) == 0 or len(g) == 0:
        return np.zeros((len(d), len(g)))
    a = d.reshape(len(d), -1).astype(np.float64)
    b = g.reshape(len(g), -1).astype(np.float64)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def coco_map(
    predictions: Sequence[BoxPrediction],
    gt_boxes: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    num_classes: int,
    max_dets: int = 100,
    gt_masks: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """COCO box AP over images. Returns ``mAP`` (0.50:0.95), ``mAP50``, ``mAP75`` and
    ``per_class`` AP (0.50:0.95); a class without ground truth gets ``None``.

    With ``gt_masks`` (``[G, H, W]`` bool per image) it is the mask AP instead: detections and
    ground truth are matched by the IoU of ``predictions[i].masks`` and ``gt_masks[i]``."""
    if gt_masks is not None and any(p.masks is None for p in predictions):
        raise ValueError("mask AP needs masks in every prediction")
    masks = gt_masks if gt_masks is not None else [None] * len(predictions)
    n_t = len(IOU_THRESHOLDS)
    precision = -np.ones((n_t, len(RECALL_POINTS), num_classes))
    for c in range(num_classes):
        scores_all: list[np.ndarray] = []
        matched_all: list[np.ndarray] = []  # [T, n] bool per image
        n_gt = 0
        for pred, gb, gl, gm in zip(predictions, gt_boxes, gt_labels, masks, strict=True):
            g = gb[gl == c]
            n_gt += len(g)
            sel = np.nonzero(pred.labels == c)[0]
            s = pred.scores[sel]
            order = sel[np.argsort(-s, kind="mergesort")[:max_dets]]
            d, s = pred.boxes[order], pred.scores[order]
            if gm is None:
                ious = _iou_matrix(d, g)
            else:
                assert pred.masks is not None
                ious = _mask_iou_matrix(pred.masks[order], gm[gl == c])
            matched = np.zeros((n_t, len(d)), bool)
            for ti, t in enumerate(IOU_THRESHOLDS):
                taken = np.zeros(len(g), bool)
                for di in range(len(d)):
                    best, m = min(t, 1 - 1e-10), -1
                    for gi in range(len(g)):
                        if taken[gi] or ious[di, gi] < best:
                            continue
                        best, m = ious[di, gi], gi
                    if m >= 0:
                        taken[m] = True
                        matched[ti, di] = True
            scores_all.append(s)
            matched_all.append(matched)
        if n_gt == 0:
            continue
        scores = np.concatenate(scores_all) if scores_all else np.zeros(0)
        order = np.argsort(-scores, kind="mergesort")
        tps = (
            np.concatenate(matched_all, axis=1)[:, order]
            if scores_all
            else np.zeros((n_t, 0), bool)
        )
        for ti in range(n_t):
            tp = np.cumsum(tps[ti]).astype(float)
            fp = np.cumsum(~tps[ti]).astype(float)
            rc = tp / n_gt
            pr = tp / np.maximum(tp + fp, np.spacing(1))
            for i in range(len(pr) - 1, 0, -1):  # monotone precision envelope
                pr[i - 1] = max(pr[i - 1], pr[i])
            q = np.zeros(len(RECALL_POINTS))
            idx = np.searchsorted(rc, RECALL_POINTS, side="left")
            valid = idx < len(pr)
            q[valid] = pr[idx[valid]]
            precision[ti, :, c] = q

    def mean_ap(p: np.ndarray) -> float:
        valid = p[p > -1]
        return float(valid.mean()) if valid.size else 0.0

    per_class = []
    for c in range(num_classes):
        p = precision[:, :, c]
        per_class.append(None if (p == -1).all() else float(p.mean()))
    return {
        "mAP": mean_ap(precision),
        "mAP50": mean_ap(precision[0]),
        "mAP75": mean_ap(precision[5]),
        "per_class": per_class,
    }


def detection_recall(
    predictions: Sequence[BoxPrediction],
    gt_boxes: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    iou: float = 0.5,
    score_threshold: float = SERVED_SCORE_THRESHOLD,
) -> dict[str, float]:
    """Recall and precision of the detections a user sees (score >= ``score_threshold``): each
    detection, best score first, takes the unmatched ground truth of its class with the highest
    IoU >= ``iou``."""
    hits = n_gt = n_det = 0
    for pred, gb, gl in zip(predictions, gt_boxes, gt_labels, strict=True):
        keep = np.nonzero(pred.scores >= score_threshold)[0]
        keep = keep[np.argsort(-pred.scores[keep], kind="mergesort")]
        ious = _iou_matrix(pred.boxes[keep], gb)
        taken = np.zeros(len(gb), bool)
        for di, k in enumerate(keep):
            cand = np.where((gl == pred.labels[k]) & ~taken, ious[di], -1.0)
            if len(cand) and cand.max() >= iou:
                taken[int(cand.argmax())] = True
        hits += int(taken.sum())
        n_gt += len(gb)
        n_det += len(keep)
    return {
        f"recall{round(iou * 100)}": hits / max(n_gt, 1),
        f"precision{round(iou * 100)}": hits / max(n_det, 1),
    }


def segmentation_metrics(
    preds: Iterable[np.ndarray],
    targets: Iterable[np.ndarray],
    num_classes: int,
    ignore_index: int = 255,
) -> dict[str, Any]:
    """mIoU (mean over classes present in prediction or ground truth), pixel accuracy, per-class
    IoU, from one confusion matrix accumulated over all images."""
    conf = np.zeros((num_classes, num_classes), np.int64)
    for p, t in zip(preds, targets, strict=True):
        valid = t != ignore_index
        idx = t[valid].astype(np.int64) * num_classes + p[valid].astype(np.int64)
        conf += np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)
    tp = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return {
        "mIoU": float(np.nanmean(iou)),
        "pixel_accuracy": float(tp.sum() / max(conf.sum(), 1)),
        "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
    }


def _to_tensor(images: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> Tensor:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Any, batch_size: int = 16, num_images: int | None = None
) -> dict[str, Any]:
    """Evaluate a model built by ``create_model`` on a :class:`~sepvit.data.ShapesDataset`-like
    dataset (items with ``image``, ``labels``, ``boxes``, ``segmentation``)."""
    from .registry import model_config

    cfg = model_config(model)
    task = cfg["task"]
    mean, std = cfg["mean"], cfg["std"]
    n = len(dataset) if num_images is None else min(num_images, len(dataset))
    model.eval()
    device = next(model.parameters()).device
    logits_all: list[Tensor] = []
    labels_all: list[int] = []
    preds: list[BoxPrediction] = []
    gt_boxes, gt_labels, gt_masks = [], [], []
    seg_preds: list[np.ndarray] = []
    seg_targets: list[np.ndarray] = []
    for start in range(0, n, batch_size):
        scenes = [dataset[i] for i in range(start, min(n, start + batch_size))]
        x = _to_tensor([s.image for s in scenes], mean, std).to(device)
        if task == "classify":
            logits_all.append(model(x).cpu())
            labels_all.extend(s.label for s in scenes)
        elif task == "detect":
            for s, det in zip(scenes, model(x), strict=True):
                masks = det.get("masks")
                preds.append(
                    BoxPrediction(
                        det["boxes"].cpu().numpy(),
                        det["scores"].cpu().numpy(),
                        det["labels"].cpu().numpy(),
                        None if masks is None else masks.cpu().numpy(),
                    )
                )
                gt_boxes.append(np.asarray(s.boxes, dtype=np.float64).reshape(-1, 4))
                gt_labels.append(np.asarray(s.labels, dtype=np.int64))
                hw = s.image.shape[:2]
                gt_masks.append(np.stack(s.masks) if s.masks else np.zeros((0, *hw), bool))
        else:
            out = model(x).argmax(1).cpu().numpy().astype(np.uint8)
            seg_preds.extend(out)
            seg_targets.extend(s.segmentation for s in scenes if s.segmentation is not None)
    result: dict[str, Any] = {"task": task, "num_images": n}
    if task == "classify":
        result.update(topk_accuracy(torch.cat(logits_all), torch.tensor(labels_all)))
    elif task == "detect":
        result.update(coco_map(preds, gt_boxes, gt_labels, cfg["num_classes"]))
        result.update(detection_recall(preds, gt_boxes, gt_labels))
        if preds and preds[0].masks is not None:  # instance segmentation: the mask AP too
            segm = coco_map(preds, gt_boxes, gt_labels, cfg["num_classes"], gt_masks=gt_masks)
            result.update({f"mask_{k}": segm[k] for k in ("mAP", "mAP50", "mAP75")})
            result["per_class_mask"] = segm["per_class"]
    else:
        result.update(segmentation_metrics(seg_preds, seg_targets, cfg["num_classes"]))
    return result
