"""Model arguments the tests share."""

from __future__ import annotations

from typing import Any

# sepvit_lite with one block per stage: four blocks instead of eleven, for tests of export and
# cache mechanics that need a real SepViT graph but not its depth (an ONNX export takes about
# half as long)
SHALLOW: dict[str, Any] = {"depths": (1, 1, 1, 1), "window_sizes": ((7,), (7,), (7,), (7,))}
