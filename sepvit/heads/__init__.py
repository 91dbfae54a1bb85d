"""Task heads: RetinaNet detector and Semantic FPN segmenter (the classifier head is SepViT's)."""

from .fpn import FPN
from .retinanet import RetinaHead, RetinaNet
from .segmentation import SemanticFPN

__all__ = ["FPN", "RetinaHead", "RetinaNet", "SemanticFPN"]
