"""Overload: ten times the sustainable concurrency on a slow model, then back to normal.

The ``slow`` model (224 px, batches of 2, 4 images may wait) sustains 6 concurrent one-image
requests without refusing any; 60 closed-loop clients push it to 10x, past the gateway's own
limit of 32 in-flight requests too. Each request carries a 3 s deadline, and a client that is
refused waits 50 ms before it tries again (a client honouring ``Retry-After`` waits longer).
Checked: admitted requests keep a bounded p99; the excess is refused fast with 429 (queue full)
or 503 (too many in flight); no request outlives its deadline; readiness answers throughout; and
throughput afterwards is what it was before. 5 s in the default run, 20 s under ``slow``.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from bench.loadgen import Request, run_closed_loop, summarize
from service.processes import GatewayProcess
from tests.service.conftest import png

from .conftest import metric_sum

pytestmark = pytest.mark.integration

SUSTAINABLE = 6  # SLOW: max_batch_size 2 + max_queue 4
DEADLINE_S = 3.0
IMAGES = [png(48, 64, i) for i in range(8)]


def make(i: int) -> Request:
    headers = (("Content-Type", "image/png"), ("X-Request-Timeout", str(DEADLINE_S)))
    return Request("POST", "/classify?model=slow", IMAGES[i % len(IMAGES)], headers)


async def closed_loop(gw: GatewayProcess, concurrency: int, seconds: float) -> dict:
    result = await run_closed_loop(
        gw.url,
        make,
        concurrency=concurrency,
        duration_s=seconds,
        warmup_s=0.5,
        timeout_s=DEADLINE_S + 5,
        pause_after_reject_s=0.05,
    )
    out = summarize(result)
    out["max_latency_s"] = max(s.latency for s in result.samples)
    out["transport_errors"] = [s.error for s in result.samples if s.status == 0]
    return out


async def overload_with_probes(
    gw: GatewayProcess, seconds: float
) -> tuple[dict, list[tuple[int, float]]]:
    probes: list[tuple[int, float]] = []
    end = time.perf_counter() + seconds

    async def probe() -> None:
        async with httpx.AsyncClient(base_url=gw.url, timeout=5) as c:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                r = await c.get("/v2/health/ready")
                probes.append((r.status_code, time.perf_counter() - t0))
                await asyncio.sleep(0.25)

    load, _ = await asyncio.gather(closed_loop(gw, 10 * SUSTAINABLE, seconds), probe())
    return load, probes


@pytest.mark.parametrize(
    "seconds", [5.0, pytest.param(20.0, marks=pytest.mark.slow)], ids=["5s", "20s"]
)
def test_ten_times_sustainable_concurrency(alive: GatewayProcess, seconds: float) -> None:
    gw = alive
    before = asyncio.run(closed_loop(gw, SUSTAINABLE // 2, 2.0))
    assert before["statuses"] == {"200": before["requests"]}, before
    metrics0 = httpx.get(f"{gw.url}/metrics").text

    load, probes = asyncio.run(overload_with_probes(gw, seconds))
    after = asyncio.run(closed_loop(gw, SUSTAINABLE // 2, 2.0))
    metrics1 = httpx.get(f"{gw.url}/metrics").text
    print(f"\nbefore {before}\noverload {load}\nafter {after}")

    codes = {int(k): v for k, v in load["statuses"].items()}
    assert set(codes) <= {200, 429, 503, 504}, codes
    assert not load["transport_errors"], load["transport_errors"][:3]
    rejected = codes.get(429, 0) + codes.get(503, 0)
    assert rejected > codes.get(200, 0), "10x the sustainable load must be mostly refused"
    # admitted work goes on (refusing costs CPU too: on 2 cores shared with the clients, goodput
    # under 10x load is lower than at the sustainable load; docs/reliability.md has the figures)
    assert codes.get(200, 0) >= 0.2 * before["throughput_rps"] * seconds, "admitted work stalls"
    # admitted requests: bounded by the queue (3 batches ahead at most), far below the deadline
    assert load["latency_ms"]["p99"] < max(1500.0, 10 * before["latency_ms"]["p50"]), load
    # refusals never wait for a batch
    assert load["rejected_latency_ms"]["p50"] < 250.0 and load["rejected_latency_ms"]["p99"] < 1000
    # nothing outlives its deadline (plus scheduling slack on a loaded 2-core machine)
    assert load["max_latency_s"] < DEADLINE_S + 1.0, load["max_latency_s"]
    # health answers throughout
    assert probes and all(s == 200 for s, _ in probes), probes
    assert max(t for _, t in probes) < 1.0
    # both refusal paths were counted, and the server recovers at once
    queue_full = 'sepvit_rejected_requests_total{model="slow",reason="queue_full"}'
    assert metric_sum(metrics1, queue_full) > metric_sum(metrics0, queue_full)
    assert after["statuses"] == {"200": after["requests"]}, after
    assert after["throughput_rps"] >= 0.6 * before["throughput_rps"], (before, after)
