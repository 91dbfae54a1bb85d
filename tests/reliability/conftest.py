"""Reliability fixtures: one real ``sepvit-serve`` process on 127.0.0.1 shared by the hostile
input, fuzz and overload tests, with tiny random-weight models, plus helpers to read its memory
and metrics. The checkpoints come from ``tests/service/conftest.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.processes import GatewayProcess
from tests.service.conftest import (
    checkpoints,
    gateway_factory,
    model_entries,
    start_gateway,
)

__all__ = ["LIMITS", "SLOW", "checkpoints", "gateway_factory", "metric_sum", "rss_mib"]

# the reliability gateway's limits (the corpus expects exactly these)
LIMITS = {
    "max_body_bytes": 4 * 1024 * 1024,
    "max_images_per_request": 16,
    "max_concurrent_requests": 32,
    "request_timeout_s": 10.0,
}
# the 224 px classifier that the overload tests saturate: a batch of 2 at a time, 4 waiting
SLOW = {"max_batch_size": 2, "max_delay_ms": 2, "max_queue": 4}
BATCHING = {"max_batch_size": 8, "max_delay_ms": 10}


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def metric_sum(text: str, prefix: str) -> float:
    """Sum of every sample whose line starts with ``prefix`` (name plus optional labels)."""
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


@pytest.fixture(scope="session")
def gateway(
    checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    models = model_entries(checkpoints, cls=BATCHING, det=BATCHING, seg=BATCHING, slow=SLOW)
    gw = start_gateway(tmp_path_factory.mktemp("reliability"), models, **LIMITS)
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def alive(gateway: GatewayProcess) -> Iterator[GatewayProcess]:
    """The gateway, checked to be alive and ready after the test."""
    yield gateway
    assert gateway.proc.poll() is None, gateway.log.read_text()[-3000:]
    assert httpx.get(f"{gateway.url}/v2/health/ready", timeout=10).status_code == 200
