"""MAC counting with ``torch.utils.flop_counter``.

``FlopCounterMode`` has no formula for the fused CPU attention kernel, so attention would be left
out of the count. :func:`count_macs` runs ``scaled_dot_product_attention`` through the math
backend, which lowers it to counted matmuls.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs", "count_params"]


def count_macs(model: nn.Module, input_size: tuple[int, int, int, int] = (1, 3, 224, 224)) -> int:
    """Multiply-accumulates of one forward pass (matmuls and convolutions, as fvcore counts)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            model(torch.zeros(input_size))
    finally:
        model.train(was_training)
    return fc.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
