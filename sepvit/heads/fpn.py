"""Feature Pyramid Network (Lin et al., 2017) shared by the detector and the segmenter.

Module names follow OpenMMLab (mmcv ``ConvModule``, mmdet/mmseg ``FPN``) so that a checkpoint
written by mmdet or mmseg loads key for key: ``neck.lateral_convs.0.conv.weight``,
``neck.fpn_convs.3.conv.weight`` (the extra levels continue ``fpn_convs``), and
``<head>.<convs>.0.bn.running_mean`` for a normalised conv.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FPN", "ConvModule", "group_norm"]

NORMS = (None, "bn", "gn")


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count in (32, 16, 8, 4, 2, 1) dividing ``channels``."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ConvModule(nn.Module):
    """``conv`` -> optional norm (child ``bn`` or ``gn``, as mmcv names it) -> optional ReLU.

    Args:
        norm: ``None``, ``"bn"`` (BatchNorm with running statistics, mmseg's ``SyncBN`` at
            inference) or ``"gn"`` (GroupNorm, see :func:`group_norm`).
        bias: conv bias; ``None`` means mmcv's ``"auto"`` (a bias only without a norm).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        norm: str | None = None,
        act: bool = True,
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.conv = nn.Conv2d(
            c_in, c_out, kernel_size, stride, padding, bias=norm is None if bias is None else bias
        )
        if norm == "bn":
            self.bn = nn.BatchNorm2d(c_out)
        elif norm == "gn":
            self.gn = group_norm(c_out)
        self.norm_name = norm
        self.act = nn.ReLU(inplace=True) if act else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm_name is not None:
            x = getattr(self, self.norm_name)(x)
        return self.act(x) if self.act is not None else x


class FPN(nn.Module):
    """Top-down pyramid with lateral 1x1 and output 3x3 convs (mmdet/mmseg ``FPN``).

    Args:
        in_channels: channels of every backbone level passed in.
        out_channels: pyramid width.
        start_level: first input level used (RetinaNet: 1, i.e. C3 of C2-C5).
        extra_levels: stride-2 3x3 convs after the coarsest level (``num_outs`` minus the used
            levels). The first reads the coarsest *input* (``add_extra_convs='on_input'``); later
            ones read the previous extra level, through a ReLU when ``relu_before_extra_convs``.
        pool_levels: extra levels without parameters after those: stride-2 max pooling
            (kernel 1) of the previous output (``add_extra_convs=False``; Mask R-CNN's P6).

    Upsampling is nearest-neighbour to the lateral's exact size, so any input size works.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        start_level: int = 0,
        extra_levels: int = 0,
        relu_before_extra_convs: bool = False,
        pool_levels: int = 0,
    ) -> None:
        super().__init__()
        if not 0 <= start_level < len(in_channels):
            raise ValueError(f"start_level {start_level} outside {len(in_channels)} input levels")
        self.in_channels = tuple(in_channels)
        self.out_channels = out_channels
        self.start_level = start_level
        self.relu_before_extra_convs = relu_before_extra_convs
        self.pool_levels = pool_levels
        used = self.in_channels[start_level:]
        self.lateral_convs = nn.ModuleList(
            [ConvModule(c, out_channels, 1, act=False) for c in used]
        )
        self.fpn_convs = nn.ModuleList(
            [ConvModule(out_channels, out_channels, 3, padding=1, act=False) for _ in used]
        )
        for i in range(extra_levels):
            c_in = self.in_channels[-1] if i == 0 else out_channels
            self.fpn_convs.append(ConvModule(c_in, out_channels, 3, 2, 1, act=False))
        self.num_used = len(used)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} levels, got {len(feats)}")
        inputs = feats[self.start_level :]
        lat = [conv(f) for conv, f in zip(self.lateral_convs, inputs, strict=True)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(
                lat[i], size=lat[i - 1].shape[-2:], mode="nearest"
            )
        outs = [self.fpn_convs[i](x) for i, x in enumerate(lat)]
        extra = list(self.fpn_convs)[self.num_used :]
        for i, conv in enumerate(extra):
            if i == 0:
                outs.append(conv(feats[-1]))
            else:
                prev = outs[-1]
                outs.append(conv(F.relu(prev) if self.relu_before_extra_convs else prev))
        for _ in range(self.pool_levels):
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs
