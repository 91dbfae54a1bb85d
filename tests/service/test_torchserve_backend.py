"""The torchserve backend against an in-process fake TorchServe (gRPC ``InferenceAPIsService``):
forwarding, parameters, name mapping, error mapping, the key file, readiness and recovery.
Fast and Java-free; ``tests/integration/test_gateway_torchserve.py`` runs the real thing."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from handlers.errors import ImageDecodeError, ImageTooLargeError, PipelineError
from service.app import create_app
from service.errors import BackendError, describe
from service.loader import load_settings
from service.processes import free_port
from service.torchserve import torchserve_inference_pb2 as pb
from service.torchserve import torchserve_inference_pb2_grpc as pb_grpc
from service.torchserve.backend import TokenSource, parse_prediction

from .conftest import png

PNG = b"\x89PNG\r\n\x1a\n" + b"rest of a png"


class FakeTorchServe(pb_grpc.InferenceAPIsServiceServicer):
    """Answers like TorchServe 0.12 with the SepViT handler; special payloads misbehave."""

    def __init__(self, key: str, models: set[str]) -> None:
        self.key = key
        self.models = models
        self.health = "Healthy"
        self.calls: list[tuple[str, dict[str, bytes]]] = []
        self.lock = threading.Lock()

    def _auth(self, context: grpc.ServicerContext) -> None:
        md = dict(context.invocation_metadata())
        if md.get("authorization") != f"Bearer {self.key}":
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "Token Authorization failed. Token either incorrect, expired, or not provided "
                "correctly",
            )

    def Ping(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._auth(context)
        return pb.TorchServeHealthResponse(health=json.dumps({"status": self.health}, indent=2))

    def Predictions(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._auth(context)
        inputs = dict(request.input)
        with self.lock:
            self.calls.append((request.model_name, inputs))
        if request.model_name not in self.models:
            context.abort(
                grpc.StatusCode.INTERNAL,
                f"Model not found: {request.model_name}\n"
                "org.pytorch.serve.archive.model.ModelNotFoundException",
            )
        data = inputs.get("data")
        if data is None:
            err = {"code": "undecodable_image", "message": "no image in the request"}
            return pb.PredictionResponse(prediction=json.dumps({"error": err}).encode())
        if data == b"slow":
            time.sleep(2.0)
        if data == b"full":
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "job queue is full")
        if data == b"crash":
            context.abort(grpc.StatusCode.INTERNAL, "Worker died.")
        if data == b"garbage":
            return pb.PredictionResponse(prediction=b"\x00\x01 not json")
        if data == b"huge":
            err = {"code": "image_too_large", "message": "image has too many pixels"}
            return pb.PredictionResponse(prediction=json.dumps({"error": err}).encode())
        if data == b"png":
            return pb.PredictionResponse(prediction=PNG)
        params = {k: v.decode() for k, v in inputs.items() if k != "data"}
        result = {"top_k": [{"label": "circle", "index": 0, "score": 1.0}], "params": params}
        return pb.PredictionResponse(prediction=json.dumps(result, indent=2).encode())


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakeTorchServe, str, Path]]:
    """A fake TorchServe on a free port, its address, and its key_file.json."""
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "k1"}, "management": {"key": "m"}}))
    servicer = FakeTorchServe("k1", {"ts_cls", "det"})
    server = grpc.server(futures.ThreadPoolExecutor(8))
    pb_grpc.add_InferenceAPIsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}", key_file
    finally:
        server.stop(None)


def _app(checkpoints: dict[str, Path], address: str, **overrides: Any) -> Any:
    models = [
        {"name": "cls", "checkpoint": str(checkpoints["cls"])},
        # no checkpoint here: the task says what it serves
        {"name": "det", "checkpoint": "/nonexistent/model.safetensors", "task": "detect"},
    ]
    settings = load_settings(
        models=models,
        backend="torchserve",
        torchserve_address=address,
        torchserve_models={"cls": "ts_cls"},
        torchserve_health_interval_s=0.05,
        torchserve_timeout_s=1.0,
        grpc_port=None,
        **overrides,
    )
    return create_app(settings)


def _wait(predicate: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def _ready(client: TestClient) -> bool:
    return bool(client.get("/v2/health/ready").status_code == 200)


def _post(client: TestClient, route: str, *images: bytes, **params: Any) -> Any:
    files = [("file", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]
    return client.post(route, params=params, files=files)


def test_forwards_images_and_parameters_with_the_key_from_key_file(
    checkpoints: dict[str, Path], fake: tuple[FakeTorchServe, str, Path]
) -> None:
    servicer, address, key_file = fake
    with TestClient(_app(checkpoints, address, torchserve_token_file=key_file)) as client:
        _wait(lambda: _ready(client))
        image = png()
        r = _post(client, "/classify", image, image, top_k=2)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [res["params"] for res in results] == [{"top_k": "2"}] * 2
        sent = [(name, inputs) for name, inputs in servicer.calls if "data" in inputs]
        assert [name for name, _ in sent] == ["ts_cls", "ts_cls"]  # the mapped name, one per image
        assert all(inputs["data"] == image for _, inputs in sent)
        # metadata comes from the local checkpoint (or the model entry)
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert models["cls"]["task"] == "classify"
        assert models["cls"]["labels"][0] == "circle"
        assert models["cls"]["input_size"] == [64, 64]
        assert models["cls"]["batching"]["torchserve_model"] == "ts_cls"
        assert models["det"]["task"] == "detect" and models["det"]["labels"] is None
        # TorchServe writes a new key (restart, or a key regenerated after it expired)
        servicer.key = "k2"
        key_file.write_text(json.dumps({"inference": {"key": "k2"}}))
        r = _post(client, "/classify", image)
        assert r.status_code == 200, r.text
        # a new key of the same size whose file keeps its time stamp (coarse file-system
        # times): the refused call reads the file again and is sent once more
        stamp = key_file.stat()
        servicer.key = "k3"
        key_file.write_text(json.dumps({"inference": {"key": "k3"}}))
        os.utime(key_file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        r = _post(client, "/classify", image)
        assert r.status_code == 200, r.text


def test_answers_and_errors_map_like_the_embedded_backend(
    checkpoints: dict[str, Path], fake: tuple[FakeTorchServe, str, Path]
) -> None:
    _, address, _ = fake
    with TestClient(_app(checkpoints, address, torchserve_token=SecretStr("k1"))) as client:
        _wait(lambda: _ready(client))
        # a per-image error body keeps its type: 413 alone, its own slot in a batch
        r = _post(client, "/classify", b"huge")
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "image_too_large"
        r = _post(client, "/classify", png(), b"huge")
        assert r.status_code == 200
        assert r.json()["results"][1]["error"]["code"] == "image_too_large"
        # PNG bytes come back as an image
        r = client.post("/detect", content=b"png", headers={"Content-Type": "image/png"})
        assert r.status_code == 200 and r.content == PNG
        assert r.headers["content-type"] == "image/png"
        # TorchServe's own failures
        r = _post(client, "/classify", b"full")
        assert r.status_code == 429 and r.headers["retry-after"]
        r = _post(client, "/classify", b"crash")
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "backend_error"
        assert "Worker died" in r.json()["error"]["message"]
        r = _post(client, "/classify", b"garbage")
        assert r.status_code == 502
        r = _post(client, "/classify", b"slow")  # torchserve_timeout_s=1
        assert r.status_code == 504
        r = client.post(
            "/classify",
            content=b"slow",
            headers={"Content-Type": "image/png", "X-Request-Timeout": "0.2"},
        )
        assert r.status_code == 504
        assert _ready(client)  # none of these is an outage


def test_unknown_model_wrong_key_and_no_server_keep_it_unready_with_the_reason(
    checkpoints: dict[str, Path], fake: tuple[FakeTorchServe, str, Path]
) -> None:
    servicer, address, _ = fake
    servicer.models = {"det"}  # TorchServe does not serve ts_cls
    with TestClient(_app(checkpoints, address, torchserve_token=SecretStr("k1"))) as client:
        _wait(lambda: client.get("/v2/models/det/ready").status_code == 200)
        assert not _ready(client)
        cls = next(m for m in client.get("/models").json()["models"] if m["name"] == "cls")
        assert cls["state"] == "unavailable"
        assert "serves no model 'ts_cls'" in cls["error"]
        r = _post(client, "/classify", png())
        assert r.status_code == 503 and "serves no model 'ts_cls'" in r.json()["error"]["message"]
        servicer.models.add("ts_cls")  # registered later: ready without a restart
        _wait(lambda: _ready(client))
        servicer.key = "other"  # the key changed and nobody told the gateway
        r = _post(client, "/classify", png())
        assert r.status_code == 503
        assert "refused the inference key" in r.json()["error"]["message"]
        _wait(lambda: not _ready(client))
    port = free_port()  # nothing listens here
    with TestClient(_app(checkpoints, f"127.0.0.1:{port}")) as client:
        _wait(lambda: client.get("/models").json()["models"][0]["state"] == "unavailable")
        r = _post(client, "/classify", png())
        assert r.status_code == 503
        msg = r.json()["error"]["message"]
        assert f"TorchServe backend unavailable at 127.0.0.1:{port}" in msg, msg


def test_unhealthy_ping_probes_every_model(
    checkpoints: dict[str, Path], fake: tuple[FakeTorchServe, str, Path]
) -> None:
    servicer, address, _ = fake
    with TestClient(_app(checkpoints, address, torchserve_token=SecretStr("k1"))) as client:
        _wait(lambda: _ready(client))

        def probes() -> int:
            return sum(1 for _, inputs in servicer.calls if "data" not in inputs)

        before = probes()
        time.sleep(0.3)
        assert probes() == before  # healthy and probed: Ping only
        servicer.health = "Unhealthy"
        _wait(lambda: probes() >= before + 4)  # both models, again and again
        assert _ready(client)  # each model still answers


def test_parse_prediction() -> None:
    assert parse_prediction(b'{"top_k": []}') == {"top_k": []}
    assert parse_prediction(PNG) == {"media_type": "image/png", "data": PNG}
    err = parse_prediction(b'{"error": {"code": "undecodable_image", "message": "bad"}}')
    assert type(err) is ImageDecodeError and err.message == "bad"
    err = parse_prediction(b'{"error": {"code": "image_too_large", "message": "big"}}')
    assert type(err) is ImageTooLargeError and describe(err).http_status == 413
    err = parse_prediction(b'{"error": {"code": "brand_new", "message": "?"}}')
    assert type(err) is PipelineError and err.code == "brand_new"
    assert describe(err).http_status == 400 and describe(err).code == "brand_new"
    for junk in (b"\x00junk", b"[1, 2]", b""):
        with pytest.raises(BackendError):
            parse_prediction(junk)


def test_token_source(tmp_path: Path) -> None:
    assert TokenSource(None, None).get() is None
    assert TokenSource(SecretStr("t"), None).get() == "t"
    path = tmp_path / "key"
    src = TokenSource(SecretStr("fallback"), path)
    assert src.get() == "fallback"  # no file yet
    path.write_text("plain-key\n")
    assert src.get() == "plain-key"
    path.write_text(json.dumps({"inference": {"key": "from-json", "expiration time": "x"}}))
    assert src.get() == "from-json"
    path.write_text('{"inference": ')  # half-written: the last good key stays
    assert src.get() == "from-json"


def test_proto_matches_torchserves_own(tmp_path: Path) -> None:
    """Field numbers and types of the committed stubs against the jar's inference.proto."""
    pytest.importorskip("ts")
    pytest.importorskip("grpc_tools")
    from tests.torchserve_grpc import load_stubs

    theirs, _ = load_stubs(tmp_path / "proto")
    for name in ("PredictionsRequest", "PredictionResponse", "TorchServeHealthResponse"):
        ours_d = pb.DESCRIPTOR.message_types_by_name[name]
        theirs_d = theirs.DESCRIPTOR.message_types_by_name[name]
        assert ours_d.full_name == theirs_d.full_name
        for field in ours_d.fields:
            other = theirs_d.fields_by_name[field.name]
            assert (field.number, field.type, field.is_repeated, field.has_presence) == (
                other.number,
                other.type,
                other.is_repeated,
                other.has_presence,
            ), (name, field.name)
    ours_s = pb.DESCRIPTOR.services_by_name["InferenceAPIsService"]
    theirs_s = theirs.DESCRIPTOR.services_by_name["InferenceAPIsService"]
    assert ours_s.full_name == theirs_s.full_name
    for method in ours_s.methods:
        other = theirs_s.methods_by_name[method.name]
        assert method.output_type.full_name == other.output_type.full_name
        assert len(method.input_type.fields) == len(other.input_type.fields)
