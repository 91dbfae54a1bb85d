"""Faults: a runtime that fails its parity check, and TorchServe dying under the gateway.

SIGTERM during load is covered by ``tests/service/test_servers.py::
test_sigterm_drains_in_flight_requests`` (16 requests of 8 images in flight: all answered 200,
readiness false first); it is not repeated here.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

import handlers.pipeline
from bench.loadgen import Request, run_closed_loop, summarize
from handlers.runtime import Runtime
from service.app import create_app
from service.loader import load_settings
from service.processes import GatewayProcess
from service.torchserve.process import TorchServeProcess, build_archives
from tests.service.conftest import ROOT, png, start_gateway

pytestmark = pytest.mark.integration


def _negated(name: str, eager: Runtime) -> Runtime:
    """A "runtime" whose logits are eager's negated: every top-1 answer changes."""
    return Runtime(name, lambda x: [-t for t in eager(x)], eager.device)


def test_runtime_failing_parity_never_becomes_ready(
    checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = handlers.pipeline.build_runtime

    def build(name: str, model: Any, size: Any, **kw: Any) -> Runtime:
        eager = real("eager", model, size)
        return eager if name == "eager" else _negated(name, eager)

    monkeypatch.setattr(handlers.pipeline, "build_runtime", build)
    cls = str(checkpoints["cls"])
    models = [
        {"name": "cls", "checkpoint": cls},
        {
            "name": "strict",
            "checkpoint": cls,
            "runtime": "onnxruntime",
            "handler": {"on_parity_failure": "fail"},
        },
        {
            "name": "lenient",
            "checkpoint": cls,
            "runtime": "onnxruntime",
            "handler": {"on_parity_failure": "fallback"},
        },
    ]
    with TestClient(create_app(load_settings(models=models, grpc_port=None))) as c:
        for _ in range(600):
            listing = {m["name"]: m for m in c.get("/models").json()["models"]}
            if all(m["state"] != "loading" for m in listing.values()):
                break
            time.sleep(0.05)
        assert listing["strict"]["state"] == "failed"
        assert "DISAGREES with eager" in listing["strict"]["error"]
        assert listing["lenient"]["state"] == "ready" and listing["lenient"]["runtime"] == "eager"
        # /models says why it serves eager
        assert "DISAGREES with eager" in listing["lenient"]["runtime_info"]["fallback"]
        for _ in range(5):  # and it stays that way: nothing retries it into service
            assert c.get("/v2/models/strict/ready").status_code == 503
            assert c.get("/v2/health/ready").status_code == 503  # every model must be ready
            time.sleep(0.2)
        r = c.post("/classify?model=strict", content=png(), headers={"content-type": "image/png"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        for name in ("cls", "lenient"):
            r = c.post(
                f"/classify?model={name}", content=png(), headers={"content-type": "image/png"}
            )
            assert r.status_code == 200, r.text


# -- TorchServe killed under load (~20 s) ---------------------------------------------------------
@pytest.fixture
def torchserve_stack(
    checkpoints: dict[str, Path], tmp_path: Path, torchserve_required: None
) -> Iterator[tuple[TorchServeProcess, GatewayProcess]]:
    config = yaml.safe_load(
        (ROOT / "model_store/sepvit_lite_shapes_cls/model-config.yaml").read_text()
    )
    config["handler"]["runtime"] = "eager"
    cfg = tmp_path / "model-config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    store = build_archives({"cls": (checkpoints["cls"], cfg)}, tmp_path / "store")
    ts = TorchServeProcess(tmp_path / "ts", store, ["cls"])
    gw = None
    try:
        ts.start()
        gw = start_gateway(
            tmp_path,
            [{"name": "cls", "checkpoint": str(checkpoints["cls"]), "model_config_file": str(cfg)}],
            backend="torchserve",
            torchserve_address=ts.grpc,
            torchserve_token_file=str(ts.key_file),
            torchserve_health_interval_s=0.5,
        )
        yield ts, gw
    finally:
        if gw is not None:
            gw.stop()
        ts.stop()


def test_torchserve_killed_mid_load(
    torchserve_stack: tuple[TorchServeProcess, GatewayProcess],
) -> None:
    """Load on the gateway; TorchServe is SIGKILLed, then started again on the same ports.
    The gateway answers 503 while it is gone (never 500, never a hang), readiness follows it,
    and requests succeed again once it is back, without restarting the gateway."""
    ts, gw = torchserve_stack
    body = png(48, 64, 3)
    headers = (("Content-Type", "image/png"), ("X-Request-Timeout", "5"))
    done = threading.Event()
    result: dict[str, Any] = {}

    def load() -> None:
        result["load"] = asyncio.run(
            run_closed_loop(
                gw.url,
                lambda i: Request("POST", "/classify", body, headers),
                concurrency=4,
                duration_s=600.0,
                timeout_s=15,
                pause_after_reject_s=0.05,
                stop=done.is_set,
            )
        )

    t0 = time.perf_counter()
    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(3)
        ts.kill()
        ready = []
        for _ in range(100):
            ready.append(httpx.get(f"{gw.url}/v2/health/ready", timeout=5).status_code)
            if ready[-1] == 503:
                break
            time.sleep(0.1)
        assert ready[-1] == 503, "readiness must follow the backend"
        t_out = time.perf_counter()
        outage = httpx.post(
            f"{gw.url}/classify", content=body, headers={"content-type": "image/png"}, timeout=10
        )
        assert outage.status_code == 503 and outage.json()["error"]["code"] == "not_ready"
        assert time.perf_counter() - t_out < 2.0, "refused fast while the backend is down"
        ts.start()
        restarted = time.perf_counter()
        for _ in range(300):
            if httpx.get(f"{gw.url}/v2/health/ready", timeout=5).status_code == 200:
                break
            time.sleep(0.1)
        recovered = time.perf_counter()
        time.sleep(2)  # load goes on against the recovered backend
    finally:
        done.set()
        thread.join(60)
    samples = result["load"].samples
    codes = {s.status for s in samples}
    print(summarize(result["load"]), f"ready {recovered - restarted:.1f} s after restart")
    assert codes <= {200, 502, 503, 504}, codes  # never a 500, never a dropped connection
    assert 503 in codes
    assert [s for s in samples if s.status == 200 and s.start > recovered - t0], "no recovery"
