"""``ModelStreamInfer``: many ``ModelInferRequest`` on one bidirectional gRPC stream.

Every request on the stream is handled as its own unary ``ModelInfer`` would be (the servicer's
``handle``: same auth, limits, deadline, batching and error table) and answered on the stream:

* **Errors** come back as ``error_message`` (``"[StatusCode.<CODE>] <message>"``, what
  ``str()`` of tritonclient's exception reads for the same unary error), with ``infer_response``
  carrying only the model and the request ``id``. The stream stays open.
* **Order:** answers go out as they complete, not in request order. Requests that share a batch
  come back in request order, but an error found before queueing (unknown model, bad tensor,
  overload) overtakes earlier requests still running, and requests to different models overtake
  each other. Match answers by ``id`` (a request without one gets a fresh one).
* **Backpressure:** at most ``limit`` requests per stream are in flight (read and not yet
  written back). At the limit the stream stops reading, so gRPC flow control holds the client.
* **Cancellation:** when the client cancels or goes away (or the stream's deadline passes) the
  handler is cancelled, and with it every request of the stream still queued or running: their
  images leave the batcher's queue as a unary call's do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from .auth import request_id
from .errors import describe
from .oip import grpc_service_pb2 as pb

__all__ = ["serve_stream", "stream_error"]

Handle = Callable[[pb.ModelInferRequest, str], Awaitable[pb.ModelInferResponse]]


def stream_error(
    request: pb.ModelInferRequest, rid: str, exc: BaseException
) -> pb.ModelStreamInferResponse:
    info = describe(exc)
    return pb.ModelStreamInferResponse(
        error_message=f"[StatusCode.{info.grpc_code}] {info.message}",
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name,
            model_version=request.model_version,
            id=request.id or rid,
        ),
    )


async def serve_stream(
    requests: AsyncIterator[pb.ModelInferRequest], handle: Handle, limit: int
) -> AsyncIterator[pb.ModelStreamInferResponse]:
    """Answer every request of ``requests`` with ``handle(request, request_id)``, at most
    ``limit`` at a time, in completion order; ends once the client has closed its side and
    every answer is written."""
    answers: asyncio.Queue[pb.ModelStreamInferResponse | BaseException | None] = asyncio.Queue()
    slots = asyncio.Semaphore(limit)
    running: set[asyncio.Task[None]] = set()

    async def one(request: pb.ModelInferRequest) -> None:
        rid = request_id(request.id or None)
        try:
            answer = pb.ModelStreamInferResponse(infer_response=await handle(request, rid))
        except Exception as exc:
            answer = stream_error(request, rid, exc)
        answers.put_nowait(answer)

    async def read() -> None:
        try:
            async for request in requests:
                await slots.acquire()  # released once its answer is written
                task = asyncio.create_task(one(request))
                running.add(task)
                task.add_done_callback(running.discard)
            while running:
                await asyncio.gather(*running)
            answers.put_nowait(None)
        except Exception as exc:  # the request stream broke (e.g. an unreadable message)
            answers.put_nowait(exc)

    reader = asyncio.create_task(read())
    try:
        while (item := await answers.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item  # returns once gRPC has written it
            slots.release()
    finally:  # done, failed, or cancelled with the call: nothing of this stream lives on
        reader.cancel()
        for task in list(running):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(reader, *running, return_exceptions=True)
