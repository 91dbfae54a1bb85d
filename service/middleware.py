"""One pure-ASGI middleware for every HTTP request (pure ASGI so that client disconnects still
reach the routes): request ID, access log, metrics, auth, concurrency and body-size limits.

Order per request: request ID -> auth (liveness and the public pages of
:mod:`service.pages` exempt) -> concurrency limit (health and metrics
exempt, so probes answer under overload) -> body limit (checked on ``Content-Length`` and while
the body streams) -> the app. Refusals are JSON errors from :func:`service.errors.describe`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import TokenChecker, request_id
from .errors import PayloadTooLargeError, ServiceError, describe
from .limits import ConcurrencyLimit
from .logs import request_id_var
from .metrics import Metrics
from .pages import is_public
from .settings import Settings

__all__ = ["GatewayMiddleware", "error_response", "is_oip"]

log = logging.getLogger("service.access")

AUTH_EXEMPT = frozenset({"/v2/health/live"})
LIMIT_EXEMPT = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})


def is_oip(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def error_response(exc: BaseException, rid: str | None, path: str) -> JSONResponse:
    info = describe(exc)
    headers = {"Retry-After": str(info.retry_after)} if info.retry_after else {}
    if info.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        info.body(rid, oip=is_oip(path)), status_code=info.http_status, headers=headers
    )


class GatewayMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        metrics: Metrics,
        tokens: TokenChecker,
        limit: ConcurrencyLimit,
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.tokens = tokens
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        rid = request_id(headers.get("x-request-id"))
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        path: str = scope["path"]
        status = 500
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        limited = path not in LIMIT_EXEMPT
        counted = False
        self.metrics.in_flight.inc()
        try:
            try:
                if path not in AUTH_EXEMPT and not is_public(path):
                    self.tokens.check(headers.get("authorization"))
                if limited:
                    self.limit.acquire()
                    counted = True
                receive = self._limit_body(headers, receive)
            except ServiceError as exc:
                await error_response(exc, rid, path)(scope, receive, send_wrapper)
                return
            await self.app(scope, receive, send_wrapper)
        finally:
            if counted:
                self.limit.release()
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - t0
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(template, str(status)).inc()
            self.metrics.request_latency.labels(template).observe(elapsed)
            log.info(
                "%s %s %d %.1f ms",
                scope["method"],
                path,
                status,
                elapsed * 1000,
                extra={
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
            request_id_var.reset(token)

    def _limit_body(self, headers: dict[str, str], receive: Receive) -> Receive:
        limit = self.settings.max_body_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise PayloadTooLargeError(f"body is {length} bytes; the limit is {limit}")
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message: dict[str, Any] = dict(await receive())
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLargeError(f"body exceeds the limit of {limit} bytes")
            return message

        return limited_receive
