"""/detect with a Mask R-CNN model through the gateway: RLE masks in the REST JSON, the same
JSON through OIP v2, instance-id PNGs, ``max_detections``; saved and served from a native
checkpoint (random weights, 64 px)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from handlers.outputs import rle_decode
from sepvit import create_model, save_checkpoint
from service.app import create_app
from service.loader import load_settings
from service.schemas import DetectResponse, InferResponse

from .conftest import IMG, png
from .test_app import wait_ready


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    torch.manual_seed(0)
    model = create_model(
        "sepvit_lite",
        task="detect",
        head="mask_rcnn",
        num_classes=2,
        img_size=IMG,
        fpn_channels=16,
        fc_channels=32,
        label_names=["circle", "square"],
    )
    path = save_checkpoint(model, tmp_path_factory.mktemp("mrcnn") / "mask.safetensors")
    settings = load_settings(
        models=[{"name": "mask", "checkpoint": str(path), "handler": {"max_detections": 8}}],
        grpc_port=None,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        wait_ready(c)
        yield c


def test_detect_returns_rle_masks_and_oip_agrees(client: TestClient) -> None:
    image = png(40, 90, seed=3)
    r = client.post("/detect", content=image, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    DetectResponse.model_validate(r.json())  # the answer the OpenAPI schema documents
    dets = r.json()["results"][0]["detections"]
    assert 1 <= len(dets) <= 8
    for d in dets:
        mask = rle_decode(d["mask"])
        assert mask.shape == (40, 90)  # original pixels
    assert any(rle_decode(d["mask"]).any() for d in dets)
    doc = {
        "inputs": [
            {
                "name": "IMAGE",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(image).decode()],
            }
        ]
    }
    out = client.post("/v2/models/mask/infer", json=doc)
    assert out.status_code == 200, out.text
    InferResponse.model_validate(out.json())
    assert json.loads(out.json()["outputs"][0]["data"][0]) == {"detections": dets}
    out = client.post("/v2/models/mask/infer", json={**doc, "parameters": {"max_detections": 2}})
    assert json.loads(out.json()["outputs"][0]["data"][0]) == {"detections": dets[:2]}
    capped = client.post(
        "/detect?max_detections=2", content=image, headers={"content-type": "image/png"}
    )
    assert capped.json()["results"][0]["detections"] == dets[:2]


def test_detect_png_is_an_instance_id_map(client: TestClient) -> None:
    image = png(40, 90, seed=3)
    r = client.post("/detect?format=png", content=image, headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    ids = np.asarray(Image.open(io.BytesIO(r.content)))
    assert ids.shape == (40, 90) and 0 < ids.max() <= 8
    bad = client.post(
        "/detect?max_detections=0", content=image, headers={"content-type": "image/png"}
    )
    assert bad.status_code in (400, 422)
