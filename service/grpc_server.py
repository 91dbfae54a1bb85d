"""``inference.GRPCInferenceService`` (Open Inference Protocol v2) on the data plane.

Runs on the app's event loop (started and stopped by the lifespan). Auth, request IDs, metrics
and the status mapping are the same as over HTTP: every error goes through
:func:`service.errors.describe` and becomes ``context.abort(code, message)``. ``ServerLive``
needs no token, like ``/v2/health/live``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from .auth import TokenChecker, request_id
from .dataplane import DataPlane
from .errors import describe
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

    async def _call(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        work: Callable[[str], Awaitable[R]],
        *,
        auth: bool = True,
        limited: bool = False,
    ) -> R:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        rid = request_id(metadata.get("x-request-id"))
        token = request_id_var.set(rid)
        route = f"grpc:{method}"
        code = "OK"
        counted = False
        self.metrics.in_flight.inc()
        t0 = time.perf_counter()
        trailing: list[tuple[str, str]] = [("x-request-id", rid)]
        try:
            try:
                if auth:
                    self.tokens.check(metadata.get("authorization"))
                if limited:
                    self.limit.acquire()
                    counted = True
                result = await work(rid)
                context.set_trailing_metadata(tuple(trailing))
                return result
            except Exception as exc:
                info = describe(exc)
                if info.http_status >= 500 and info.code == "internal":
                    log.exception("gRPC %s failed", method)
                code = info.grpc_code
                if info.retry_after:
                    trailing.append(("retry-after", str(info.retry_after)))
                context.set_trailing_metadata(tuple(trailing))
                await context.abort(grpc.StatusCode[info.grpc_code], info.message)
                raise  # abort raises; this keeps type checkers content
        finally:
            if counted:
                self.limit.release()
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, code).inc()
            self.metrics.request_latency.labels(route).observe(time.perf_counter() - t0)
            request_id_var.reset(token)

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
        async def work(rid: str) -> pb.ModelInferResponse:
            self.plane.model(request.model_name, request.model_version)
            req = grpc_request(request, context.time_remaining())
            req.request_id = rid
            resp = await self.plane.infer(req)
            return grpc_response(resp, request.id or rid)

        return await self._call("ModelInfer", context, work, limited=True)


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
