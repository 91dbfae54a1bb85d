"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", 2017) on a SepViT backbone.

Structure: dense SepViT backbone (strides 8/16/32 used) -> FPN P3-P7 -> shared class and box
subnets with 9 anchors per location. Training uses sigmoid focal loss and smooth-L1 (on box
deltas) or GIoU (on decoded boxes). Inference: per-level score threshold and top-k, box decoding,
clipping, per-class batched NMS, then the best ``max_detections``. Boxes are in input pixels.

For export and serving, :meth:`RetinaNet.forward_raw` returns the dense tensors only (no data-
dependent shapes), and :meth:`RetinaNet.postprocess` decodes them; ``forward`` chains the two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..backbones.sepvit import SepViT, stage_resolution
from ..backbones.set import SeT
from ..ops import (
    AnchorGenerator,
    BoxCoder,
    batched_nms,
    clip_boxes,
    giou_loss,
    match_anchors,
    sigmoid_focal_loss,
    smooth_l1_loss,
)
from .fpn import FPN, group_norm

__all__ = ["RetinaHead", "RetinaNet"]

Detections = dict[str, Tensor]


class RetinaHead(nn.Module):
    """Class and box subnets shared across levels: ``convs x (conv3x3 [-GN] - ReLU)`` then a
    prediction conv. The class bias starts at the focal-loss prior ``-log((1 - p) / p)``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_anchors: int,
        channels: int = 256,
        convs: int = 4,
        norm: str | None = None,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        if norm not in (None, "gn"):
            raise ValueError(f"head norm must be None or 'gn', got {norm!r}")
        self.num_classes = num_classes
        self.num_anchors = num_anchors

        def tower() -> nn.Sequential:
            layers: list[nn.Module] = []
            c = in_channels
            for _ in range(convs):
                layers.append(nn.Conv2d(c, channels, 3, padding=1))
                if norm == "gn":
                    layers.append(group_norm(channels))
                layers.append(nn.ReLU(inplace=True))
                c = channels
            return nn.Sequential(*layers)

        self.cls_convs = tower()
        self.reg_convs = tower()
        last = channels if convs > 0 else in_channels
        self.cls_logits = nn.Conv2d(last, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(last, num_anchors * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        assert self.cls_logits.bias is not None
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Returns ``cls [B, N, K]`` logits and ``reg [B, N, 4]`` deltas over all levels."""
        cls_out, reg_out = [], []
        for f in feats:
            b, _, h, w = f.shape
            c = self.cls_logits(self.cls_convs(f))  # [B, A*K, H, W]
            r = self.bbox_pred(self.reg_convs(f))  # [B, A*4, H, W]
            cls_out.append(c.permute(0, 2, 3, 1).reshape(b, h * w * self.num_anchors, -1))
            reg_out.append(r.permute(0, 2, 3, 1).reshape(b, h * w * self.num_anchors, 4))
        return torch.cat(cls_out, 1), torch.cat(reg_out, 1)


