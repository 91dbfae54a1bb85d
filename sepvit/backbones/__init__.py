"""Backbone families."""

from .sepvit import SEPVIT_VARIANTS, SepViT, checkpoint_filter_fn

__all__ = ["SEPVIT_VARIANTS", "SepViT", "checkpoint_filter_fn"]
