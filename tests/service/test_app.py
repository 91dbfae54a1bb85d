"""The gateway in-process (Starlette TestClient, lifespan included): routes, errors, limits,
auth, request IDs, OIP v2 REST (JSON and binary), metrics. Random-weight 64 px models."""

from __future__ import annotations

import base64
import io
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from handlers.outputs import rle_decode
from service.app import create_app
from service.loader import load_settings
from service.processes import free_port

from .conftest import model_entries, png

CLASSES = ["circle", "square", "triangle", "star", "hexagon", "cross", "ellipse", "pentagon"]


def solid_png(h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


def make_client(checkpoints: dict[str, Path], **settings: Any) -> TestClient:
    base: dict[str, Any] = {
        "grpc_port": None,
        "max_images_per_request": 4,
        "max_body_bytes": 2_000_000,
        "max_pixels": 1_000_000,
    }
    s = load_settings(models=model_entries(checkpoints), **{**base, **settings})
    return TestClient(create_app(s), raise_server_exceptions=False)


def wait_ready(client: TestClient) -> None:
    import time

    for _ in range(600):
        if client.get("/v2/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(client.get("/models").json())


@pytest.fixture(scope="module")
def client(checkpoints: dict[str, Path]) -> Iterator[TestClient]:
    with make_client(checkpoints) as c:
        wait_ready(c)
        yield c


def files(*payloads: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (f"{i}.png", p, "image/png")) for i, p in enumerate(payloads)]


def assert_error(resp: Any, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    assert body["code"] == code
    assert body["request_id"] == resp.headers["x-request-id"]
    return body


def test_classify_multipart_batch_with_a_bad_image(client: TestClient) -> None:
    r = client.post("/classify?top_k=3", files=files(png(seed=1), b"garbage", png(70, 30, 2)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "cls" and body["task"] == "classify"
    ok1, bad, ok2 = body["results"]
    assert bad["error"]["code"] == "undecodable_image"
    for ok in (ok1, ok2):
        assert len(ok["top_k"]) == 3
        assert all(e["label"] in CLASSES for e in ok["top_k"])
        scores = [e["score"] for e in ok["top_k"]]
        assert scores == sorted(scores, reverse=True)
    # a raw image/* body gives the same answer as the same image in a multipart batch
    alone = client.post(
        "/classify?top_k=3", content=png(seed=1), headers={"content-type": "image/png"}
    )
    assert alone.json()["results"][0]["top_k"][0]["index"] == ok1["top_k"][0]["index"]
    assert alone.json()["results"][0]["top_k"][0]["score"] == pytest.approx(
        ok1["top_k"][0]["score"], abs=1e-4
    )


def test_detect_and_segment_outputs_are_in_original_pixels(client: TestClient) -> None:
    img = png(40, 100, 3)
    r = client.post("/detect?score_threshold=0.0", files=files(img))
    assert r.status_code == 200, r.text
    dets = r.json()["results"][0]["detections"]
    assert dets, "threshold 0 keeps the top detections"
    for d in dets:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 < x2 <= 100 and 0 <= y1 < y2 <= 40
        assert d["label"] in CLASSES
    r = client.post("/segment", files=files(img))
    segs = r.json()["results"][0]["segments"]
    area = 0
    for s in segs:
        mask = rle_decode(s["rle"])
        assert mask.shape == (40, 100) and int(mask.sum()) == s["area"]
        assert s["label"] in CLASSES  # background is left out
        area += s["area"]
    assert area <= 40 * 100
    r = client.post("/segment?format=png", files=files(img))
    assert r.headers["content-type"] == "image/png" and r.content.startswith(b"\x89PNG")
    r = client.post("/segment?format=overlay", files=files(img, img))
    item = r.json()["results"][1]
    assert item["media_type"] == "image/png"
    assert base64.b64decode(item["data_base64"]).startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("url", "kwargs", "status", "code"),
    [
        ("/classify", {"files": files(b"not an image")}, 400, "undecodable_image"),
        ("/classify?top_k=0", {"files": files(png())}, 400, "bad_parameter"),
        ("/classify?top_k=abc", {"files": files(png())}, 400, "bad_parameter"),
        ("/detect?score_threshold=2", {"files": files(png())}, 400, "bad_parameter"),
        ("/classify?format=png", {"files": files(png())}, 400, "bad_parameter"),
        ("/segment?format=jpeg", {"files": files(png())}, 400, "bad_parameter"),
        ("/classify?model=nope", {"files": files(png())}, 404, "model_not_found"),
        ("/classify?model=det", {"files": files(png())}, 400, "bad_request"),
        (
            "/classify",
            {"content": b"hi", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        ("/classify", {"files": files(*[png()] * 5)}, 413, "payload_too_large"),
        (
            "/classify",
            {"content": b"x" * 2_100_000, "headers": {"content-type": "image/png"}},
            413,
            "payload_too_large",
        ),
        ("/classify", {"files": files(solid_png(1100, 1000))}, 413, "image_too_large"),
        ("/classify", {"files": {"note": (None, b"text")}}, 400, "bad_request"),
        ("/classify", {"data": {"a": "b"}}, 415, "unsupported_media_type"),
        ("/nowhere", {}, 404, "not_found"),
    ],
)
def test_errors_map_to_statuses(
    client: TestClient, url: str, kwargs: dict, status: int, code: str
) -> None:
    r = client.post(url, **kwargs)
    assert_error(r, status, code)


def test_request_id_is_honoured_or_made(client: TestClient) -> None:
    r = client.get("/models", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = client.get("/models", headers={"X-Request-ID": "bad id\twith junk"})
    assert r.headers["x-request-id"] != "bad id\twith junk" and len(r.headers["x-request-id"]) == 32


def test_models_listing(client: TestClient) -> None:
    body = client.get("/models").json()
    assert body["ready"] is True
    by_name = {m["name"]: m for m in body["models"]}
    assert by_name["cls"]["task"] == "classify" and by_name["cls"]["labels"] == CLASSES
    assert by_name["seg"]["labels"][0] == "background"
    assert by_name["det"]["runtime"] == "eager"
    assert by_name["det"]["batching"] == {
        "max_batch_size": 8,
        "max_delay_ms": 5.0,
        "adaptive": True,
        "pipelining": True,
        "max_queue": 64,
    }


def _bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def test_oip_rest_json_and_binary(client: TestClient) -> None:
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "statistics"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/models/cls/ready").status_code == 200
    meta = client.get("/v2/models/det").json()
    assert meta["inputs"][0]["datatype"] == "BYTES" and meta["outputs"][0]["name"] == "RESULT"
    images = [png(seed=5), b"junk"]
    doc = {
        "id": "req-1",
        "parameters": {"top_k": 2},
        "inputs": [
            {
                "name": "IMAGE",
                "shape": [2],
                "datatype": "BYTES",
                "data": [base64.b64encode(b).decode() for b in images],
            }
        ],
    }
    r = client.post("/v2/models/cls/infer", json=doc)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "req-1" and out["model_name"] == "cls"
    results = [json.loads(s) for s in out["outputs"][0]["data"]]
    assert len(results[0]["top_k"]) == 2 and results[1]["error"]["code"] == "undecodable_image"
    # binary-data extension, both ways
    raw = _bytes_tensor(images)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "IMAGE",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "RESULT", "parameters": {"binary_data": True}}],
            "parameters": {"top_k": 2},
        }
    ).encode()
    r = client.post(
        "/v2/models/cls/infer",
        content=head + raw,
        headers={
            "Inference-Header-Content-Length": str(len(head)),
            "content-type": "application/octet-stream",
        },
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    out = json.loads(r.content[:n])
    blob = r.content[n:]
    assert out["outputs"][0]["parameters"]["binary_data_size"] == len(blob)
    first_len = struct.unpack_from("<I", blob)[0]
    assert json.loads(blob[4 : 4 + first_len]) == results[0]


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"{", {}),
        (b"[]", {}),
        (b'{"inputs": []}', {}),
        (b'{"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "FP32", "data": [1]}]}', {}),
        (
            b'{"inputs": [{"name": "IMAGE", "shape": [2], "datatype": "BYTES", "data": ["aGk="]}]}',
            {},
        ),
        (
            b'{"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}',
            {},
        ),
        (
            b'{"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", '
            b'"parameters": {"binary_data_size": 10}}]}',
            {"Inference-Header-Content-Length": "90"},
        ),
        (
            b'{"inputs": [{"name": "I", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}], '
            b'"outputs": [{"name": "OTHER"}]}',
            {},
        ),
        (b"{}", {"Inference-Header-Content-Length": "x"}),
    ],
)
def test_oip_rest_bad_requests_are_400(client: TestClient, body: bytes, headers: dict) -> None:
    r = client.post("/v2/models/cls/infer", content=body, headers=headers)
    assert r.status_code == 400, r.text
    err = r.json()
    assert isinstance(err["error"], str) and err["request_id"]  # the OIP error shape


