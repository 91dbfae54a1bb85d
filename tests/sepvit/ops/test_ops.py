"""Tests for the torch-only detection primitives in ``sepvit.ops``.

Expected values are worked out by hand (arithmetic in the comments), never taken from the code.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sepvit.ops import (
    AnchorGenerator,
    BoxCoder,
    batched_nms,
    box_area,
    box_iou,
    clip_boxes,
    generalized_box_iou,
    giou_loss,
    match_anchors,
    nms,
    sample_pos_neg,
    sigmoid_focal_loss,
    smooth_l1_loss,
)
from sepvit.ops import boxes as boxes_mod


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# --------------------------------------------------------------------------- box_area / clip


def test_box_area_basic_and_degenerate() -> None:
    boxes = _t(
        [
            [0, 0, 10, 5],  # 10 * 5 = 50
            [2, 3, 6, 11],  # 4 * 8 = 32
            [5, 5, 5, 9],  # zero width -> 0
            [5, 5, 3, 8],  # inverted x (w = -2 clamped to 0) -> 0, not -6
        ]
    )
    torch.testing.assert_close(box_area(boxes), torch.tensor([50.0, 32.0, 0.0, 0.0]))


def test_clip_boxes_uses_height_width_order() -> None:
    # size = (height=25, width=15): x is clamped to [0, 15], y to [0, 25].
    boxes = _t([[-5, -3, 20, 30], [1, 2, 3, 4], [16, 26, 40, 50]])
    expected = _t([[0, 0, 15, 25], [1, 2, 3, 4], [15, 25, 15, 25]])
    torch.testing.assert_close(clip_boxes(boxes, (25, 15)), expected)


def test_clip_boxes_keeps_leading_dims() -> None:
    boxes = torch.full((2, 3, 4), -1.0)
    boxes[..., 2:] = 100.0
    out = clip_boxes(boxes, (40, 30))  # (h, w)
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out, _t([[0, 0, 30, 40]]).expand(2, 3, 4))


# --------------------------------------------------------------------------- IoU / GIoU


def test_box_iou_hand_computed_pairs() -> None:
    a = _t([[0, 0, 10, 10]])
    b = _t(
        [
            [0, 0, 10, 10],  # identical -> 1
            [20, 0, 30, 10],  # disjoint -> 0
            [5, 5, 15, 15],  # inter 5*5 = 25, union 100 + 100 - 25 = 175 -> 25/175
            [0, 0, 10, 20],  # inter 100, union 100 + 200 - 100 = 200 -> 0.5
            [10, 0, 20, 10],  # touching edge: inter 0 -> 0
        ]
    )
    iou = box_iou(a, b)
    assert iou.shape == (1, 5)
    expected = torch.tensor([[1.0, 0.0, 25.0 / 175.0, 0.5, 0.0]])
    torch.testing.assert_close(iou, expected)
    # Symmetric.
    torch.testing.assert_close(box_iou(b, a), expected.T)


def test_generalized_box_iou_hand_computed_pairs() -> None:
    a = _t([[0, 0, 10, 10]])
    b = _t(
        [
            # identical: iou 1, hull == union -> 1
            [0, 0, 10, 10],
            # disjoint: iou 0, union 200, hull [0,0,30,10] = 300 -> 0 - 100/300 = -1/3
            [20, 0, 30, 10],
            # partial: iou 25/175 = 1/7, hull [0,0,15,15] = 225 -> 1/7 - (225-175)/225 = -5/63
            [5, 5, 15, 15],
            # far apart: union 200, hull [0,0,100,100] = 10000 -> -(10000-200)/10000 = -0.98
            [90, 90, 100, 100],
        ]
    )
    expected = torch.tensor([[1.0, -1.0 / 3.0, 1.0 / 7.0 - 50.0 / 225.0, -0.98]])
    torch.testing.assert_close(generalized_box_iou(a, b), expected)
    # -5/63 written out to make sure the sign is right.
    assert math.isclose(1.0 / 7.0 - 50.0 / 225.0, -5.0 / 63.0)


def test_iou_and_giou_of_degenerate_boxes_are_zero_not_nan() -> None:
    pt = _t([[0, 0, 0, 0]])  # zero area
    line = _t([[3, 3, 3, 8]])  # zero width
    inv = _t([[10, 10, 0, 0]])  # inverted
    norm = _t([[0, 0, 10, 10]])
    for x in (pt, line, inv):
        for y in (pt, line, inv, norm):
            iou = box_iou(x, y)
            assert not torch.isnan(iou).any()
            assert iou.item() == 0.0
    # Two identical points: union 0 and hull 0 -> both terms 0.
    assert generalized_box_iou(pt, pt).item() == 0.0
    # Point inside a box: inter 0, union 100, hull 100 -> 0 - 0/100 = 0.
    assert generalized_box_iou(_t([[5, 5, 5, 5]]), norm).item() == 0.0
    # Point outside: union 100, hull [0,0,20,20] = 400 -> -(400-100)/400 = -0.75, finite.
    assert generalized_box_iou(_t([[20, 20, 20, 20]]), norm).item() == pytest.approx(-0.75)
    assert not torch.isnan(generalized_box_iou(inv, norm)).any()


def test_iou_empty_inputs_give_empty_matrices() -> None:
    empty = torch.zeros((0, 4))
    three = _t([[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 3, 3]])
    assert box_iou(empty, three).shape == (0, 3)
    assert box_iou(three, empty).shape == (3, 0)
    assert generalized_box_iou(empty, three).shape == (0, 3)


def test_giou_bounded_on_random_boxes() -> None:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    wh = torch.rand(50, 2, generator=g) * 50 + 1
    boxes = torch.cat((xy, xy + wh), dim=1)
    giou = generalized_box_iou(boxes, boxes)
    iou = box_iou(boxes, boxes)
    assert (giou <= iou + 1e-6).all()  # GIoU never exceeds IoU
    assert (giou >= -1 - 1e-6).all()
    torch.testing.assert_close(torch.diagonal(giou), torch.ones(50))


# --------------------------------------------------------------------------- BoxCoder


def test_box_coder_encode_hand_computed() -> None:
    # anchor centre (5, 5), w = h = 10; box [2,4,22,9]: w 20, h 5, centre (12, 6.5)
    anchors = _t([[0, 0, 10, 10]])
    boxes = _t([[2, 4, 22, 9]])
    # dx = (12-5)/10 = 0.7, dy = (6.5-5)/10 = 0.15, dw = log(20/10), dh = log(5/10)
    expected = torch.tensor([[0.7, 0.15, math.log(2.0), math.log(0.5)]])
    torch.testing.assert_close(BoxCoder().encode(anchors, boxes), expected)
    # With weights (10, 10, 5, 5) every component is scaled by its weight.
    weighted = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)).encode(anchors, boxes)
    expected_w = torch.tensor([[7.0, 1.5, 5 * math.log(2.0), 5 * math.log(0.5)]])
    torch.testing.assert_close(weighted, expected_w)


def test_box_coder_decode_hand_computed() -> None:
    # Inverse of the case above: deltas (0.7, 0.15, log 2, log 0.5) on [0,0,10,10].
    deltas = torch.tensor([[0.7, 0.15, math.log(2.0), math.log(0.5)]])
    out = BoxCoder().decode(deltas, _t([[0, 0, 10, 10]]))
    torch.testing.assert_close(out, _t([[2, 4, 22, 9]]))
    # Zero deltas decode to the anchor itself.
    anchors = _t([[3, 4, 7, 12], [-10, -20, 30, 40]])
    torch.testing.assert_close(BoxCoder().decode(torch.zeros(2, 4), anchors), anchors)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder_round_trip_random(weights: tuple[float, float, float, float]) -> None:
    g = torch.Generator().manual_seed(1)
    n = 500

    def rand_boxes() -> torch.Tensor:
        xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 800 - 100
        wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 300 + 10
        return torch.cat((xy, xy + wh), dim=1)

    anchors, boxes = rand_boxes(), rand_boxes()
    coder = BoxCoder(weights=weights)
    deltas = coder.encode(anchors, boxes)
    assert deltas.shape == (n, 4)
    # Sides in [10, 310]: |log(w ratio)| <= log(31) < log(1000/16) = log(62.5), so the clamp
    # does not bite on these.
    torch.testing.assert_close(coder.decode(deltas, anchors), boxes, atol=1e-4, rtol=0)


def test_box_coder_round_trip_keeps_leading_dims() -> None:
    anchors = _t([[0, 0, 10, 10], [5, 5, 25, 15]]).expand(3, 2, 4)
    boxes = _t([[1, 2, 8, 9], [0, 0, 30, 30]]).expand(3, 2, 4)
    coder = BoxCoder()
    deltas = coder.encode(anchors, boxes)
    assert deltas.shape == (3, 2, 4)
    torch.testing.assert_close(coder.decode(deltas, anchors), boxes, atol=1e-4, rtol=0)


def test_box_coder_clamp_prevents_overflow() -> None:
    anchors = _t([[0, 0, 10, 10]])
    deltas = torch.tensor([[0.0, 0.0, 1e4, 1e4]])  # exp(1e4) would be inf
    out = BoxCoder().decode(deltas, anchors)
    assert torch.isfinite(out).all()
    # dw, dh clamped to log(1000/16) -> w = h = 10 * 62.5 = 625 around centre (5, 5):
    # [5 - 312.5, 5 - 312.5, 5 + 312.5, 5 + 312.5]
    torch.testing.assert_close(out, _t([[-307.5, -307.5, 317.5, 317.5]]))
    # A custom clamp: log(2) -> w = h = 20 -> [-5, -5, 15, 15].
    out2 = BoxCoder(clamp=math.log(2.0)).decode(deltas, anchors)
    torch.testing.assert_close(out2, _t([[-5, -5, 15, 15]]))
    # Sanity check that the clamp is what keeps it finite.
    unclamped = BoxCoder(clamp=math.inf).decode(deltas, anchors)
    assert torch.isinf(unclamped).any()


# --------------------------------------------------------------------------- NMS


def _reference_nms(boxes: list[list[float]], scores: list[float], thr: float) -> list[int]:
    """Slow greedy NMS in plain Python (stable for equal scores: lower index first)."""

    def iou(p: list[float], q: list[float]) -> float:
        iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        inter = iw * ih
        area_p = max(0.0, p[2] - p[0]) * max(0.0, p[3] - p[1])
        area_q = max(0.0, q[2] - q[0]) * max(0.0, q[3] - q[1])
        union = area_p + area_q - inter
        return inter / union if union > 0 else 0.0

    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if all(iou(boxes[i], boxes[k]) <= thr for k in keep):
            keep.append(i)
    return keep


def test_nms_hand_built_threshold_is_strict() -> None:
    boxes = _t(
        [
            [50, 50, 60, 60],  # 0: D, disjoint from everything
            [1, 0, 11, 10],  # 1: B, IoU with A = 90 / (200 - 90) = 0.818 > 0.5 -> suppressed
            [0, 0, 10, 10],  # 2: A, best score
            [0, 0, 10, 20],  # 3: C, IoU with A = 100 / 200 = 0.5 exactly -> NOT suppressed
        ]
    )
    scores = torch.tensor([0.7, 0.8, 0.9, 0.6])
    keep = nms(boxes, scores, 0.5)
    assert keep.dtype == torch.long
    # Kept in decreasing score order: A (0.9), D (0.7), C (0.6).
    assert keep.tolist() == [2, 0, 3]
    # Just below 0.5 the exactly-0.5 box goes too.
    assert nms(boxes, scores, 0.49).tolist() == [2, 0]
    # Above 0.818 nothing overlaps enough: all kept, by score A, B, D, C.
    assert nms(boxes, scores, 0.9).tolist() == [2, 1, 0, 3]


def test_nms_suppressed_box_does_not_suppress() -> None:
    # X-Y: inter 6*10 = 60, union 140 -> 0.43 > 0.3 (Y goes);
    # X-Z: inter 2*10 = 20, union 180 -> 0.11 (Z stays);
    # Y-Z: 0.43, but Y was already suppressed so it cannot remove Z.
    boxes = _t([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.3).tolist() == [0, 2]


def test_nms_empty_and_single() -> None:
    keep = nms(torch.zeros((0, 4)), torch.zeros(0), 0.5)
    assert keep.dtype == torch.long
    assert keep.shape == (0,)
    assert nms(_t([[0, 0, 1, 1]]), torch.tensor([0.3]), 0.5).tolist() == [0]


@pytest.mark.parametrize("thr", [0.0, 0.1, 0.3, 0.5, 0.7, 0.95])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_matches_python_reference(thr: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = 200
    # Clustered boxes so that plenty of suppression happens.
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 40 + 1
    boxes = torch.cat((xy, xy + wh), dim=1)
    scores = torch.rand(n, generator=g)
    expected = _reference_nms(boxes.tolist(), scores.tolist(), thr)
    keep = nms(boxes, scores, thr)
    assert keep.tolist() == expected
    # Sanity: the case is not trivial (something suppressed, something kept).
    if thr < 0.95:
        assert 0 < len(expected) < n


def test_nms_ties_resolved_by_index_like_reference() -> None:
    g = torch.Generator().manual_seed(3)
    n = 200
    xy = torch.rand(n, 2, generator=g) * 60
    wh = torch.rand(n, 2, generator=g) * 30 + 1
    boxes = torch.cat((xy, xy + wh), dim=1)
    scores = torch.randint(0, 5, (n,), generator=g).float()  # many equal scores
    for thr in (0.2, 0.5):
        assert nms(boxes, scores, thr).tolist() == _reference_nms(
            boxes.tolist(), scores.tolist(), thr
        )


# --------------------------------------------------------------------------- batched NMS


def test_batched_nms_classes_do_not_suppress_each_other() -> None:
    box = [0.0, 0.0, 10.0, 10.0]
    boxes = _t([box, box])
    scores = torch.tensor([0.9, 0.8])
    # Different labels: both kept (IoU 1 but different classes).
    assert batched_nms(boxes, scores, torch.tensor([0, 1]), 0.5).tolist() == [0, 1]
    # Same label: the lower-scoring duplicate is suppressed.
    assert batched_nms(boxes, scores, torch.tensor([3, 3]), 0.5).tolist() == [0]


def test_batched_nms_mixed_classes() -> None:
    boxes = _t(
        [
            [0, 0, 10, 10],  # 0: class 7, score .5
            [0, 0, 10, 10],  # 1: class 2, score .6
            [1, 0, 11, 10],  # 2: class 7, score .9 -> IoU with 0 is 0.818: suppresses 0
            [1, 0, 11, 10],  # 3: class 2, score .4 -> suppressed by 1
            [100, 100, 110, 110],  # 4: class 2, score .1, disjoint -> kept
        ]
    )
    scores = torch.tensor([0.5, 0.6, 0.9, 0.4, 0.1])
    labels = torch.tensor([7, 2, 7, 2, 2])
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [2, 1, 4]


def test_batched_nms_empty() -> None:
    keep = batched_nms(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)
    assert keep.dtype == torch.long
    assert keep.shape == (0,)


def test_batched_nms_matches_per_class_reference() -> None:
    g = torch.Generator().manual_seed(4)
    n = 200
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 40 + 1
    boxes = torch.cat((xy, xy + wh), dim=1)
    scores = torch.rand(n, generator=g)
    labels = torch.randint(0, 4, (n,), generator=g)
    b, s, lab = boxes.tolist(), scores.tolist(), labels.tolist()
    kept: list[int] = []
    for c in sorted(set(lab)):
        idx = [i for i in range(n) if lab[i] == c]
        kept += [idx[j] for j in _reference_nms([b[i] for i in idx], [s[i] for i in idx], 0.5)]
    expected = sorted(kept, key=lambda i: (-s[i], i))
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == expected


# --------------------------------------------------------------------------- anchors


def test_anchor_generator_cell_anchors() -> None:
    gen = AnchorGenerator(strides=(8,))
    assert gen.num_anchors == 9
    cell = gen.cell_anchors(8)
    assert cell.shape == (9, 4)
    # Every anchor is centred on the origin.
    torch.testing.assert_close(cell[:, :2] + cell[:, 2:], torch.zeros(9, 2))
    w = cell[:, 2] - cell[:, 0]
    h = cell[:, 3] - cell[:, 1]
    # Ratio-major, scale-minor: index = ratio_index * 3 + scale_index.
    scales = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    for ri, ratio in enumerate((0.5, 1.0, 2.0)):
        for si, scale in enumerate(scales):
            a = ri * 3 + si
            # area = (octave_base 4 * stride 8 * scale)^2 = (32 * scale)^2
            assert (w[a] * h[a]).item() == pytest.approx((4 * 8 * scale) ** 2, rel=1e-5)
            # aspect ratio h / w
            assert (h[a] / w[a]).item() == pytest.approx(ratio, rel=1e-5)


def test_anchor_generator_first_cell_and_ordering() -> None:
    # mmdet's default centres anchors on cell corners: cell (x, y) at (8x, 8y)
    (corner,) = AnchorGenerator(strides=(8,)).grid_anchors([(2, 3)])
    torch.testing.assert_close(corner[3], torch.tensor([-16.0, -16.0, 16.0, 16.0]))
    gen = AnchorGenerator(strides=(8,), center_offset=0.5)  # cell centres (the v1 demo models)
    (level,) = gen.grid_anchors([(2, 3)])
    torch.testing.assert_close(level, corner + 4.0)
    assert level.shape == (2 * 3 * 9, 4)
    # Cell (0, 0) centre is (0.5 * 8, 0.5 * 8) = (4, 4); ratio 1 (index 1), scale 1 (index 0)
    # -> anchor 1 * 3 + 0 = 3, size 4 * 8 = 32 -> [4-16, 4-16, 4+16, 4+16].
    torch.testing.assert_close(level[3], torch.tensor([-12.0, -12.0, 20.0, 20.0]))
    cell00 = level[0:9]
    # Row-major over cells: cell (0, 1) comes next and is shifted +8 in x only.
    torch.testing.assert_close(level[9:18], cell00 + torch.tensor([8.0, 0.0, 8.0, 0.0]))
    torch.testing.assert_close(level[18:27], cell00 + torch.tensor([16.0, 0.0, 16.0, 0.0]))
    # Cell (1, 0) starts after a full row of W = 3 cells: index 27, shifted +8 in y.
    torch.testing.assert_close(level[27:36], cell00 + torch.tensor([0.0, 8.0, 0.0, 8.0]))
    # Cell (1, 2): centre ((2 + .5) * 8, (1 + .5) * 8) = (20, 12).
    centres = (level[45:54, :2] + level[45:54, 2:]) / 2
    torch.testing.assert_close(centres, torch.tensor([[20.0, 12.0]]).expand(9, 2))


def test_anchor_generator_levels_and_counts() -> None:
    gen = AnchorGenerator(strides=(8, 16))
    sizes = [(2, 3), (1, 2)]
    levels = gen.grid_anchors(sizes)
    assert [lv.shape[0] for lv in levels] == [2 * 3 * 9, 1 * 2 * 9]  # 54, 18
    flat = gen(sizes)
    assert flat.shape == (54 + 18, 4)
    # Level 2 starts at 54: stride 16, cell (0,0) centre (0, 0) (mmdet's offset 0), ratio-1
    # scale-1 size 4*16 = 64 -> [-32, -32, 32, 32].
    torch.testing.assert_close(flat[54 + 3], torch.tensor([-32.0, -32.0, 32.0, 32.0]))
    torch.testing.assert_close(flat[:54], levels[0])
    # A second call with other sizes must not return the cached result of the first.
    assert gen([(1, 1), (1, 1)]).shape == (18, 4)
    torch.testing.assert_close(gen(sizes), flat)


def test_anchor_generator_default_total_count() -> None:
    gen = AnchorGenerator()
    # 512x512 input: P3..P7 maps 64, 32, 16, 8, 4 -> (4096+1024+256+64+16) * 9 = 5456 * 9
    sizes = [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
    anchors = gen(sizes)
    assert anchors.shape == (49104, 4)
    # Widest anchor: P7, scale 2^(2/3), ratio 0.5 (w = size / sqrt(0.5)):
    # 4 * 128 * 2^(2/3) / sqrt(0.5) ~= 1149.4
    side = anchors[:, 2] - anchors[:, 0]
    assert side.max().item() == pytest.approx(4 * 128 * 2 ** (2 / 3) / 0.5**0.5, rel=1e-5)


# --------------------------------------------------------------------------- matching


def test_match_anchors_thresholds_and_low_quality() -> None:
    gts = _t(
        [
            [0, 0, 10, 10],  # gt 0, area 100
            [200, 200, 206, 210],  # gt 1, area 60
            [1000, 1000, 1010, 1010],  # gt 2, overlaps no anchor
        ]
    )
    anchors = _t(
        [
            [0, 0, 10, 10],  # a0: IoU(gt0) = 1 -> 0
            [0, 0, 10, 20],  # a1: 100 / 200 = 0.5 (>= 0.5) -> 0
            [0, 0, 10, 24],  # a2: 100 / 240 = 0.417 -> ignore -2
            [0, 0, 10, 25],  # a3: 100 / 250 = 0.4 (not < 0.4) -> ignore -2
            [0, 0, 10, 30],  # a4: 100 / 300 = 0.333 -> background -1
            [100, 100, 110, 110],  # a5: IoU 0 -> -1
            [200, 200, 210, 220],  # a6: IoU(gt1) = 60 / 200 = 0.3, gt1's best -> low quality 1
            [200, 200, 210, 240],  # a7: IoU(gt1) = 60 / 400 = 0.15 -> -1
            [200, 200, 210, 220],  # a8: duplicate of a6, ties for gt1's best -> 1 too
        ]
    )
    # gt 2 has best IoU 0: it must not claim any anchor.
    matches = match_anchors(anchors, gts)
    assert matches.dtype == torch.long
    assert matches.tolist() == [0, 0, -2, -2, -1, -1, 1, -1, 1]
    # Without the low-quality rule a6/a8 are just background (0.3 < 0.4).
    no_lq = match_anchors(anchors, gts, allow_low_quality=False)
    assert no_lq.tolist() == [0, 0, -2, -2, -1, -1, -1, -1, -1]


def test_match_anchors_picks_best_gt_and_custom_thresholds() -> None:
    anchors = _t([[0, 0, 10, 10], [20, 0, 30, 10], [0, 0, 10, 30]])
    gts = _t([[20, 0, 30, 10], [0, 0, 10, 10]])
    # a0 -> gt1 (IoU 1), a1 -> gt0 (IoU 1), a2: IoU(gt1) = 100/300 = 0.333.
    assert match_anchors(anchors, gts).tolist() == [1, 0, -1]
    # fg 0.3 makes a2 foreground, bg 0.2 below that.
    assert match_anchors(anchors, gts, fg_iou=0.3, bg_iou=0.2).tolist() == [1, 0, 1]
    # fg 0.5 / bg 0.3: 0.333 is in between -> ignore.
    assert match_anchors(anchors, gts, fg_iou=0.5, bg_iou=0.3).tolist() == [1, 0, -2]


def test_match_anchors_empty_gt_is_all_background() -> None:
    anchors = _t([[0, 0, 10, 10], [5, 5, 15, 15], [0, 0, 1, 1]])
    matches = match_anchors(anchors, torch.zeros((0, 4)))
    assert matches.dtype == torch.long
    assert matches.tolist() == [-1, -1, -1]


def test_match_anchors_min_pos_iou_bounds_the_low_quality_rule() -> None:
    gts = _t([[0, 0, 10, 10], [100, 100, 110, 110]])
    anchors = _t(
        [
            [0, 0, 10, 30],  # IoU(gt0) = 100 / 300 = 0.333: gt0's best
            [100, 100, 110, 140],  # IoU(gt1) = 100 / 400 = 0.25: gt1's best
            [50, 50, 60, 60],  # overlaps nothing
        ]
    )
    # Mask R-CNN's RPN: pos >= 0.7, neg < 0.3; best anchors positive from 0.3 on.
    rpn = match_anchors(anchors, gts, 0.7, 0.3, True, min_pos_iou=0.3)
    assert rpn.tolist() == [0, -1, -1]  # 0.25 < 0.3: gt1's best stays background
    assert match_anchors(anchors, gts, 0.7, 0.3, True, min_pos_iou=0.2).tolist() == [0, 1, -1]


def test_sample_pos_neg_respects_the_budget_and_never_takes_ignored() -> None:
    torch.manual_seed(0)
    # 6 foreground (gt 0/1), 3 ignored, 20 background
    matches = torch.tensor([0, 1, 0, 1, 0, 1] + [-2] * 3 + [-1] * 20)
    pos, neg = sample_pos_neg(matches, 8, 0.5)  # at most int(8 * 0.5) = 4 positives
    assert pos.numel() == 4 and neg.numel() == 4
    assert (matches[pos] >= 0).all() and (matches[neg] == -1).all()
    assert len(set(pos.tolist())) == 4 and len(set(neg.tolist())) == 4
    # few positives: the negatives fill the batch (2 + 6 = 8)
    few = torch.tensor([3, -1, -1, -2, -1, -1, -1, -1, -1, 5])
    pos, neg = sample_pos_neg(few, 8, 0.5)
    assert sorted(pos.tolist()) == [0, 9] and neg.numel() == 6
    assert 3 not in neg.tolist()
    # fewer than asked of both: everything that may be sampled, once
    pos, neg = sample_pos_neg(torch.tensor([-1, 0, -2]), 512, 0.25)
    assert pos.tolist() == [1] and neg.tolist() == [0]
    # the draw is random (different subsets across calls) but follows torch's generator
    torch.manual_seed(1)
    a = sample_pos_neg(matches, 8, 0.5)
    torch.manual_seed(1)
    b = sample_pos_neg(matches, 8, 0.5)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    draws = {tuple(sorted(sample_pos_neg(matches, 8, 0.5)[1].tolist())) for _ in range(10)}
    assert len(draws) > 1


# --------------------------------------------------------------------------- losses


def test_sigmoid_focal_loss_hand_computed() -> None:
    log2 = math.log(2.0)
    logits = torch.tensor([0.0, 0.0, 2.0])
    targets = torch.tensor([1.0, 0.0, 0.0])
    # logit 0, target 1: ce = log 2, p_t = 0.5, (1 - p_t)^2 = 0.25, alpha_t = 0.25
    #   -> 0.25 * 0.25 * log 2
    # logit 0, target 0: same ce/p_t, alpha_t = 0.75 -> 0.75 * 0.25 * log 2
    # logit 2, target 0: p = 1/(1+e^-2), ce = log(1 + e^2), 1 - p_t = p -> 0.75 * p^2 * ce
    p2 = 1.0 / (1.0 + math.exp(-2.0))
    expected = torch.tensor(
        [0.25 * 0.25 * log2, 0.75 * 0.25 * log2, 0.75 * p2**2 * math.log1p(math.exp(2.0))]
    )
    out = sigmoid_focal_loss(logits, targets)
    assert out.shape == logits.shape
    torch.testing.assert_close(out, expected)


def test_sigmoid_focal_loss_gamma0_no_alpha_is_bce() -> None:
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 7, generator=g) * 3
    targets = (torch.rand(4, 7, generator=g) > 0.5).float()
    out = sigmoid_focal_loss(logits, targets, alpha=-1.0, gamma=0.0)
    torch.testing.assert_close(
        out, F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    )
    # And written out: -t log p - (1 - t) log(1 - p).
    p = torch.sigmoid(logits.double())
    manual = -(targets * torch.log(p) + (1 - targets) * torch.log1p(-p))
    torch.testing.assert_close(out.double(), manual, atol=1e-5, rtol=1e-5)
    # gamma 0 with alpha 0.25 is alpha_t-weighted BCE.
    weighted = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=0.0)
    alpha_t = 0.25 * targets + 0.75 * (1 - targets)
    torch.testing.assert_close(weighted, alpha_t * out)


def test_sigmoid_focal_loss_stable_for_large_logits() -> None:
    # Confidently wrong: ce ~= 100, p_t ~= 0 so the modulating factor ~= 1.
    logits = torch.tensor([100.0, -100.0])
    targets = torch.tensor([0.0, 1.0])
    out = sigmoid_focal_loss(logits, targets)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.tensor([0.75 * 100.0, 0.25 * 100.0]))
    # Confidently right: ~0.
    right = sigmoid_focal_loss(torch.tensor([100.0, -100.0]), torch.tensor([1.0, 0.0]))
    assert torch.isfinite(right).all()
    assert right.abs().max().item() < 1e-30


def test_smooth_l1_loss_both_branches() -> None:
    beta = 1.0 / 9
    pred = torch.tensor([0.05, -0.05, 1.0, -2.0, beta])
    target = torch.zeros(5)
    # |d| = 0.05 < 1/9: 0.5 * 0.0025 / (1/9) = 0.01125 (both signs)
    # |d| = 1: 1 - 0.5/9 = 17/18; |d| = 2: 2 - 1/18 = 35/18
    # |d| = beta exactly: linear branch, beta - beta/2 = beta/2 (quadratic gives the same)
    expected = torch.tensor([0.01125, 0.01125, 17.0 / 18.0, 35.0 / 18.0, beta / 2])
    torch.testing.assert_close(smooth_l1_loss(pred, target), expected)
    # beta = 1: 0.5 -> 0.5 * 0.25 = 0.125; 3 -> 3 - 0.5 = 2.5
    torch.testing.assert_close(
        smooth_l1_loss(torch.tensor([1.5, 5.0]), torch.tensor([1.0, 2.0]), beta=1.0),
        torch.tensor([0.125, 2.5]),
    )
    # beta = 0 is plain L1.
    torch.testing.assert_close(
        smooth_l1_loss(torch.tensor([0.01, -3.0]), torch.zeros(2), beta=0.0),
        torch.tensor([0.01, 3.0]),
    )


def test_giou_loss_values() -> None:
    pred = _t([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    target = _t([[0, 0, 10, 10], [20, 0, 30, 10], [5, 5, 15, 15]])
    out = giou_loss(pred, target)
    assert out.shape == (3,)
    # identical -> 1 - 1 = 0; disjoint -> 1 - (-1/3) = 4/3 > 1; partial -> 1 - (-5/63) = 68/63
    torch.testing.assert_close(out, torch.tensor([0.0, 4.0 / 3.0, 68.0 / 63.0]), atol=1e-5, rtol=0)
    assert out[1].item() > 1.0
    # Agrees with the diagonal of the pairwise GIoU.
    torch.testing.assert_close(
        out, 1 - torch.diagonal(generalized_box_iou(pred, target)), atol=1e-5, rtol=0
    )


def test_giou_loss_has_finite_gradients() -> None:
    pred = _t([[0, 0, 10, 10], [20, 0, 30, 10]]).requires_grad_(True)
    target = _t([[2, 1, 12, 11], [0, 0, 10, 10]])
    giou_loss(pred, target).sum().backward()
    assert pred.grad is not None
    assert torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum().item() > 0


def test_anchor_generator_copies_and_pickles() -> None:
    import copy
    import pickle

    gen = AnchorGenerator(strides=(8,))
    first = gen([(2, 2)])
    for clone in (copy.deepcopy(gen), pickle.loads(pickle.dumps(gen))):
        assert torch.equal(clone([(2, 2)]), first)


def test_batched_nms_split_path_keeps_the_same_boxes() -> None:
    g = torch.Generator().manual_seed(5)
    xy = torch.rand(300, 2, generator=g) * 50
    boxes = torch.cat((xy, xy + 5 + torch.rand(300, 2, generator=g) * 20), 1)
    scores = torch.rand(300, generator=g)
    idxs = torch.randint(0, 4, (300,), generator=g)
    one = batched_nms(boxes, scores, idxs, 0.5)
    per_class = batched_nms(boxes, scores, idxs, 0.5, split=10)
    assert torch.equal(one, per_class) and 20 < len(one) < 300


def test_nms_across_row_chunks_matches_the_full_iou_matrix() -> None:
    """More boxes than one chunk of the overlap matrix (NMS_CHUNK rows), degenerate boxes among
    them: the same kept list as a greedy pass over the full ``box_iou`` matrix."""
    g = torch.Generator().manual_seed(4)
    n = 2 * boxes_mod.NMS_CHUNK + 277
    xy = torch.rand(n, 2, generator=g) * 120
    wh = torch.rand(n, 2, generator=g) * 30
    wh[::17] = 0.0  # empty boxes: IoU 0 with everything, never suppressed
    boxes = torch.cat((xy, xy + wh), dim=1)
    scores = torch.rand(n, generator=g)
    for thr in (0.3, 0.7):
        order = torch.argsort(scores, descending=True, stable=True)
        over = box_iou(boxes[order], boxes[order]) > thr
        removed = torch.zeros(n, dtype=torch.bool)
        want = []
        for i in range(n):
            if not removed[i]:
                want.append(int(order[i]))
                removed |= over[i] & (torch.arange(n) > i)
        got = nms(boxes, scores, thr).tolist()
        assert got == want and n // 4 < len(got) < n
