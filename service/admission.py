"""One admission path for both transports: request ID, auth, the concurrency limit (with an
optional per-client fair share), the drain, metrics and the access log. The HTTP middleware
(:mod:`service.middleware`) and the gRPC interceptor (:mod:`service.grpc_server`) are thin
adapters over :class:`Admission`; nothing here knows about either wire.

The API, for a transport adapter or a streaming RPC:

* ``call = admission.open(transport, route, headers, peer)``: a request ID (the client's
  ``x-request-id`` when sane), the logging context, the in-flight gauge;
* ``admission.check(call, auth=..., limited=..., stream=...)``: raises the request's
  :class:`~service.errors.ServiceError` (401/403, 503 while draining or over the limit) or takes
  a concurrency slot that :meth:`Admission.close` gives back (a stream takes none: it is only
  tracked, so that the drain can end it);
* ``admission.close(call, status)``: releases, counts, times and writes the access-log line;
* ``async with admission.message(stream_call, request_id, route) as call:`` one message of a
  stream (``ModelStreamInfer``) as a request of its own: a slot, metrics and a log line (the
  stream itself was authenticated and tracked at its start);
* ``admission.has_room()``: the cheap look a transport takes before reading a message;
* ``current_call.get()``: the call being served in this task (its request ID, its client).

Both transports run on one event loop, so the plain counters are race-free. During a drain
(:meth:`Admission.cut_off`), every call still holding a slot is cancelled and its adapter answers
503 / ``UNAVAILABLE``: nothing accepted is left without an answer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field

from .auth import TokenChecker, request_id
from .dataplane import DataPlane
from .errors import NotReadyError, OverloadedError, describe
from .logs import request_id_var
from .metrics import Metrics
from .settings import Settings

__all__ = ["Admission", "Call", "current_call", "decimal"]

log = logging.getLogger("service.access")

current_call: ContextVar[Call | None] = ContextVar("sepvit_call", default=None)
_DECIMAL = re.compile(r"[0-9]{1,18}")


def decimal(value: str) -> int | None:
    """A non-negative ASCII decimal header value, else None (``str.isdigit`` accepts '²')."""
    return int(value) if _DECIMAL.fullmatch(value) else None


@dataclass(eq=False)
class Call:
    """One admitted request or RPC, from :meth:`Admission.open` to :meth:`Admission.close`."""

    transport: str  # "http" or "grpc"
    method: str  # HTTP method, or "rpc"
    path: str  # URL path or full gRPC method name
    request_id: str
    client: str  # the fair-share key: a token digest or the peer address
    authorization: str | None
    started: float = field(default_factory=time.perf_counter)
    slots: int = 0
    cut: bool = False  # cancelled by the drain's cut-off
    task: asyncio.Task[object] | None = None
    # how the drain ends this call: the adapter's own callback, else cancelling its task
    on_cut: Callable[[], None] | None = None
    _context: Token[str | None] | None = None
    _call_context: Token[Call | None] | None = None


class Admission:
    def __init__(
        self, settings: Settings, metrics: Metrics, tokens: TokenChecker, plane: DataPlane
    ) -> None:
        self.limit = settings.max_concurrent_requests
        self.retry_after_s = settings.retry_after_s
        self.fair_share = settings.fair_share
        self.metrics = metrics
        self.tokens = tokens
        self.plane = plane  # its ``draining`` flag is the one drain state
        self.active = 0
        self.by_client: collections.Counter[str] = collections.Counter()
        self.calls: set[Call] = set()

    @property
    def draining(self) -> bool:
        return self.plane.draining

    # -- the request's life ------------------------------------------------------------------
    def open(
        self,
        transport: str,
        method: str,
        path: str,
        headers: Mapping[str, str],
        peer: str | None,
    ) -> Call:
        authorization = headers.get("authorization")
        if authorization:  # never keep or log the token itself
            client = "token:" + hashlib.sha256(authorization.encode()).hexdigest()[:16]
        else:
            client = f"peer:{peer or '?'}"
        call = Call(
            transport, method, path, request_id(headers.get("x-request-id")), client, authorization
        )
        call._context = request_id_var.set(call.request_id)
        call._call_context = current_call.set(call)
        self.metrics.in_flight.inc()
        return call

    def check(
        self, call: Call, *, auth: bool = True, limited: bool = True, stream: bool = False
    ) -> None:
        """Authenticate (unless exempt); refuse limited calls and streams while draining; take a
        slot for a limited call. Raises the refusal."""
        if auth:
            self.tokens.check(call.authorization)
        if limited or stream:
            if self.draining:
                self.metrics.rejected.labels("", "draining").inc()
                raise NotReadyError("the server is shutting down", retry_after=self.retry_after_s)
            if limited:
                self._acquire(call)
            call.task = asyncio.current_task()
            self.calls.add(call)

    def close(self, call: Call, status: str, route: str) -> None:
        """Release the call's slots; count, time and log it. ``route`` is the metrics label
        (the route template, never the raw path)."""
        while call.slots:
            self._release(call)
        self.calls.discard(call)
        self.metrics.in_flight.dec()
        elapsed = time.perf_counter() - call.started
        self.metrics.answered(route, status, elapsed)
        if log.isEnabledFor(logging.INFO):  # below info (the access log off), nothing is built
            self._log(call, status, elapsed)
        # a stream may end in another context than it began in: then there is nothing to reset
        with contextlib.suppress(ValueError):
            if call._context is not None:
                request_id_var.reset(call._context)
            if call._call_context is not None:
                current_call.reset(call._call_context)

    @staticmethod
    def _log(call: Call, status: str, elapsed: float) -> None:
        log.info(
            "%s %s %s %.1f ms",
            call.method,
            call.path,
            status,
            elapsed * 1000,
            extra={
                "transport": call.transport,
                "method": call.method,
                "path": call.path,
                "status": int(status) if status.isdigit() else status,
                "duration_ms": round(elapsed * 1000, 2),
            },
        )

    @asynccontextmanager
    async def message(self, stream: Call, request_id: str, route: str) -> AsyncIterator[Call]:
        """One message of a stream as a request of its own: its request ID, a concurrency slot
        (refused while draining or full), its metrics and access-log line, with the stream's
        client and its authentication (checked when the stream began). Errors propagate, after
        being counted with their gRPC code."""
        call = Call(
            stream.transport,
            stream.method,
            stream.path,
            request_id,
            stream.client,
            stream.authorization,
        )
        call._context = request_id_var.set(request_id)
        call._call_context = current_call.set(call)
        self.metrics.in_flight.inc()
        status = "UNKNOWN"
        try:
            self.check(call, auth=False)
            yield call
            status = "OK"
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except Exception as exc:
            status = describe(exc).grpc_code
            raise
        finally:
            self.close(call, status, route)

    # -- the limit ---------------------------------------------------------------------------
    def has_room(self) -> bool:
        return not self.draining and self.active < self.limit

    def acquire(self, client: str = "") -> None:
        """Take one slot outside any call (tests); :meth:`release` gives it back."""
        self._take(client)

    def release(self, client: str = "") -> None:
        self._give(client)

    def _acquire(self, call: Call) -> None:
        self._take(call.client)
        call.slots += 1

    def _release(self, call: Call) -> None:
        call.slots -= 1
        self._give(call.client)

    def _take(self, client: str) -> None:
        if self.active >= self.limit:
            self._refuse(f"more than {self.limit} concurrent requests")
        if self.fair_share:
            holders = len(self.by_client) + (client not in self.by_client)
            share = max(1, self.limit // holders)
            if self.by_client[client] >= share:
                self._refuse(f"this client holds its fair share ({share}) of {self.limit} slots")
        self.active += 1
        self.by_client[client] += 1

    def _give(self, client: str) -> None:
        self.active -= 1
        self.by_client[client] -= 1
        if self.by_client[client] <= 0:
            del self.by_client[client]

    def _refuse(self, message: str) -> None:
        self.metrics.rejected.labels("", "overloaded").inc()
        raise OverloadedError(message, retry_after=self.retry_after_s)

    # -- the drain ---------------------------------------------------------------------------
    def cut_off(self) -> int:
        """End every call still running (its ``on_cut``, else cancel its task); their adapters
        answer 503/UNAVAILABLE. Returns how many were cut."""
        cut = 0
        for call in list(self.calls):
            if call.task is not None and not call.task.done():
                call.cut = True
                if call.on_cut is not None:
                    call.on_cut()
                else:
                    call.task.cancel()
                cut += 1
        if cut:
            logging.getLogger(__name__).warning("shutdown grace over: %d calls cut off", cut)
        return cut
