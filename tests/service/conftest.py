"""Gateway fixtures: tiny random-weight checkpoints built on the fly, images made in the test,
in-process apps, and real gateway processes on 127.0.0.1 that are always stopped."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from sepvit import create_model, save_checkpoint
from sepvit.data.shapes import CLASSES

ROOT = Path(__file__).resolve().parents[2]
IMG = 64  # network input of the test models: small, so every test stays fast on 2 cores


def png(h: int = 48, w: int = 64, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``cls``, ``det``, ``seg`` (64 px) and ``slow`` (a 224 px classifier) checkpoints."""
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    labels = list(CLASSES)
    head = {"fpn_channels": 16, "head_channels": 16}
    models = {
        "cls": create_model("sepvit_lite", num_classes=8, img_size=IMG, label_names=labels),
        "det": create_model(
            "sepvit_lite",
            task="detect",
            num_classes=8,
            img_size=IMG,
            label_names=labels,
            head_convs=1,
            **head,
        ),
        "seg": create_model(
            "sepvit_lite",
            task="segment",
            num_classes=9,
            img_size=IMG,
            label_names=["background", *labels],
            **head,
        ),
        "slow": create_model("sepvit_lite", num_classes=8, img_size=224, label_names=labels),
    }
    return {name: save_checkpoint(m, d / f"{name}.safetensors") for name, m in models.items()}


def model_entries(checkpoints: dict[str, Path], **overrides: dict[str, Any]) -> list[dict]:
    out = []
    for name in ("cls", "det", "seg"):
        out.append({"name": name, "checkpoint": str(checkpoints[name]), **overrides.get(name, {})})
    if "slow" in overrides:
        out.append({"name": "slow", "checkpoint": str(checkpoints["slow"]), **overrides["slow"]})
    return out


@dataclass
class Gateway:
    """A real ``sepvit-serve`` process on loopback."""

    proc: subprocess.Popen[bytes]
    port: int
    grpc_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)


def start_gateway(
    tmp: Path,
    models: list[dict],
    timeout: float = 600.0,  # a first load of a runtime: auto model exports and searches
    headers: dict[str, str] | None = None,
    **settings: Any,
) -> Gateway:
    """Start ``sepvit-serve`` and wait until ready (``headers``: e.g. the token, with auth on)."""
    port, grpc_port = free_port(), free_port()
    config = {"models": models, "grpc_port": grpc_port, "port": port, **settings}
    cfg = tmp / f"gateway-{port}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    log = tmp / f"gateway-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEPVIT_")}
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "--config", str(cfg)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    gw = Gateway(proc, port, grpc_port, log)
    tokens = settings.get("auth_tokens") or []
    headers = {"Authorization": f"Bearer {tokens[0]}"} if tokens else {}
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited early:\n{log.read_text()[-4000:]}")
        try:
            ready = httpx.get(f"{gw.url}/v2/health/ready", headers=headers, timeout=1)
            if ready.status_code == 200:
                return gw
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    gw.stop()
    raise RuntimeError(f"gateway not ready in {timeout} s:\n{log.read_text()[-4000:]}")


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Gateway] = []

    def start(models: list[dict], **settings: Any) -> Gateway:
        gw = start_gateway(tmp_path, models, **settings)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
