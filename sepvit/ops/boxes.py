"""Box operations in plain torch (no torchvision): IoU, GIoU, box coding, NMS, matching.

Boxes are ``[x1, y1, x2, y2]`` in pixels, ``x2 > x1`` for a non-empty box.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

NMS_CHUNK = 512  # rows of the overlap matrix computed at once


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``[N, 4]`` boxes (zero for degenerate ones)."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def _inter_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise intersection and union areas ``[N, M]``, one coordinate at a time (no
    ``[N, M, 2]`` intermediates)."""
    w = torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])
    h = torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])
    inter = w.clamp(min=0) * h.clamp(min=0)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter, union


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU ``[N, M]``; 0 where the union is empty."""
    inter, union = _inter_union(a, b)
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise generalised IoU ``[N, M]`` (Rezatofighi et al., 2019), in ``[-1, 1]``."""
    inter, union = _inter_union(a, b)
    iou = inter / union.clamp(min=1e-12)
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / hull.clamp(min=1e-12)


def clip_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip ``[..., 4]`` boxes to an image of ``size = (height, width)``."""
    h, w = size
    x = boxes[..., 0::2].clamp(0, w)
    y = boxes[..., 1::2].clamp(0, h)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def _center_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(cx, cy, w, h)`` of ``[..., 4]`` xyxy boxes."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


class BoxCoder:
    """The R-CNN ``(dx, dy, dw, dh)`` box parameterisation relative to anchors.

    ``encode(anchors, boxes)`` gives the regression targets, ``decode(deltas, anchors)`` inverts
    it. ``dw``/``dh`` are clamped to ``[-log(1000 / 16), log(1000 / 16)]`` before ``exp`` so a wild
    prediction cannot overflow (mmdet's ``DeltaXYWHBBoxCoder`` with means 0 and stds 1 when the
    weights are 1).
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
        clamp: float = math.log(1000.0 / 16),
    ) -> None:
        self.weights = weights
        self.clamp = clamp

    def encode(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        wx, wy, ww, wh = self.weights
        ax, ay, aw, ah = _center_size(anchors)
        bx, by, bw, bh = _center_size(boxes)
        return torch.stack(
            (
                wx * (bx - ax) / aw,
                wy * (by - ay) / ah,
                ww * torch.log(bw / aw),
                wh * torch.log(bh / ah),
            ),
            dim=-1,
        )

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        wx, wy, ww, wh = self.weights
        ax, ay, aw, ah = _center_size(anchors)
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(-self.clamp, self.clamp)
        dh = (deltas[..., 3] / wh).clamp(-self.clamp, self.clamp)
        cx = dx * aw + ax
        cy = dy * ah + ay
        w = torch.exp(dw) * aw
        h = torch.exp(dh) * ah
        return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Same contract as ``torchvision.ops.nms``: returns the indices of kept boxes in decreasing score
    order; a box is suppressed when its IoU with a higher-scoring kept box is ``> iou_threshold``.
    Only a box's overlaps with lower-scoring boxes matter, so the boolean overlap matrix is
    computed above the diagonal only, in row chunks (5000 candidates cost at most 25 MB, not the
    float intermediates of a full pairwise IoU); the greedy pass walks the survivors in numpy.
    The IoU is :func:`box_iou`'s.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order].float()
    n = b.shape[0]
    over = np.zeros((n, n), dtype=np.bool_)
    for i in range(0, n, NMS_CHUNK):
        j = slice(i, min(i + NMS_CHUNK, n))
        over[j, i:] = (box_iou(b[j], b[i:]) > iou_threshold).cpu().numpy()
    removed = np.zeros(n, dtype=np.bool_)
    keep: list[int] = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        removed[i:] |= over[i, i:]
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, split: int = 4096
) -> Tensor:
    """NMS independently per category ``idxs`` (boxes of different classes never suppress).

    Offsets each class's boxes by a distinct amount larger than any coordinate, then runs one NMS.
    Above ``split`` boxes (Mask R-CNN: up to K x 1000 class-specific candidates) it runs one NMS
    per category instead, so the overlap matrix stays per category (as mmcv's ``split_thr``);
    both give the same kept set, in decreasing score order.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    if boxes.shape[0] > split:
        keep = torch.cat(
            [
                ids[nms(boxes[ids], scores[ids], iou_threshold)]
                for ids in (torch.nonzero(idxs == c).squeeze(1) for c in torch.unique(idxs))
            ]
        )
        return keep[torch.argsort(scores[keep], descending=True, stable=True)]
    span = boxes.max() - boxes.min() + 1
    shifted = boxes - boxes.min() + (idxs.to(boxes) * span)[:, None]
    return nms(shifted, scores, iou_threshold)


def match_anchors(
    anchors: Tensor,
    gt_boxes: Tensor,
    fg_iou: float = 0.5,
    bg_iou: float = 0.4,
    allow_low_quality: bool = True,
    min_pos_iou: float = 0.0,
) -> Tensor:
    """Assign each anchor (or proposal) to a ground-truth box (mmdet's ``MaxIoUAssigner``).

    Returns ``[A]`` long: the matched gt index for IoU ``>= fg_iou``, ``-1`` for background
    (IoU ``< bg_iou``), ``-2`` for ignored anchors in between. With ``allow_low_quality`` each gt's
    best-overlapping anchors are foreground even below ``fg_iou`` (so small objects get anchors),
    provided that best IoU is above 0 and ``>= min_pos_iou`` (RetinaNet: 0; Mask R-CNN's RPN:
    0.3).
    """
    num_anchors = anchors.shape[0]
    if gt_boxes.numel() == 0:
        return torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    iou = box_iou(gt_boxes, anchors)  # [G, A]
    best_iou, best_gt = iou.max(dim=0)
    matches = best_gt.clone()
    matches[best_iou < fg_iou] = -2
    matches[best_iou < bg_iou] = -1
    if allow_low_quality:
        best_for_gt = iou.max(dim=1, keepdim=True).values  # [G, 1]
        good = (best_for_gt > 0) & (best_for_gt >= min_pos_iou)
        gt_idx, anchor_idx = torch.nonzero((iou == best_for_gt) & good, as_tuple=True)
        matches[anchor_idx] = gt_idx
    return matches


def sample_pos_neg(matches: Tensor, num: int, pos_fraction: float) -> tuple[Tensor, Tensor]:
    """mmdet's ``RandomSampler``: at most ``int(num * pos_fraction)`` foreground entries
    (``matches >= 0``) drawn at random, then background entries (``matches == -1``) up to ``num``
    in all; ignored entries (``-2``) never. Uses torch's global generator (saved with a training
    state, so a resumed run draws the same). Returns the ``(positive, negative)`` indices."""
    pos = torch.nonzero(matches >= 0).squeeze(1)
    neg = torch.nonzero(matches == -1).squeeze(1)
    n_pos = min(pos.numel(), int(num * pos_fraction))
    pos = pos[torch.randperm(pos.numel(), device=pos.device)[:n_pos]]
    n_neg = min(neg.numel(), num - n_pos)
    neg = neg[torch.randperm(neg.numel(), device=neg.device)[:n_neg]]
    return pos, neg
