"""What the two backbone families share: the forward pass of both layouts, the classifier reset,
and reading a backbone's tensors out of a (possibly wrapped, possibly detector) checkpoint."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

__all__ = ["Backbone", "backbone_state", "unwrap_state"]


class Backbone(nn.Module):
    """Base of :class:`~sepvit.backbones.sepvit.SepViT` and :class:`~sepvit.backbones.set.SeT`.

    A subclass sets ``dense``, ``embed_dims`` (channels per stage), ``num_features`` and
    ``num_classes``, and defines timm's split of the forward pass: ``forward_intermediates``
    (the multi-scale features the heads consume), ``forward_features`` and ``forward_head`` (the
    classifier). In the dense (detection/segmentation) layout :meth:`forward` returns the
    features and there is no classifier.
    """

    dense: bool
    embed_dims: tuple[int, ...]
    num_classes: int
    num_features: int

    def forward_intermediates(
        self, x: Tensor, indices: Sequence[int] | None = None
    ) -> list[Tensor]:
        raise NotImplementedError

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        if self.dense:
            return self.forward_intermediates(x)
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier ``head`` with ``num_classes`` outputs (0: none, features only)."""
        if self.dense:
            raise RuntimeError("the dense layout has no classifier")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def unwrap_state(state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
    """Unwrap ``{'model': ...}`` / ``{'state_dict': ...}`` / ``{'module': ...}`` containers."""
    sd: Any = state_dict
    for key in ("model", "state_dict", "module", "model_ema"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
            break
    return {k: v for k, v in sd.items() if isinstance(v, Tensor)}


def backbone_state(state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
    """The backbone's tensors of a checkpoint: unwrapped (:func:`unwrap_state`), ``module.``
    stripped, and of a detector's or segmenter's checkpoint only the ``backbone.*`` entries,
    without the prefix (its ``neck.*``, ``decode_head.*``, ... are dropped)."""
    sd = unwrap_state(state_dict)
    if any(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if any(k.startswith("backbone.") for k in sd):
        sd = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    return sd
