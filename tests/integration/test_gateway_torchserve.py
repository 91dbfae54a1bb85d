"""The gateway's two backends give the same answers: ``sepvit-serve`` with the embedded backend
and ``sepvit-serve --backend torchserve`` in front of a real TorchServe, on the same random-weight
checkpoints (archived with the three ``model_store/*/model-config.yaml`` files), plus a small
Mask R-CNN whose instance masks must come through both backends and every transport.

Every parametrized test runs the same assertions on both gateways and compares with the answer
of :class:`handlers.pipeline.Pipeline` run here on the same checkpoint. The last test kills
TorchServe (503 with a clear message, readiness false) and starts it again (recovery, with the
new key TorchServe writes at start).
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from handlers.pipeline import Pipeline, PipelineConfig
from sepvit import create_model, save_checkpoint
from sepvit.checkpoint import read_metadata
from sepvit.data.shapes import CLASSES
from service.processes import GatewayProcess
from service.torchserve.process import STORE, TorchServeProcess, build_archives
from tests.service.conftest import start_gateway

pytestmark = pytest.mark.integration

CLS, DET, SEG = "sepvit_lite_shapes_cls", "sepvit_lite_shapes_det", "sepvit_lite_shapes_seg"
MASK = "shapes_mask_rcnn"  # random but non-trivial weights: a few detections with masks each
TS_NAMES = {CLS: "shapes_cls_v1", DET: DET, SEG: SEG, MASK: MASK}  # CLS: another archive name
BACKENDS = ["embedded", "torchserve"]
HEALTH_INTERVAL = 0.5


def _image(h: int, w: int, seed: int, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)  # blocky: not pure noise
    img = Image.fromarray(arr).resize((w, h), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


IMAGE_A = _image(180, 240, 1)
IMAGE_B = _image(300, 200, 2, "JPEG")
CORRUPT = IMAGE_A[: len(IMAGE_A) // 3]


@dataclass
class Stack:
    torchserve: TorchServeProcess
    gateways: dict[str, GatewayProcess]
    checkpoints: dict[str, Path]
    pipelines: dict[str, Pipeline]

    def reference(self, model: str, images: list[bytes], **params: Any) -> list[Any]:
        """The pipeline's own answers, JSON-encoded like the gateway's ``results``."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in the gateway and the TorchServe worker
        try:
            out = self.pipelines[model].handle(images, [params] * len(images))
        finally:
            torch.set_num_threads(threads)
        return [
            {"error": {"code": r.code, "message": r.message}} if isinstance(r, Exception) else r
            for r in out
        ]


def _checkpoints(d: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    labels = list(CLASSES)
    head = {"fpn_channels": 32, "head_channels": 32}
    models = {
        CLS: create_model(
            "sepvit_lite", num_classes=8, img_size=224, label_names=labels, crop_pct=1.0
        ),
        DET: create_model(
            "sepvit_lite",
            task="detect",
            num_classes=8,
            img_size=256,
            label_names=labels,
            crop_pct=1.0,
            head_convs=1,
            **head,
        ),
        SEG: create_model(
            "sepvit_lite",
            task="segment",
            num_classes=9,
            img_size=256,
            label_names=["background", *labels],
            crop_pct=1.0,
            **head,
        ),
    }
    mask_rcnn = {"head": "mask_rcnn", "img_size": 128, "fpn_channels": 32, "fc_channels": 64}
    models[MASK] = create_model(
        "sepvit_lite", task="detect", num_classes=8, label_names=labels, crop_pct=1.0, **mask_rcnn
    )
    out = {}
    for name, model in models.items():
        (d / name).mkdir(parents=True)
        # the model-config.yaml beside the checkpoint: the embedded backend reads its handler:
        # section, the archive carries it to TorchServe
        # runtime eager in both servers: this compares transports, and auto's choice is timed
        # (each process could pick another gated runtime, and the search costs a minute here)
        cfg = yaml.safe_load(
            (STORE / (DET if name == MASK else name) / "model-config.yaml").read_text()
        )
        cfg["handler"]["runtime"] = "eager"
        if name == MASK:  # the detector's, with thresholds that let random weights answer
            cfg["handler"].update(score_threshold=0.05, max_detections=4)
        (d / name / "model-config.yaml").write_text(yaml.safe_dump(cfg))
        out[name] = save_checkpoint(model, d / name / "model.safetensors")
    return out


def _pipeline(checkpoint: Path) -> Pipeline:
    meta = read_metadata(checkpoint)
    model = create_model(meta["variant"], task=meta["task"], checkpoint=checkpoint)
    cfg = yaml.safe_load((checkpoint.parent / "model-config.yaml").read_text())
    return Pipeline(model, PipelineConfig.from_mapping(cfg.get("handler")))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, torchserve_required: None) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("gateway_torchserve")
    ckpts = _checkpoints(base / "models")
    store = build_archives(
        {TS_NAMES[n]: (p, p.parent / "model-config.yaml") for n, p in ckpts.items()},
        base / "store",
    )
    ts = TorchServeProcess(base / "ts", store, list(TS_NAMES.values()))
    models = [{"name": n, "checkpoint": str(p)} for n, p in ckpts.items()]
    gateways: dict[str, GatewayProcess] = {}
    try:
        with ThreadPoolExecutor(2) as pool:  # TorchServe and the embedded gateway load together
            started = pool.submit(ts.start)
            embedded = pool.submit(start_gateway, base, models)
        if embedded.exception() is None:
            gateways["embedded"] = embedded.result()  # stopped below even if TorchServe failed
        started.result()
        embedded.result()
        gateways["torchserve"] = start_gateway(
            base,
            models,
            backend="torchserve",
            torchserve_address=ts.grpc,
            torchserve_token_file=str(ts.key_file),
            torchserve_health_interval_s=HEALTH_INTERVAL,
            torchserve_models={CLS: TS_NAMES[CLS]},
        )
        pipelines = {n: _pipeline(p) for n, p in ckpts.items()}
        yield Stack(ts, gateways, ckpts, pipelines)
    finally:
        for gw in gateways.values():
            gw.stop()
        ts.stop()


