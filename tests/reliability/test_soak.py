"""Soak (``slow``): 5 minutes of moderate mixed load on a real gateway (4 closed-loop clients
over /classify, /detect, /segment in every format, 1 image in 10 corrupt), sampling RSS every
10 s. Nothing fails that should not, latency stays flat, and memory stops growing.

RSS bound: after the first minute (warm-up: allocator arenas, lazily built buffers, the
interpreter's caches) the process may still grow by 32 MiB over the remaining four minutes. That
is glibc moving free pages between arenas; a leak of even 1 KiB per request would exceed it,
since the run serves well over 30 000 requests on 2 cores.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from bench.loadgen import Request, run_closed_loop, summarize
from service.processes import GatewayProcess
from tests.service.conftest import png

from .conftest import rss_mib

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECONDS = float(os.environ.get("SEPVIT_SOAK_SECONDS", "300"))
GROWTH_BOUND_MIB = 32.0
ROUTES = [
    "/classify?top_k=3",
    "/detect?score_threshold=0.2",
    "/segment",
    "/segment?format=png",
    "/segment?format=overlay",
]


def test_soak(alive: GatewayProcess) -> None:
    gw = alive
    images = [png(40 + i, 90 - i, i) for i in range(9)] + [b"\x89PNG broken"]
    rss: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        t0 = time.perf_counter()
        while not done.wait(10.0 if SECONDS >= 60 else 1.0):
            rss.append((time.perf_counter() - t0, rss_mib(gw.proc.pid)))

    def make(i: int) -> Request:
        return Request(
            "POST",
            ROUTES[i % len(ROUTES)],
            images[i % len(images)],
            (("Content-Type", "image/png"),),
        )

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = asyncio.run(run_closed_loop(gw.url, make, concurrency=4, duration_s=SECONDS))
    finally:
        done.set()
        sampler.join()
    expect_bad = [s for s in result.samples if s.status == 400]
    summary = summarize(result, ok=lambda s: s.status in (200, 400))
    print(f"\n{summary}\nRSS (s, MiB): {[(round(t), round(m)) for t, m in rss]}")
    assert set(summary["statuses"]) <= {"200", "400"}, summary["statuses"]
    assert expect_bad, "the corrupt images were answered 400"
    assert summary["requests"] > 10 * SECONDS  # moderate load really ran
    warm = [m for t, m in rss if t >= SECONDS / 5]
    assert warm and max(warm) - warm[0] < GROWTH_BOUND_MIB, rss
    # latency stays flat: the last fifth is no slower than the first fifth after warm-up
    lat = lambda lo, hi: sorted(  # noqa: E731
        s.latency for s in result.samples if lo <= s.start < hi
    )
    first, last = lat(SECONDS / 5, 2 * SECONDS / 5), lat(4 * SECONDS / 5, SECONDS)
    assert last[len(last) // 2] < 2 * first[len(first) // 2] + 0.05, "latency drifts upward"
