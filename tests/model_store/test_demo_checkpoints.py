"""The shipped demo checkpoints (model_store/<name>/model.safetensors) on held-out images of
two sets, and their evaluation JSON files (written by ``make models``):

* the own **test split** of SepViT-Shapes (200 images here, 100 for the Mask R-CNN;
  ``eval_test.json``, 500 images);
* the **independent** matplotlib-drawn set (:mod:`sepvit.data.independent`, 100 images here, 50
  for the Mask R-CNN; ``eval_independent.json``, 400 images), which no training run reads.

Two bars per metric:

* **floor**: what the shipped checkpoints reach today, minus a margin for the smaller sample. A
  regression (a worse checkpoint, or a pipeline change that breaks them) fails the test.
* **target**: the issues' acceptance figures (own split: issue 3; independent set: issue 18). A
  checkpoint that misses one goes into ``BELOW_TARGET``, a strict ``xfail`` that fails loudly
  once the target is met.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sepvit.checkpoint import read_metadata
from sepvit.data import ShapesDataset
from sepvit.data.independent import IndependentShapes
from sepvit.evaluate import evaluate
from sepvit.registry import create_model, model_config

STORE = Path(__file__).resolve().parents[2] / "model_store"
TASKS = {
    "sepvit_lite_shapes_cls": "classify",
    "sepvit_lite_shapes_det": "detect",
    "sepvit_lite_shapes_seg": "segment",
    "sepvit_lite_shapes_inst": "detect",  # Mask R-CNN
}
# the Mask R-CNN's floors (what it reaches on the images here, minus a margin; docs/shapes.md)
INST_TEST_FLOOR, INST_IND_RECALL_FLOOR, INST_IND_MASK_FLOOR = 0.76, 0.82, 0.62
# the Mask R-CNN (about 0.25 s an image on one core) on half the images: 100 of the test split
# (mask mAP@.5 0.836 on them, 0.830 on 200) and 50 independent ones (recall@.5 0.901, mask
# mAP@.5 0.720; 0.896 and 0.750 on 100)
FEWER = {"sepvit_lite_shapes_inst": {"test": 100, "independent": 50}}
# set: (images here, JSON file, JSON images at least, {name: {metric: (floor, target)}})
SETS: dict[str, tuple[int, str, int, dict[str, dict[str, tuple[float, float]]]]] = {
    "test": (
        200,
        "eval_test.json",
        500,
        {
            # issue 18 sets the classifier's own-split target at 0.95 (issue 3 had 0.97 at 224;
            # the domain-randomised fine-tunes went from 0.976 to 0.966, then back to 0.976)
            "sepvit_lite_shapes_cls": {"top1": (0.94, 0.95)},
            "sepvit_lite_shapes_det": {"mAP50": (0.85, 0.85), "mAP": (0.71, 0.60)},
            "sepvit_lite_shapes_seg": {"mIoU": (0.77, 0.80)},
            # issue 16: mask mAP@.5 >= 0.6
            "sepvit_lite_shapes_inst": {"mask_mAP50": (INST_TEST_FLOOR, 0.60)},
        },
    ),
    "independent": (
        100,
        "eval_independent.json",
        400,
        {
            "sepvit_lite_shapes_cls": {"top1": (0.85, 0.95)},
            "sepvit_lite_shapes_det": {"recall50": (0.85, 0.85)},
            "sepvit_lite_shapes_seg": {"mIoU": (0.70, 0.75)},
            # the detector's robustness bar (issue 18), and the own split's mask bar
            "sepvit_lite_shapes_inst": {
                "recall50": (INST_IND_RECALL_FLOOR, 0.85),
                "mask_mAP50": (INST_IND_MASK_FLOOR, 0.60),
            },
        },
    ),
}
# (set, name, metric) whose JSON figure is still below the target
BELOW_TARGET: set[tuple[str, str, str]] = {
    ("independent", "sepvit_lite_shapes_cls", "top1"),  # 0.915 (plain half 0.985, varied 0.845)
    # the segmenter fine-tuned on styles 2 and 3: 0.744 (plain 0.801, varied 0.683); the one
    # before them had 0.801 on the own split and 0.096 here (training_state/seg128_p3)
    ("independent", "sepvit_lite_shapes_seg", "mIoU"),
    ("test", "sepvit_lite_shapes_seg", "mIoU"),  # 0.787 (issue 3's 0.80; docs/shapes.md)
}


def _checkpoint(name: str) -> Path:
    path = STORE / name / "model.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} not built (make models)")
    return path


def _dataset(split: str, task: str, size: int, n: int) -> Any:
    if split == "independent":
        return IndependentShapes(task, size, length=n)
    return ShapesDataset(split, task, size, length=n)


@pytest.mark.parametrize("split", sorted(SETS))
@pytest.mark.parametrize("name", sorted(TASKS))
def test_demo_checkpoint_on_held_out_images(name: str, split: str) -> None:
    task = TASKS[name]
    path = _checkpoint(name)
    meta = read_metadata(path)
    assert meta["task"] == task and meta["variant"] == "sepvit_lite"
    model = create_model("sepvit_lite", task=task, checkpoint=path)
    size = int(model_config(model)["input_size"][1])
    n, _, _, bars = SETS[split]
    n = FEWER.get(name, {}).get(split, n)
    metrics = evaluate(model, _dataset(split, task, size, n))
    for key, (floor, _) in bars[name].items():
        assert metrics[key] >= floor, (key, metrics[key])


TARGETS = [
    pytest.param(
        split,
        name,
        key,
        marks=[pytest.mark.xfail(strict=True, reason="below the target; docs/shapes.md")]
        if (split, name, key) in BELOW_TARGET
        else [],
        id=f"{split}-{name}-{key}",
    )
    for split, (_, _, _, bars) in sorted(SETS.items())
    for name, metrics in sorted(bars.items())
    for key in metrics
]


@pytest.mark.parametrize(("split", "name", "key"), TARGETS)
def test_demo_checkpoint_evaluation_file_meets_target(split: str, name: str, key: str) -> None:
    _checkpoint(name)
    _, filename, at_least, bars = SETS[split]
    report = json.loads((STORE / name / filename).read_text())
    assert report["split"] == split and report["num_images"] >= at_least
    assert report["task"] == TASKS[name]
    target = bars[name][key][1]
    assert report[key] >= target, (key, report[key], target)


def test_version_1_demo_checkpoints_answer_as_before_the_openmmlab_layout() -> None:
    """The shipped detector and the previous segmenter (``training_state/seg128_p3``) were
    written before the heads took OpenMMLab's module layout; converted at load (each head's
    ``legacy`` rule), they answer exactly as the old modules did.
    ``tests/data/demo_v1_answers.safetensors`` holds the old code's answers on four Shapes
    scenes, for the weights whose digest it records (the shipped detector has since gained
    ``center_input`` in its metadata, with the same weights: it is built here without it)."""
    import hashlib

    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    golden_path = Path(__file__).resolve().parents[1] / "data" / "demo_v1_answers.safetensors"
    with safe_open(str(golden_path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})["demo"])
    golden = load_file(str(golden_path))
    models = {}
    # the version-1 segmenter shipped until the eighth session: kept in training_state/
    v1 = {
        "det": _checkpoint("sepvit_lite_shapes_det"),
        "seg": STORE.parent / "training_state" / "seg128_p3" / "model.safetensors",
    }
    for key, task in (("det", "detect"), ("seg", "segment")):
        path = v1[key]
        weights, digest = load_file(str(path)), hashlib.sha256()
        for name in sorted(weights):
            digest.update(name.encode())
            digest.update(weights[name].contiguous().view(torch.uint8).numpy().tobytes())
        if digest.hexdigest() != meta["weights_sha256"][key]:
            pytest.skip(f"{path} does not hold the weights the answers were recorded for")
        models[key] = create_model(
            "sepvit_lite", task=task, checkpoint=path, center_input=False
        ).eval()
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


# the Makefile variable whose flags last trained each shipped checkpoint (`make models`)
RECIPES = {
    "sepvit_lite_shapes_cls": "CLS_S3B",
    "sepvit_lite_shapes_det": "DET_DR",
    "sepvit_lite_shapes_seg": "SEG_S3C",
    "sepvit_lite_shapes_inst": "INST",
}


def _makefile_value(name: str) -> str:
    """Makefile variable ``name``, with the ``$(VAR)`` it uses expanded."""
    import re

    text = (STORE.parent / "Makefile").read_text().replace("\\\n", " ")
    found = re.search(rf"^{name} := (.*)$", text, re.M)
    assert found, name
    return re.sub(r"\$\((\w+)\)", lambda m: _makefile_value(m.group(1)), found[1])


def _makefile_flags(name: str) -> list[str]:
    import shlex

    return shlex.split(_makefile_value(name))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_makefile_recipe_builds_the_shipped_architecture(name: str) -> None:
    """`make models` must rebuild what ships: the recipe's flags (later ones win, as in
    argparse) name the checkpoint's model arguments (in today's layout) and give a model with
    its tensor names and shapes. (Issue 15 made the heads' defaults OpenMMLab's; recipes that
    did not name the demo models' own choices built other models.)"""
    from sepvit.checkpoint import load_native
    from sepvit.registry import upgrade_native

    flags = _makefile_flags(RECIPES[name])
    opts = {flags[i]: flags[i + 1] for i in range(len(flags) - 1) if flags[i].startswith("--")}
    state, meta = upgrade_native(*load_native(_checkpoint(name)))
    args = json.loads(opts.get("--model-args", "{}"))
    assert args == meta["model_args"]
    model = create_model(
        "sepvit_lite",
        task=opts["--task"],
        head=opts.get("--head"),
        num_classes=meta["num_classes"],
        img_size=int(opts["--img-size"]),
        **args,
    )
    want = {k: tuple(v.shape) for k, v in state.items()}
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == want
