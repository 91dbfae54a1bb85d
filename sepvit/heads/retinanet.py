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
from typing import Any

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
from .base import DenseModel, HeadSpec, StateDict, count_modules, norm_of, register_head
from .fpn import FPN, ConvModule

__all__ = ["RetinaHead", "RetinaNet"]

Detections = dict[str, Tensor]


class RetinaHead(nn.Module):
    """mmdet's ``RetinaHead``: class and box subnets shared across levels.

    Each subnet is ``convs x ConvModule(3x3 [-norm] - ReLU)`` (``cls_convs`` / ``reg_convs``)
    followed by a 3x3 prediction conv (``retina_cls`` / ``retina_reg``). The class bias starts at
    the focal-loss prior ``-log((1 - p) / p)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_anchors: int,
        channels: int = 256,
        convs: int = 4,
        norm: str | None = None,
        conv_bias: bool | None = None,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors

        def tower() -> nn.ModuleList:
            return nn.ModuleList(
                ConvModule(
                    in_channels if i == 0 else channels, channels, 3, padding=1, norm=norm,
                    bias=conv_bias,
                )
                for i in range(convs)
            )  # fmt: skip

        self.cls_convs = tower()
        self.reg_convs = tower()
        last = channels if convs > 0 else in_channels
        self.retina_cls = nn.Conv2d(last, num_anchors * num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(last, num_anchors * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        assert self.retina_cls.bias is not None
        nn.init.constant_(self.retina_cls.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Returns ``cls [B, N, K]`` logits and ``reg [B, N, 4]`` deltas over all levels.

        Per level ``[B, A*K, H, W] -> [B, H, W, A, K] -> [B, H*W*A, K]`` (mmdet's order: row,
        column, anchor), levels concatenated.
        """
        cls_out, reg_out = [], []
        for f in feats:
            b, _, h, w = f.shape
            c, r = f, f
            for conv in self.cls_convs:
                c = conv(c)
            for conv in self.reg_convs:
                r = conv(r)
            c = self.retina_cls(c)  # [B, A*K, H, W]
            r = self.retina_reg(r)  # [B, A*4, H, W]
            cls_out.append(c.permute(0, 2, 3, 1).reshape(b, h * w * self.num_anchors, -1))
            reg_out.append(r.permute(0, 2, 3, 1).reshape(b, h * w * self.num_anchors, 4))
        return torch.cat(cls_out, 1), torch.cat(reg_out, 1)


