"""``inference.GRPCInferenceService`` (Open Inference Protocol v2) on the data plane.

Runs on the app's event loop (started and stopped by the lifespan). Admission is the same as over
HTTP (:mod:`service.admission`), applied by :class:`AdmissionInterceptor` to every RPC, streaming
ones included:

* before the request message is read, a bad or missing token is refused, and so is a limited
  RPC while the server is full or draining: the refusal handler never reads the message, so a
  tokenless client cannot make the server buffer its payload;
* then the wrapped handler opens the call (request ID, access log, metrics), takes a
  concurrency slot for ``ModelInfer`` and maps every error through
  :func:`service.errors.describe` to ``context.abort(code, message)``;
* a stream (``ModelStreamInfer``) is authenticated at its start and tracked for the drain; each
  of its messages is admitted with ``async with admission.message(current_call.get(), ...)``.

``ServerLive`` needs no token, like ``/v2/health/live``. The server caps messages at
``max_body_bytes`` and concurrent RPCs at ``max_concurrent_requests`` plus a few for probes.

``ModelStreamInfer`` (:mod:`service.grpc_stream`) answers each request on the stream exactly as
a unary ``ModelInfer``: both go through :meth:`InferenceServicer._infer`, each stream request is
admitted as a request of its own by :meth:`Admission.message`; only the way an error reaches
the client differs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
from google.protobuf import json_format

from .admission import Admission, Call, current_call
from .dataplane import DataPlane
from .errors import NotReadyError, OverloadedError, ServiceError, describe
from .grpc_stream import serve_stream
from .oip import grpc_service_pb2 as pb
from .oip import grpc_service_pb2_grpc as pb_grpc
from .oip.codec import grpc_request, grpc_response
from .settings import Settings

__all__ = ["AdmissionInterceptor", "InferenceServicer", "start_grpc_server"]

log = logging.getLogger(__name__)

AUTH_EXEMPT = frozenset({"ServerLive"})
LIMITED = frozenset({"ModelInfer"})  # one slot per call
STREAMS = frozenset({"ModelStreamInfer"})  # one slot per message (the servicer takes it)
PROBE_HEADROOM = 8  # RPCs beyond max_concurrent_requests, so health RPCs answer under load


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        rpc = details.method.rsplit("/", 1)[-1]
        metadata = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
        auth, limited, stream = rpc not in AUTH_EXEMPT, rpc in LIMITED, rpc in STREAMS
        try:  # before the message is read
            if auth:
                self.admission.tokens.check(metadata.get("authorization"))
            if (limited or stream) and not self.admission.has_room():
                if self.admission.draining:
                    raise NotReadyError("the server is shutting down")
                raise OverloadedError(f"more than {self.admission.limit} concurrent requests")
        except ServiceError as exc:
            return self._refusal(handler, details.method, metadata, exc)
        return self._wrap(handler, details.method, metadata, auth, limited, stream)

    # -- the call's life around the servicer ---------------------------------------------------
    def _open(self, method: str, metadata: dict[str, str], context: Any) -> Call:
        peer = context.peer() or ""
        host = peer.rsplit(":", 1)[0] if peer.count(":") > 1 else peer
        return self.admission.open("grpc", "rpc", method, metadata, host)

    async def _fail(self, call: Call, context: Any, exc: BaseException) -> str:
        """Abort the RPC with the error's code; returns the code name."""
        info = describe(exc)
        if info.http_status >= 500 and info.code == "internal":
            log.error("gRPC %s failed", call.path, exc_info=exc)
        trailing = [("x-request-id", call.request_id)]
        if info.retry_after:
            trailing.append(("retry-after", str(info.retry_after)))
        context.set_trailing_metadata(tuple(trailing))
        await context.abort(grpc.StatusCode[info.grpc_code], info.message)
        return info.grpc_code  # not reached: abort raises

    def _close(self, call: Call, code: str) -> None:
        """Count and log the call. A stream's own line is ``grpc:<Method>:stream``; its requests
        are counted one by one as ``grpc:<Method>`` (``Admission.message``)."""
        rpc = call.path.rsplit("/", 1)[-1]
        self.admission.close(call, code, f"grpc:{rpc}:stream" if rpc in STREAMS else f"grpc:{rpc}")

    def _refusal(
        self,
        handler: grpc.RpcMethodHandler,
        method: str,
        metadata: dict[str, str],
        exc: ServiceError,
    ) -> grpc.RpcMethodHandler:
        """A handler of the same response kind that refuses without reading the request."""

        async def refuse(_requests: Any, context: Any) -> Any:
            call = self._open(method, metadata, context)
            try:
                await self._fail(call, context, exc)
            finally:
                self._close(call, describe(exc).grpc_code)

        if handler.response_streaming:

            async def refuse_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
                await refuse(requests, context)
                yield  # pragma: no cover - never reached; makes this an async generator

            return grpc.stream_stream_rpc_method_handler(
                refuse_stream, response_serializer=handler.response_serializer
            )
        return grpc.stream_unary_rpc_method_handler(
            refuse, response_serializer=handler.response_serializer
        )

    def _wrap(
        self,
        handler: grpc.RpcMethodHandler,
        method: str,
        metadata: dict[str, str],
        auth: bool,
        limited: bool,
        stream: bool,
    ) -> grpc.RpcMethodHandler:
        admission = self.admission

        @asynccontextmanager
        async def served(context: Any) -> AsyncIterator[Call]:
            """Admit, run the body, answer: every error (and the drain's cut-off) becomes
            ``context.abort`` with its code; the call is closed (logged, counted) either way."""
            call = self._open(method, metadata, context)
            code = "UNKNOWN"
            try:
                try:
                    admission.check(call, auth=auth, limited=limited, stream=stream)
                    yield call
                    context.set_trailing_metadata((("x-request-id", call.request_id),))
                    code = "OK"
                except asyncio.CancelledError:
                    if not call.cut:
                        code = "CANCELLED"
                        raise
                    _uncancel()
                    code = "UNAVAILABLE"
                    await self._fail(call, context, _grace_over())
                except Exception as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    code = describe(exc).grpc_code
                    await self._fail(call, context, exc)
            finally:
                self._close(call, code)

        kinds = {
            (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
            (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
            (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
            (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
        }
        attr, make = kinds[(handler.request_streaming, handler.response_streaming)]
        behavior = getattr(handler, attr)

        # grpc.aio tells coroutines and async generators from plain functions by their kind
        async def bound_unary(request: Any, context: Any) -> Any:
            async with served(context) as call:
                # the drain's cut-off ends the work, never the RPC's own task: grpc.aio cancels
                # an RPC whose task is cancelled at the wrong moment
                work = asyncio.ensure_future(behavior(request, context))
                cut = asyncio.Event()
                call.on_cut = cut.set
                waiter = asyncio.ensure_future(cut.wait())
                try:
                    await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    if not work.done():
                        work.cancel()
                if work.done() and not work.cancelled():
                    return work.result()
                raise _grace_over()

        async def bound_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            async with served(context):
                async for item in behavior(request, context):
                    yield item

        return make(
            bound_stream if handler.response_streaming else bound_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()  # the drain cancelled this call; it still gets its answer


def _grace_over() -> NotReadyError:
    return NotReadyError("the server is shutting down (grace period over)")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The RPCs themselves; admission and error mapping are the interceptor's."""

    def __init__(self, plane: DataPlane, settings: Settings, admission: Admission) -> None:
        self.plane = plane
        self.settings = settings
        self.admission = admission

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.plane.live())

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.plane.server_metadata())

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        meta: dict[str, Any] = self.plane.model_metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        call = current_call.get()
        return await self._infer(request, call.request_id if call else "", context.time_remaining())

    async def _infer(
        self, request: pb.ModelInferRequest, rid: str, timeout: float | None
    ) -> pb.ModelInferResponse:
        """One ``ModelInferRequest``, unary or on a stream; ``timeout``: the call's deadline."""
        self.plane.model(request.model_name, request.model_version)
        req = grpc_request(request, timeout, self.settings.max_images_per_request)
        req.request_id = rid
        resp = await self.plane.infer(req)
        # JSON per image (RLE masks, base64 PNGs): rendered off the event loop, as over HTTP
        return await asyncio.to_thread(grpc_response, resp, request.id or rid)

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        stream = current_call.get()  # authenticated by the interceptor when the stream began
        assert stream is not None

        async def one(request: pb.ModelInferRequest, rid: str) -> pb.ModelInferResponse:
            timeout = context.time_remaining()
            async with self.admission.message(stream, rid, "grpc:ModelStreamInfer"):
                return await self._infer(request, rid, timeout)

        async for response in serve_stream(
            request_iterator, one, self.settings.max_stream_in_flight
        ):
            yield response

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        doc = self.plane.statistics(request.name, request.version)
        return json_format.ParseDict(doc, pb.ModelStatisticsResponse())


async def start_grpc_server(
    plane: DataPlane, settings: Settings, admission: Admission
) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server on ``settings.host:settings.grpc_port``; returns it and its port."""
    size = settings.max_body_bytes
    server = grpc.aio.server(
        interceptors=[AdmissionInterceptor(admission)],
        maximum_concurrent_rpcs=settings.max_concurrent_requests + PROBE_HEADROOM,
        options=[
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", max(size, 64 * 1024 * 1024)),
        ],
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(plane, settings, admission), server
    )
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    port = server.add_insecure_port(f"{host}:{settings.grpc_port}")
    if port == 0:
        raise RuntimeError(f"could not bind gRPC to {host}:{settings.grpc_port}")
    await server.start()
    return server, port
