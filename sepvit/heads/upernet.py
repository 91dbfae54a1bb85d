"""UperNet (Xiao et al., "Unified Perceptual Parsing for Scene Understanding", 2018) on SepViT.

The SepViT paper's ADE20K framework (official config ``segmentation/configs/upernet_sepvit_*`` on
mmseg's ``upernet_r50``), built as mmseg 1.x's ``UPerHead`` so that an mmseg checkpoint loads key
for key (``decode_head.psp_modules.0.1.conv``, ``decode_head.fpn_bottleneck.bn``, ...):

* a pyramid pooling module on the stride-32 features (adaptive average pools 1/2/3/6, each a
  1x1 conv-BN-ReLU, upsampled back and concatenated with the input) -> ``bottleneck`` 3x3;
* 1x1 ``lateral_convs`` on strides 4-16, a top-down path with bilinear upsampling
  (``align_corners=False``), 3x3 ``fpn_convs``;
* all four levels upsampled to stride 4, concatenated -> ``fpn_bottleneck`` 3x3 -> ``conv_seg``;
* logits resized to the input size (mmseg's ``whole`` inference).

mmseg trains an auxiliary ``FCNHead`` on stride 16; it is not part of inference, so its
``auxiliary_head.*`` tensors are accepted by the checkpoint loader and reported as unused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.sepvit import SepViT
from ..backbones.set import SeT
from .base import DenseModel, HeadSpec, StateDict, register_head
from .fpn import ConvModule

__all__ = ["UPerHead", "UperNet"]


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class _PoolBranch(nn.Sequential):
    """``psp_modules.<i>``: ``0`` adaptive average pool, ``1`` conv-BN-ReLU (mmseg's PPM)."""

    def __init__(self, scale: int, c_in: int, c_out: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(scale), ConvModule(c_in, c_out, 1, norm="bn"))


class UPerHead(nn.Module):
    """mmseg ``UPerHead`` with BN (``SyncBN`` at inference is BN with running statistics)."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        top = in_channels[-1]
        self.psp_modules = nn.ModuleList([_PoolBranch(s, top, channels) for s in pool_scales])
        self.bottleneck = ConvModule(
            top + len(pool_scales) * channels, channels, 3, padding=1, norm="bn"
        )
        self.lateral_convs = nn.ModuleList(
            [ConvModule(c, channels, 1, norm="bn") for c in in_channels[:-1]]
        )
        self.fpn_convs = nn.ModuleList(
            [ConvModule(channels, channels, 3, padding=1, norm="bn") for _ in in_channels[:-1]]
        )
        self.fpn_bottleneck = ConvModule(
            len(in_channels) * channels, channels, 3, padding=1, norm="bn"
        )
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward_features(self, feats: Sequence[Tensor]) -> Tensor:
        """Fused stride-4 features ``[B, channels, H/4, W/4]``."""
        top = feats[-1]
        pooled = [_resize(branch(top), top.shape[-2:]) for branch in self.psp_modules]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats, strict=False)]
        laterals.append(self.bottleneck(torch.cat([top, *pooled], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=False)]
        outs.append(laterals[-1])
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [_resize(x, size) for x in outs[1:]]
        return self.fpn_bottleneck(torch.cat(outs, dim=1))

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        return self.conv_seg(self.dropout(self.forward_features(feats)))


class UperNet(DenseModel):
    """UperNet segmenter; ``forward`` returns logits ``[B, K, H, W]`` at input resolution.

    Args:
        backbone, num_classes (ADE20K: 150), dropout, ignore_index: as for
            :class:`~sepvit.heads.segmentation.SemanticFPN`.
        channels: decoder width (paper: 512). pool_scales: PPM pooling sizes (1, 2, 3, 6).
    """

    def __init__(
        self,
        backbone: SepViT | SeT,
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        ignore_index: int = 255,
    ) -> None:
        super().__init__(backbone, num_classes, min_classes=2)  # background included
        self.ignore_index = ignore_index
        self.decode_head = UPerHead(
            backbone.embed_dims, num_classes, channels, tuple(pool_scales), dropout
        )

    def forward(self, images: Tensor, targets: Tensor | None = None) -> Tensor | dict[str, Tensor]:
        """Logits at input resolution, or ``{"loss": ...}`` given ``targets [B, H, W]`` labels."""
        feats = self.backbone.forward_intermediates(images, (0, 1, 2, 3))
        logits = _resize(self.decode_head(feats), images.shape[-2:])
        if targets is None:
            return logits
        return {"loss": F.cross_entropy(logits, targets.long(), ignore_index=self.ignore_index)}


# ---------------------------------------------------------------------------------------------
# checkpoints: mmseg's layout
# ---------------------------------------------------------------------------------------------
def _num_classes(state: StateDict) -> int:
    return int(state["decode_head.conv_seg.weight"].shape[0])


def _infer_kwargs(state: StateDict) -> dict[str, Any]:
    return {"channels": int(state["decode_head.conv_seg.weight"].shape[1])}


register_head(
    HeadSpec(
        task="segment",
        name="upernet",
        build=UperNet,
        prefixes=("decode_head",),
        signature="decode_head.psp_modules.0.1.conv.weight",
        num_classes=_num_classes,
        infer_kwargs=_infer_kwargs,
        preset="ade20k",
        unused=("auxiliary_head",),
    )
)