class RetinaNet(nn.Module):
    """RetinaNet detector.

    Args:
        backbone: a dense-layout :class:`SepViT` or :class:`~sepvit.backbones.set.SeT`.
        num_classes: object classes (no background class: sigmoid scores).
        fpn_channels / head_channels / head_convs / head_norm: neck and head width and depth. The
            paper's setting is 256 / 256 / 4 / None; the demo models use narrower heads.
        anchor_scale: base anchor size in strides (4 -> 32 px on P3).
        score_thresh, nms_thresh, topk_candidates, max_detections: inference post-processing.
        box_loss: ``"smooth_l1"`` on deltas or ``"giou"`` on decoded boxes.
    """

    strides = (8, 16, 32, 64, 128)
    feature_indices = (1, 2, 3)  # C3-C5 (strides 8/16/32); P6/P7 come from C5

    def __init__(
        self,
        backbone: SepViT | SeT,
        num_classes: int,
        fpn_channels: int = 256,
        head_channels: int = 256,
        head_convs: int = 4,
        head_norm: str | None = None,
        anchor_scale: float = 4.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        topk_candidates: int = 1000,
        max_detections: int = 100,
        box_loss: str = "giou",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if not backbone.dense:
            raise ValueError("RetinaNet needs a dense-layout backbone (SepViT(dense=True))")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if box_loss not in ("smooth_l1", "giou"):
            raise ValueError(f"box_loss must be 'smooth_l1' or 'giou', got {box_loss!r}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.neck = FPN(backbone.embed_dims[1:], fpn_channels, extra_levels=2)
        self.anchor_generator = AnchorGenerator(self.strides, octave_base_scale=anchor_scale)
        self.head = RetinaHead(
            fpn_channels,
            num_classes,
            self.anchor_generator.num_anchors,
            head_channels,
            head_convs,
            head_norm,
        )
        self.box_coder = BoxCoder()
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.topk_candidates = topk_candidates
        self.max_detections = max_detections
        self.box_loss = box_loss
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    # -- geometry ----------------------------------------------------------------------------
    @staticmethod
    def level_sizes(image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """Feature-map sizes of P3-P7 for an input of ``image_size = (H, W)``."""
        h, w = image_size
        sizes = [(stage_resolution(h, s), stage_resolution(w, s)) for s in (1, 2, 3)]
        for _ in range(2):
            ph, pw = sizes[-1]
            sizes.append(((ph - 1) // 2 + 1, (pw - 1) // 2 + 1))
        return sizes

    def anchors(self, image_size: tuple[int, int], device: torch.device) -> list[Tensor]:
        return self.anchor_generator.grid_anchors(self.level_sizes(image_size), device)

    # -- forward -----------------------------------------------------------------------------
    def forward_raw(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images [B, 3, H, W]`` -> ``cls_logits [B, N, K]``, ``box_deltas [B, N, 4]``."""
        feats = self.backbone.forward_intermediates(images, self.feature_indices)
        return self.head(self.neck(feats))

    def forward(
        self, images: Tensor, targets: Sequence[dict[str, Tensor]] | None = None
    ) -> list[Detections] | dict[str, Tensor]:
        """Detections per image, or the loss dict when ``targets`` are given.

        ``targets[i]`` holds ``boxes [G, 4]`` (input pixels) and ``labels [G]``.
        """
        cls, reg = self.forward_raw(images)
        size = (images.shape[-2], images.shape[-1])
        if targets is not None:
            return self.loss(cls, reg, targets, size)
        return self.postprocess(cls, reg, size)

    def loss(
        self,
        cls: Tensor,
        reg: Tensor,
        targets: Sequence[dict[str, Tensor]],
        image_size: tuple[int, int],
    ) -> dict[str, Tensor]:
        if len(targets) != cls.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {cls.shape[0]}")
        anchors = torch.cat(self.anchors(image_size, cls.device))
        cls_losses, box_losses, num_fg = [], [], 0
        for i, tgt in enumerate(targets):
            boxes = tgt["boxes"].to(anchors)
            labels = tgt["labels"].to(device=cls.device, dtype=torch.long)
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"target labels must lie in [0, {self.num_classes})")
            if boxes.ndim != 2 or boxes.shape[-1] != 4 or boxes.shape[0] != labels.shape[0]:
                raise ValueError("target boxes must be [G, 4] with one label per box")
            matches = match_anchors(anchors, boxes)
            fg = matches >= 0
            valid = matches != -2
            n_fg = int(fg.sum())
            num_fg += n_fg
            onehot = torch.zeros_like(cls[i])
            if n_fg:
                onehot[fg, labels[matches[fg]]] = 1.0
            focal = sigmoid_focal_loss(
                cls[i][valid], onehot[valid], self.focal_alpha, self.focal_gamma
            )
            cls_losses.append(focal.sum())
            if n_fg:
                gt = boxes[matches[fg]]
                if self.box_loss == "giou":
                    pred = self.box_coder.decode(reg[i][fg], anchors[fg])
                    box_losses.append(giou_loss(pred, gt).sum())
                else:
                    target = self.box_coder.encode(anchors[fg], gt)
                    box_losses.append(smooth_l1_loss(reg[i][fg], target).sum())
            else:
                box_losses.append(reg[i].sum() * 0.0)
        norm = max(1.0, float(num_fg))
        loss_cls = torch.stack(cls_losses).sum() / norm
        loss_box = torch.stack(box_losses).sum() / norm
        return {"loss": loss_cls + loss_box, "loss_cls": loss_cls, "loss_box": loss_box}

    @torch.no_grad()
    def postprocess(
        self,
        cls: Tensor,
        reg: Tensor,
        image_size: tuple[int, int],
        score_thresh: float | None = None,
        max_detections: int | None = None,
    ) -> list[Detections]:
        """Decode raw outputs into ``{boxes [n, 4], scores [n], labels [n]}`` per image.

        Boxes are in the pixel frame of the network input (``image_size``), clipped to it.
        """
        thresh = self.score_thresh if score_thresh is None else score_thresh
        limit = self.max_detections if max_detections is None else max_detections
        level_anchors = self.anchors(image_size, cls.device)
        counts = [a.shape[0] for a in level_anchors]
        results: list[Detections] = []
        for i in range(cls.shape[0]):
            all_boxes, all_scores, all_labels = [], [], []
            for c, r, anc in zip(
                cls[i].split(counts), reg[i].split(counts), level_anchors, strict=True
            ):
                scores = torch.sigmoid(c.float()).flatten()
                keep = torch.nonzero(scores > thresh).squeeze(1)
                if keep.numel() > self.topk_candidates:
                    top = scores[keep].topk(self.topk_candidates).indices
                    keep = keep[top]
                anchor_idx = keep // self.num_classes
                boxes = self.box_coder.decode(r[anchor_idx].float(), anc[anchor_idx])
                all_boxes.append(clip_boxes(boxes, image_size))
                all_scores.append(scores[keep])
                all_labels.append(keep % self.num_classes)
            boxes = torch.cat(all_boxes)
            scores = torch.cat(all_scores)
            labels = torch.cat(all_labels)
            nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores, labels = boxes[nonempty], scores[nonempty], labels[nonempty]
            if scores.numel() > self.topk_candidates:  # bound NMS's IoU matrix across levels
                top = scores.topk(self.topk_candidates).indices
                boxes, scores, labels = boxes[top], scores[top], labels[top]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[:limit]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results
