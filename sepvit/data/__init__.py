"""SepViT-Shapes synthetic dataset."""

from .shapes import CLASSES, SPLIT_SEEDS, Scene, ShapesDataset, coco_ground_truth, render_scene

__all__ = ["CLASSES", "SPLIT_SEEDS", "Scene", "ShapesDataset", "coco_ground_truth", "render_scene"]