class RetinaNet(DenseModel):
    """RetinaNet detector whose ``state_dict()`` is mmdet's (``backbone``, ``neck``,
    ``bbox_head``).

    Defaults are the official ``retinanet_sepvit_*`` configs: FPN of 256 channels from C3
    (``start_level=1``) with two extra levels on the input (P6 from C5), 4 stacked convs of 256,
    anchors with ``octave_base_scale=4`` and 3 scales per octave centred on ``stride * (x +
    anchor_center_offset)``; test cfg ``nms_pre=1000``, ``score_thr=0.05``, NMS 0.5,
    ``max_per_img=100``.

    Args:
        backbone: a dense-layout :class:`SepViT` or :class:`~sepvit.backbones.set.SeT`.
        num_classes: object classes (no background class: sigmoid scores).
        fpn_channels / head_channels / head_convs / head_norm / head_conv_bias: neck and head
            width, depth, norm (``None``, ``"gn"``, ``"bn"``) and conv bias (``None``: only
            without a norm). The demo models use narrower GN heads.
        relu_before_extra_convs: ReLU between the extra pyramid levels (mmdet default: off).
        anchor_scale: base anchor size in strides (4 -> 32 px on P3).
        anchor_center_offset: anchor centre within its cell, in strides (mmdet: 0).
        score_thresh, nms_thresh, topk_candidates (``nms_pre``), max_detections: inference.
        box_loss: ``"smooth_l1"`` on deltas or ``"giou"`` on decoded boxes.
    """

    strides = (8, 16, 32, 64, 128)
    feature_indices = (0, 1, 2, 3)  # C2-C5 enter the FPN, which starts at C3 (start_level=1)

    def __init__(
        self,
        backbone: SepViT | SeT,
        num_classes: int,
        fpn_channels: int = 256,
        head_channels: int = 256,
        head_convs: int = 4,
        head_norm: str | None = None,
        head_conv_bias: bool | None = None,
        relu_before_extra_convs: bool = False,
        anchor_scale: float = 4.0,
        anchor_center_offset: float = 0.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        topk_candidates: int = 1000,
        max_detections: int = 100,
        box_loss: str = "giou",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__(backbone, num_classes)
        if box_loss not in ("smooth_l1", "giou"):
            raise ValueError(f"box_loss must be 'smooth_l1' or 'giou', got {box_loss!r}")
        self.neck = FPN(
            backbone.embed_dims,
            fpn_channels,
            start_level=1,
            extra_levels=2,
            relu_before_extra_convs=relu_before_extra_convs,
        )
        self.anchor_generator = AnchorGenerator(
            self.strides, octave_base_scale=anchor_scale, center_offset=anchor_center_offset
        )
        self.bbox_head = RetinaHead(
            fpn_channels,
            num_classes,
            self.anchor_generator.num_anchors,
            head_channels,
            head_convs,
            head_norm,
            head_conv_bias,
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
        return self.bbox_head(self.neck(feats))

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
        clip_size: tuple[int, int] | None = None,
    ) -> list[Detections]:
        """Decode raw outputs into ``{boxes [n, 4], scores [n], labels [n]}`` per image.

        ``clip_size`` (default ``image_size``) is where boxes are clipped: mmdet clips to the
        resized image (``img_shape``), not to its padding.

        mmdet's ``_predict_by_feat_single`` and ``_bbox_post_process``: per level, the
        (anchor, class) scores above ``score_thresh``, best ``topk_candidates`` (``nms_pre``)
        first; their boxes decoded and clipped to ``image_size``; boxes of zero width or height
        dropped (``min_bbox_size=0``); class-aware NMS over all levels; the best
        ``max_detections``. Boxes are in the pixel frame of the network input.
        """
        thresh = self.score_thresh if score_thresh is None else score_thresh
        limit = self.max_detections if max_detections is None else max_detections
        level_anchors = self.anchors(image_size, cls.device)
        counts = [a.shape[0] for a in level_anchors]
        clip = image_size if clip_size is None else clip_size
        results: list[Detections] = []
        for i in range(cls.shape[0]):
            all_boxes, all_scores, all_labels = [], [], []
            for c, r, anc in zip(
                cls[i].split(counts), reg[i].split(counts), level_anchors, strict=True
            ):
                scores = torch.sigmoid(c.float()).flatten()  # index: anchor * K + class
                keep = torch.nonzero(scores > thresh).squeeze(1)
                order = scores[keep].sort(descending=True).indices[: self.topk_candidates]
                keep = keep[order]
                anchor_idx = keep // self.num_classes
                boxes = self.box_coder.decode(r[anchor_idx].float(), anc[anchor_idx])
                all_boxes.append(clip_boxes(boxes, clip))
                all_scores.append(scores[keep])
                all_labels.append(keep % self.num_classes)
            boxes = torch.cat(all_boxes)
            scores = torch.cat(all_scores)
            labels = torch.cat(all_labels)
            nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores, labels = boxes[nonempty], scores[nonempty], labels[nonempty]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[:limit]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results


# ---------------------------------------------------------------------------------------------
# checkpoints: OpenMMLab layout and the version-1 native layout of the demo models
# ---------------------------------------------------------------------------------------------
def _infer_kwargs(state: StateDict) -> dict[str, Any]:
    convs = count_modules(state, "bbox_head.cls_convs")
    out: dict[str, Any] = {
        "fpn_channels": int(state["neck.lateral_convs.0.conv.weight"].shape[0]),
        "head_convs": convs,
    }
    if convs:
        out["head_channels"] = int(state["bbox_head.cls_convs.0.conv.weight"].shape[0])
        out["head_norm"] = norm_of(state, "bbox_head.cls_convs.0")
        has_bias = "bbox_head.cls_convs.0.conv.bias" in state
        if has_bias != (out["head_norm"] is None):
            out["head_conv_bias"] = has_bias
    return out


def _num_classes(state: StateDict) -> int:
    anchors = AnchorGenerator().num_anchors
    return int(state["bbox_head.retina_cls.weight"].shape[0]) // anchors


def _legacy(state: dict[str, Tensor], args: dict[str, Any]) -> tuple[dict[str, Tensor], dict]:
    """Version-1 native detector (``head.cls_logits``, ``neck.extra_convs``, Sequential towers of
    conv[-GN]-ReLU with conv biases, ReLU between extra levels, anchors at cell centres)."""
    norm = args.get("head_norm")
    step = 3 if norm == "gn" else 2  # children per tower block: conv[, gn], relu
    n_levels = sum(1 for k in state if k.startswith("neck.lateral_convs.") and k.endswith("weight"))
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        parts = k.split(".")
        if parts[0] == "neck":
            idx = int(parts[2]) + (n_levels if parts[1] == "extra_convs" else 0)
            name = "fpn_convs" if parts[1] != "lateral_convs" else "lateral_convs"
            k = f"neck.{name}.{idx}.conv.{parts[-1]}"
        elif parts[0] == "head" and parts[1] in ("cls_convs", "reg_convs"):
            block, child = divmod(int(parts[2]), step)
            k = f"bbox_head.{parts[1]}.{block}.{'conv' if child == 0 else 'gn'}.{parts[-1]}"
        elif parts[0] == "head":
            name = {"cls_logits": "retina_cls", "bbox_pred": "retina_reg"}[parts[1]]
            k = f"bbox_head.{name}.{parts[-1]}"
        out[k] = v
    args = {
        **args,
        "head_conv_bias": True,
        "relu_before_extra_convs": True,
        "anchor_center_offset": 0.5,
    }
    return out, args


register_head(
    HeadSpec(
        task="detect",
        name="retinanet",
        build=RetinaNet,
        prefixes=("neck", "bbox_head"),
        signature="bbox_head.retina_cls.weight",
        num_classes=_num_classes,
        infer_kwargs=_infer_kwargs,
        legacy=_legacy,
        preset="coco",
    )
)
