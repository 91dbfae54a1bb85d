"""Triton client parity on a real gateway process: ``tritonclient``'s streaming
(``start_stream`` / ``async_stream_infer``) and statistics (``get_inference_statistics`` over HTTP
and gRPC) calls, unchanged."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from service.processes import GatewayProcess

from .conftest import png, start_gateway
from .test_servers import batch_input, metric

pytestmark = pytest.mark.integration

STREAM_LIMIT = 4  # max_stream_in_flight: small, so the backpressure path is exercised


@pytest.fixture(scope="module")
def gateway(
    checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    models = [
        {"name": "cls", "checkpoint": str(checkpoints["cls"]), "max_batch_size": 8},
        {
            "name": "slow",
            "checkpoint": str(checkpoints["slow"]),
            "max_batch_size": 1,
            "max_delay_ms": 0,
            "max_queue": 64,
        },
    ]
    gw = start_gateway(
        tmp_path_factory.mktemp("gw"),
        models,
        max_concurrent_requests=256,
        max_stream_in_flight=STREAM_LIMIT,
    )
    try:
        yield gw
    finally:
        gw.stop()


def _stream(client: grpcclient.InferenceServerClient) -> queue.Queue[tuple[Any, Any]]:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    return answers


def test_stream_answers_every_request_like_unary_and_survives_errors(
    gateway: GatewayProcess,
) -> None:
    good, corrupt = png(48, 64, 3), b"not an image"
    bad_tensor = grpcclient.InferInput("IMAGE", [1], "FP32")
    bad_tensor.set_data_from_numpy(np.zeros(1, np.float32))
    kinds = ["good", "corrupt", "unknown_model", "bad_tensor"]
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    try:
        unary = json.loads(
            client.infer("cls", [batch_input(grpcclient, [good])]).as_numpy("RESULT")[0]
        )
        answers = _stream(client)
        for i in range(200):
            kind = kinds[i % 4]
            model = "nope" if kind == "unknown_model" else "cls"
            inputs = (
                [bad_tensor]
                if kind == "bad_tensor"
                else [batch_input(grpcclient, [corrupt if kind == "corrupt" else good])]
            )
            client.async_stream_infer(model, inputs, request_id=f"r{i}")
        client.stop_stream()  # closes our side; returns once every answer has arrived
        got = [answers.get_nowait() for _ in range(answers.qsize())]
        assert len(got) == 200
        results = {r.get_response().id: r for r, e in got if e is None}
        errors = [str(e) for r, e in got if e is not None]
        assert sorted(results) == sorted(f"r{i}" for i in range(200) if i % 4 < 2)
        assert len(errors) == 100
        assert errors.count("[StatusCode.NOT_FOUND] unknown model 'nope'") == 50
        assert (
            sum(e.startswith("[StatusCode.INVALID_ARGUMENT] input datatype") for e in errors) == 50
        )
        for rid, result in results.items():
            out = json.loads(result.as_numpy("RESULT")[0])
            if int(rid[1:]) % 4 == 1:  # a corrupt image: answered in RESULT, as unary is
                assert out["error"]["code"] == "undecodable_image"
            else:
                assert [c["label"] for c in out["top_k"]] == [c["label"] for c in unary["top_k"]]
                np.testing.assert_allclose(
                    [c["score"] for c in out["top_k"]],
                    [c["score"] for c in unary["top_k"]],
                    atol=1e-4,
                )
        # the same client streams again; a request's own deadline is its timeout parameter (us)
        answers = _stream(client)
        client.async_stream_infer("cls", [batch_input(grpcclient, [good])], timeout=1)
        client.async_stream_infer("cls", [batch_input(grpcclient, [good])], request_id="again")
        client.stop_stream()
        got = [answers.get_nowait() for _ in range(2)]
        assert [r.get_response().id for r, e in got if e is None] == ["again"]
        assert [str(e).split("]")[0] for _, e in got if e] == ["[StatusCode.DEADLINE_EXCEEDED"]
    finally:
        client.close()


def test_stopping_the_stream_cancels_its_queued_work(gateway: GatewayProcess) -> None:
    cancelled = 'sepvit_cancelled_requests_total{model="slow",reason="client"}'
    grpc_cancelled = 'sepvit_requests_total{code="CANCELLED",route="grpc:ModelStreamInfer"}'
    depth = 'sepvit_queue_depth{model="slow"}'

    def figures() -> tuple[float, float, float, int, int]:
        text = httpx.get(f"{gateway.url}/metrics").text
        doc = httpx.get(f"{gateway.url}/v2/models/slow/stats").json()["model_stats"][0]
        counts = doc["inference_stats"]
        return (
            metric(text, cancelled),
            metric(text, grpc_cancelled),
            metric(text, depth),
            counts["success"]["count"],
            counts["fail"]["count"],
        )

    before = figures()
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    try:
        answers = _stream(client)
        images = [png()] * 6  # each request a batch of its own, long enough to be caught
        for i in range(STREAM_LIMIT):  # one runs, one is prepared, the others queue
            client.async_stream_infer("slow", [batch_input(grpcclient, images)], request_id=str(i))
        for _ in range(400):
            if figures()[2] >= 2 * len(images):
                break
            time.sleep(0.01)
        else:
            pytest.fail("the stream's requests never queued")
        client.stop_stream(cancel_requests=True)
        received = [answers.get_nowait() for _ in range(answers.qsize())]
    finally:
        client.close()
    for _ in range(100):  # every request of the stream has ended, one way or the other
        after = figures()
        if after[2] == 0 and (after[3] + after[4]) - (before[3] + before[4]) == STREAM_LIMIT:
            break
        time.sleep(0.05)
    delta = [a - b for a, b in zip(after, before, strict=True)]
    # the queued ones (and any still running) were cancelled: out of the queue, counted as
    # cancelled by the batcher, as CANCELLED by the gRPC metrics and as failures in the stats
    assert delta[0] == delta[1] == delta[4] >= 2
    assert after[2] == 0 and delta[3] + delta[4] == STREAM_LIMIT
    assert sum(e is None for _, e in received) <= delta[3]  # no answer for a cancelled one


def _counts(gateway: GatewayProcess) -> dict[str, int]:
    http = httpclient.InferenceServerClient(gateway.url.removeprefix("http://"))
    grpc = grpcclient.InferenceServerClient(gateway.grpc_url)
    try:
        doc = http.get_inference_statistics("cls")["model_stats"][0]
        msg = grpc.get_inference_statistics("cls").model_stats[0]
    finally:
        http.close()
        grpc.close()
    s, m = doc["inference_stats"], msg.inference_stats
    counts = {
        "success": s["success"]["count"],
        "fail": s["fail"]["count"],
        "queue": s["queue"]["count"],
        "compute_infer": s["compute_infer"]["count"],
        "inference_count": doc["inference_count"],
        "execution_count": doc["execution_count"],
        "batches": sum(b["compute_infer"]["count"] for b in doc["batch_stats"]),
    }
    assert counts == {  # gRPC and HTTP tell the same
        "success": m.success.count,
        "fail": m.fail.count,
        "queue": m.queue.count,
        "compute_infer": m.compute_infer.count,
        "inference_count": msg.inference_count,
        "execution_count": msg.execution_count,
        "batches": sum(b.compute_infer.count for b in msg.batch_stats),
    }
    return counts


def test_statistics_count_the_requests_sent_and_agree_with_metrics(gateway: GatewayProcess) -> None:
    before = _counts(gateway)
    ok_images = 0
    for module, url in [
        (httpclient, gateway.url.removeprefix("http://")),
        (grpcclient, gateway.grpc_url),
    ]:
        client = module.InferenceServerClient(url)
        try:
            for images in ([png()], [png(), b"corrupt"], [png()] * 3):  # 3 successes
                client.infer("cls", [batch_input(module, images)])
                ok_images += len(images)
            for params in ({"top_k": "many"}, {"top_k": 0}):  # 2 failures at the model
                with pytest.raises(InferenceServerException):
                    client.infer("cls", [batch_input(module, [png()])], parameters=params)
            with pytest.raises(InferenceServerException):  # no model: counted nowhere
                client.infer("nope", [batch_input(module, [png()])])
        finally:
            client.close()
    after = _counts(gateway)
    delta = {k: after[k] - before[k] for k in after}
    assert delta["success"] == delta["queue"] == delta["compute_infer"] == 6
    assert delta["fail"] == 4
    assert delta["inference_count"] == ok_images == 12
    assert 1 <= delta["execution_count"] == delta["batches"] <= 6

    # the figures are the batcher's: they agree with /metrics
    text = httpx.get(f"{gateway.url}/metrics").text
    doc = httpx.get(f"{gateway.url}/v2/models/stats").json()
    assert [m["name"] for m in doc["model_stats"]] == ["cls", "slow"]
    cls = doc["model_stats"][0]
    assert cls["execution_count"] == metric(text, 'sepvit_batch_size_count{model="cls"}')
    assert cls["inference_count"] == metric(text, 'sepvit_batch_size_sum{model="cls"}')
    queue_s = metric(text, 'sepvit_queue_wait_seconds_sum{model="cls"}')
    assert cls["inference_stats"]["queue"]["ns"] == pytest.approx(queue_s * 1e9, abs=1e4)
    for phase, name in [("preprocess", "compute_input"), ("inference", "compute_infer")]:
        seconds = metric(text, f'sepvit_phase_duration_seconds_sum{{model="cls",phase="{phase}"}}')
        ns = sum(b[name]["ns"] for b in cls["batch_stats"])
        assert ns == pytest.approx(seconds * 1e9, abs=1e4) and ns > 0
    assert httpx.get(f"{gateway.url}/v2/models/nope/stats").status_code == 404
    assert httpx.get(f"{gateway.url}/v2/models/cls/versions/1/stats").status_code == 200
