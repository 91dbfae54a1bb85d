"""``sepvit.ops.roi_align`` against a direct, loop-by-loop transcription of mmcv's CPU kernel
(``roi_align_reference`` in ``tools/golden/openmmlab.py``, the ``mmcv._ext`` stand-in that the
OpenMMLab goldens were produced with)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from sepvit.ops.roi_align import mask_targets, roi_align


@pytest.fixture(scope="module")
def reference() -> ModuleType:
    path = Path(__file__).resolve().parents[3] / "tools" / "golden" / "openmmlab.py"
    spec = importlib.util.spec_from_file_location("openmmlab_golden_tool", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _rois() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(24):
        x1, y1 = (torch.rand(2, generator=g) * torch.tensor([80.0, 60.0]) - 10).tolist()
        w, h = (torch.rand(2, generator=g) ** 2 * torch.tensor([90.0, 70.0])).tolist()
        rows.append([i % 2, x1, y1, x1 + w, y1 + h])
    rows += [
        [0, 3.0, 3.0, 3.0, 3.0],  # empty: zeros, not NaN
        [1, -30.0, -30.0, -20.0, -25.0],  # entirely outside
        [0, 60.0, 40.0, 80.0, 70.0],  # over the bottom-right border
        [1, 0.0, 0.0, 400.0, 8.0],  # long and thin: a wide adaptive grid
        [0, 0.0, 0.0, 1.5, 1.5],  # smaller than a bin
    ]
    return torch.tensor(rows)


@pytest.mark.parametrize(
    ("size", "scale", "sampling", "aligned"),
    [(7, 0.25, 0, True), (14, 0.125, 0, True), (7, 0.25, 2, True), (7, 0.25, 0, False)],
)
def test_roi_align_matches_mmcv_kernel(
    reference: ModuleType, size: int, scale: float, sampling: int, aligned: bool
) -> None:
    feats = torch.randn(2, 3, 13, 17, generator=torch.Generator().manual_seed(1))
    rois = _rois()
    ours = roi_align(feats, rois, size, scale, sampling, aligned, max_elements=4096)
    ref = reference.roi_align_reference(feats, rois, (size, size), scale, sampling, aligned)
    assert ours.shape == (len(rois), 3, size, size)
    assert torch.isfinite(ours).all()
    assert (ours - ref).abs().max() <= 1e-5
    assert ours[25].abs().max() == 0  # beyond one pixel outside the map
    if sampling == 0 and aligned:
        assert ours[24].abs().max() == 0  # an empty RoI has an empty adaptive grid
    assert ref.abs().max() > 1.0  # the comparison is not between zeros


@pytest.mark.parametrize("sampling", [0, 1])
def test_roi_align_window_and_sample_gathers_match_the_kernel(
    reference: ModuleType, sampling: int
) -> None:
    """Large RoIs on a large map: the adaptive grid pools a gathered window of the map, a fixed
    one-sample grid gathers its 4 x 49 samples instead (the window would be 60 x 60)."""
    feats = torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(2))
    rois = torch.tensor([[0, 2.0, 3.0, 61.5, 62.0], [0, 10.0, 0.0, 40.0, 63.0]])
    ours = roi_align(feats, rois, 7, 1.0, sampling)
    ref = reference.roi_align_reference(feats, rois, (7, 7), 1.0, sampling, True)
    assert (ours - ref).abs().max() <= 1e-5
    assert ref.abs().max() > 0.1


def test_roi_align_chunking_does_not_change_results() -> None:
    feats = torch.randn(1, 4, 20, 20, generator=torch.Generator().manual_seed(2))
    rois = _rois()
    rois[:, 0] = 0
    small = roi_align(feats, rois, 7, 0.5, max_elements=1)
    large = roi_align(feats, rois, 7, 0.5, max_elements=1 << 30)
    # the same sums; only the BLAS kernel may change with the batch count (on an Intel host
    # with AMX, bmm of one RoI and of all of them differ by 1 ulp)
    assert torch.allclose(small, large, rtol=0, atol=1e-6)
    assert small.abs().max() > 0.1


def test_roi_align_rejects_bad_rois() -> None:
    feats = torch.zeros(1, 2, 8, 8)
    with pytest.raises(ValueError, match="x2 >= x1"):
        roi_align(feats, torch.tensor([[0, 5.0, 5.0, 1.0, 9.0]]), 7, 1.0)
    with pytest.raises(ValueError, match="batch indices"):
        roi_align(feats, torch.tensor([[3, 0.0, 0.0, 1.0, 1.0]]), 7, 1.0)
    with pytest.raises(ValueError, match=r"\[N, 5\]"):
        roi_align(feats, torch.zeros(2, 4), 7, 1.0)


def test_mask_targets_are_crops_of_the_assigned_gt_mask() -> None:
    g = torch.Generator().manual_seed(3)
    masks = torch.rand((3, 96, 128), generator=g) > 0.5  # three gt masks of a 128x96 image
    # a 28x28 box on pixel edges: one pixel per bin, sampled at its centre -> the exact crop
    t = mask_targets(masks, torch.tensor([2]), torch.tensor([[40.0, 20.0, 68.0, 48.0]]), 28)
    assert torch.equal(t[0], masks[2, 20:48, 40:68].float())
    # a 56x56 box: each bin averages a 2x2 block (adaptive grid 2), binarised at 0.5
    t = mask_targets(masks, torch.tensor([1, 0]), torch.tensor([[10.0, 30.0, 66.0, 86.0]] * 2), 28)
    for row, gt in enumerate((1, 0)):
        blocks = masks[gt, 30:86, 10:66].float().reshape(28, 2, 28, 2).mean(dim=(1, 3))
        assert torch.equal(t[row], (blocks >= 0.5).float())
    assert mask_targets(masks, torch.zeros(0, dtype=torch.long), torch.zeros((0, 4)), 28).shape == (
        0,
        28,
        28,
    )
