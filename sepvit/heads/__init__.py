"""Task heads (OpenMMLab layouts): RetinaNet and Mask R-CNN detectors, Semantic FPN and UperNet
segmenters, each registered
as a :class:`~sepvit.heads.base.HeadSpec` (the classifier head is the backbone's)."""

from .base import DEFAULT_HEADS, HEADS, HeadSpec, get_head, head_for_state, register_head
from .fpn import FPN, ConvModule
from .mask_rcnn import MaskRCNN
from .retinanet import RetinaHead, RetinaNet
from .segmentation import FPNHead, SemanticFPN
from .upernet import UPerHead, UperNet

__all__ = [
    "DEFAULT_HEADS",
    "FPN",
    "HEADS",
    "ConvModule",
    "FPNHead",
    "HeadSpec",
    "MaskRCNN",
    "RetinaHead",
    "RetinaNet",
    "SemanticFPN",
    "UPerHead",
    "UperNet",
    "get_head",
    "head_for_state",
    "register_head",
]
