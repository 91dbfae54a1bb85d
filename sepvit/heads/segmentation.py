"""Semantic FPN (Kirillov et al., "Panoptic Feature Pyramid Networks", 2019) on SepViT.

The segmentation framework of the SepViT paper's ADE20K results. Dense SepViT backbone (strides
4-32) -> FPN -> one scale head per level (``conv3x3-GN-ReLU`` blocks, each followed by a bilinear
upsample towards stride 4) -> sum -> 1x1 classifier -> bilinear upsample to the input size.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.sepvit import SepViT
from ..backbones.set import SeT
from .fpn import FPN, group_norm

__all__ = ["SemanticFPN"]


class _ConvGNReLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            group_norm(c_out),
            nn.ReLU(inplace=True),
        )


class SemanticFPN(nn.Module):
    """Semantic FPN segmenter; ``forward`` returns logits ``[B, K, H, W]`` at input resolution.

    Args:
        backbone: a dense-layout :class:`SepViT` or :class:`~sepvit.backbones.set.SeT`.
        num_classes: classes including background (index 0 in the demo models).
        fpn_channels: FPN width (paper: 256). head_channels: scale-head width (paper: 128).
        dropout: dropout before the classifier during training.
        ignore_index: label ignored by the loss.
    """

    def __init__(
        self,
        backbone: SepViT | SeT,
        num_classes: int,
        fpn_channels: int = 256,
        head_channels: int = 128,
        dropout: float = 0.1,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if not backbone.dense:
            raise ValueError("SemanticFPN needs a dense-layout backbone (SepViT(dense=True))")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + classes), got {num_classes}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.neck = FPN(backbone.embed_dims, fpn_channels)
        self.scale_heads = nn.ModuleList()
        for level in range(len(backbone.embed_dims)):
            n = max(1, level)
            self.scale_heads.append(
                nn.ModuleList(
                    [
                        _ConvGNReLU(fpn_channels if k == 0 else head_channels, head_channels)
                        for k in range(n)
                    ]
                )
            )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)

    def forward_features(self, images: Tensor) -> Tensor:
        """Fused stride-4 features ``[B, head_channels, H/4, W/4]``."""
        feats = self.neck(self.backbone.forward_intermediates(images, (0, 1, 2, 3)))
        sizes = [f.shape[-2:] for f in feats]
        out: Tensor | None = None
        for level, f in enumerate(feats):
            x = f
            convs: nn.ModuleList = self.scale_heads[level]  # type: ignore[assignment]
            for k, conv in enumerate(convs):
                x = conv(x)
                if level > 0:  # upsample one level down per conv, ending at stride 4
                    x = F.interpolate(
                        x, size=sizes[level - k - 1], mode="bilinear", align_corners=False
                    )
            out = x if out is None else out + x
        assert out is not None  # at least one level, checked by FPN
        return out

    def forward(self, images: Tensor, targets: Tensor | None = None) -> Tensor | dict[str, Tensor]:
        """Logits at input resolution, or ``{"loss": ...}`` given ``targets [B, H, W]`` labels."""
        logits = self.classifier(self.dropout(self.forward_features(images)))
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits, targets.long(), ignore_index=self.ignore_index)
        return {"loss": loss}
