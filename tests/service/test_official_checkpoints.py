"""mmdet/mmseg checkpoints end to end: listed in ``models`` and served with no extra options
(preprocessing and class names from the COCO / ADE20K presets), through the task routes,
OIP v2 over REST and gRPC, a TorchServe archive and its handler (a real TorchServe serving the
seeded SepViT-T ones: ``tests/integration/test_torchserve_official.py``)."""

from __future__ import annotations

import base64
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from fastapi.testclient import TestClient

from handlers.pipeline import Pipeline
from sepvit import checkpoint_info, create_model, load_model, read_metadata
from sepvit.presets import ADE20K_CLASSES, COCO_CLASSES
from service.app import create_app
from service.loader import load_settings
from service.processes import free_port

from ..golden import assert_same_detections
from .conftest import png

HEAD = {"fpn_channels": 16, "head_channels": 16}


def _openmmlab_checkpoint(path: Path, task: str, classes: int, **kw: Any) -> Path:
    """A random-weight checkpoint in mmengine's layout (DDP prefix, backbone norm/head kept)."""
    torch.manual_seed(1)
    model = create_model("sepvit_lite", task=task, num_classes=classes, **HEAD, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
        if task == "detect":  # a bias that lets some boxes through the 0.05 score threshold
            model.bbox_head.retina_cls.bias.fill_(-2.5)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module.backbone.norm.weight"] = torch.ones(256)
    state["module.backbone.norm.bias"] = torch.zeros(256)
    torch.save({"meta": {"epoch": 12}, "state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("openmmlab")
    return {
        "det": _openmmlab_checkpoint(d / "retinanet.pth", "detect", 80, head_convs=1),
        "seg": _openmmlab_checkpoint(d / "fpn.pth", "segment", 150),
    }


@pytest.fixture(scope="module")
def client(official: dict[str, Path]) -> Iterator[TestClient]:
    models = [
        {"name": "coco_det", "checkpoint": str(official["det"])},
        {"name": "ade_seg", "checkpoint": str(official["seg"])},
    ]
    settings = load_settings(models=models, grpc_port=free_port(), warmup=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        for _ in range(1200):
            if c.get("/v2/health/ready").status_code == 200:
                break
            time.sleep(0.05)
        yield c


def test_checkpoint_info_reads_variant_task_and_head(official: dict[str, Path]) -> None:
    assert checkpoint_info(official["det"]) == {
        "variant": "sepvit_lite", "task": "detect", "head": "retinanet"
    }  # fmt: skip
    assert checkpoint_info(official["seg"])["head"] == "semantic_fpn"


def _grpc_answer(client: TestClient, model: str, image: bytes) -> Any:
    """``model``'s answer to ``image`` through OIP v2 over gRPC (``tritonclient.grpc``)."""
    import tritonclient.grpc as grpcclient

    g = grpcclient.InferenceServerClient(f"127.0.0.1:{client.app.state.grpc_port}")  # type: ignore[attr-defined]
    try:
        outputs = g.get_model_metadata(model, as_json=True)["outputs"]
        assert [o["name"] for o in outputs] == ["RESULT"]
        inp = grpcclient.InferInput("IMAGE", [1], "BYTES")
        inp.set_data_from_numpy(np.array([image], dtype=np.object_))
        (answer,) = g.infer(model, [inp]).as_numpy("RESULT")
    finally:
        g.close()
    return json.loads(answer)


def test_gateway_serves_official_checkpoints_with_their_presets(
    client: TestClient, official: dict[str, Path]
) -> None:
    listing = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert listing["coco_det"]["task"] == "detect" and listing["ade_seg"]["task"] == "segment"
    assert listing["coco_det"]["input_size"] == [800, 1333]
    image = png(60, 80, seed=4)
    r = client.post("/detect", params={"model": "coco_det"}, content=image,
                    headers={"content-type": "image/png"})  # fmt: skip
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    # what the handler pipeline answers for the model loaded from the file alone (the gateway's
    # intra-op thread count may differ from this process's: near-ties may swap)
    (want,) = Pipeline(load_model(official["det"])).handle([image])
    assert_same_detections(result["detections"], json.loads(json.dumps(want))["detections"])
    dets = result["detections"]
    assert dets and all(d["label"] == COCO_CLASSES[d["index"]] for d in dets)
    assert all(0 <= d["box"][0] <= d["box"][2] <= 80 and d["box"][3] <= 60 for d in dets)
    # OIP v2 gives the same answer, over REST and over gRPC
    assert _grpc_answer(client, "coco_det", image) == result
    doc = {"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES",
                       "data": [base64.b64encode(image).decode()]}]}  # fmt: skip
    r = client.post("/v2/models/coco_det/infer", json=doc)
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["outputs"][0]["data"][0]) == result

    r = client.post("/segment", params={"model": "ade_seg"}, content=image,
                    headers={"content-type": "image/png"})  # fmt: skip
    assert r.status_code == 200, r.text
    segs = r.json()["results"][0]["segments"]
    assert _grpc_answer(client, "ade_seg", image) == r.json()["results"][0]
    assert segs and all(s["rle"]["size"] == [60, 80] for s in segs)
    assert all(s["label"] == ADE20K_CLASSES[s["index"]] for s in segs)
    assert sum(s["area"] for s in segs) == 60 * 80  # no background class: every pixel labelled


def test_archive_converts_an_official_checkpoint_and_the_handler_serves_it(
    official: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("ts.torch_handler.base_handler")
    from service.torchserve.archive import build_archive
    from service.torchserve.handler import SepViTHandler

    config = tmp_path / "model-config.yaml"
    config.write_text(yaml.safe_dump({"minWorkers": 1, "maxWorkers": 1, "batchSize": 1}))
    mar = build_archive(official["det"], config, "coco_det", tmp_path / "store")
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(mar) as z:
        z.extractall(unpacked)
    meta = read_metadata(unpacked / "model.safetensors")
    assert (meta["head"], meta["pretrained_cfg"]["dataset"]) == ("retinanet", "coco")
    assert meta["provenance"] == {"converted_from": "retinanet.pth"}

    handler = SepViTHandler()
    ctx = SimpleNamespace(
        system_properties={"model_dir": str(unpacked)},
        model_yaml_config={"handler": {}},
        set_response_header=lambda *a: None,
        set_response_status=lambda **kw: None,
        set_response_content_type=lambda *a: None,
    )
    handler.initialize(ctx)
    image = png(60, 80, seed=4)
    (out,) = handler.handle([{"body": image}], ctx)
    (want,) = Pipeline(load_model(official["det"])).handle([image])
    assert out == want
