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

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE = SHARED / "reference"


def reference_listing(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """Parse ``shared/reference/keys_*.tsv`` into ``[(key, shape)]``."""
    path = REFERENCE / f"keys_{name}.tsv"
    if not path.is_file():
        pytest.skip(f"reference listing {path} not available")
    rows = []
    for line in path.read_text().splitlines():
        key, shape = line.split("\t")
        dims = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
        rows.append((key, dims))
    return rows


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
