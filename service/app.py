"""The app factory. ``create_app(settings)`` wires settings, metrics, the backend, the data
plane, the HTTP routes and (in the lifespan) the gRPC server; nothing happens at import time.

Lifespan: start the backend (models load in the background; readiness stays false until every
model has loaded, warmed up and passed its parity check), the event loop's heartbeat, and gRPC.

The drain (SIGTERM): at once both transports report not ready and refuse new work (503 /
UNAVAILABLE with Retry-After; health and metrics still answer); after ``drain_delay_s`` both stop
accepting connections and calls, and in-flight calls on both get the rest of
``shutdown_grace_s``; whatever still runs shortly before the grace period ends is cut off with
503 / UNAVAILABLE, so every accepted request gets an answer. Then the batchers stop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from handlers.errors import BadParameterError, PipelineError

from . import __version__
from .admission import Admission
from .auth import TokenChecker
from .backends import Backend, create_backend
from .dataplane import DataPlane
from .errors import ServiceError, describe_http
from .loader import load_settings, read_tokens
from .metrics import Metrics
from .middleware import GatewayMiddleware, error_response, needs_token
from .pages import add_pages
from .rest import router
from .schemas import openapi
from .settings import Settings
from .watchdog import LoopWatch

__all__ = ["create_app", "create_app_from_env"]

log = logging.getLogger(__name__)


def _rid(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


async def _service_error(request: Request, exc: Exception) -> Response:
    return error_response(exc, _rid(request), request.url.path)


async def _validation_error(request: Request, exc: Exception) -> Response:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors]
    err = BadParameterError("; ".join(parts) or str(exc))
    return error_response(err, _rid(request), request.url.path)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    detail = exc.detail if isinstance(exc, StarletteHTTPException) else "error"
    return error_response(describe_http(status, str(detail)), _rid(request), request.url.path)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    return error_response(exc, _rid(request), request.url.path)


# the cut-off comes this long (at most a quarter of the grace) before the grace period ends, so
# that its 503s are written before uvicorn and gRPC give up on what is left
CUT_OFF_MARGIN_S = 1.0


class Drain:
    """The shutdown sequence, shared by SIGTERM and the lifespan's end."""

    def __init__(self, plane: DataPlane, admission: Admission, settings: Settings) -> None:
        self.plane = plane
        self.admission = admission
        self.settings = settings
        self.grpc_server: Any = None
        self.grpc_stop: asyncio.Task[None] | None = None
        self.cut_at: float | None = None  # loop time of the cut-off, once stopping

    def begin(self) -> None:
        """Not ready and no new work, on both transports."""
        self.plane.draining = True

    def stop_accepting(self) -> None:
        """Close gRPC to new calls (in-flight ones get the grace) and schedule the cut-off
        (once)."""
        if self.cut_at is not None:
            return
        grace = self.settings.shutdown_grace_s
        loop = asyncio.get_running_loop()
        if self.grpc_server is not None:
            self.grpc_stop = loop.create_task(self.grpc_server.stop(grace))
        self.cut_at = loop.time() + max(0.0, grace - min(CUT_OFF_MARGIN_S, grace / 4))
        loop.call_at(self.cut_at, self.admission.cut_off)

    async def finish(self) -> None:
        """The lifespan's end: stop, then wait until every admitted call has answered (the
        cut-off answers the last ones): grpc.aio's ``stop`` can return while handlers still
        run, and leaving then would drop their answers."""
        self.begin()
        self.stop_accepting()
        if self.grpc_stop is not None:
            await self.grpc_stop
        loop = asyncio.get_running_loop()
        assert self.cut_at is not None
        end = self.cut_at + CUT_OFF_MARGIN_S
        while self.admission.calls and loop.time() < end:
            await asyncio.sleep(0.02)

    def on_sigterm(self) -> None:
        """Chain onto the server's SIGTERM handler: not ready at once; ``drain_delay_s`` later
        both transports stop accepting, so load balancers see the pod unready first."""
        if threading.current_thread() is not threading.main_thread():
            return  # signals are the main thread's (in-process test clients run elsewhere)
        server_handler = signal.getsignal(signal.SIGTERM)
        if not callable(server_handler):
            return
        loop = asyncio.get_running_loop()
        delay = self.settings.drain_delay_s

        def stop(sig: int, frame: FrameType | None) -> None:
            self.stop_accepting()
            server_handler(sig, frame)

        def on_sigterm(sig: int, frame: FrameType | None) -> None:
            if self.plane.draining:
                return
            log.info("SIGTERM: not ready, refusing new work; closing in %.1f s", delay)
            loop.call_soon_threadsafe(self.begin)
            loop.call_soon_threadsafe(lambda: loop.call_later(delay, stop, sig, frame))

        signal.signal(signal.SIGTERM, on_sigterm)


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> FastAPI:
    """Build the gateway. ``backend`` replaces the one ``settings.backend`` names (tests)."""
    settings = settings or load_settings()
    metrics = Metrics()
    backend = backend or create_backend(settings, metrics)
    watch = LoopWatch(metrics, settings.liveness_stall_s)
    plane = DataPlane(settings, backend, metrics.stats, watch)
    tokens = read_tokens(settings)
    admission = Admission(settings, metrics, TokenChecker(tokens), plane)
    drain = Drain(plane, admission, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await backend.start()
        watch.start()
        drain.on_sigterm()
        if settings.grpc_port is not None:
            from .grpc_server import start_grpc_server

            drain.grpc_server, app.state.grpc_port = await start_grpc_server(
                plane, settings, admission
            )
            log.info("gRPC listening on %s:%d", settings.host, app.state.grpc_port)
        try:
            yield
        finally:
            await drain.finish()
            await backend.stop(settings.shutdown_grace_s)
            await watch.stop()
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
    app.state.limit = app.state.admission = admission
    app.include_router(router)
    app.openapi = lambda: openapi(app, bool(tokens), needs_token)  # type: ignore[method-assign]
    add_pages(app)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(PipelineError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(GatewayMiddleware, settings=settings, admission=admission)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for multi-worker uvicorn: each worker reads its settings from ``SEPVIT_*``."""
    from .logs import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_json)
    return create_app(settings)
