"""SepViT-Shapes: a seeded synthetic dataset of shapes for classification, detection and
segmentation. Nothing is read from disk; every image is a pure function of (split seed, index).

Scene recipe:

* **background**: a desaturated mid-tone (grey level 112-138, slight tint, near the ImageNet
  normalisation mean) with a gentle linear gradient at a random angle, Gaussian pixel noise, and
  clutter (0-3 thin line segments, open arcs or groups of specks) that never forms one of the
  classes. Backgrounds away from the normalisation mean made the task far slower to learn (see
  ``docs/shapes.md``);
* **objects**: one of :data:`CLASSES`, random colour (independent of the class; resampled until it
  contrasts with the background under it), size 10-50 % of the image side (the diameter of the
  shape's circumscribed circle), random rotation, filled or outlined (outline width ~12 % of the
  size), slight per-object brightness noise;
* **classification split**: one dominant object (20-50 % of the side); label = its class;
* **detection / segmentation split**: 1-6 objects; overlaps are allowed but every object keeps at
  least 60 % of its pixels visible. Boxes are the bounding boxes of the *visible* masks
  (``[x1, y1, x2, y2]``, pixel edges), the segmentation map holds ``class + 1`` per pixel (0 is
  background), and both come from the same masks, so they always agree.

Splits use fixed seeds (:data:`SPLIT_SEEDS`); the test split is never used for training or model
selection.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..registry import TASKS

__all__ = [
    "CLASSES",
    "SPLIT_SEEDS",
    "Scene",
    "ShapesDataset",
    "coco_ground_truth",
    "render_scene",
    "shape_polygon",
]

CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "hexagon",
    "cross",
    "ellipse",
    "pentagon",
)
SPLIT_SEEDS = {"train": 1_000, "val": 2_000, "test": 3_000}
# scene recipes: 1 the original (near-mean backgrounds; the own splits' figures), 2 domain
# randomisation (sepvit.data.randomised), 3 style 2 plus thin outlines, hatch fills, text and
# lines in front. A style never changes once published.
STYLES = (1, 2, 3)


@dataclass
class Scene:
    """One rendered image and its annotations."""

    image: np.ndarray  # [H, W, 3] uint8
    labels: list[int] = field(default_factory=list)  # class index per object
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)  # xyxy, pixels
    masks: list[np.ndarray] = field(default_factory=list)  # visible mask per object, [H, W] bool
    segmentation: np.ndarray | None = None  # [H, W] uint8: 0 background, class + 1

    @property
    def label(self) -> int:
        """Classification label: the class of the largest visible object."""
        if not self.labels:
            raise ValueError("scene has no objects")
        areas = [int(m.sum()) for m in self.masks]
        return self.labels[int(np.argmax(areas))]


def shape_polygon(
    cls: int,
    center: tuple[float, float],
    radius: float,
    angle: float,
    aspect: float = 0.55,
    star_inner: float = 0.42,
    cross_arm: float = 0.32,
) -> list[tuple[float, float]]:
    """Vertices of class ``cls`` inscribed in a circle of ``radius`` around ``center``.

    ``aspect`` is the minor/major axis ratio used by ellipses, ``star_inner`` the star's inner
    radius (relative) and ``cross_arm`` the cross's arm half-width relative to its arm length.
    """
    name = CLASSES[cls]
    if name in ("circle", "ellipse"):
        t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        pts = np.stack([np.cos(t), (aspect if name == "ellipse" else 1.0) * np.sin(t)], 1)
    elif name in ("square", "triangle", "pentagon", "hexagon"):
        n = {"square": 4, "triangle": 3, "pentagon": 5, "hexagon": 6}[name]
        t = np.arange(n) * 2 * math.pi / n + math.pi / 2
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif name == "star":
        t = np.arange(10) * math.pi / 5 + math.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, star_inner)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    elif name == "cross":
        a, b = (
            cross_arm,
            1.0 / math.sqrt(1 + cross_arm**2),
        )  # arm half-width, length (tips on circle)
        a *= b
        pts = np.array(
            [
                (a, b),
                (a, a),
                (b, a),
                (b, -a),
                (a, -a),
                (a, -b),
                (-a, -b),
                (-a, -a),
                (-b, -a),
                (-b, a),
                (-a, a),
                (-a, b),
            ]
        )
    else:  # pragma: no cover - CLASSES and this table change together
        raise ValueError(name)
    c, s = math.cos(angle), math.sin(angle)
    rot = pts @ np.array([[c, s], [-s, c]])
    return [(center[0] + radius * x, center[1] + radius * y) for x, y in rot]


def _background(rng: np.random.Generator, size: int, difficulty: float = 1.0) -> np.ndarray:
    """Desaturated mid-tone gradient plus noise. Keeping backgrounds near grey (objects are
    saturated) is what makes the task learnable on CPU budgets; see docs/shapes.md.
    ``difficulty`` scales the level spread, tint, gradient and noise (0: flat grey 125)."""
    d = difficulty
    level = 125 + d * rng.uniform(-13, 13)  # around the ImageNet mean (0.485, 0.456, 0.406)*255
    tint = d * rng.normal(0, 4, 3)
    c0 = level + tint
    c1 = np.clip(c0 + d * rng.normal(0, 12), 0, 255) + d * rng.normal(0, 3, 3)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = np.cos(theta) * xx + np.sin(theta) * yy
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    img = img + rng.normal(0, d * rng.uniform(1, 4), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _clutter(
    rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int, difficulty: float = 1.0
) -> None:
    for _ in range(round(difficulty * int(rng.integers(0, 4)))):
        kind = rng.random()
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        if kind < 0.5:  # line segment
            x0, y0 = rng.uniform(0, size, 2)
            length = rng.uniform(0.1, 0.5) * size
            ang = rng.uniform(0, 2 * math.pi)
            w = int(rng.integers(1, max(2, size // 110) + 1))
            draw.line(
                [(x0, y0), (x0 + length * math.cos(ang), y0 + length * math.sin(ang))],
                fill=color,
                width=w,
            )
        elif kind < 0.75:  # open arc
            r = rng.uniform(0.05, 0.25) * size
            cx, cy = rng.uniform(0, size, 2)
            start = rng.uniform(0, 360)
            draw.arc(
                [cx - r, cy - r, cx + r, cy + r],
                start,
                start + rng.uniform(40, 200),
                fill=color,
                width=2,
            )
        else:  # specks
            for _ in range(int(rng.integers(3, 12))):
                x, y = rng.uniform(0, size, 2)
                r = rng.uniform(0.5, 1.8)
                draw.ellipse([x - r, y - r, x + r, y + r], fill=color)


def _contrasting_color(
    rng: np.random.Generator, under: np.ndarray, difficulty: float = 1.0
) -> tuple[int, int, int]:
    """A random colour at least ~110 (RGB distance) away from the mean colour ``under`` it.

    Below full ``difficulty`` the colour is, with probability ``1 - difficulty``, a light grey
    (a consistent contrast sign, which is what an untrained network picks up first)."""
    if difficulty < 1.0 and rng.random() >= difficulty:
        v = int(rng.integers(215, 256))
        return (v, v, v)
    ref = under.reshape(-1, 3).mean(0) if under.size else np.array([128.0, 128, 128])
    for _ in range(50):
        c = rng.integers(0, 256, 3)
        if np.linalg.norm(c - ref) > 110:
            break
    return (int(c[0]), int(c[1]), int(c[2]))


def render_scene(
    rng: np.random.Generator,
    size: int,
    num_objects: int,
    size_range: tuple[float, float] = (0.10, 0.50),
    min_visible: float = 0.6,
    outline_prob: float = 0.2,
    difficulty: float = 1.0,
) -> Scene:
    """Render one scene with up to ``num_objects`` shapes (placements violating the visibility
    constraint are retried, then skipped; at least one object is always placed).

    ``difficulty`` in [0, 1] is a training curriculum knob: 1 (the default, and what validation
    and test splits always use) is the full recipe; lower values shrink background variation,
    clutter and outlines and make objects light grey more often. 0 is light-grey filled shapes
    on flat grey."""
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    bg = _background(rng, size, difficulty)
    canvas = Image.fromarray(bg)
    _clutter(rng, ImageDraw.Draw(canvas), size, difficulty)
    blur = float(rng.uniform(0, 0.8)) * difficulty
    if blur > 0:
        canvas = canvas.filter(ImageFilter.GaussianBlur(radius=blur))
    img = np.asarray(canvas).copy()

    labels: list[int] = []
    full_masks: list[np.ndarray] = []  # each object's own pixels
    visible: list[np.ndarray] = []
    for k in range(num_objects):
        for _attempt in range(20):
            cls = int(rng.integers(len(CLASSES)))
            diameter = rng.uniform(*size_range) * size
            radius = diameter / 2
            cx, cy = rng.uniform(radius * 0.6, size - radius * 0.6, 2)
            poly = shape_polygon(
                cls, (cx, cy), radius, rng.uniform(0, 2 * math.pi), rng.uniform(0.45, 0.65)
            )
            mimg = Image.new("L", (size, size), 0)
            d = ImageDraw.Draw(mimg)
            if rng.random() < outline_prob * difficulty:
                width = max(3, round(0.12 * diameter))
                d.line([*poly, poly[0]], fill=255, width=width, joint="curve")
            else:
                d.polygon(poly, fill=255)
            mask = np.asarray(mimg) > 127
            area = int(mask.sum())
            if area < 20:
                continue
            if visible_enough(mask, visible, full_masks, min_visible):
                break
        else:
            if k > 0:
                continue  # give up on this object; the scene keeps the others
        color = np.array(_contrasting_color(rng, img[mask], difficulty), dtype=np.float64)
        shade = rng.normal(0, 6, (size, size, 1)) * max(difficulty, 0.3)
        obj = np.clip(color[None, None] + shade, 0, 255)
        img[mask] = obj[mask].astype(np.uint8)
        visible = [v & ~mask for v in visible]
        visible.append(mask.copy())
        full_masks.append(mask)
        labels.append(cls)

    return _scene_from_masks(img, labels, visible)


def visible_enough(
    mask: np.ndarray, visible: list[np.ndarray], full: list[np.ndarray], min_visible: float
) -> bool:
    """Whether every placed object keeps ``min_visible`` of its own pixels under ``mask``."""
    return all(
        (v & ~mask).sum() >= min_visible * f.sum() for v, f in zip(visible, full, strict=True)
    )


def _scene_from_masks(img: np.ndarray, labels: list[int], visible: list[np.ndarray]) -> Scene:
    """The scene's boxes and segmentation map, both from the visible masks."""
    kept = [(c, v) for c, v in zip(labels, visible, strict=True) if v.any()]
    labels, visible = [c for c, _ in kept], [v for _, v in kept]
    seg = np.zeros(img.shape[:2], np.uint8)
    boxes = []
    for cls, v in kept:
        seg[v] = cls + 1
        ys, xs = np.nonzero(v)
        boxes.append((float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)))
    return Scene(image=img, labels=labels, boxes=boxes, masks=visible, segmentation=seg)


