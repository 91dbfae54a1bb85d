"""Mask R-CNN and UperNet: OpenMMLab-layout checkpoints round-trip through ``create_model``
(head and widths read from the tensors), damaged ones are refused naming the keys, and the
training-only auxiliary head is accepted and reported. Small random models; the answers against
OpenMMLab itself are in ``test_openmmlab_golden.py``."""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from sepvit import create_model
from sepvit.checkpoint import CheckpointError


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save({"meta": {}, "state_dict": OrderedDict(state)}, path)
    return path


@pytest.fixture(scope="module")
def mask_rcnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(
        "sepvit_lite", task="detect", head="mask_rcnn", num_classes=3, img_size=64,
        fpn_channels=16, fc_channels=24,
    ).eval()  # fmt: skip


def test_mask_rcnn_checkpoint_round_trip(mask_rcnn: torch.nn.Module, tmp_path: Path) -> None:
    state = mask_rcnn.state_dict()
    assert {k.split(".")[0] for k in state} == {"backbone", "neck", "rpn_head", "roi_head"}
    assert "roi_head.mask_head.convs.3.conv.weight" in state
    assert "roi_head.bbox_head.shared_fcs.1.weight" in state
    loaded = create_model("sepvit_lite", task="detect", checkpoint=_save(state, tmp_path / "m.pth"))
    cfg = loaded.pretrained_cfg
    assert (cfg["head"], cfg["num_classes"], loaded.model_args["fc_channels"]) == (
        "mask_rcnn",
        3,
        24,
    )
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = mask_rcnn(x), loaded.eval()(x)
    assert len(got) == 2 and len(want[0]["boxes"]) > 0
    for w, g in zip(want, got, strict=True):
        assert torch.equal(w["boxes"], g["boxes"]) and torch.equal(w["masks"], g["masks"])
        assert g["masks"].shape == (len(g["boxes"]), 64, 96) and g["masks"].dtype == torch.bool


def test_mask_rcnn_damaged_checkpoint_names_the_key(
    mask_rcnn: torch.nn.Module, tmp_path: Path
) -> None:
    state = dict(mask_rcnn.state_dict())
    del state["roi_head.mask_head.upsample.bias"]
    with pytest.raises(CheckpointError, match=re.escape("roi_head.mask_head.upsample.bias")):
        create_model("sepvit_lite", task="detect", checkpoint=_save(state, tmp_path / "d.pth"))


def test_max_detections_and_thresholds_reach_the_model(mask_rcnn: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    (full,) = mask_rcnn.predict(x)
    (three,) = mask_rcnn.predict(x, max_detections=3)
    (none,) = mask_rcnn.predict(x, score_thresh=1.0)
    assert len(full["boxes"]) > 3 and len(three["boxes"]) == 3 and len(none["boxes"]) == 0
    assert torch.equal(three["boxes"], full["boxes"][:3])
    assert three["mask_probs"].shape == (3, 28, 28) and none["mask_probs"].shape == (0, 28, 28)


def test_mask_rcnn_loss_terms_gradients_and_bad_targets(mask_rcnn: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    masks = torch.zeros((1, 64, 64), dtype=torch.bool)
    masks[0, 10:40, 20:44] = True
    targets = [
        {"boxes": torch.tensor([[20.0, 10, 44, 40]]), "labels": torch.tensor([2]), "masks": masks},
        # an image without objects: negatives only, no mask term
        {
            "boxes": torch.zeros((0, 4)),
            "labels": torch.zeros(0, dtype=torch.long),
            "masks": torch.zeros((0, 64, 64), dtype=torch.bool),
        },
    ]
    mask_rcnn.train()
    try:
        losses = mask_rcnn(x, targets)
        assert set(losses) == {
            "loss", "loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask",
        }  # fmt: skip
        assert all(torch.isfinite(v) for v in losses.values())
        parts = sum(v for k, v in losses.items() if k != "loss")
        assert torch.allclose(losses["loss"], parts)
        mask_rcnn.zero_grad()
        losses["loss"].backward()
        for name in (
            "rpn_head.rpn_cls",
            "roi_head.bbox_head.fc_cls",
            "roi_head.mask_head.conv_logits",
        ):
            grad = mask_rcnn.get_submodule(name).weight.grad
            assert grad is not None and grad.abs().sum() > 0, name
        # the gt mask trains only its own class's logits
        grad = mask_rcnn.roi_head.mask_head.conv_logits.weight.grad
        assert grad[2].abs().sum() > 0 and grad[:2].abs().sum() == 0
        bad = [{**targets[0], "masks": masks[:, :32]}, targets[1]]
        with pytest.raises(ValueError, match="masks"):
            mask_rcnn(x, bad)
        with pytest.raises(ValueError, match="labels"):
            mask_rcnn(x, [{**targets[0], "labels": torch.tensor([3])}, targets[1]])
    finally:
        mask_rcnn.zero_grad()
        mask_rcnn.eval()


def test_upernet_accepts_and_reports_the_auxiliary_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(
        "sepvit_lite", task="segment", head="upernet", num_classes=4, img_size=64, channels=16
    ).eval()
    state = dict(model.state_dict())
    assert "decode_head.psp_modules.3.1.bn.running_var" in state
    aux = {
        "auxiliary_head.convs.0.conv.weight": torch.zeros(8, 128, 3, 3),
        "auxiliary_head.conv_seg.weight": torch.zeros(4, 8, 1, 1),
    }
    loaded = create_model(
        "sepvit_lite", task="segment", checkpoint=_save({**state, **aux}, tmp_path / "u.pth")
    ).eval()
    assert loaded.pretrained_cfg["head"] == "upernet"
    assert set(aux) <= set(loaded.load_report.dropped_keys)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert model(x).shape == (1, 4, 64, 64)
    state["decode_head.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=re.escape("decode_head.extra.weight")):
        create_model("sepvit_lite", task="segment", checkpoint=_save(state, tmp_path / "x.pth"))
