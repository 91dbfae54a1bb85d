"""Gateway fixtures: tiny random-weight checkpoints built on the fly, images made in the test,
in-process apps, and real gateway processes on 127.0.0.1 that are always stopped."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sepvit import create_model, save_checkpoint
from sepvit.data.shapes import CLASSES
from service import processes
from service.processes import GatewayProcess, child_env

ROOT = Path(__file__).resolve().parents[2]
IMG = 64  # network input of the test models: small, so every test stays fast on 2 cores


def png(h: int = 48, w: int = 64, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def tiny_models() -> dict[str, nn.Module]:
    """Seeded random-weight ``sepvit_lite`` models at 64 px with the SepViT-Shapes labels, one per
    task (``cls``, ``det``, ``seg``), with small heads so that they load in a second."""
    torch.manual_seed(0)
    labels = list(CLASSES)
    head = {"fpn_channels": 16, "head_channels": 16}
    return {
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
    }


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """:func:`tiny_models` and ``slow`` (a 224 px classifier) as checkpoints."""
    d = tmp_path_factory.mktemp("ckpt")
    models = tiny_models()
    models["slow"] = create_model(
        "sepvit_lite", num_classes=8, img_size=224, label_names=list(CLASSES)
    )
    return {name: save_checkpoint(m, d / f"{name}.safetensors") for name, m in models.items()}


def model_entries(checkpoints: dict[str, Path], **overrides: dict[str, Any]) -> list[dict]:
    out = []
    for name in ("cls", "det", "seg"):
        out.append({"name": name, "checkpoint": str(checkpoints[name]), **overrides.get(name, {})})
    if "slow" in overrides:
        out.append({"name": "slow", "checkpoint": str(checkpoints["slow"]), **overrides["slow"]})
    return out


def start_gateway(
    tmp: Path, models: list[dict], timeout: float = 600.0, **settings: Any
) -> GatewayProcess:
    """``sepvit-serve`` with ``models`` and ``settings`` on free ports, single-threaded, ready."""
    env = child_env(OMP_NUM_THREADS="1")
    return processes.start_gateway(tmp, {"models": models, **settings}, env=env, timeout=timeout)


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[GatewayProcess] = []

    def start(models: list[dict], **settings: Any) -> GatewayProcess:
        gw = start_gateway(tmp_path, models, **settings)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