def assert_same(got: Any, want: Any, path: str = "") -> None:
    """Equal JSON documents. Floats to 1e-5: in practice they are identical, but TorchServe may
    batch the images differently, and batch composition may move the last bits."""
    if isinstance(want, float) or isinstance(got, float):
        assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-5), (path, got, want)
    elif isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), (path, got, want)
        for k in want:
            assert_same(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (path, got, want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{path}[{i}]")
    else:
        assert got == want, (path, got, want)


def _files(*images: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (f"{i}.img", b, "application/octet-stream")) for i, b in enumerate(images)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_models_and_metadata(stack: Stack, backend: str) -> None:
    url = stack.gateways[backend].url
    listed = {m["name"]: m for m in httpx.get(f"{url}/models", timeout=10).json()["models"]}
    for name, ckpt in stack.checkpoints.items():
        cfg = read_metadata(ckpt)["pretrained_cfg"]
        m = listed[name]
        assert m["ready"] is True, m
        assert m["task"] == cfg["task"]
        assert m["labels"] == cfg["label_names"]
        assert m["input_size"] == cfg["input_size"][1:]
        meta = httpx.get(f"{url}/v2/models/{name}", timeout=10).json()
        assert meta["parameters"] == {"task": cfg["task"], "labels": cfg["label_names"]}
        assert meta["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1]}]
    if backend == "torchserve":
        assert listed[CLS]["batching"]["torchserve_model"] == TS_NAMES[CLS]
        assert listed[DET]["batching"]["max_batch_size"] == 8  # from model-config.yaml


@pytest.mark.parametrize("backend", BACKENDS)
def test_task_routes_give_the_pipeline_answers(stack: Stack, backend: str) -> None:
    url = stack.gateways[backend].url
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/classify", params={"top_k": 3}, files=_files(IMAGE_A, IMAGE_B))
        assert r.status_code == 200, r.text
        assert r.json()["model"] == CLS
        assert_same(r.json()["results"], stack.reference(CLS, [IMAGE_A, IMAGE_B], top_k=3))

        r = c.post(
            "/detect",
            params={"score_threshold": 0.005},
            content=IMAGE_B,
            headers={"Content-Type": "image/jpeg"},
        )
        assert r.status_code == 200, r.text
        want = stack.reference(DET, [IMAGE_B], score_threshold=0.005)
        assert want[0]["detections"], "the random detector finds something at 0.005"
        assert_same(r.json()["results"], want)

        # a corrupt image in a batch fails alone, with the same code and message
        r = c.post("/segment", files=_files(IMAGE_A, CORRUPT, IMAGE_B))
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert results[1]["error"]["code"] == "undecodable_image"
        assert_same(results, stack.reference(SEG, [IMAGE_A, CORRUPT, IMAGE_B]))

        for fmt in ("png", "overlay"):
            r = c.post(
                "/segment",
                params={"format": fmt},
                content=IMAGE_A,
                headers={"Content-Type": "image/png"},
            )
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "image/png"
            assert r.content == stack.reference(SEG, [IMAGE_A], format=fmt)[0]["data"]

        # one corrupt image: the request fails with that image's 4xx
        r = c.post("/classify", content=CORRUPT, headers={"Content-Type": "image/png"})
        assert r.status_code == 400, r.text
        want_err = stack.reference(CLS, [CORRUPT])[0]["error"]
        assert r.json()["error"]["code"] == want_err["code"] == "undecodable_image"
        assert r.json()["error"]["message"] == want_err["message"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_open_inference_protocol_rest_and_grpc(stack: Stack, backend: str) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    gw = stack.gateways[backend]
    images = [IMAGE_B, CORRUPT, IMAGE_A]
    want = stack.reference(DET, images)
    for module, client in (
        (httpclient, httpclient.InferenceServerClient(gw.url.removeprefix("http://"))),
        (grpcclient, grpcclient.InferenceServerClient(gw.grpc_url)),
    ):
        try:
            assert_same(_oip_infer(module, client, DET, images), want)
            assert client.is_model_ready(DET)
        finally:
            client.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_instance_masks_through_rest_and_oip_grpc(stack: Stack, backend: str) -> None:
    import tritonclient.grpc as grpcclient

    gw = stack.gateways[backend]
    images = [IMAGE_A, IMAGE_B]
    want = stack.reference(MASK, images)
    for result, (h, w) in zip(want, ((180, 240), (300, 200)), strict=True):
        assert result["detections"], "the random Mask R-CNN finds something at 0.05"
        for det in result["detections"]:  # COCO RLE in original-image pixels
            assert det["mask"]["size"] == [h, w] and det["mask"]["counts"]
    with httpx.Client(base_url=gw.url, timeout=60) as c:
        r = c.post("/detect", params={"model": MASK}, files=_files(*images))
        assert r.status_code == 200, r.text
        assert_same(r.json()["results"], want)
        r = c.post(
            "/detect",
            params={"model": MASK, "format": "png"},
            content=IMAGE_A,
            headers={"Content-Type": "image/png"},
        )
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
        assert r.content == stack.reference(MASK, [IMAGE_A], format="png")[0]["data"]
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    try:
        assert_same(_oip_infer(grpcclient, client, MASK, images), want)
    finally:
        client.close()


def _oip_infer(module: Any, client: Any, model: str, images: list[bytes]) -> list[Any]:
    """An OIP v2 ModelInfer (tritonclient ``module``: http or grpc) of encoded images: the
    decoded JSON answer per image."""
    inp = module.InferInput("IMAGE", [len(images)], "BYTES")
    inp.set_data_from_numpy(np.array(images, dtype=np.object_))
    return [json.loads(x) for x in client.infer(model, [inp]).as_numpy("RESULT")]


def _wait(predicate: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def test_torchserve_down_gives_503_and_it_recovers(stack: Stack) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    gw, ts = stack.gateways["torchserve"], stack.torchserve
    old_key = ts.token
    ts.kill()
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        # the first request may be the one that finds TorchServe gone: 503 either way
        r = c.post("/classify", content=IMAGE_A, headers={"Content-Type": "image/png"})
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"]
        assert f"TorchServe backend unavailable at {ts.grpc}" in r.json()["error"]["message"]
        _wait(lambda: c.get("/v2/health/ready").status_code == 503, 10, "readiness false")
        models = c.get("/models").json()
        assert models["ready"] is False
        for m in models["models"]:
            assert m["state"] == "unavailable", m
            assert f"TorchServe backend unavailable at {ts.grpc}" in m["error"]
        assert c.get("/v2/health/live").status_code == 200
        assert c.get(f"/v2/models/{SEG}/ready").status_code == 503
        r = c.post("/segment", files=_files(IMAGE_A))
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "not_ready"
        assert "TorchServe backend unavailable" in r.json()["error"]["message"]
        assert 'sepvit_model_ready{model="sepvit_lite_shapes_det"} 0.0' in c.get("/metrics").text
        g = grpcclient.InferenceServerClient(gw.grpc_url)
        try:
            inp = grpcclient.InferInput("IMAGE", [1], "BYTES")
            inp.set_data_from_numpy(np.array([IMAGE_A], dtype=np.object_))
            with pytest.raises(InferenceServerException) as err:
                g.infer(DET, [inp])
            assert err.value.status() == "StatusCode.UNAVAILABLE"
            assert "TorchServe backend unavailable" in str(err.value.message())
        finally:
            g.close()
        # the embedded gateway does not care
        r = httpx.post(
            f"{stack.gateways['embedded'].url}/classify",
            content=IMAGE_A,
            headers={"Content-Type": "image/png"},
            timeout=30,
        )
        assert r.status_code == 200

        # TorchServe comes back on the same ports, with a new key in key_file.json
        ts.start()
        assert ts.token != old_key
        _wait(lambda: c.get("/v2/health/ready").status_code == 200, 30, "readiness true")
        r = c.post("/classify", files=_files(IMAGE_A, IMAGE_B))
        assert r.status_code == 200, r.text
        assert_same(r.json()["results"], stack.reference(CLS, [IMAGE_A, IMAGE_B]))
        assert 'sepvit_model_ready{model="sepvit_lite_shapes_det"} 1.0' in c.get("/metrics").text
