from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Spinning OpenMP threads make CPU timings erratic on 2 cores; tests keep to few threads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch.set_num_threads(min(2, torch.get_num_threads()))
# One ONNX export cache for the run and the servers it starts (TorchServe workers run in their
# extracted archive, which would otherwise re-export the demo models at every start).
os.environ.setdefault("SEPVIT_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".cache"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def torchserve_required() -> None:
    """Fail (not skip) where TorchServe cannot start: the venv installs it, and Java is needed."""
    from service.torchserve.process import missing

    why = missing()
    if why:
        pytest.fail(why)
