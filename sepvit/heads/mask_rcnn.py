"""Mask R-CNN (He et al., "Mask R-CNN", 2017) on a SepViT backbone, as mmdet 3.x builds it.

The SepViT paper's COCO instance-segmentation framework (official config
``detection/configs/mask_rcnn_sepvit_*`` on mmdet's ``mask_rcnn_r50_fpn``). Module names follow
mmdet, so an mmdet checkpoint loads key for key (``rpn_head.rpn_conv``,
``roi_head.bbox_head.shared_fcs.0``, ``roi_head.mask_head.convs.0.conv``, ...).

Inference, each step as mmdet 3.x ``predict(rescale=False)`` does it:

1. backbone (strides 4-32) -> FPN, 256 channels, 5 outputs (P6 by stride-2 max pooling of P5);
2. RPN: 3 anchors per location (scale 8, ratios 0.5/1/2, strides 4-64, centres on cell corners),
   sigmoid objectness; per level the best ``rpn_nms_pre`` anchors, decoded (DeltaXYWH, stds 1),
   clipped, empty boxes dropped; NMS at 0.7 with levels kept apart; the best ``rpn_max_per_img``;
3. RoIAlign 7x7 (adaptive sampling, aligned) on P2-P5, level ``floor(log2(sqrt(area) / 56))``;
   ``Shared2FCBBoxHead``: softmax over K+1 classes, class-specific deltas with stds
   0.1/0.1/0.2/0.2, clipped; scores above ``score_thresh`` per class; per-class NMS at 0.5; the
   best ``max_detections``;
4. RoIAlign 14x14 of the detections -> ``FCNMaskHead`` (4 conv3x3+ReLU, deconv x2 + ReLU, 1x1)
   -> 28x28 logits of the detected class -> sigmoid -> pasted into the image by bilinear
   sampling (mmdet's ``_do_paste_mask`` on CPU: within the box grown by one pixel) and
   thresholded at ``mask_thresh``.

Training (``model(images, targets)`` returns the loss dict), mmdet's ``mask_rcnn_r50_fpn`` train
config: the RPN assigns anchors by IoU (positive ``>= 0.7``, negative ``< 0.3``, each gt's best
anchors positive down to 0.3), samples 256 of them (half positive at most) for a sigmoid BCE and an
L1 on the deltas (stds 1); proposals from the detached RPN outputs (``nms_pre`` 2000 per level,
NMS 0.7, 1000 kept) plus the ground-truth boxes are assigned at 0.5 and 512 sampled (a quarter
positive at most) for a softmax CE and an L1 on the gt class's deltas (stds 0.1/0.1/0.2/0.2); each
positive RoI's gt mask, cropped to it and resized to 28x28 by RoIAlign, is the target of a BCE on
the gt class's mask logits. Each loss has weight 1.

``forward`` returns full-image masks at the input size. Serving uses :meth:`MaskRCNN.predict`
plus :func:`paste_mask`, which pastes each mask into its own box region at any image size, so the
cost scales with the objects and not with the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.sepvit import SepViT
from ..backbones.set import SeT
from ..ops import (
    AnchorGenerator,
    BoxCoder,
    batched_nms,
    clip_boxes,
    match_anchors,
    sample_pos_neg,
    smooth_l1_loss,
)
from ..ops.roi_align import mask_targets, roi_align
from .base import DenseModel, HeadSpec, StateDict, register_head
from .fpn import FPN, ConvModule

__all__ = [
    "FCNMaskHead",
    "MaskRCNN",
    "RPNHead",
    "Shared2FCBBoxHead",
    "SingleRoIExtractor",
    "paste_mask",
]

Detections = dict[str, Tensor]


class RPNHead(nn.Module):
    """mmdet ``RPNHead``: a shared 3x3 conv + ReLU, then 1x1 objectness and box-delta convs."""

    def __init__(self, in_channels: int, num_anchors: int, channels: int = 256) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.rpn_conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(channels, num_anchors, 1)  # sigmoid: one logit per anchor
        self.rpn_reg = nn.Conv2d(channels, num_anchors * 4, 1)
        for m in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)  # type: ignore[arg-type]

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level ``objectness [B, H*W*A]`` logits and ``deltas [B, H*W*A, 4]``, ordered
        (row, column, anchor) like the anchors."""
        cls_out, reg_out = [], []
        for f in feats:
            x = F.relu(self.rpn_conv(f))
            b = x.shape[0]
            cls_out.append(self.rpn_cls(x).permute(0, 2, 3, 1).reshape(b, -1))
            reg_out.append(self.rpn_reg(x).permute(0, 2, 3, 1).reshape(b, -1, 4))
        return cls_out, reg_out


