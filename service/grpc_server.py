"""``inference.GRPCInferenceService`` (Open Inference Protocol v2) on the data plane.

Runs on the app's event loop (started and stopped by the lifespan). Auth, request IDs, metrics
and the status mapping are the same as over HTTP: every error goes through
:func:`service.errors.describe` and becomes ``context.abort(code, message)``. ``ServerLive``
needs no token, like ``/v2/health/live``.

``ModelStreamInfer`` (:mod:`service.grpc_stream`) admits and answers each request on the stream
exactly as a unary ``ModelInfer``: both go through :meth:`InferenceServicer._admit` and
:meth:`InferenceServicer._infer`; only the way an error reaches the client differs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from .auth import TokenChecker, request_id
from .dataplane import DataPlane
from .errors import describe
from .grpc_stream import serve_stream
from .limits import ConcurrencyLimit
from .logs import request_id_var
from .metrics import Metrics
from .oip import grpc_service_pb2 as pb
from .oip import grpc_service_pb2_grpc as pb_grpc
from .oip.codec import grpc_request, grpc_response
from .settings import Settings

__all__ = ["InferenceServicer", "start_grpc_server"]

log = logging.getLogger(__name__)

R = TypeVar("R")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        plane: DataPlane,
        settings: Settings,
        metrics: Metrics,
        tokens: TokenChecker,
        limit: ConcurrencyLimit,
    ) -> None:
        self.plane = plane
        self.settings = settings
        self.metrics = metrics
        self.tokens = tokens
        self.limit = limit

    async def _admit(
        self,
        method: str,
        rid: str,
        metadata: Mapping[str, str],
        work: Callable[[str], Awaitable[R]],
        *,
        auth: bool = True,
        limited: bool = False,
    ) -> R:
        """Request ID, auth, concurrency limit and metrics around ``work``; errors propagate."""
        token = request_id_var.set(rid)
        route = f"grpc:{method}"
        code = "OK"
        counted = False
        self.metrics.in_flight.inc()
        t0 = time.perf_counter()
        try:
            if auth:
                self.tokens.check(metadata.get("authorization"))
            if limited:
                self.limit.acquire()
                counted = True
            return await work(rid)
        except Exception as exc:
            info = describe(exc)
            if info.http_status >= 500 and info.code == "internal":
                log.exception("gRPC %s failed", method)
            code = info.grpc_code
            raise
        except asyncio.CancelledError:  # the client cancelled or went away
            code = "CANCELLED"
            raise
        finally:
            if counted:
                self.limit.release()
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, code).inc()
            self.metrics.request_latency.labels(route).observe(time.perf_counter() - t0)
            request_id_var.reset(token)

    async def _call(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        work: Callable[[str], Awaitable[R]],
        *,
        auth: bool = True,
        limited: bool = False,
    ) -> R:
        """A unary call: :meth:`_admit`, then an error becomes the call's status."""
        metadata = _metadata(context)
        rid = request_id(metadata.get("x-request-id"))
        trailing: list[tuple[str, str]] = [("x-request-id", rid)]
        try:
            result = await self._admit(method, rid, metadata, work, auth=auth, limited=limited)
        except Exception as exc:
            info = describe(exc)
            if info.retry_after:
                trailing.append(("retry-after", str(info.retry_after)))
            context.set_trailing_metadata(tuple(trailing))
            await context.abort(grpc.StatusCode[info.grpc_code], info.message)
            raise  # abort raises; this keeps type checkers content
        context.set_trailing_metadata(tuple(trailing))
        return result

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        async def work(_rid: str) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=self.plane.live())

        return await self._call("ServerLive", context, work, auth=False)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        async def work(_rid: str) -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=self.plane.ready())

        return await self._call("ServerReady", context, work)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        async def work(_rid: str) -> pb.ModelReadyResponse:
            return pb.ModelReadyResponse(
                ready=self.plane.model_ready(request.name, request.version)
            )

        return await self._call("ModelReady", context, work)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        async def work(_rid: str) -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(**self.plane.server_metadata())

        return await self._call("ServerMetadata", context, work)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        async def work(_rid: str) -> pb.ModelMetadataResponse:
            meta: dict[str, Any] = self.plane.model_metadata(request.name, request.version)
            return pb.ModelMetadataResponse(
                name=meta["name"],
                versions=meta["versions"],
                platform=meta["platform"],
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
            )

        return await self._call("ModelMetadata", context, work)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        timeout = context.time_remaining()
        return await self._call(
            "ModelInfer", context, lambda rid: self._infer(request, rid, timeout), limited=True
        )

    async def _infer(
        self, request: pb.ModelInferRequest, rid: str, timeout: float | None
    ) -> pb.ModelInferResponse:
        """One ``ModelInferRequest``, unary or on a stream; ``timeout``: the call's deadline."""
        self.plane.model(request.model_name, request.model_version)
        req = grpc_request(request, timeout)
        req.request_id = rid
        resp = await self.plane.infer(req)
        return grpc_response(resp, request.id or rid)

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        metadata = _metadata(context)

        async def one(request: pb.ModelInferRequest, rid: str) -> pb.ModelInferResponse:
            timeout = context.time_remaining()
            return await self._admit(
                "ModelStreamInfer",
                rid,
                metadata,
                lambda rid: self._infer(request, rid, timeout),
                limited=True,
            )

        async for response in serve_stream(
            request_iterator, one, self.settings.max_stream_in_flight
        ):
            yield response

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        async def work(_rid: str) -> pb.ModelStatisticsResponse:
            doc = self.plane.statistics(request.name, request.version)
            return json_format.ParseDict(doc, pb.ModelStatisticsResponse())

        return await self._call("ModelStatistics", context, work)


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


async def start_grpc_server(
    plane: DataPlane,
    settings: Settings,
    metrics: Metrics,
    tokens: TokenChecker,
    limit: ConcurrencyLimit,
) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server on ``settings.host:settings.grpc_port``; returns it and its port."""
    size = settings.max_body_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", max(size, 64 * 1024 * 1024)),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(plane, settings, metrics, tokens, limit), server
    )
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    port = server.add_insecure_port(f"{host}:{settings.grpc_port}")
    if port == 0:
        raise RuntimeError(f"could not bind gRPC to {host}:{settings.grpc_port}")
    await server.start()
    return server, port
