"""The shipped demo checkpoints (model_store/<name>/model.safetensors) on 200 held-out test
images, with thresholds a little below the full targets that their 500-image evaluation JSON
(``eval_test.json``, written by ``make models``) must meet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sepvit.checkpoint import read_metadata
from sepvit.data import ShapesDataset
from sepvit.evaluate import evaluate
from sepvit.registry import create_model, model_config

STORE = Path(__file__).resolve().parents[1] / "model_store"
# name: (task, {metric: (200-image floor, 500-image target)})
DEMOS = {
    "sepvit_lite_shapes_cls": ("classify", {"top1": (0.95, 0.97)}),
    "sepvit_lite_shapes_det": ("detect", {"mAP50": (0.80, 0.85), "mAP": (0.55, 0.60)}),
    "sepvit_lite_shapes_seg": ("segment", {"mIoU": (0.75, 0.80)}),
}


def _checkpoint(name: str) -> Path:
    path = STORE / name / "model.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} not built (make models)")
    return path


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_demo_checkpoint_on_held_out_images(name: str) -> None:
    task, thresholds = DEMOS[name]
    path = _checkpoint(name)
    meta = read_metadata(path)
    assert meta["task"] == task and meta["variant"] == "sepvit_lite"
    model = create_model("sepvit_lite", task=task, checkpoint=path)
    size = int(model_config(model)["input_size"][1])
    metrics = evaluate(model, ShapesDataset("test", task, size, length=200))
    for key, (floor, _) in thresholds.items():
        assert metrics[key] >= floor, (key, metrics[key])


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_demo_checkpoint_ships_its_500_image_evaluation(name: str) -> None:
    _, thresholds = DEMOS[name]
    _checkpoint(name)
    report = json.loads((STORE / name / "eval_test.json").read_text())
    assert report["split"] == "test" and report["num_images"] >= 500
    for key, (_, target) in thresholds.items():
        assert report[key] >= target, (key, report[key])
