"""The shipped demo checkpoints (model_store/<name>/model.safetensors) on 200 held-out test
images, and their 500-image evaluation JSON (``eval_test.json``, written by ``make models``).

Two bars per metric:

* **floor**: what the shipped checkpoints reach today, minus a margin for the smaller sample. A
  regression (a worse checkpoint, or a pipeline change that breaks them) fails the test.
* **target**: issue 3's acceptance figures, which the shipped checkpoints meet (classification
  top-1 0.976, detection mAP@.5 0.882 / mAP 0.752, segmentation mIoU 0.801). A retrained
  checkpoint that misses one goes into ``BELOW_TARGET``, a strict ``xfail`` that fails loudly
  once the target is met again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sepvit.checkpoint import read_metadata
from sepvit.data import ShapesDataset
from sepvit.evaluate import evaluate
from sepvit.registry import create_model, model_config

SEG_FLOOR = 0.77
STORE = Path(__file__).resolve().parents[1] / "model_store"
# name: (task, {metric: (200-image floor, 500-image target)})
DEMOS = {
    "sepvit_lite_shapes_cls": ("classify", {"top1": (0.94, 0.97)}),
    "sepvit_lite_shapes_det": ("detect", {"mAP50": (0.85, 0.85), "mAP": (0.71, 0.60)}),
    "sepvit_lite_shapes_seg": ("segment", {"mIoU": (SEG_FLOOR, 0.80)}),
}
# (name, metric) pairs whose 500-image figure is still below the target
BELOW_TARGET: set[tuple[str, str]] = set()


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


TARGETS = [
    pytest.param(
        name,
        key,
        marks=[pytest.mark.xfail(strict=True, reason="below issue 3's target; docs/shapes.md")]
        if (name, key) in BELOW_TARGET
        else [],
        id=f"{name}-{key}",
    )
    for name, (_, thresholds) in sorted(DEMOS.items())
    for key in thresholds
]


@pytest.mark.parametrize(("name", "key"), TARGETS)
def test_demo_checkpoint_500_image_evaluation_meets_target(name: str, key: str) -> None:
    _checkpoint(name)
    report = json.loads((STORE / name / "eval_test.json").read_text())
    assert report["split"] == "test" and report["num_images"] >= 500
    assert report["task"] == DEMOS[name][0]
    target = DEMOS[name][1][key][1]
    assert report[key] >= target, (key, report[key], target)


def test_version_1_demo_checkpoints_answer_as_before_the_openmmlab_layout() -> None:
    """The shipped detector and segmenter were written before the heads took OpenMMLab's module
    layout; converted at load (each head's ``legacy`` rule), they answer exactly as the old
    modules did. ``tests/data/demo_v1_answers.safetensors`` holds the old code's answers on four
    Shapes scenes, for the checkpoint bytes whose sha256 it records."""
    import hashlib

    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    golden_path = Path(__file__).parent / "data" / "demo_v1_answers.safetensors"
    with safe_open(str(golden_path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})["demo"])
    golden = load_file(str(golden_path))
    models = {}
    for key, task in (("det", "detect"), ("seg", "segment")):
        path = _checkpoint(f"sepvit_lite_shapes_{key}")
        if hashlib.sha256(path.read_bytes()).hexdigest() != meta["sha256"][key]:
            pytest.skip(f"{path} is not the checkpoint the answers were recorded for")
        models[key] = create_model("sepvit_lite", task=task, checkpoint=path).eval()
    scenes = meta["scenes"]
    ds = ShapesDataset(size=scenes["size"], seed=scenes["seed"])
    images = torch.stack(
        [torch.from_numpy(ds[i].image).permute(2, 0, 1).float() / 255 for i in range(4)]
    )
    cfg = model_config(models["det"])
    x = (images - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        cls, reg = models["det"].forward_raw(x)
        dets = models["det"].postprocess(cls, reg, (128, 128), score_thresh=meta["score_thresh"])
        logits = models["seg"](x)
    # recorded bit for bit on the development machine; tolerances leave room for another CPU
    assert torch.allclose(cls.double().sum((1, 2)), golden["det_cls_sum"], rtol=1e-6)
    assert torch.allclose(reg.double().sum((1, 2)), golden["det_reg_sum"], rtol=1e-6)
    for i, det in enumerate(dets):
        assert torch.equal(det["labels"], golden[f"det{i}_labels"]), i
        assert torch.allclose(det["boxes"], golden[f"det{i}_boxes"], atol=1e-3), i
        assert torch.allclose(det["scores"], golden[f"det{i}_scores"], atol=1e-5), i
    agree = (logits.argmax(1).to(torch.uint8) == golden["seg_labels"]).float().mean()
    assert agree >= 0.9999
    assert torch.allclose(logits.mean((2, 3)), golden["seg_channel_mean"], atol=1e-5)
