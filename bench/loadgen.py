"""A closed-loop HTTP load generator on asyncio streams, shared by the serving benchmark and the
reliability tests.

Closed loop: ``concurrency`` workers, each on its own keep-alive HTTP/1.1 connection, send a
request, wait for the whole answer, and send the next one at once (no think time). Offered load
therefore follows the server: this measures throughput at a given number of outstanding
requests, and latency at that throughput.

The client is a minimal HTTP/1.1 implementation (``Content-Length`` and chunked answers,
reconnect when the server closes) rather than httpx: on a 2-core machine the client shares the
CPU with the server, and httpx costs several times more CPU per request.

Every request is recorded as a :class:`Sample`; :func:`summarize` keeps the samples that started
inside the measurement window (after ``warmup_s``) and reports throughput, latency percentiles and
status counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "HttpConnection",
    "LoadResult",
    "Request",
    "Sample",
    "percentile",
    "run_closed_loop",
    "summarize",
]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Sample:
    start: float  # seconds since the run began
    latency: float  # seconds
    status: int  # HTTP status; 0 for a transport error
    size: int  # response body bytes
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes it."""

    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(self, req: Request) -> tuple[int, dict[str, str], bytes]:
        try:
            return await asyncio.wait_for(self._request(req), self.timeout)
        except BaseException:
            await self.close()  # a half-read answer leaves the connection unusable
            raise

    async def _request(self, req: Request) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            await self._connect()
        assert self.reader is not None and self.writer is not None
        head = [f"{req.method} {req.path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        head += [f"{k}: {v}" for k, v in req.headers]
        if req.body or req.method in ("POST", "PUT"):
            head.append(f"Content-Length: {len(req.body)}")
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + req.body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readline()
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            body = b"".join(parts)
        else:
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, body


@dataclass
class LoadResult:
    samples: list[Sample]
    concurrency: int
    warmup_s: float
    duration_s: float

    def window(self) -> list[Sample]:
        lo, hi = self.warmup_s, self.warmup_s + self.duration_s
        return [s for s in self.samples if lo <= s.start < hi]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(result: LoadResult, ok: Callable[[Sample], bool] | None = None) -> dict[str, Any]:
    """Throughput of successful requests in the window, latency percentiles (ms), statuses."""
    ok = ok or (lambda s: s.status == 200)
    window = result.window()
    good = [s for s in window if ok(s)]
    lat = [s.latency * 1000 for s in good]
    rejected = [s.latency * 1000 for s in window if s.status in (429, 503)]
    return {
        "concurrency": result.concurrency,
        "requests": len(window),
        "ok": len(good),
        "throughput_rps": round(len(good) / result.duration_s, 2),
        "latency_ms": {
            "p50": round(percentile(lat, 50), 2),
            "p95": round(percentile(lat, 95), 2),
            "p99": round(percentile(lat, 99), 2),
            "max": round(max(lat), 2) if lat else math.nan,
            "mean": round(sum(lat) / len(lat), 2) if lat else math.nan,
        },
        "rejected_latency_ms": {
            "p50": round(percentile(rejected, 50), 2),
            "p99": round(percentile(rejected, 99), 2),
        },
        "statuses": {str(k): v for k, v in sorted(Counter(s.status for s in window).items())},
        "errors": sorted({s.error for s in window if s.error})[:5],
        "response_bytes_mean": round(sum(s.size for s in good) / len(good), 1) if good else 0,
    }


async def run_closed_loop(
    url: str,
    make_request: Callable[[int], Request],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 0.0,
    timeout_s: float = 60.0,
    pause_after_reject_s: float = 0.0,
    keep_headers: Sequence[str] = (),
    stop: Callable[[], bool] | None = None,
) -> LoadResult:
    """Run ``concurrency`` closed-loop workers for ``warmup_s + duration_s`` seconds.

    ``make_request(i)`` gives the i-th request (i counts across workers). A worker that gets
    429/503 waits ``pause_after_reject_s`` before its next request (0: retry at once). ``stop()``
    returning true ends the run early (e.g. set from another thread). Requests
    still in flight at the end are awaited (up to ``timeout_s``) and recorded, so a request that
    hangs shows up as a long latency or a timeout error, never as a silent loss.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    samples: list[Sample] = []
    counter = 0
    t0 = time.perf_counter()
    end = t0 + warmup_s + duration_s

    async def worker() -> None:
        nonlocal counter
        conn = HttpConnection(host, port, timeout_s)
        try:
            while time.perf_counter() < end and not (stop and stop()):
                req = make_request(counter)
                counter += 1
                start = time.perf_counter()
                try:
                    status, headers, body = await conn.request(req)
                    error = None
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                    status, headers, body, error = 0, {}, b"", f"{type(exc).__name__}: {exc}"
                now = time.perf_counter()
                kept = {k: headers[k] for k in keep_headers if k in headers}
                samples.append(Sample(start - t0, now - start, status, len(body), error, kept))
                if status == 0:
                    await asyncio.sleep(0.01)  # connection refused: do not spin
                elif status in (429, 503) and pause_after_reject_s:
                    await asyncio.sleep(pause_after_reject_s)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(samples, concurrency, warmup_s, duration_s)
