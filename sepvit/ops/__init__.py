"""Detection primitives in plain torch: boxes, anchors, NMS, matching, losses."""

from .anchors import AnchorGenerator
from .boxes import (
    BoxCoder,
    batched_nms,
    box_area,
    box_iou,
    clip_boxes,
    generalized_box_iou,
    match_anchors,
    nms,
    sample_pos_neg,
)
from .losses import giou_loss, sigmoid_focal_loss, smooth_l1_loss

# the public names of anchors.py, boxes.py and losses.py, listed here only
__all__ = [
    "AnchorGenerator",
    "BoxCoder",
    "batched_nms",
    "box_area",
    "box_iou",
    "clip_boxes",
    "generalized_box_iou",
    "giou_loss",
    "match_anchors",
    "nms",
    "sample_pos_neg",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
]