def test_oip_unknown_model_and_version(client: TestClient) -> None:
    assert client.get("/v2/models/nope").status_code == 404
    assert client.get("/v2/models/cls/versions/1").status_code == 200
    assert client.get("/v2/models/cls/versions/7").status_code == 404


def test_metrics_names_and_movement(client: TestClient) -> None:
    def value(text: str, prefix: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
        )

    before = client.get("/metrics").text
    client.post("/classify", files=files(png(seed=9), b"bad"))
    text = client.get("/metrics").text
    for name in [
        "sepvit_requests_total",
        "sepvit_request_duration_seconds_bucket",
        "sepvit_in_flight_requests",
        "sepvit_queue_wait_seconds_bucket",
        "sepvit_queue_depth",
        "sepvit_batch_size_bucket",
        "sepvit_phase_duration_seconds_bucket",
        "sepvit_rejected_requests_total",
        "sepvit_decode_errors_total",
        "sepvit_model_ready",
        "sepvit_images_total",
    ]:
        assert (
            f"\n{name}" in text
            or text.startswith(name)
            or f"# TYPE {name.rsplit('_bucket')[0]}" in text
        ), name
    req = 'sepvit_requests_total{code="200",route="/classify"}'
    assert value(text, req) == value(before, req) + 1
    dec = 'sepvit_decode_errors_total{model="cls"}'
    assert value(text, dec) == value(before, dec) + 1
    for phase in ("preprocess", "inference", "postprocess"):
        assert f'sepvit_phase_duration_seconds_count{{model="cls",phase="{phase}"}}' in text
    assert 'sepvit_model_ready{model="seg"} 1.0' in text