class SingleRoIExtractor(nn.Module):
    """mmdet ``SingleRoIExtractor``: each RoI pooled from one pyramid level.

    The level is ``floor(log2(sqrt(w * h) / finest_scale + 1e-6))`` clamped to the levels given,
    so RoIs under ``2 * finest_scale`` (112 px) read the stride-4 map.
    """

    def __init__(
        self, output_size: int, strides: Sequence[int] = (4, 8, 16, 32), finest_scale: int = 56
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.strides = tuple(strides)
        self.finest_scale = finest_scale

    def map_levels(self, rois: Tensor) -> Tensor:
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        level = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return level.clamp(0, len(self.strides) - 1).long()

    def forward(self, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
        """``rois [N, 5]`` ``(batch_index, x1, y1, x2, y2)`` -> ``[N, C, s, s]``."""
        c = feats[0].shape[1]
        out = feats[0].new_zeros((rois.shape[0], c, self.output_size, self.output_size))
        if rois.shape[0] == 0:
            return out
        levels = self.map_levels(rois)
        for i, stride in enumerate(self.strides):
            idx = torch.nonzero(levels == i).squeeze(1)
            if idx.numel():
                out[idx] = roi_align(feats[i], rois[idx], self.output_size, 1.0 / stride)
        return out


class Shared2FCBBoxHead(nn.Module):
    """mmdet ``Shared2FCBBoxHead``: flatten -> 2 x (fc + ReLU) -> ``fc_cls`` (K + 1 logits,
    background last) and ``fc_reg`` (class-specific deltas, ``4 K``)."""

    def __init__(
        self, in_channels: int, num_classes: int, roi_size: int = 7, fc_channels: int = 1024
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        fc1 = nn.Linear(in_channels * roi_size * roi_size, fc_channels)
        fc2 = nn.Linear(fc_channels, fc_channels)
        self.shared_fcs = nn.ModuleList([fc1, fc2])
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_channels, num_classes * 4)
        for fc in (fc1, fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        nn.init.zeros_(self.fc_cls.bias)
        nn.init.zeros_(self.fc_reg.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [N, C, s, s]`` -> ``cls [N, K + 1]`` logits, ``reg [N, 4 K]`` deltas."""
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class FCNMaskHead(nn.Module):
    """mmdet ``FCNMaskHead``: ``num_convs`` x conv3x3 + ReLU, a 2x deconv + ReLU (``upsample``),
    then ``conv_logits`` with one 1x1 output per class: 14x14 RoIs give 28x28 logits."""

    def __init__(
        self, in_channels: int, num_classes: int, channels: int = 256, num_convs: int = 4
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [
                ConvModule(in_channels if i == 0 else channels, channels, 3, padding=1)
                for i in range(num_convs)
            ]
        )
        self.upsample = nn.ConvTranspose2d(channels if num_convs else in_channels, channels, 2, 2)
        self.conv_logits = nn.Conv2d(channels, num_classes, 1)
        for m in (self.upsample, self.conv_logits):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, C, 14, 14]`` -> ``[N, K, 28, 28]`` logits."""
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(F.relu(self.upsample(x)))


class _RoIHead(nn.Module):
    """Holds mmdet's ``roi_head.bbox_head`` and ``roi_head.mask_head`` (the key prefixes)."""

    def __init__(self, channels: int, num_classes: int, fc_channels: int) -> None:
        super().__init__()
        self.bbox_roi_extractor = SingleRoIExtractor(7)
        self.bbox_head = Shared2FCBBoxHead(channels, num_classes, 7, fc_channels)
        self.mask_roi_extractor = SingleRoIExtractor(14)
        self.mask_head = FCNMaskHead(channels, num_classes, channels)


def paste_mask(
    probs: Tensor, box: Tensor, image_size: tuple[int, int], threshold: float = 0.5
) -> tuple[Tensor, int, int]:
    """Paste one ``[h, w]`` mask of probabilities into an image of ``image_size = (H, W)``.

    mmdet's ``_do_paste_mask`` (CPU path): the mask spans ``box = (x1, y1, x2, y2)`` and is
    sampled bilinearly (zero outside) at the pixel centres of the box grown by one pixel and
    clipped to the image, then thresholded (``>= threshold``). Returns the bool crop
    ``[y1' - y0, x1' - x0]`` and its top-left corner ``(x0, y0)``: every pixel outside the crop
    is background, so callers never need to allocate the full image.
    """
    img_h, img_w = image_size
    x1, y1, x2, y2 = (float(v) for v in box)
    x0_int = max(math.floor(x1) - 1, 0)
    y0_int = max(math.floor(y1) - 1, 0)
    x1_int = min(math.ceil(x2) + 1, img_w)
    y1_int = min(math.ceil(y2) + 1, img_h)
    if x1_int <= x0_int or y1_int <= y0_int:
        return torch.zeros((0, 0), dtype=torch.bool), x0_int, y0_int
    b = box.to(torch.float32)
    img_x = torch.arange(x0_int, x1_int, dtype=torch.float32) + 0.5
    img_y = torch.arange(y0_int, y1_int, dtype=torch.float32) + 0.5
    img_x = (img_x - b[0]) / (b[2] - b[0]) * 2 - 1
    img_y = (img_y - b[1]) / (b[3] - b[1]) * 2 - 1
    img_x = torch.where(torch.isinf(img_x), torch.zeros_like(img_x), img_x)
    img_y = torch.where(torch.isinf(img_y), torch.zeros_like(img_y), img_y)
    grid = torch.stack(
        (
            img_x[None, :].expand(img_y.shape[0], -1),
            img_y[:, None].expand(-1, img_x.shape[0]),
        ),
        dim=-1,
    )[None]
    sampled = F.grid_sample(probs.to(torch.float32)[None, None], grid, align_corners=False)
    return sampled[0, 0] >= threshold, x0_int, y0_int


def paste_masks(
    probs: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float = 0.5
) -> Tensor:
    """Full-image bool masks ``[n, H, W]`` from ``[n, h, w]`` probabilities (see
    :func:`paste_mask`)."""
    out = torch.zeros((probs.shape[0], *image_size), dtype=torch.bool)
    for i in range(probs.shape[0]):
        crop, x0, y0 = paste_mask(probs[i], boxes[i], image_size, threshold)
        out[i, y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
    return out


class MaskRCNN(DenseModel):
    """Mask R-CNN instance segmenter (mmdet 3.x inference).

    Args:
        backbone: a dense-layout :class:`SepViT` or :class:`~sepvit.backbones.set.SeT`.
        num_classes: object classes (the box classifier adds a background logit).
        fpn_channels / fc_channels: neck width and box-head fc width (paper: 256 / 1024).
        rpn_nms_pre, rpn_nms_thresh, rpn_max_per_img: proposal post-processing (1000 / 0.7 /
            1000, mmdet's test config).
        score_thresh, nms_thresh, max_detections, mask_thresh: detection post-processing
            (0.05 / 0.5 / 100 / 0.5).
        anchor_scale: anchor size in strides (mmdet's ``scales=[8]``: 32 px on P2; the demo
            model, whose objects go down to 13 px, uses 4).
        rpn_train_nms_pre, rpn_train_max_per_img: proposals while training (2000 / 1000).
        rpn_batch, rpn_pos_fraction, roi_batch, roi_pos_fraction: the samplers (256 / 0.5,
            512 / 0.25).
    """

    rpn_strides = (4, 8, 16, 32, 64)
    roi_strides = (4, 8, 16, 32)
    bbox_stds = (0.1, 0.1, 0.2, 0.2)

    def __init__(
        self,
        backbone: SepViT | SeT,
        num_classes: int,
        fpn_channels: int = 256,
        fc_channels: int = 1024,
        rpn_nms_pre: int = 1000,
        rpn_nms_thresh: float = 0.7,
        rpn_max_per_img: int = 1000,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        max_detections: int = 100,
        mask_thresh: float = 0.5,
        anchor_scale: float = 8.0,
        rpn_train_nms_pre: int = 2000,
        rpn_train_max_per_img: int = 1000,
        rpn_batch: int = 256,
        rpn_pos_fraction: float = 0.5,
        roi_batch: int = 512,
        roi_pos_fraction: float = 0.25,
    ) -> None:
        super().__init__(backbone, num_classes)
        self.neck = FPN(backbone.embed_dims, fpn_channels, pool_levels=1)
        self.anchor_generator = AnchorGenerator(
            self.rpn_strides, octave_base_scale=anchor_scale, scales=(1.0,), center_offset=0.0
        )
        self.rpn_head = RPNHead(fpn_channels, self.anchor_generator.num_anchors, fpn_channels)
        self.roi_head = _RoIHead(fpn_channels, num_classes, fc_channels)
        self.rpn_coder = BoxCoder()
        self.bbox_coder = BoxCoder(tuple(1.0 / s for s in self.bbox_stds))  # type: ignore[arg-type]
        self.rpn_nms_pre = rpn_nms_pre
        self.rpn_nms_thresh = rpn_nms_thresh
        self.rpn_max_per_img = rpn_max_per_img
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.max_detections = max_detections
        self.mask_thresh = mask_thresh
        self.rpn_train_nms_pre = rpn_train_nms_pre
        self.rpn_train_max_per_img = rpn_train_max_per_img
        self.rpn_batch = rpn_batch
        self.rpn_pos_fraction = rpn_pos_fraction
        self.roi_batch = roi_batch
        self.roi_pos_fraction = roi_pos_fraction

    # -- stages --------------------------------------------------------------------------------
    def forward_raw(self, images: Tensor) -> tuple[Tensor, ...]:
        """The dense, batched part (no data-dependent shapes): the 5 pyramid levels, then per
        level the RPN ``objectness [B, H*W*A]``, then per level ``deltas [B, H*W*A, 4]`` (15
        tensors, flat so that runtimes can treat them as plain outputs)."""
        feats = self.neck(self.backbone.forward_intermediates(images, (0, 1, 2, 3)))
        objectness, deltas = self.rpn_head(feats)
        return (*feats, *objectness, *deltas)

    @torch.no_grad()
    def proposals(
        self,
        objectness: Sequence[Tensor],
        deltas: Sequence[Tensor],
        level_sizes: Sequence[tuple[int, int]],
        image_size: tuple[int, int],
        nms_pre: int | None = None,
        max_per_img: int | None = None,
    ) -> list[Tensor]:
        """RPN proposals ``[n_i, 4]`` per image, best first (mmdet ``RPNHead.predict``).

        ``level_sizes`` are the pyramid's ``(H, W)``; boxes are clipped to ``image_size``.
        ``nms_pre`` and ``max_per_img`` default to the test configuration.
        """
        nms_pre = self.rpn_nms_pre if nms_pre is None else nms_pre
        max_per_img = self.rpn_max_per_img if max_per_img is None else max_per_img
        level_anchors = self.anchor_generator.grid_anchors(level_sizes, objectness[0].device)
        out = []
        for i in range(objectness[0].shape[0]):
            boxes, scores, levels = [], [], []
            for lvl, (obj, dlt, anc) in enumerate(
                zip(objectness, deltas, level_anchors, strict=True)
            ):
                s = torch.sigmoid(obj[i].float())
                d = dlt[i].float()
                a = anc
                if 0 < nms_pre < s.shape[0]:
                    s, top = s.sort(descending=True)
                    s, top = s[:nms_pre], top[:nms_pre]
                    d, a = d[top], a[top]
                boxes.append(self.rpn_coder.decode(d, a))
                scores.append(s)
                levels.append(torch.full_like(s, lvl, dtype=torch.long))
            b = clip_boxes(torch.cat(boxes), image_size)
            s = torch.cat(scores)
            lv = torch.cat(levels)
            valid = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # min_bbox_size 0
            b, s, lv = b[valid], s[valid], lv[valid]
            keep = batched_nms(b, s, lv, self.rpn_nms_thresh)[:max_per_img]
            out.append(b[keep])
        return out

    @torch.no_grad()
    def detect(
        self,
        feats: Sequence[Tensor],
        proposals: Sequence[Tensor],
        image_size: tuple[int, int],
        score_thresh: float | None = None,
        max_detections: int | None = None,
    ) -> list[Detections]:
        """Box stage (mmdet ``StandardRoIHead.predict_bbox``): ``boxes``, ``scores``, ``labels``
        per image."""
        thresh = self.score_thresh if score_thresh is None else score_thresh
        limit = self.max_detections if max_detections is None else max_detections
        rois = _to_rois(proposals)
        head = self.roi_head
        cls, reg = head.bbox_head(head.bbox_roi_extractor(feats[: len(self.roi_strides)], rois))
        results: list[Detections] = []
        start = 0
        k = self.num_classes
        for props in proposals:
            n = props.shape[0]
            scores = F.softmax(cls[start : start + n].float(), dim=-1)[:, :k]  # [n, K]
            d = reg[start : start + n].float().view(n, k, 4)
            boxes = clip_boxes(self.bbox_coder.decode(d, props[:, None, :]), image_size)
            start += n
            cand = torch.nonzero(scores.reshape(-1) > thresh).squeeze(1)
            b = boxes.reshape(-1, 4)[cand]
            s = scores.reshape(-1)[cand]
            lab = cand % k
            keep = batched_nms(b, s, lab, self.nms_thresh)[:limit]
            results.append({"boxes": b[keep], "scores": s[keep], "labels": lab[keep]})
        return results

    @torch.no_grad()
    def mask_probs(self, feats: Sequence[Tensor], detections: Sequence[Detections]) -> list[Tensor]:
        """Mask stage: the detected class's ``[n, 28, 28]`` foreground probabilities per image."""
        rois = _to_rois([d["boxes"] for d in detections])
        head = self.roi_head
        logits = head.mask_head(head.mask_roi_extractor(feats[: len(self.roi_strides)], rois))
        out = []
        start = 0
        for det in detections:
            n = det["boxes"].shape[0]
            chosen = logits[start : start + n][torch.arange(n), det["labels"]]
            out.append(torch.sigmoid(chosen.float()))
            start += n
        return out

    # -- whole model ---------------------------------------------------------------------------
    @torch.no_grad()
    def postprocess(
        self,
        *raw: Tensor,
        image_size: tuple[int, int],
        score_thresh: float | None = None,
        max_detections: int | None = None,
        clip_size: tuple[int, int] | None = None,
    ) -> list[Detections]:
        """Everything after :meth:`forward_raw` (proposals, box and mask stages, in torch).

        Returns per image ``boxes``, ``scores``, ``labels`` (input pixels) and ``mask_probs``
        ``[n, 28, 28]``, to be pasted with :func:`paste_mask` at any image size. Boxes are
        clipped to ``clip_size`` (the valid part of a padded input, mmdet's ``img_shape``),
        by default ``image_size``.
        """
        n = len(self.rpn_strides)
        if len(raw) != 3 * n:
            raise ValueError(f"expected {3 * n} raw tensors, got {len(raw)}")
        feats, objectness, deltas = raw[:n], raw[n : 2 * n], raw[2 * n :]
        clip = clip_size or image_size
        sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in feats]
        props = self.proposals(objectness, deltas, sizes, clip)
        dets = self.detect(feats, props, clip, score_thresh, max_detections)
        for det, probs in zip(dets, self.mask_probs(feats, dets), strict=True):
            det["mask_probs"] = probs
        return dets

    @torch.no_grad()
    def predict(
        self,
        images: Tensor,
        score_thresh: float | None = None,
        max_detections: int | None = None,
    ) -> list[Detections]:
        """:meth:`forward_raw` then :meth:`postprocess`."""
        size = (images.shape[-2], images.shape[-1])
        raw = self.forward_raw(images)
        return self.postprocess(
            *raw, image_size=size, score_thresh=score_thresh, max_detections=max_detections
        )

    def forward(
        self, images: Tensor, targets: Sequence[dict[str, Tensor]] | None = None
    ) -> list[Detections] | dict[str, Tensor]:
        """Detections per image with ``masks [n, H, W]`` bool at the input size (mmdet
        ``predict(rescale=False)``), or the loss dict when ``targets`` are given: per image
        ``boxes [G, 4]`` (input pixels), ``labels [G]`` and ``masks [G, H, W]`` (bool, at the
        input size)."""
        size = (images.shape[-2], images.shape[-1])
        if targets is not None:
            return self.loss(self.forward_raw(images), targets, size)
        dets = self.predict(images)
        for det in dets:
            det["masks"] = paste_masks(det.pop("mask_probs"), det["boxes"], size, self.mask_thresh)
        return dets

    # -- training ------------------------------------------------------------------------------
    def loss(
        self,
        raw: Sequence[Tensor],
        targets: Sequence[dict[str, Tensor]],
        image_size: tuple[int, int],
    ) -> dict[str, Tensor]:
        """The five losses (mmdet's train config, see the module docstring) and their sum."""
        n = len(self.rpn_strides)
        feats, objectness, deltas = raw[:n], raw[n : 2 * n], raw[2 * n :]
        if len(targets) != feats[0].shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {feats[0].shape[0]}")
        gts = [_check_target(t, self.num_classes, image_size) for t in targets]
        sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in feats]
        out = self._rpn_loss(torch.cat(list(objectness), 1), torch.cat(list(deltas), 1), sizes, gts)
        props = self.proposals(
            [o.detach() for o in objectness],
            [d.detach() for d in deltas],
            sizes,
            image_size,
            self.rpn_train_nms_pre,
            self.rpn_train_max_per_img,
        )
        out.update(self._roi_loss(feats[: len(self.roi_strides)], props, gts))
        out["loss"] = torch.stack(list(out.values())).sum()
        return out

    def _rpn_loss(
        self,
        objectness: Tensor,
        deltas: Tensor,
        level_sizes: Sequence[tuple[int, int]],
        gts: Sequence[tuple[Tensor, Tensor, Tensor]],
    ) -> dict[str, Tensor]:
        anchors = self.anchor_generator(level_sizes, objectness.device)
        cls_terms, reg_terms, sampled = [], [], 0
        for i, (boxes, _, _) in enumerate(gts):
            matches = match_anchors(anchors, boxes, 0.7, 0.3, True, min_pos_iou=0.3)
            pos, neg = sample_pos_neg(matches, self.rpn_batch, self.rpn_pos_fraction)
            idx = torch.cat((pos, neg))
            target = (torch.arange(idx.numel(), device=idx.device) < pos.numel()).float()
            cls_terms.append(
                F.binary_cross_entropy_with_logits(objectness[i, idx], target, reduction="sum")
            )
            encoded = self.rpn_coder.encode(anchors[pos], boxes[matches[pos]])
            reg_terms.append(smooth_l1_loss(deltas[i, pos], encoded, beta=0.0).sum())
            sampled += idx.numel()
        norm = max(1, sampled)
        return {
            "loss_rpn_cls": torch.stack(cls_terms).sum() / norm,
            "loss_rpn_bbox": torch.stack(reg_terms).sum() / norm,
        }

    def _roi_loss(
        self,
        feats: Sequence[Tensor],
        proposals: Sequence[Tensor],
        gts: Sequence[tuple[Tensor, Tensor, Tensor]],
    ) -> dict[str, Tensor]:
        k = self.num_classes
        boxes_s, labels_s, targets_s, pos_s = [], [], [], []
        gt_idx_s, pos_boxes_s, pos_labels_s = [], [], []
        for props, (boxes, labels, _) in zip(proposals, gts, strict=True):
            # mmdet assigns the proposals, then adds the gt boxes as positives of their own
            matches = match_anchors(props, boxes, 0.5, 0.5, True, min_pos_iou=0.5)
            cand = torch.cat((boxes, props))
            matches = torch.cat((torch.arange(boxes.shape[0], device=boxes.device), matches))
            pos, neg = sample_pos_neg(matches, self.roi_batch, self.roi_pos_fraction)
            idx = torch.cat((pos, neg))
            gt_of = matches[pos]
            boxes_s.append(cand[idx])
            lab = torch.full((idx.numel(),), k, dtype=torch.long, device=idx.device)
            lab[: pos.numel()] = labels[gt_of]
            labels_s.append(lab)
            targets_s.append(self.bbox_coder.encode(cand[pos], boxes[gt_of]))
            pos_s.append(torch.arange(idx.numel(), device=idx.device) < pos.numel())
            gt_idx_s.append(gt_of)
            pos_boxes_s.append(cand[pos])
            pos_labels_s.append(labels[gt_of])
        head = self.roi_head
        cls, reg = head.bbox_head(head.bbox_roi_extractor(feats, _to_rois(boxes_s)))
        labels_all = torch.cat(labels_s)
        is_pos = torch.cat(pos_s)
        n = max(1, labels_all.numel())
        reg = reg.view(-1, k, 4)[is_pos, labels_all[is_pos]]
        loss_bbox = smooth_l1_loss(reg, torch.cat(targets_s), beta=0.0).sum() / n
        # mask head: the positive RoIs of all images, each against its gt mask
        pos_labels = torch.cat(pos_labels_s)
        logits = head.mask_head(head.mask_roi_extractor(feats, _to_rois(pos_boxes_s)))
        crops = [
            mask_targets(masks, gt_of, b, logits.shape[-1])
            for (_, _, masks), gt_of, b in zip(gts, gt_idx_s, pos_boxes_s, strict=True)
        ]
        chosen = logits[torch.arange(pos_labels.numel()), pos_labels]
        loss_mask = (
            F.binary_cross_entropy_with_logits(chosen, torch.cat(crops))
            if pos_labels.numel()
            else logits.sum() * 0.0
        )
        return {
            "loss_cls": F.cross_entropy(cls, labels_all, reduction="sum") / n,
            "loss_bbox": loss_bbox,
            "loss_mask": loss_mask,
        }


def _check_target(
    target: dict[str, Tensor], num_classes: int, image_size: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor]:
    """``(boxes [G, 4] float, labels [G] long, masks [G, H, W] bool)`` of one training target."""
    boxes = target["boxes"].float()
    labels = target["labels"].long()
    masks = target["masks"].bool()
    g = labels.shape[0]
    if boxes.shape != (g, 4) or masks.shape != (g, *image_size):
        raise ValueError(
            f"a target needs boxes [G, 4], labels [G] and masks [G, {image_size[0]}, "
            f"{image_size[1]}]; got {tuple(boxes.shape)}, {tuple(labels.shape)}, "
            f"{tuple(masks.shape)}"
        )
    if g and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"target labels must lie in [0, {num_classes})")
    return boxes, labels, masks


def _to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """mmdet ``bbox2roi``: ``[sum n_i, 5]`` rows ``(image_index, x1, y1, x2, y2)``."""
    rows = [torch.cat((torch.full_like(b[:, :1], i), b[:, :4]), dim=1) for i, b in enumerate(boxes)]
    return torch.cat(rows) if rows else torch.zeros((0, 5))


# ---------------------------------------------------------------------------------------------
# checkpoints: mmdet's layout
# ---------------------------------------------------------------------------------------------
def _num_classes(state: StateDict) -> int:
    return int(state["roi_head.bbox_head.fc_cls.weight"].shape[0]) - 1


def _infer_kwargs(state: StateDict) -> dict[str, Any]:
    return {
        "fpn_channels": int(state["neck.lateral_convs.0.conv.weight"].shape[0]),
        "fc_channels": int(state["roi_head.bbox_head.shared_fcs.0.weight"].shape[0]),
    }


register_head(
    HeadSpec(
        task="detect",
        name="mask_rcnn",
        build=MaskRCNN,
        prefixes=("neck", "rpn_head", "roi_head"),
        signature="roi_head.mask_head.conv_logits.weight",
        num_classes=_num_classes,
        infer_kwargs=_infer_kwargs,
        preset="coco",
    )
)
