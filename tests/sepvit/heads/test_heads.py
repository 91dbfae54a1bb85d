"""RetinaNet and Semantic FPN: shapes at odd sizes, training losses, decoding geometry."""

from __future__ import annotations

import pytest
import torch

from sepvit import create_model, list_models
from sepvit.heads import RetinaNet
from sepvit.ops import BoxCoder

SMALL_DET = {"fpn_channels": 32, "head_channels": 32, "head_convs": 1}
SMALL_SEG = {"fpn_channels": 32, "head_channels": 16}


def test_level_sizes_match_feature_maps() -> None:
    model = create_model("sepvit_lite", task="detect", num_classes=3, **SMALL_DET).eval()
    for hw in [(97, 131), (256, 256), (64, 200)]:
        x = torch.randn(1, 3, *hw)
        feats = model.neck(model.backbone.forward_intermediates(x, model.feature_indices))
        assert [tuple(f.shape[-2:]) for f in feats] == RetinaNet.level_sizes(hw)
        cls, reg = model.forward_raw(torch.randn(1, 3, *hw))
        n = sum(h * w * 9 for h, w in RetinaNet.level_sizes(hw))
        assert cls.shape == (1, n, 3) and reg.shape == (1, n, 4)


@pytest.mark.parametrize("hw", [(97, 131), (128, 160)])
def test_detector_train_and_infer(hw: tuple[int, int]) -> None:
    model = create_model("sepvit_lite", task="detect", num_classes=3, **SMALL_DET).train()
    targets = [
        {
            "boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [30.0, 5.0, 90.0, 40.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    losses = model(torch.randn(2, 3, *hw), targets)
    assert set(losses) == {"loss", "loss_cls", "loss_box"}
    losses["loss"].backward()
    assert model.bbox_head.retina_cls.weight.grad is not None
    model.eval()
    with torch.no_grad():
        dets = model(torch.randn(2, 3, *hw))
    assert len(dets) == 2 and set(dets[0]) == {"boxes", "scores", "labels"}


def test_detector_overfits_one_image() -> None:
    """A few steps on one image must reduce the loss (the training path is wired correctly)."""
    model = create_model("sepvit_lite", task="detect", num_classes=2, **SMALL_DET).train()
    x = torch.randn(1, 3, 96, 96)
    tgt = [{"boxes": torch.tensor([[20.0, 20.0, 70.0, 70.0]]), "labels": torch.tensor([1])}]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = None
    for _ in range(15):
        loss = model(x, tgt)["loss"]
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.7 * first


def test_postprocess_decodes_planted_detection_exactly() -> None:
    """Plant a confident prediction on one anchor: the output box is that anchor's decoded box."""
    model = create_model("sepvit_lite", task="detect", num_classes=3, **SMALL_DET).eval()
    hw = (128, 96)
    anchors = torch.cat(model.anchors(hw, torch.device("cpu")))
    n = anchors.shape[0]
    cls = torch.full((1, n, 3), -10.0)
    reg = torch.zeros(1, n, 4)
    idx = 40  # a ratio-1/2 anchor on P3 near the top-left
    cls[0, idx, 2] = 5.0
    target = torch.tensor([[10.0, 20.0, 50.0, 70.0]])
    reg[0, idx] = BoxCoder().encode(anchors[idx : idx + 1], target)[0]
    (det,) = model.postprocess(cls, reg, hw)
    assert det["labels"].tolist() == [2]
    assert torch.allclose(det["boxes"], target, atol=1e-4)
    assert torch.allclose(det["scores"], torch.sigmoid(torch.tensor([5.0])))


def test_postprocess_nms_and_limits() -> None:
    model = create_model("sepvit_lite", task="detect", num_classes=2, **SMALL_DET).eval()
    hw = (96, 96)
    n = sum(h * w * 9 for h, w in RetinaNet.level_sizes(hw))
    cls = torch.full((1, n, 2), -10.0)
    reg = torch.zeros(1, n, 4)
    anchors = torch.cat(model.anchors(hw, torch.device("cpu")))
    box = torch.tensor([[20.0, 20.0, 60.0, 60.0]])
    for i, score in [(3, 4.0), (12, 3.0)]:  # two anchors predicting the same box and class
        cls[0, i, 0] = score
        reg[0, i] = BoxCoder().encode(anchors[i : i + 1], box)[0]
    cls[0, 30, 1] = 2.0  # same box, other class: kept
    reg[0, 30] = BoxCoder().encode(anchors[30:31], box)[0]
    (det,) = model.postprocess(cls, reg, hw)
    assert sorted(det["labels"].tolist()) == [0, 1]
    (det,) = model.postprocess(cls, reg, hw, max_detections=1)
    assert det["labels"].tolist() == [0]
    # sigmoid(4) = 0.982, sigmoid(3) = 0.953, sigmoid(2) = 0.881: only the best passes 0.97
    (det,) = model.postprocess(cls, reg, hw, score_thresh=0.97)
    assert det["labels"].tolist() == [0]
    assert abs(det["scores"].item() - 0.98201) < 1e-4


@pytest.mark.parametrize("hw", [(97, 131), (128, 128)])
def test_segmenter_shapes_and_loss(hw: tuple[int, int]) -> None:
    model = create_model("sepvit_lite", task="segment", num_classes=5, **SMALL_SEG).train()
    logits = model(torch.randn(2, 3, *hw))
    assert logits.shape == (2, 5, *hw)
    target = torch.randint(0, 5, (2, *hw))
    target[0, :5] = 255  # ignored pixels
    loss = model(torch.randn(2, 3, *hw), target)["loss"]
    loss.backward()
    assert torch.isfinite(loss)


def test_segmenter_overfits_one_image() -> None:
    model = create_model("sepvit_lite", task="segment", num_classes=3, **SMALL_SEG).train()
    x = torch.randn(1, 3, 64, 64)
    y = torch.zeros(1, 64, 64, dtype=torch.long)
    y[:, 16:48, 16:48] = 2
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(15):
        loss = model(x, y)["loss"]
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0]


def test_heads_need_dense_backbone_and_valid_args() -> None:
    from sepvit.heads import SemanticFPN

    cls_backbone = create_model("sepvit_lite")
    with pytest.raises(ValueError, match="dense"):
        RetinaNet(cls_backbone, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dense"):
        SemanticFPN(cls_backbone, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="box_loss"):
        create_model("sepvit_lite", task="detect", num_classes=3, box_loss="l3")
    with pytest.raises(TypeError):
        create_model("sepvit_lite", task="classify", fpn_channels=3)


def test_detector_rejects_bad_targets() -> None:
    model = create_model("sepvit_lite", task="detect", num_classes=2, **SMALL_DET).train()
    bad = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([5])}]
    with pytest.raises(ValueError, match="labels"):
        model(torch.randn(1, 3, 64, 64), bad)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("task", ["detect", "segment"])
