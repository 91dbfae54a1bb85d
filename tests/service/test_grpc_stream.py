"""``serve_stream`` on its own, with a fake handler: every request answered once, errors as
``error_message`` with the request id, completion order, the in-flight bound, and cancellation
of everything in flight when the stream's consumer goes away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from service.errors import ModelNotFoundError
from service.grpc_stream import serve_stream
from service.oip import grpc_service_pb2 as pb


async def _requests(
    n: int, started: asyncio.Event | None = None
) -> AsyncIterator[pb.ModelInferRequest]:
    for i in range(n):
        # the index rides in model_version; every 5th request has no id
        yield pb.ModelInferRequest(model_name="m", model_version=str(i), id=str(i) if i % 5 else "")
    if started is not None:  # a client that keeps its side open
        await started.wait()


def test_every_request_answered_errors_in_band_within_the_bound() -> None:
    limit, active, peak = 3, 0, 0

    async def handle(req: pb.ModelInferRequest, rid: str) -> pb.ModelInferResponse:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            i = int(req.model_version)
            if i % 7 == 3:
                raise ModelNotFoundError("unknown model 'm'")
            await asyncio.sleep(0.001 * (10 - i % 10))  # later requests finish sooner
            return pb.ModelInferResponse(model_name=req.model_name, id=req.id or rid)
        finally:
            active -= 1

    async def run() -> list[pb.ModelStreamInferResponse]:
        return [a async for a in serve_stream(_requests(40), handle, limit)]

    answers = asyncio.run(run())
    assert len(answers) == 40 and peak <= limit
    errors = [a for a in answers if a.error_message]
    assert {a.infer_response.model_version for a in errors} == {
        str(i) for i in range(40) if i % 7 == 3
    }
    for a in errors:  # an error carries the request's id, or the fresh one it was given
        i = int(a.infer_response.model_version)
        assert a.infer_response.id == str(i) if i % 5 else len(a.infer_response.id) == 32
    assert all(a.error_message == "[StatusCode.NOT_FOUND] unknown model 'm'" for a in errors)
    ids = [a.infer_response.id for a in answers]
    unnamed = [x for x in ids if not x.isdigit()]  # requests without an id get a fresh one
    assert len(unnamed) == len(set(unnamed)) == 8 and all(len(x) == 32 for x in unnamed)
    named = [int(x) for x in ids if x.isdigit()]
    assert sorted(named) == [i for i in range(40) if i % 5]
    assert named != sorted(named)  # completion order, not request order


def test_consumer_going_away_cancels_the_streams_work() -> None:
    cancelled = 0

    async def handle(req: pb.ModelInferRequest, rid: str) -> pb.ModelInferResponse:
        nonlocal cancelled
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled += 1
            raise
        raise AssertionError("not reached")

    async def run() -> None:
        hold = asyncio.Event()
        stream = serve_stream(_requests(5, hold), handle, 4)
        consumer = asyncio.create_task(anext(stream))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)  # 4 requests in flight, the 5th waits for a slot
        consumer.cancel()  # what gRPC does when the client cancels or disconnects
        with pytest.raises(asyncio.CancelledError):
            await consumer

    asyncio.run(run())
    assert cancelled == 4
