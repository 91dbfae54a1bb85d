"""Deterministic weights and inputs shared by the golden-parity test and its generator.

The golden outputs in ``tests/data/golden_official.safetensors`` were produced by the official
SepViT implementation (liwei109/SepViT @ 2b420d3, ``classification/sepvit.py`` and
``detection/sepvit.py``, run with torch 2.13 CPU and a minimal stand-in for the three timm 0.3.2
helpers it imports) after loading exactly the weights that :func:`seeded_state_dict` builds here.
"""

from __future__ import annotations

import torch
from torch import Tensor


def seeded_state_dict(template: dict[str, Tensor], seed: int = 0) -> dict[str, Tensor]:
    """Random weights for every tensor of ``template`` (keys in sorted order, fixed generator).

    LayerNorm weights are ``1 + 0.1 n``, everything else ``0.05 n`` with ``n ~ N(0, 1)``, so all
    parameters (window tokens included) are non-trivial.
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in sorted(template):
        shape = template[k].shape
        n = torch.randn(shape, generator=g)
        out[k] = (
            1.0 + 0.1 * n
            if ("norm" in k and k.endswith(".weight") and len(shape) == 1)
            else 0.05 * n
        )
    return out


def seeded_input(shape: tuple[int, ...], seed: int = 1) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
