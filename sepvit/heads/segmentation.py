"""Semantic FPN (Kirillov et al., "Panoptic Feature Pyramid Networks", 2019) on SepViT.

The segmentation framework of the SepViT paper's ADE20K results, laid out as mmseg's
``EncoderDecoder`` with an ``FPN`` neck and an ``FPNHead`` (``backbone``, ``neck``,
``decode_head``), so an mmseg checkpoint loads key for key. Dense SepViT backbone (strides 4-32) ->
FPN -> one scale head per level (``ConvModule(3x3-norm-ReLU)`` blocks, each followed by a 2x
bilinear upsample until stride 4) -> sum at stride 4 -> dropout -> 1x1 ``conv_seg`` -> bilinear
resize to the input size (``align_corners=False``, mmseg's ``whole`` inference).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.sepvit import SepViT
from ..backbones.set import SeT
from .base import DenseModel, HeadSpec, StateDict, norm_of, register_head
from .fpn import FPN, ConvModule

__all__ = ["FPNHead", "SemanticFPN", "Upsample"]


class Upsample(nn.Module):
    """Bilinear upsampling by an integer factor (mmseg's ``Upsample``: to ``factor x`` size)."""

    def __init__(self, scale_factor: int = 2) -> None:
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x: Tensor) -> Tensor:
        size = [int(s * self.scale_factor) for s in x.shape[-2:]]
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class FPNHead(nn.Module):
    """mmseg's ``FPNHead``: ``scale_heads``, ``dropout``, ``conv_seg``.

    Scale head ``i`` (stride ``4 * 2**i``) has ``max(1, i)`` convs, each followed by a 2x upsample
    when ``i > 0``; outputs are resized to the stride-4 map (a no-op when the input side is a
    multiple of 32) and summed.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        num_levels: int = 4,
        norm: str | None = "bn",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for level in range(num_levels):
            layers: list[nn.Module] = []
            for k in range(max(1, level)):
                layers.append(
                    ConvModule(in_channels if k == 0 else channels, channels, 3, 1, 1, norm=norm)
                )
                if level > 0:
                    layers.append(Upsample(2))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        assert self.conv_seg.bias is not None
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, feats: list[Tensor]) -> Tensor:
        """``feats`` at strides 4-32 -> logits ``[B, K, H/4, W/4]``."""
        out = self.scale_heads[0](feats[0])
        for head, f in zip(list(self.scale_heads)[1:], feats[1:], strict=True):
            out = out + F.interpolate(
                head(f), size=out.shape[-2:], mode="bilinear", align_corners=False
            )
        return self.conv_seg(self.dropout(out))


class SemanticFPN(DenseModel):
    """Semantic FPN segmenter; ``forward`` returns logits ``[B, K, H, W]`` at input resolution.

    Defaults are the official ``fpn_sepvit_*`` configs (FPN 256, head 128 with BN).

    Args:
        backbone: a dense-layout :class:`SepViT` or :class:`~sepvit.backbones.set.SeT`.
        num_classes: output classes (the demo models count background as class 0).
        fpn_channels: FPN width. head_channels: scale-head width. head_norm: ``"bn"`` (mmseg's
            SyncBN), ``"gn"`` (the demo models) or ``None``.
        dropout: dropout before the classifier during training.
        ignore_index: label ignored by the loss.
    """

    def __init__(
        self,
        backbone: SepViT | SeT,
        num_classes: int,
        fpn_channels: int = 256,
        head_channels: int = 128,
        head_norm: str | None = "bn",
        dropout: float = 0.1,
        ignore_index: int = 255,
    ) -> None:
        super().__init__(backbone, num_classes, min_classes=2)  # background included
        self.ignore_index = ignore_index
        self.neck = FPN(backbone.embed_dims, fpn_channels)
        self.decode_head = FPNHead(
            fpn_channels, head_channels, num_classes, len(backbone.embed_dims), head_norm, dropout
        )

    def forward(self, images: Tensor, targets: Tensor | None = None) -> Tensor | dict[str, Tensor]:
        """Logits at input resolution, or ``{"loss": ...}`` given ``targets [B, H, W]`` labels."""
        feats = self.neck(self.backbone.forward_intermediates(images, (0, 1, 2, 3)))
        logits = self.decode_head(feats)
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits, targets.long(), ignore_index=self.ignore_index)
        return {"loss": loss}


# ---------------------------------------------------------------------------------------------
# checkpoints: OpenMMLab layout and the version-1 native layout of the demo models
# ---------------------------------------------------------------------------------------------
def _infer_kwargs(state: StateDict) -> dict[str, Any]:
    return {
        "fpn_channels": int(state["neck.lateral_convs.0.conv.weight"].shape[0]),
        "head_channels": int(state["decode_head.scale_heads.0.0.conv.weight"].shape[0]),
        "head_norm": norm_of(state, "decode_head.scale_heads.0.0"),
    }


def _num_classes(state: StateDict) -> int:
    return int(state["decode_head.conv_seg.weight"].shape[0])


def _legacy(state: dict[str, Tensor], args: dict[str, Any]) -> tuple[dict[str, Tensor], dict]:
    """Version-1 native segmenter (``scale_heads.L.k.{0: conv, 1: GN}``, ``classifier``, plain
    FPN convs)."""
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        parts = k.split(".")
        if parts[0] == "neck":
            k = f"neck.{parts[1]}.{parts[2]}.conv.{parts[-1]}"
        elif parts[0] == "scale_heads":
            level, block, child = int(parts[1]), int(parts[2]), int(parts[3])
            idx = 2 * block if level > 0 else block  # an Upsample follows each conv when L > 0
            child_name = "conv" if child == 0 else "gn"
            k = f"decode_head.scale_heads.{level}.{idx}.{child_name}.{parts[-1]}"
        elif parts[0] == "classifier":
            k = f"decode_head.conv_seg.{parts[-1]}"
        out[k] = v
    return out, {**args, "head_norm": "gn"}


register_head(
    HeadSpec(
        task="segment",
        name="semantic_fpn",
        build=SemanticFPN,
        prefixes=("neck", "decode_head"),
        signature="decode_head.scale_heads.0.0.conv.weight",
        num_classes=_num_classes,
        infer_kwargs=_infer_kwargs,
        legacy=_legacy,
        preset="ade20k",
    )
)
