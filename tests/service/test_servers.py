"""Real gateway processes on 127.0.0.1 (uvicorn + gRPC), driven by real clients: tritonclient
(http and grpc, unchanged), httpx. Random-weight models; answers are checked for shape and
consistency, not accuracy (see test_demo_models.py for that)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import signal
import threading
import time
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from tritonclient.utils import InferenceServerException

from service.app import create_app
from service.loader import load_settings
from service.processes import GatewayProcess, free_port

from .conftest import model_entries, png, start_gateway

pytestmark = pytest.mark.integration

BATCHING = {"max_batch_size": 8, "max_delay_ms": 25}
SLOW = {"max_batch_size": 1, "max_delay_ms": 0, "max_queue": 2}


@pytest.fixture(scope="module")
def gateway(
    checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    models = model_entries(checkpoints, cls=BATCHING, det=BATCHING, seg=BATCHING, slow=SLOW)
    gw = start_gateway(tmp_path_factory.mktemp("gw"), models, max_concurrent_requests=256)
    try:
        yield gw
    finally:
        gw.stop()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def requests_by_class(text: str) -> dict[str, float]:
    """``sepvit_requests_total`` summed by the first digit of the HTTP code."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("sepvit_requests_total{") and 'code="' in line:
            digit = line.split('code="')[1][0]
            out[digit] = out.get(digit, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def batch_input(module: Any, images: list[bytes]) -> Any:
    inp = module.InferInput("IMAGE", [len(images)], "BYTES")
    inp.set_data_from_numpy(np.array(images, dtype=np.object_))
    return inp


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_tritonclient_unchanged_all_tasks(gateway: GatewayProcess, module: Any) -> None:
    url = gateway.url.removeprefix("http://") if module is httpclient else gateway.grpc_url
    client = module.InferenceServerClient(url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("seg")
        if module is httpclient:
            assert not client.is_model_ready("nope")  # 404
        else:
            with pytest.raises(InferenceServerException, match="NOT_FOUND"):
                client.is_model_ready("nope")
        meta = client.get_server_metadata()
        name = meta["name"] if isinstance(meta, dict) else meta.name
        assert name == "sepvit-serving"
        images = [png(50, 70, 1), b"corrupt", png(64, 32, 2)]
        expect = {"cls": "top_k", "det": "detections", "seg": "segments"}
        for model, key in expect.items():
            result = client.infer(
                model,
                [batch_input(module, images)],
                outputs=[module.InferRequestedOutput("RESULT")],
                parameters={"top_k": 2, "score_threshold": 0.0} if model != "seg" else None,
            )
            out = [json.loads(x) for x in result.as_numpy("RESULT")]
            assert len(out) == 3, model
            assert out[1]["error"]["code"] == "undecodable_image"
            assert key in out[0] and key in out[2]
            if model == "cls":
                assert len(out[0]["top_k"]) == 2
        with pytest.raises(InferenceServerException) as err:
            client.infer("nope", [batch_input(module, images)])
        assert "unknown model" in str(err.value)
        bad = module.InferInput("IMAGE", [1], "FP32")
        bad.set_data_from_numpy(np.zeros(1, np.float32))
        with pytest.raises(InferenceServerException) as err:
            client.infer("cls", [bad])
        assert ("INVALID_ARGUMENT" in str(err.value.status())) or err.value.status() == "400"
    finally:
        client.close()


def test_rest_task_routes_match_oip(gateway: GatewayProcess) -> None:
    img = png(80, 60, 4)
    with httpx.Client(base_url=gateway.url, timeout=30) as c:
        r = c.post(
            "/classify?top_k=3",
            files=[("file", ("a.png", img, "image/png"))],
            headers={"X-Request-ID": "trace-1"},
        )
        assert r.status_code == 200 and r.headers["x-request-id"] == "trace-1"
        client = grpcclient.InferenceServerClient(gateway.grpc_url)
        res = client.infer("cls", [batch_input(grpcclient, [img])], parameters={"top_k": 3})
        client.close()
        via_grpc = json.loads(res.as_numpy("RESULT")[0])
        assert [e["index"] for e in via_grpc["top_k"]] == [
            e["index"] for e in r.json()["results"][0]["top_k"]
        ]


async def _burst(
    url: str, path: str, n: int, headers: dict[str, str] | None = None
) -> list[tuple[int, float, httpx.Response]]:
    images = [png(seed=i) for i in range(n)]
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:

        async def one(i: int) -> tuple[int, float, httpx.Response]:
            t0 = time.perf_counter()
            h = {"content-type": "image/png", **(headers or {})}
            r = await c.post(path, content=images[i], headers=h)
            return r.status_code, time.perf_counter() - t0, r

        return await asyncio.gather(*(one(i) for i in range(n)))


def test_concurrent_requests_are_batched(gateway: GatewayProcess) -> None:
    before = httpx.get(f"{gateway.url}/metrics").text
    out = asyncio.run(_burst(gateway.url, "/classify?model=cls", 16))
    assert [s for s, _, _ in out] == [200] * 16
    after = httpx.get(f"{gateway.url}/metrics").text
    key = 'sepvit_batch_size_{}{{model="cls"}}'
    images = metric(after, key.format("sum")) - metric(before, key.format("sum"))
    batches = metric(after, key.format("count")) - metric(before, key.format("count"))
    assert images == 16
    assert batches < 16, "16 concurrent requests ran one by one: no batch larger than 1"


def test_overload_is_refused_fast_and_nothing_else_breaks(gateway: GatewayProcess) -> None:
    async def scenario() -> tuple[list[tuple[int, float, httpx.Response]], list[int]]:
        health: list[int] = []

        async def probe() -> None:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=5) as c:
                for _ in range(5):
                    health.append((await c.get("/v2/health/ready")).status_code)
                    await asyncio.sleep(0.02)

        burst, _ = await asyncio.gather(_burst(gateway.url, "/classify?model=slow", 32), probe())
        return burst, health

    burst, health = asyncio.run(scenario())
    codes = [s for s, _, _ in burst]
    assert set(codes) <= {200, 429}, codes
    # at least the queue's 2 places are served; more only if the worker takes one before the
    # burst has fully arrived (timing: a fast admission path refuses all 30 others)
    assert codes.count(429) >= 5 and codes.count(200) >= SLOW["max_queue"]
    for status, seconds, r in burst:
        if status == 429:
            assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "queue_full"
            assert seconds < 2.0  # refused at admission, not after waiting
    # refusals come back before the slowest accepted request (they never wait for a batch)
    assert min(t for s, t, _ in burst if s == 429) < max(t for s, t, _ in burst if s == 200)
    assert health == [200] * 5
    text = httpx.get(f"{gateway.url}/metrics").text
    assert metric(text, 'sepvit_rejected_requests_total{model="slow",reason="queue_full"}') >= 5
    # the server is fine afterwards
    ok = httpx.post(
        f"{gateway.url}/classify?model=slow", content=png(), headers={"content-type": "image/png"}
    )
    assert ok.status_code == 200


def test_deadlines_give_504_and_deadline_exceeded(gateway: GatewayProcess) -> None:
    async def scenario() -> list[tuple[int, float, httpx.Response]]:
        # one request keeps the slow model busy; the next one cannot make a 1 ms deadline
        busy = asyncio.ensure_future(_burst(gateway.url, "/classify?model=slow", 1))
        await asyncio.sleep(0.01)
        late = await _burst(
            gateway.url, "/classify?model=slow", 1, headers={"X-Request-Timeout": "0.001"}
        )
        await busy
        return late

    ((status, _, r),) = asyncio.run(scenario())
    assert status == 504 and r.json()["error"]["code"] == "deadline_exceeded"
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as err:
            client.infer("slow", [batch_input(grpcclient, [png()] * 1)], client_timeout=0.001)
        assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    finally:
        client.close()


def test_client_disconnect_takes_the_request_out_of_the_queue(gateway: GatewayProcess) -> None:
    key = 'sepvit_cancelled_requests_total{model="slow",reason="client"}'
    before = metric(httpx.get(f"{gateway.url}/metrics").text, key)

    async def scenario() -> None:
        busy = asyncio.ensure_future(_burst(gateway.url, "/classify?model=slow", 2))
        # wait until one request is in flight and one queued, so the request below queues
        # behind at least one whole inference (>= 20 ms) and its 5 ms read timeout always fires
        async with httpx.AsyncClient(base_url=gateway.url, timeout=5.0) as probe:
            for _ in range(200):
                text = (await probe.get("/metrics")).text
                if metric(text, 'sepvit_queue_depth{model="slow"}') >= 1:
                    break
                await asyncio.sleep(0.005)
        timeout = httpx.Timeout(5.0, read=0.005)  # connects, then gives up waiting
        async with httpx.AsyncClient(base_url=gateway.url, timeout=timeout) as c:
            with pytest.raises(httpx.TimeoutException):  # the client gives up and hangs up
                await c.post(
                    "/classify?model=slow", content=png(), headers={"content-type": "image/png"}
                )
        await busy

    asyncio.run(scenario())
    for _ in range(50):
        after = metric(httpx.get(f"{gateway.url}/metrics").text, key)
        if after > before:
            break
        time.sleep(0.05)
    assert after == before + 1


def test_grpc_auth_in_process(checkpoints: dict[str, Path]) -> None:
    port = free_port()
    s = load_settings(models=model_entries(checkpoints), grpc_port=port, auth_tokens=["tok"])
    with TestClient(create_app(s)) as c:
        for _ in range(600):
            if (
                c.get("/v2/health/ready", headers={"Authorization": "Bearer tok"}).status_code
                == 200
            ):
                break
            time.sleep(0.05)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            assert client.is_server_live()  # liveness needs no token
            with pytest.raises(InferenceServerException) as err:
                client.is_server_ready()
            assert err.value.status() == "StatusCode.UNAUTHENTICATED"
            with pytest.raises(InferenceServerException) as err:
                client.infer(
                    "cls",
                    [batch_input(grpcclient, [png()])],
                    headers={"authorization": "Bearer wrong"},
                )
            assert err.value.status() == "StatusCode.PERMISSION_DENIED"
            res = client.infer(
                "cls", [batch_input(grpcclient, [png()])], headers={"authorization": "Bearer tok"}
            )
            assert "top_k" in json.loads(res.as_numpy("RESULT")[0])
            answers: queue.Queue[Any] = queue.Queue()  # a stream admits each request alike
            for token in ("wrong", "tok"):
                client.start_stream(
                    lambda result, error: answers.put(error),
                    headers={"authorization": f"Bearer {token}"},
                )
                with contextlib.suppress(InferenceServerException):  # a stream refused whole
                    client.async_stream_infer("cls", [batch_input(grpcclient, [png()])])
                client.stop_stream()
            denied, allowed = answers.get_nowait(), answers.get_nowait()
            assert str(denied).startswith("[StatusCode.PERMISSION_DENIED]") and allowed is None
        finally:
            client.close()


def test_sigterm_drains_in_flight_requests(
    checkpoints: dict[str, Path], gateway_factory: Any
) -> None:
    slow = {"max_batch_size": 1, "max_delay_ms": 0, "max_queue": 256}
    models = [{"name": "slow", "checkpoint": str(checkpoints["slow"]), **slow}]
    gw = gateway_factory(models, drain_delay_s=1.0, shutdown_grace_s=30)
    n, per_request = 16, 8
    bodies = [
        [("file", (f"{k}.png", png(seed=i * per_request + k), "image/png")) for k in range(8)]
        for i in range(n)
    ]
    results: list[Any] = [None] * n

    def send(i: int) -> None:
        try:
            r = httpx.post(f"{gw.url}/classify", files=bodies[i], timeout=60)
            results[i] = r.status_code
        except httpx.HTTPError as exc:
            results[i] = repr(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for _ in range(200):  # wait until every request is in (the metrics call counts itself)
        text = httpx.get(f"{gw.url}/metrics", timeout=5).text
        if metric(text, "sepvit_in_flight_requests") >= n + 1:
            break
        time.sleep(0.01)
    gw.proc.send_signal(signal.SIGTERM)
    ready = []
    for _ in range(40):  # readiness goes false while the server still listens (drain delay)
        ready.append(httpx.get(f"{gw.url}/v2/health/ready", timeout=5).status_code)
        if ready[-1] == 503:
            break
        time.sleep(0.02)
    for t in threads:
        t.join(60)
    assert ready[-1] == 503, "readiness must go false before the server stops listening"
    assert results == [200] * n, results  # no in-flight request lost
    gw.proc.wait(30)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{gw.url}/v2/health/live", timeout=2)
    # the log proves requests were still being answered after the server stopped accepting
    lines = [json.loads(x) for x in gw.log.read_text().splitlines() if x.startswith("{")]
    stop = next(i for i, x in enumerate(lines) if x["msg"] == "Shutting down")
    after = [x for x in lines[stop:] if x.get("path") == "/classify" and x.get("status") == 200]
    assert after, "no request was in flight when the server stopped accepting"


# every answer is checked against the schema /openapi.json publishes: status, media type, body
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _real_cases(schema: Any) -> list[Any]:
    """Requests the fuzzer hardly ever makes: real images on every task route (JSON and PNG
    answers, a batch with an undecodable image), OIP infer (JSON and binary output), the model
    routes with a real model name."""
    img = png(48, 64)
    cases = []
    for task in ("classify", "detect", "segment"):
        op = schema[f"/{task}"]["POST"]
        query = {"score_threshold": 0.0} if task == "detect" else {}  # random weights: boxes
        cases.append(op.Case(body=img, media_type="image/png", query=query))
        batch = {"file": [img, b"not an image"]}
        cases.append(op.Case(body=batch, media_type="multipart/form-data", query=query))
    seg = schema["/segment"]["POST"]
    cases.append(seg.Case(body=img, media_type="image/png", query={"format": "overlay"}))
    cases.append(
        seg.Case(
            body={"file": [img, img]}, media_type="multipart/form-data", query={"format": "png"}
        )
    )
    infer = schema["/v2/models/{model_name}/infer"]["POST"]
    tensor = {"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": [b64encode(img).decode()]}
    for binary in (False, True):
        body = {"id": "a", "inputs": [tensor], "parameters": {"binary_data_output": binary}}
        cases.append(
            infer.Case(
                path_parameters={"model_name": "det"}, body=body, media_type="application/json"
            )
        )
    for path in (
        "/v2/models/{model_name}",
        "/v2/models/{model_name}/stats",
        "/v2/models/{model_name}/ready",
    ):
        cases.append(schema[path]["GET"].Case(path_parameters={"model_name": "seg"}))
    return cases


def test_openapi_schema_matches_real_answers(gateway: GatewayProcess) -> None:
    """schemathesis against /openapi.json of a running gateway: generated requests (valid and
    not) and real ones get answers whose status, media type and body the schema documents,
    and never a 5xx. Driven through hypothesis directly: schemathesis' pytest plugin does not
    load under this pytest version."""
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    before = requests_by_class(httpx.get(f"{gateway.url}/metrics").text)
    assert len(operations) >= 14

    statuses = []
    for case in _real_cases(schema):
        statuses.append(case.call_and_validate(checks=CONFORMANCE).status_code)
    assert statuses == [200] * len(statuses), statuses

    for op in operations:

        @given(case=op.as_strategy())
        @settings(
            max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case: Any) -> None:
            case.call_and_validate(checks=CONFORMANCE)

        check()
    after = requests_by_class(httpx.get(f"{gateway.url}/metrics").text)
    assert sum(after.values()) - sum(before.values()) > 3 * len(operations)  # it ran
    assert after.get("5", 0) == before.get("5", 0)
