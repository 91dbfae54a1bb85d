"""RoIAlign (He et al., "Mask R-CNN", 2017) in plain torch, with mmcv's ``roi_align`` semantics.

Same contract as ``mmcv.ops.roi_align(..., pool_mode="avg")`` (and detectron2's ``ROIAlign``):

* ``rois`` are ``[N, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` in input pixels, scaled by
  ``spatial_scale`` onto the feature map; with ``aligned=True`` they are shifted by half a pixel
  so that pixel centres line up (mmdet's default), otherwise their size is clamped to >= 1.
* Each output bin averages ``grid_h x grid_w`` bilinear samples at the centres of a regular
  sub-grid. ``sampling_ratio > 0`` fixes the grid; ``0`` makes it adaptive per RoI,
  ``ceil(roi_size / output_size)`` (a zero-size RoI gives zeros, not NaN).
* A sample farther than one pixel outside the map contributes 0; one within it is clamped to the
  border, as mmcv's kernels do.

Bilinear weights factor into a row part and a column part. For a chunk of RoIs the samples of
each axis become a matrix over the window of the map they touch, the windows are gathered once
from a channels-last copy of the map, and each RoI pools as ``rows @ window @ columns^T`` (two
batched matmuls). Where the samples are sparse in a large window (a fixed ``sampling_ratio`` on
a large RoI) the samples themselves are gathered instead. RoIs are sorted by grid size so a
chunk pads little, and chunks are sized to bound memory (``max_elements``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mask_targets", "roi_align"]


def _axis_samples(
    start: Tensor, bin_size: Tensor, grid: Tensor, bins: int, max_grid: int, limit: int
) -> tuple[Tensor, Tensor]:
    """Rows (or columns) and weights of the bilinear samples along one axis.

    ``start``, ``bin_size``, ``grid``: ``[n]`` per RoI. Returns ``index [n, bins, max_grid, 2]``
    (low and high neighbour) and ``weight`` of the same shape, zero for padded samples
    (``k >= grid``) and for samples outside ``[-1, limit]``.
    """
    k = torch.arange(max_grid, device=start.device, dtype=start.dtype)
    p = torch.arange(bins, device=start.device, dtype=start.dtype)
    g = grid.to(start.dtype).clamp(min=1)[:, None, None]
    # same evaluation order as the kernel: (start + p * bin) + (k + 0.5) * bin / grid
    pos = (start[:, None, None] + p[None, :, None] * bin_size[:, None, None]) + (
        (k[None, None, :] + 0.5) * bin_size[:, None, None]
    ) / g
    valid = (pos >= -1.0) & (pos <= limit) & (k[None, None, :] < grid[:, None, None])
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    at_edge = low >= limit - 1
    low = torch.where(at_edge, torch.full_like(low, limit - 1), low)
    high = torch.where(at_edge, low, low + 1)
    pos = torch.where(at_edge, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)
    w = valid.to(pos.dtype)
    index = torch.stack((low, high), dim=-1)
    weight = torch.stack(((1.0 - frac) * w, frac * w), dim=-1)
    return index, weight


def _axis_matrix(index: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """One axis's samples (:func:`_axis_samples`) as a matrix over a window of the map.

    Returns ``start [n]`` and ``matrix [n, bins, span]``: ``matrix[i, p, j]`` sums the bilinear
    weights that bin ``p`` of RoI ``i`` gives row (or column) ``start[i] + j``; the window spans
    every sample of positive weight (one row, all zeros, where a RoI has none).
    """
    n, bins = index.shape[:2]
    used = weight > 0
    lo = torch.where(used, index, torch.iinfo(index.dtype).max).flatten(1).amin(1)
    hi = torch.where(used, index, -1).flatten(1).amax(1)
    lo = torch.where(hi >= 0, lo, torch.zeros_like(lo))
    span = int((hi - lo).max().clamp(min=0)) + 1
    rel = (index - lo.view(n, 1, 1, 1)).clamp(0, span - 1).reshape(n, bins, -1)
    matrix = weight.new_zeros((n, bins, span)).scatter_add(2, rel, weight.reshape(n, bins, -1))
    return lo, matrix


def roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int = 0,
    aligned: bool = True,
    max_elements: int = 1 << 21,
) -> Tensor:
    """Average-pooled RoIAlign.

    Args:
        features: ``[B, C, H, W]`` feature map.
        rois: ``[N, 5]`` boxes ``(batch_index, x1, y1, x2, y2)`` in input pixels.
        output_size: ``ph`` or ``(ph, pw)``.
        spatial_scale: feature-map pixels per input pixel (``1 / stride``).
        sampling_ratio: samples per bin along each axis; ``0`` is adaptive.
        aligned: shift boxes by -0.5 feature pixels (mmdet's ``aligned=True``).
        max_elements: bound on the gathered samples held at once (memory, not results).

    Returns:
        ``[N, C, ph, pw]``, in the features' dtype.
    """
    if features.ndim != 4:
        raise ValueError(f"features must be [B, C, H, W], got {tuple(features.shape)}")
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be [N, 5], got {tuple(rois.shape)}")
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    b, c, h, w = features.shape
    n = rois.shape[0]
    out = features.new_zeros((n, c, ph, pw))
    if n == 0 or h == 0 or w == 0:
        return out

    boxes = rois.to(torch.float32)
    offset = 0.5 if aligned else 0.0
    x1 = boxes[:, 1] * spatial_scale - offset
    y1 = boxes[:, 2] * spatial_scale - offset
    roi_w = boxes[:, 3] * spatial_scale - offset - x1
    roi_h = boxes[:, 4] * spatial_scale - offset - y1
    if aligned:
        if bool(((roi_w < 0) | (roi_h < 0)).any()):
            raise ValueError("RoIs must have x2 >= x1 and y2 >= y1")
    else:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_h = roi_h / ph
    bin_w = roi_w / pw
    if sampling_ratio > 0:
        grid_h = torch.full((n,), sampling_ratio, dtype=torch.long, device=rois.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(bin_h).long()
        grid_w = torch.ceil(bin_w).long()
    count = (grid_h * grid_w).clamp(min=1).to(torch.float32)

    batch = boxes[:, 0].long()
    if bool(((batch < 0) | (batch >= b)).any()):
        raise ValueError(f"RoI batch indices must lie in [0, {b})")
    flat = features.permute(0, 2, 3, 1).reshape(b * h * w, c)  # channels last: [B*H*W, C]

    order = torch.argsort(grid_h * grid_w, stable=True)
    samples = (grid_h * grid_w)[order].clamp(min=1).tolist()
    per_sample = ph * pw * 4 * c
    pieces = []
    start = 0
    while start < n:
        # sorted by sample count, so the chunk's last RoI is its widest: grow while it fits
        stop = start + 1
        while stop < n and samples[stop] * per_sample * (stop + 1 - start) <= max_elements:
            stop += 1
        idx = order[start:stop]
        gh = int(grid_h[idx].max().clamp(min=1))
        gw = int(grid_w[idx].max().clamp(min=1))
        ry, wy = _axis_samples(y1[idx], bin_h[idx], grid_h[idx], ph, gh, h)  # [m, ph, gh, 2]
        rx, wx = _axis_samples(x1[idx], bin_w[idx], grid_w[idx], pw, gw, w)  # [m, pw, gw, 2]
        m = idx.shape[0]
        y0, my = _axis_matrix(ry, wy)  # [m], [m, ph, sh]
        x0, mx = _axis_matrix(rx, wx)  # [m], [m, pw, sw]
        sh, sw = my.shape[2], mx.shape[2]
        if sh * sw <= ph * gh * 2 * pw * gw * 2:
            # the window of the map the RoIs cover, gathered once (each pixel once, not once per
            # sample that touches it), then pooled as my @ window @ mx^T
            rows = (y0[:, None] + torch.arange(sh, device=y0.device)).clamp(max=h - 1)
            cols = (x0[:, None] + torch.arange(sw, device=x0.device)).clamp(max=w - 1)
            base = (batch[idx] * (h * w)).view(m, 1, 1)
            pix = base + rows.view(m, sh, 1) * w + cols.view(m, 1, sw)
            vals = flat.index_select(0, pix.reshape(-1)).to(torch.float32).view(m, sh, sw * c)
            t = torch.bmm(my, vals).view(m, ph, sw, c).transpose(1, 2).reshape(m, sw, ph * c)
            pooled = torch.bmm(mx, t).view(m, pw, ph, c).permute(0, 3, 2, 1)
        else:
            # sparse samples over a large window (a fixed sampling_ratio): gather the samples
            base = (batch[idx] * (h * w)).view(m, 1, 1, 1, 1, 1, 1)
            # flat pixel index of every (row sample, column sample): [m, ph, gh, 2, pw, gw, 2]
            pix = base + ry.view(m, ph, gh, 2, 1, 1, 1) * w + rx.view(m, 1, 1, 1, pw, gw, 2)
            vals = flat.index_select(0, pix.reshape(-1)).to(torch.float32)
            # weighted sum over the row samples, then over the column samples (batched matmuls)
            vals = vals.view(m * ph, gh * 2, pw * gw * 2 * c)
            rows = torch.bmm(wy.reshape(m * ph, 1, gh * 2), vals)  # [m*ph, 1, pw*gw*2*c]
            rows = rows.view(m, ph, pw, gw * 2, c).reshape(m * ph * pw, gw * 2, c)
            wxs = wx.reshape(m, 1, pw, gw * 2).expand(m, ph, pw, gw * 2).reshape(-1, 1, gw * 2)
            pooled = torch.bmm(wxs, rows).view(m, ph, pw, c).permute(0, 3, 1, 2)
        pieces.append((pooled / count[idx].view(m, 1, 1, 1)).to(out.dtype))
        start = stop
    # one gather back to the RoIs' order (chunk-wise index_put would copy the whole output's
    # gradient once per chunk in the backward pass)
    return torch.cat(pieces)[torch.argsort(order)]


def mask_targets(masks: Tensor, gt_index: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Mask R-CNN's training targets (mmdet ``mask_target`` on ``BitmapMasks``): for each box, the
    mask of its ground truth ``masks[gt_index]`` (``[G, H, W]``, image pixels) cropped to the box
    and resized to ``size x size`` by RoIAlign (adaptive sampling, aligned), then binarised at 0.5.
    Returns ``[N, size, size]`` float 0/1."""
    if boxes.shape[0] == 0:
        return masks.new_zeros((0, size, size), dtype=torch.float32)
    rois = torch.cat((gt_index.to(boxes.dtype)[:, None], boxes), dim=1)
    crops = roi_align(masks[:, None].to(torch.float32), rois, size, 1.0)[:, 0]
    return (crops >= 0.5).to(torch.float32)