def test_forward_backward_every_model_dense_task(name: str, task: str) -> None:
    args = SMALL_DET if task == "detect" else SMALL_SEG
    model = create_model(name, task=task, num_classes=3, **args).train()
    x = torch.randn(1, 3, 75, 99)  # odd size: every stage pads
    if task == "detect":
        tgt = [{"boxes": torch.tensor([[5.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])}]
        loss = model(x, tgt)["loss"]
    else:
        loss = model(x, torch.randint(0, 3, (1, 75, 99)))["loss"]
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        out = model(x)
    if task == "segment":
        assert out.shape == (1, 3, 75, 99)
    else:
        assert len(out) == 1


def test_heads_do_not_mutate_the_backbone() -> None:
    from sepvit.backbones.sepvit import SEPVIT_VARIANTS, SepViT

    cfg = {k: v for k, v in SEPVIT_VARIANTS["sepvit_lite"].items() if k != "official_name"}
    backbone = SepViT(**cfg, dense=True, out_indices=(3,))
    RetinaNet(backbone, 3, fpn_channels=16, head_channels=16, head_convs=1)
    assert backbone.out_indices == (3,)
    with pytest.raises(ValueError, match="out of range"):
        backbone.forward_intermediates(torch.randn(1, 3, 64, 64), (4,))
