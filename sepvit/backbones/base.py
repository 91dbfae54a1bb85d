"""What the two backbone families share: the forward pass of both layouts, the classifier reset,
and reading a backbone's tensors out of a (possibly wrapped, possibly detector) checkpoint."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

__all__ = ["Backbone", "backbone_state", "check_batch", "unwrap_state"]


class Backbone(nn.Module):
    """Base of :class:`~sepvit.backbones.sepvit.SepViT` and :class:`~sepvit.backbones.set.SeT`.

    A subclass sets ``embed_dims`` (channels per stage) and the rest of its layout with
    :meth:`_init_layout`, and defines timm's split of the forward pass: ``forward_intermediates``
    (the multi-scale features the heads consume), ``forward_features`` and ``forward_head`` (the
    classifier). In the dense (detection/segmentation) layout :meth:`forward` returns the
    features and there is no classifier.
    """

    depths: tuple[int, ...]
    embed_dims: tuple[int, ...]
    img_size: tuple[int, int]
    dense: bool
    num_classes: int
    num_features: int
    out_indices: tuple[int, ...]
    feature_info: list[dict[str, Any]]

    def _init_layout(
        self,
        img_size: int | Sequence[int],
        dense: bool,
        num_classes: int,
        out_indices: Sequence[int],
        stages: str,
    ) -> None:
        """Check ``img_size`` and set the attributes both families derive alike from their
        arguments (``embed_dims`` is set before): ``img_size`` as ``(H, W)``, ``dense``,
        ``num_classes`` (0 when dense), ``num_features``, ``out_indices`` and timm's
        ``feature_info`` (strides 4 to 32, the stage modules ``<stages>.<i>``)."""
        img_hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(img_hw) != 2 or min(img_hw) < 1:
            raise ValueError(f"img_size must be an int or (H, W), got {img_size!r}")
        self.img_size = (int(img_hw[0]), int(img_hw[1]))
        self.dense = dense
        self.num_classes = 0 if dense else num_classes
        self.num_features = self.embed_dims[-1]
        self.out_indices = tuple(out_indices)
        self.feature_info = [
            dict(num_chs=c, reduction=4 * 2**i, module=f"{stages}.{i}")
            for i, c in enumerate(self.embed_dims)
        ]

    def _wanted_stages(self, x: Tensor, indices: Sequence[int] | None) -> tuple[int, ...]:
        """Check the image batch ``x`` and the stage ``indices`` of :meth:`forward_intermediates`
        (default ``out_indices``); returns the indices."""
        check_batch(x)
        wanted = tuple(self.out_indices if indices is None else indices)
        if not wanted or min(wanted) < 0 or max(wanted) >= len(self.depths):
            raise ValueError(f"stage indices {wanted} out of range for {len(self.depths)} stages")
        return wanted

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


def check_batch(x: Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` is an image batch ``[B, C, H, W]``."""
    if x.ndim != 4:
        raise ValueError(f"expected an image batch [B, C, H, W], got shape {tuple(x.shape)}")


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
