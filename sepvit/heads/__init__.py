"""Task heads (OpenMMLab layouts): RetinaNet detector and Semantic FPN segmenter, each registered
as a :class:`~sepvit.heads.base.HeadSpec` (the classifier head is the backbone's)."""

from .base import DEFAULT_HEADS, HEADS, HeadSpec, get_head, head_for_state, register_head
from .fpn import FPN, ConvModule
from .retinanet import RetinaHead, RetinaNet
from .segmentation import FPNHead, SemanticFPN

__all__ = [
    "DEFAULT_HEADS",
    "FPN",
    "HEADS",
    "ConvModule",
    "FPNHead",
    "HeadSpec",
    "RetinaHead",
    "RetinaNet",
    "SemanticFPN",
    "get_head",
    "head_for_state",
    "register_head",
]
