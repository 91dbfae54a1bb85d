"""Losses for the dense heads: sigmoid focal loss, smooth L1, GIoU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .boxes import box_area


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Element-wise focal loss (Lin et al., 2017) on sigmoid logits; same shape as ``logits``.

    ``targets`` are 0/1 floats. ``alpha < 0`` disables the class-balance weight.
    """
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def smooth_l1_loss(pred: Tensor, target: Tensor, beta: float = 1.0 / 9) -> Tensor:
    """Element-wise smooth L1 (Huber with transition ``beta``); plain L1 when ``beta == 0``."""
    diff = (pred - target).abs()
    if beta <= 0:
        return diff
    return torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)


def giou_loss(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """``1 - GIoU`` for aligned boxes ``[N, 4]`` (pred[i] against target[i]), shape ``[N]``."""
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = box_area(pred) + box_area(target) - inter
    iou = inter / (union + eps)
    hull_wh = (torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])).clamp(
        min=0
    )
    hull = hull_wh[:, 0] * hull_wh[:, 1]
    return 1 - (iou - (hull - union) / (hull + eps))
