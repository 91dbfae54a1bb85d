"""The app factory. ``create_app(settings)`` wires settings, metrics, the backend, the data
plane, the HTTP routes and (in the lifespan) the gRPC server; nothing happens at import time.

Lifespan: start the backend (models load in the background; readiness stays false until every
model has loaded, warmed up and passed its parity check), start gRPC. On shutdown: readiness
false, gRPC stops accepting and finishes its calls, the batchers finish their queues.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from handlers.errors import PipelineError

from . import __version__
from .auth import TokenChecker
from .backends import Backend, create_backend
from .dataplane import DataPlane
from .errors import ErrorInfo, ServiceError
from .limits import ConcurrencyLimit
from .metrics import Metrics
from .middleware import GatewayMiddleware, error_response, is_oip
from .pages import add_pages
from .rest import router
from .settings import Settings, load_settings

__all__ = ["create_app", "create_app_from_env"]

log = logging.getLogger(__name__)

HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


def _rid(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


async def _service_error(request: Request, exc: Exception) -> Response:
    return error_response(exc, _rid(request), request.url.path)


async def _validation_error(request: Request, exc: Exception) -> Response:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors]
    info = ErrorInfo(400, "INVALID_ARGUMENT", "bad_parameter", "; ".join(parts) or str(exc))
    return JSONResponse(info.body(_rid(request), oip=is_oip(request.url.path)), status_code=400)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    detail = exc.detail if isinstance(exc, StarletteHTTPException) else "error"
    info = ErrorInfo(status, "UNKNOWN", HTTP_CODES.get(status, "http_error"), str(detail))
    return JSONResponse(info.body(_rid(request), oip=is_oip(request.url.path)), status_code=status)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    return error_response(exc, _rid(request), request.url.path)


def _drain_on_sigterm(plane: DataPlane, delay: float) -> None:
    """Chain onto the server's SIGTERM handler: readiness goes false at once, and the server's
    own graceful stop (stop accepting, finish in-flight requests) follows ``delay`` seconds
    later, so load balancers see the pod unready before it stops listening."""
    if threading.current_thread() is not threading.main_thread():
        return  # signals are the main thread's (in-process test clients run elsewhere)
    server_handler = signal.getsignal(signal.SIGTERM)
    if not callable(server_handler):
        return
    loop = asyncio.get_running_loop()

    def on_sigterm(sig: int, frame: FrameType | None) -> None:
        if plane.draining:
            return
        plane.draining = True
        log.info("SIGTERM: readiness off, draining in %.1f s", delay)

        def stop_later() -> None:
            loop.call_later(delay, server_handler, sig, frame)

        loop.call_soon_threadsafe(stop_later)

    signal.signal(signal.SIGTERM, on_sigterm)


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> FastAPI:
    """Build the gateway. ``backend`` replaces the one ``settings.backend`` names (tests)."""
    settings = settings or load_settings()
    metrics = Metrics()
    backend = backend or create_backend(settings, metrics)
    plane = DataPlane(settings, backend, metrics.stats)
    tokens = TokenChecker(settings.tokens())
    limit = ConcurrencyLimit(settings.max_concurrent_requests, settings.retry_after_s, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await backend.start()
        _drain_on_sigterm(plane, settings.drain_delay_s)
        grpc_server = None
        if settings.grpc_port is not None:
            from .grpc_server import start_grpc_server

            grpc_server, app.state.grpc_port = await start_grpc_server(
                plane, settings, metrics, tokens, limit
            )
            log.info("gRPC listening on %s:%d", settings.host, app.state.grpc_port)
        try:
            yield
        finally:
            plane.draining = True
            if grpc_server is not None:
                await grpc_server.stop(settings.shutdown_grace_s)
            await backend.stop(settings.shutdown_grace_s)
            log.info("stopped")

    app = FastAPI(
        title="SepViT serving gateway",
        version=__version__,
        description="Classification, detection and segmentation with SepViT models: task "
        "routes, the Open Inference Protocol v2 and Prometheus metrics.",
        lifespan=lifespan,
        docs_url=None,  # service/pages.py serves /docs without a CDN (and no /redoc)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.backend = backend
    app.state.plane = plane
    app.state.grpc_port = None
    app.state.limit = limit
    app.include_router(router)
    add_pages(app)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(PipelineError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(
        GatewayMiddleware, settings=settings, metrics=metrics, tokens=tokens, limit=limit
    )
    return app


def create_app_from_env() -> FastAPI:
    """Factory for multi-worker uvicorn: each worker reads its settings from ``SEPVIT_*``."""
    from .logs import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_json)
    return create_app(settings)