class ShapesDataset:
    """Indexable, deterministic SepViT-Shapes split.

    ``dataset[i]`` is a :class:`Scene`; the same (split, task, size, i) always gives the same
    scene, in any order and in any process.
    """

    def __init__(
        self,
        split: str = "train",
        task: str = "classify",
        size: int = 224,
        length: int = 10_000,
        seed: int | None = None,
        style: int = 1,
    ) -> None:
        if split not in SPLIT_SEEDS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEEDS)}")
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        if size < 32:
            raise ValueError(f"size must be at least 32 pixels, got {size}")
        self.split = split
        self.task = task
        self.size = int(size)
        self.length = int(length)
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
        self.seed = SPLIT_SEEDS[split] if seed is None else int(seed)
        self.style = int(style)
        self.classes = CLASSES

    def __len__(self) -> int:
        return self.length

    def rng(self, index: int) -> np.random.Generator:
        task_id = TASKS.index(self.task) if self.task == "classify" else 1  # det/seg share scenes
        key = [self.seed, task_id, self.size, int(index)]
        return np.random.default_rng(key if self.style == 1 else [*key, self.style])

    def __getitem__(self, index: int) -> Scene:
        return self.get(index)

    def get(self, index: int, difficulty: float = 1.0) -> Scene:
        """Scene ``index``; ``difficulty`` < 1 gives the easier curriculum variant of the same
        placement seed (training only; see :func:`render_scene`)."""
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = self.rng(index)
        if self.style in (2, 3):
            from .randomised import render_randomised

            if difficulty != 1.0:
                raise ValueError("the curriculum (difficulty < 1) applies to style 1 only")
            ext = self.style == 3
            if self.task == "classify":
                return render_randomised(rng, self.size, 1, size_range=(0.2, 0.85), extended=ext)
            n = int(rng.integers(1, 7))
            return render_randomised(rng, self.size, n, size_range=(0.1, 0.5), extended=ext)
        if self.task == "classify":
            return render_scene(rng, self.size, 1, size_range=(0.20, 0.50), difficulty=difficulty)
        n = int(rng.integers(1, 7))
        return render_scene(rng, self.size, n, size_range=(0.10, 0.45), difficulty=difficulty)

    def __iter__(self) -> Iterator[Scene]:
        for i in range(self.length):
            yield self[i]

    def info(self) -> dict[str, Any]:
        return {
            "name": "SepViT-Shapes",
            "split": self.split,
            "task": self.task,
            "size": self.size,
            "length": self.length,
            "seed": self.seed,
            "style": self.style,
            "classes": list(self.classes),
        }


def coco_ground_truth(scenes: Sequence[Scene], size: int) -> dict[str, Any]:
    """COCO-format ground truth (``images``, ``annotations``, ``categories``) for scenes."""
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for i, sc in enumerate(scenes):
        images.append({"id": i, "width": size, "height": size})
        for cls, box, mask in zip(sc.labels, sc.boxes, sc.masks, strict=True):
            x1, y1, x2, y2 = box
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": cls,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                }
            )
    cats = [{"id": i, "name": n} for i, n in enumerate(CLASSES)]
    return {"images": images, "annotations": anns, "categories": cats}
