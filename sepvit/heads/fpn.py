"""Feature Pyramid Network (Lin et al., 2017) shared by the detector and the segmenter."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FPN", "group_norm"]


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count in (32, 16, 8, 4, 2, 1) dividing ``channels``."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class FPN(nn.Module):
    """Top-down pyramid with lateral 1x1 and output 3x3 convs.

    ``extra_levels`` adds stride-2 3x3 convs after the coarsest level; the first reads the
    coarsest *input* (RetinaNet's P6 from C5, mmdet ``add_extra_convs='on_input'``), later ones
    read ``relu`` of the previous extra level. Upsampling targets the lateral's exact size, so any
    input size works (odd sizes included).
    """

    def __init__(
        self, in_channels: Sequence[int], out_channels: int, extra_levels: int = 0
    ) -> None:
        super().__init__()
        if not in_channels:
            raise ValueError("FPN needs at least one input level")
        self.in_channels = tuple(in_channels)
        self.out_channels = out_channels
        self.lateral_convs = nn.ModuleList([nn.Conv2d(c, out_channels, 1) for c in in_channels])
        self.fpn_convs = nn.ModuleList(
            [nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels]
        )
        self.extra_convs = nn.ModuleList()
        for i in range(extra_levels):
            c_in = in_channels[-1] if i == 0 else out_channels
            self.extra_convs.append(nn.Conv2d(c_in, out_channels, 3, stride=2, padding=1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        if len(feats) != len(self.lateral_convs):
            raise ValueError(f"FPN expects {len(self.lateral_convs)} levels, got {len(feats)}")
        lat = [conv(f) for conv, f in zip(self.lateral_convs, feats, strict=True)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(
                lat[i], size=lat[i - 1].shape[-2:], mode="nearest"
            )
        outs = [conv(x) for conv, x in zip(self.fpn_convs, lat, strict=True)]
        prev = feats[-1]
        for i, conv in enumerate(self.extra_convs):
            prev = conv(prev if i == 0 else F.relu(prev))
            outs.append(prev)
        return outs