def test_no_500_for_hostile_input(client: TestClient) -> None:
    """A small, deterministic fuzz of every route with junk bodies, types and parameters."""
    rng = np.random.default_rng(0)
    routes = [
        ("POST", "/classify"),
        ("POST", "/detect"),
        ("POST", "/segment"),
        ("POST", "/v2/models/cls/infer"),
        ("POST", "/v2/models/seg/infer"),
        ("GET", "/v2/models/cls"),
        ("GET", "/models"),
        ("GET", "/v2/models/%00/ready"),
    ]
    bodies = [
        b"",
        b"\x00" * 10,
        bytes(rng.integers(0, 256, 300, dtype=np.uint8)),
        b"{}",
        b'{"inputs": null}',
        png()[:50],
        b"--x\r\nContent-Disposition: form-data\r\n\r\n",
    ]
    ctypes = [
        "image/png",
        "multipart/form-data; boundary=x",
        "application/json",
        "multipart/form-data",
        "text/plain",
        "image/jpeg",
    ]
    queries = [
        "",
        "?top_k=-1",
        "?top_k=1e9",
        "?score_threshold=nan",
        "?model=",
        "?format=",
        "?model=" + "m" * 100,
    ]
    for method, route in routes:
        for body in bodies:
            for ctype in ctypes:
                q = queries[int(rng.integers(len(queries)))]
                r = client.request(method, route + q, content=body, headers={"content-type": ctype})
                assert r.status_code < 500, (method, route + q, ctype, body[:20], r.text)


