"""A real TorchServe serving archives built from official OpenMMLab checkpoints.

The seeded SepViT-T RetinaNet (mmdet) and Semantic FPN (mmseg) checkpoints that OpenMMLab's golden
outputs were recorded with (``tests/golden.py``) are written as mmengine ``.pth`` files, packed
with ``sepvit-archive`` (which converts them) and served by ``torchserve --foreground`` on
127.0.0.1. Each answers, with no handler options, as the in-process pipeline does on the same
file: the COCO / ADE20K presets (1333x800 and 2048x512 keep-ratio) apply in the worker too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from handlers.outputs import rle_decode
from handlers.pipeline import Pipeline
from sepvit import load_model
from sepvit.presets import ADE20K_CLASSES, COCO_CLASSES
from service.torchserve.process import TorchServeProcess, build_archives
from tests.golden import assert_same_detections, load_golden, openmmlab_checkpoint
from tests.service.conftest import png

pytestmark = pytest.mark.integration

CHECKPOINTS = {  # archive name: (golden record, class names)
    "coco_retinanet": ("retinanet", COCO_CLASSES),
    "ade_semantic_fpn": ("semantic_fpn", ADE20K_CLASSES),
}
IMAGE = png(60, 80, seed=4)  # small; resized to 800x1067 (RetinaNet) and 512x683 (FPN)


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("openmmlab")
    return {
        name: openmmlab_checkpoint(load_golden(head)[1], d / f"{head}.pth", classes)
        for name, (head, classes) in CHECKPOINTS.items()
    }


@pytest.fixture(scope="module")
def torchserve(
    official: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, torchserve_required: None
) -> Iterator[TorchServeProcess]:
    work = tmp_path_factory.mktemp("torchserve")
    config = work / "model-config.yaml"
    config.write_text(
        yaml.safe_dump({"minWorkers": 1, "maxWorkers": 1, "batchSize": 1, "responseTimeout": 300})
    )
    store = build_archives({n: (p, config) for n, p in official.items()}, work / "store")
    ts = TorchServeProcess(work, store, list(official))
    try:
        yield ts.start()
    finally:
        ts.stop()


def _local(path: Path) -> dict:  # type: ignore[type-arg]
    (want,) = Pipeline(load_model(path)).handle([IMAGE])
    return json.loads(json.dumps(want))


def test_official_retinanet_archive_answers_as_the_pipeline(
    torchserve: TorchServeProcess, official: dict[str, Path]
) -> None:
    status, _, body = torchserve.post("coco_retinanet", IMAGE)
    assert status == 200, body[:500]
    served = json.loads(body)
    dets = served["detections"]
    assert dets and all(d["label"] == COCO_CLASSES[d["index"]] for d in dets)
    assert all(0 <= d["box"][0] <= d["box"][2] <= 80 and d["box"][3] <= 60 for d in dets)
    # TorchServe's worker runs with its own thread count: near-tied boxes may swap
    assert_same_detections(dets, _local(official["coco_retinanet"])["detections"])


def test_official_semantic_fpn_archive_answers_as_the_pipeline(
    torchserve: TorchServeProcess, official: dict[str, Path]
) -> None:
    status, _, body = torchserve.post("ade_semantic_fpn", IMAGE)
    assert status == 200, body[:500]
    served = json.loads(body)["segments"]
    local = _local(official["ade_semantic_fpn"])["segments"]
    assert all(s["label"] == ADE20K_CLASSES[s["index"]] for s in served)
    assert sum(s["area"] for s in served) == 60 * 80  # no background class: every pixel labelled
    assert len(served) > 1
    # the label maps agree on >= 99.9 % of the pixels (the golden test's bar)
    agree = (_label_map(served) == _label_map(local)).mean()
    assert agree >= 0.999, agree


def _label_map(segments: list[dict]) -> np.ndarray:  # type: ignore[type-arg]
    out = np.full((60, 80), -1, np.int64)
    for s in segments:
        out[rle_decode(s["rle"]).astype(bool)] = s["index"]
    return out
