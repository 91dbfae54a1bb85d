"""Backbone families: SepViT and SeT."""

from .sepvit import SEPVIT_VARIANTS, SepViT, checkpoint_filter_fn
from .set import SET_VARIANTS, SeT

__all__ = ["SEPVIT_VARIANTS", "SET_VARIANTS", "SeT", "SepViT", "checkpoint_filter_fn"]