def test_auth(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("from-file\n")
    with make_client(checkpoints, auth_tokens=["s3cret"], auth_token_file=token_file) as c:
        assert c.get("/v2/health/live").status_code == 200  # liveness needs no token
        r = c.get("/models")
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error(c.get("/models", headers={"Authorization": "Bearer nope"}), 403, "forbidden")
        assert_error(
            c.get("/metrics", headers={"Authorization": "Basic s3cret"}), 401, "unauthorized"
        )
        assert c.get("/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/metrics", headers={"Authorization": "bearer from-file"}).status_code == 200
        r = c.get("/v2/health/ready")
        assert r.status_code == 401 and isinstance(r.json()["error"], str)


def test_failed_model_is_reported_and_503(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    models = model_entries(checkpoints)
    models.append({"name": "missing", "checkpoint": str(tmp_path / "none.safetensors")})
    s = load_settings(models=models, grpc_port=None)
    with TestClient(create_app(s)) as c:
        for _ in range(600):
            states = {m["name"]: m["state"] for m in c.get("/models").json()["models"]}
            if "loading" not in states.values():
                break
            import time

            time.sleep(0.05)
        assert states == {"cls": "ready", "det": "ready", "seg": "ready", "missing": "failed"}
        assert c.get("/v2/health/ready").status_code == 503  # every model must load
        r = c.post("/classify?model=missing", files=files(png()))
        body = assert_error(r, 503, "not_ready")
        assert "not found" in body["message"] and r.headers["retry-after"] == "1"
        assert c.post("/classify", files=files(png())).status_code == 200  # others still serve


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "g.yaml"
    cfg.write_text("port: 9001\nmax_queue: 7\nlog_level: warning\n")
    monkeypatch.setenv("SEPVIT_PORT", "9002")
    s = load_settings(cfg)
    assert (s.port, s.max_queue, s.log_level) == (9002, 7, "warning")
    assert load_settings(cfg, port=9003).port == 9003
    monkeypatch.setenv("SEPVIT_CONFIG_FILE", str(cfg))
    assert load_settings().max_queue == 7
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  - {name: a, checkpoint: a.safetensors, max_batch_size: 4}\n")
    s = load_settings(models_file=models)
    assert [m.name for m in s.models] == ["a"] and s.models[0].max_batch_size == 4
    assert [m.name for m in load_settings(models_file=None).models] == [
        "sepvit_lite_shapes_cls",
        "sepvit_lite_shapes_det",
        "sepvit_lite_shapes_seg",
    ]
    with pytest.raises(ValueError):
        load_settings(models=[{"name": "a", "checkpoint": "x"}, {"name": "a", "checkpoint": "y"}])


def test_cli_refuses_bad_configuration(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.cli import main

    assert main(["--port", "99999"]) == 2
    assert "invalid configuration" in capsys.readouterr().err
    monkeypatch.setenv("SEPVIT_TORCHSERVE_MODELS", '{"no_such_model": "x"}')
    assert main(["--backend", "torchserve"]) == 2
    assert "torchserve_models names models that are not configured" in capsys.readouterr().err


def test_concurrency_limit_is_shared_by_http_and_grpc(checkpoints: dict[str, Path]) -> None:
    """``max_concurrent_requests`` is one budget: requests in flight on one transport count
    against the other (each used to keep its own counter)."""
    import tritonclient.grpc as grpcclient

    port = free_port()
    with make_client(checkpoints, grpc_port=port, max_concurrent_requests=2) as c:
        wait_ready(c)
        limit = c.app.state.limit  # type: ignore[attr-defined]
        limit.acquire()  # one request in flight (say, over gRPC) ...
        r = c.post("/classify?model=cls", content=png(), headers={"content-type": "image/png"})
        assert r.status_code == 200  # ... leaves room for one more
        limit.acquire()  # a second in flight: the budget is spent for both transports
        assert_error(
            c.post("/classify?model=cls", content=png(), headers={"content-type": "image/png"}),
            503,
            "overloaded",
        )
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        inp = grpcclient.InferInput("IMAGE", [1], "BYTES")
        inp.set_data_from_numpy(np.array([png()], dtype=np.object_))
        with pytest.raises(grpcclient.InferenceServerException) as err:
            client.infer("cls", [inp])
        assert "UNAVAILABLE" in str(err.value.status()) and "concurrent" in str(err.value)
        limit.release()
        limit.release()
        assert (
            c.post(
                "/classify?model=cls", content=png(), headers={"content-type": "image/png"}
            ).status_code
            == 200
        )
        assert limit.active == 0


def test_pipelining_off_gives_the_same_answers(
    client: TestClient, checkpoints: dict[str, Path]
) -> None:
    body = files(png(seed=1), b"garbage", png(70, 30, 2))
    with make_client(checkpoints, pipelining=False) as plain:
        wait_ready(plain)
        assert plain.get("/models").json()["models"][0]["batching"]["pipelining"] is False
        off = plain.post("/classify?top_k=3", files=body)
    on = client.post("/classify?top_k=3", files=body)
    assert off.status_code == on.status_code == 200
    assert off.json()["results"] == on.json()["results"]


def test_only_small_answers_are_rendered_on_the_event_loop() -> None:
    from handlers.errors import PipelineError
    from service.dataplane import InferenceResponse
    from service.rest import ON_LOOP_ENTRIES, small

    def resp(*results: Any) -> InferenceResponse:
        return InferenceResponse("m", "classify", list(results))

    top = {"top_k": [{"label": "a", "index": 0, "score": 0.5}] * 5}
    rle = {"size": [4, 4], "counts": "x"}
    assert small(resp(top, top, PipelineError("bad image")))
    assert not small(resp({"top_k": top["top_k"] * (ON_LOOP_ENTRIES // 5 + 1)}))
    assert small(resp({"detections": [{"label": "a", "box": [0, 0, 1, 1]}]}))
    assert not small(resp({"detections": [{"label": "a", "box": [0, 0, 1, 1], "mask": rle}]}))
    assert not small(resp({"segments": [{"label": "a", "area": 3, "rle": rle}]}))
    assert not small(resp({"media_type": "image/png", "data": b"\x89PNG"}))
