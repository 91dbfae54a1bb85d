"""One pure-ASGI middleware for every HTTP request (pure ASGI so that client disconnects still
reach the routes): the HTTP adapter of :class:`service.admission.Admission`, plus the body's
size and time limits.

Order per request: request ID -> auth (liveness and the public pages of :mod:`service.pages`
exempt) -> drain and concurrency limit (health and metrics exempt, so probes answer under
overload) -> body limits (size on ``Content-Length`` and while the body streams; the whole body
within ``body_timeout_s``, else 408) -> the app. Refusals are JSON errors from
:func:`service.errors.describe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .admission import Admission, Call, decimal
from .errors import (
    ErrorInfo,
    NotReadyError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ServiceError,
    describe,
)
from .pages import is_public
from .settings import Settings

__all__ = ["AUTH_EXEMPT", "GatewayMiddleware", "error_response", "is_oip", "needs_token"]

AUTH_EXEMPT = frozenset({"/v2/health/live"})
LIMIT_EXEMPT = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})


def needs_token(path: str) -> bool:
    """Whether a request to ``path`` must carry a bearer token when auth is on (also what the
    OpenAPI document declares)."""
    return path not in AUTH_EXEMPT and not is_public(path)


def is_oip(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def error_response(exc: BaseException | ErrorInfo, rid: str | None, path: str) -> JSONResponse:
    """The JSON error answer: ``{"error": {code, message, request_id}}``, or on the Open
    Inference Protocol routes ``{"error": message, "code", "request_id"}``."""
    info = exc if isinstance(exc, ErrorInfo) else describe(exc)
    headers = {"Retry-After": str(info.retry_after)} if info.retry_after else {}
    if info.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    body = info.oip_body(rid) if is_oip(path) else info.body(rid)
    return JSONResponse(body, status_code=info.http_status, headers=headers)


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings, admission: Admission) -> None:
        self.app = app
        self.settings = settings
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope["path"]
        peer = (scope.get("client") or ("?",))[0]
        call = self.admission.open("http", scope["method"], path, headers, peer)
        scope.setdefault("state", {})["request_id"] = call.request_id
        status = 500
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message.setdefault("headers", [])
                extra = [(b"x-request-id", call.request_id.encode())]
                if self.admission.draining:  # no keep-alive reuse racing the listener's close
                    extra.append((b"connection", b"close"))
                message["headers"] = [*message["headers"], *extra]
            await send(message)

        limited = path not in LIMIT_EXEMPT
        try:
            try:
                self.admission.check(call, auth=needs_token(path), limited=limited)
                receive = self._limit_body(headers, receive)
            except ServiceError as exc:
                await self._answer(exc, call, scope, receive, send_wrapper)
                return
            if not limited:  # probes and metrics: never cut off, no task of their own
                await self.app(scope, receive, send_wrapper)
                return
            # the app runs as a task of its own, so that the drain's cut-off can end it (and
            # answer 503 if nothing was sent yet) without cancelling the server's request task
            work = asyncio.ensure_future(self.app(scope, receive, send_wrapper))
            cut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def on_cut() -> None:
                if not cut.done():
                    cut.set_result(None)

            call.on_cut = on_cut
            try:
                await asyncio.wait({work, cut}, return_when=asyncio.FIRST_COMPLETED)
                if not work.done() and not started:
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await work
                    over = NotReadyError("the server is shutting down (grace period over)")
                    await self._answer(over, call, scope, receive, send_wrapper)
                else:
                    await work  # done, or its answer is already on the way: let it finish
            finally:
                cut.cancel()
                if not work.done():  # this request's own task was cancelled
                    work.cancel()
        finally:
            route = scope.get("route")
            self.admission.close(call, str(status), getattr(route, "path", None) or "unmatched")

    @staticmethod
    async def _answer(
        exc: ServiceError, call: Call, scope: Scope, receive: Receive, send: Send
    ) -> None:
        await error_response(exc, call.request_id, call.path)(scope, receive, send)

    def _limit_body(self, headers: dict[str, str], receive: Receive) -> Receive:
        """``receive`` with the body's limits: size (413) and arrival time (408)."""
        limit = self.settings.max_body_bytes
        raw = headers.get("content-length")
        length = decimal(raw) if raw is not None else None
        if length is not None and length > limit:
            raise PayloadTooLargeError(f"body is {length} bytes; the limit is {limit}")
        timeout = self.settings.body_timeout_s
        deadline = time.monotonic() + timeout
        seen = 0
        done = False

        async def limited_receive() -> Message:
            nonlocal seen, done
            if done:  # the body is in: what follows is the disconnect, with no time limit
                return await receive()
            try:  # a timeout scope, not wait_for: no task per message
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    message: dict[str, Any] = dict(await receive())
            except TimeoutError:
                raise RequestTimeoutError(
                    f"the request body did not arrive within {timeout:g} s"
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLargeError(f"body exceeds the limit of {limit} bytes")
                done = not message.get("more_body", False)
            else:
                done = True
            return message

        return limited_receive
