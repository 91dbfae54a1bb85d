"""An independent evaluation set for the SepViT-Shapes models, drawn with **matplotlib** (Agg
patches, anti-aliased) rather than the training generator's PIL ``ImageDraw`` polygons.

Nothing here is shared with :mod:`sepvit.data.shapes` or :mod:`sepvit.data.randomised` except the
class list: the shapes are matplotlib's own ``Circle``, ``Ellipse``, ``RegularPolygon`` and
``Rectangle`` patches, the star is a ``Polygon`` of its own proportions and the cross is two
overlapping rectangles, as a person would draw them. The set is only for evaluation: no training
code reads it (a test checks that ``sepvit.train`` does not import it).

Every item is a pure function of ``(INDEPENDENT_SEED, task, size, index)``; even indices are the
**plain** variant, odd ones the **varied** variant:

* **plain** (the users' report in issue 18): a saturated solid background, 2-8 thin random lines
  behind the shapes, shapes filled with one saturated colour;
* **varied**: solid backgrounds of any saturation (white, black and greys included) or two-colour
  gradients; shapes filled, outlined (2-5 px), hatched, or filled with an edge of another colour;
  lines behind and in front, and a few short words of text.

Classification items hold one shape (30-80 % of the side); detection and segmentation items share
multi-shape scenes (1-5 shapes, 15-45 % of the side, each keeping >= 60 % of its pixels visible).
Masks are each shape rendered alone without anti-aliasing, minus the shapes drawn over it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from .shapes import CLASSES, TASKS, Scene, _scene_from_masks, visible_enough

__all__ = ["INDEPENDENT_SEED", "VARIANTS", "IndependentShapes"]

INDEPENDENT_SEED = 18_018
VARIANTS = ("plain", "varied")
HATCHES = ("//", "\\\\", "xx", "||", "--", "++", "..", "oo")


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    from matplotlib.colors import hsv_to_rgb

    r, g, b = hsv_to_rgb((h, s, v))
    return float(r), float(g), float(b)


def _saturated(rng: np.random.Generator) -> tuple[float, float, float]:
    return _hsv(rng.random(), rng.uniform(0.65, 1.0), rng.uniform(0.55, 1.0))


def _any_color(rng: np.random.Generator) -> tuple[float, float, float]:
    if rng.random() < 0.25:  # white, black or a grey
        g = float(rng.choice([0.0, 1.0, rng.uniform(0.2, 0.9)]))
        return g, g, g
    return _hsv(rng.random(), rng.random(), rng.uniform(0.15, 1.0))


def _far(
    rng: np.random.Generator, ref: tuple[float, ...], pick: Any, dist: float = 0.42
) -> tuple[float, float, float]:
    """A colour from ``pick(rng)`` at least ``dist`` (RGB in [0, 1]) from ``ref``."""
    c = pick(rng)
    for _ in range(100):
        if math.dist(c, ref) >= dist:
            break
        c = pick(rng)
    return c


def _patch(
    name: str, cx: float, cy: float, r: float, angle: float, rng: np.random.Generator
) -> list[Any]:
    """matplotlib patches (a list) of class ``name``, the shape's
    circumscribed radius ``r`` around ``(cx, cy)``, rotated by ``angle`` radians."""
    from matplotlib import patches

    deg = math.degrees(angle)
    if name == "circle":
        return [patches.Circle((cx, cy), r)]
    if name == "ellipse":
        return [patches.Ellipse((cx, cy), 2 * r, 2 * r * rng.uniform(0.42, 0.62), angle=deg)]
    if name in ("square", "triangle", "pentagon", "hexagon"):
        n = {"square": 4, "triangle": 3, "pentagon": 5, "hexagon": 6}[name]
        return [patches.RegularPolygon((cx, cy), n, radius=r, orientation=angle)]
    if name == "star":
        inner = rng.uniform(0.38, 0.48)
        t = angle + np.arange(10) * math.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, r * inner)
        return [patches.Polygon(np.stack([cx + rad * np.sin(t), cy - rad * np.cos(t)], 1))]
    # cross: arms of half-width w, tips on the circle (w^2 + h^2 = r^2)
    w = r * rng.uniform(0.24, 0.36)
    h = math.sqrt(r * r - w * w)
    quarter = [(w, h), (w, w), (h, w)]
    pts: list[tuple[float, float]] = []
    for q in range(4):  # the three corners of each quarter, turned by 90 degrees each time
        a = angle - q * math.pi / 2
        c, s = math.cos(a), math.sin(a)
        pts.extend((cx + x * c - y * s, cy + x * s + y * c) for x, y in quarter)
    return [patches.Polygon(np.array(pts))]


class _Canvas:
    """A ``size`` x ``size`` pixel Agg figure whose data coordinates are pixels (y down)."""

    def __init__(self, size: int) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.size = size
        self.fig = Figure(figsize=(size / 100, size / 100), dpi=100)
        self.canvas = FigureCanvasAgg(self.fig)
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.ax.set_xlim(0, size)
        self.ax.set_ylim(size, 0)
        self.ax.set_axis_off()

    def rgb(self) -> np.ndarray:
        self.canvas.draw()
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()

    def mask(self, parts: list[Any], outline: float) -> np.ndarray:
        """Pixels of ``parts`` drawn alone (white on black, no anti-aliasing)."""
        self.fig.set_facecolor("black")
        for p in parts:
            p.set(facecolor="none" if outline else "white", edgecolor="white")
            p.set(linewidth=outline, antialiased=False)
            self.ax.add_patch(p)
        out = self.rgb()[..., 0] > 127
        for p in parts:
            p.remove()
        return out


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _pt(px: float) -> float:
    return px * 72 / 100  # pixels to points at 100 dpi


class IndependentShapes:
    """The independent evaluation set (see the module docstring); items are :class:`Scene`."""

    def __init__(
        self,
        task: str = "classify",
        size: int = 224,
        length: int = 400,
        seed: int | None = None,
        variant: str | None = None,
    ) -> None:
        """``variant`` None alternates plain and varied items; "plain" or "varied" gives only
        those (item ``i`` is then item ``2i`` or ``2i + 1`` of the alternating set)."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        if variant is not None and variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
        self.only = variant
        self.task = task
        self.size = int(size)
        self.length = int(length)
        self.seed = INDEPENDENT_SEED if seed is None else int(seed)
        self.classes = CLASSES

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Scene]:
        for i in range(self.length):
            yield self[i]

    def variant(self, index: int) -> str:
        return VARIANTS[index % 2]

    def __getitem__(self, index: int) -> Scene:
        if not 0 <= index < self.length:
            raise IndexError(index)
        if self.only is not None:
            index = 2 * index + VARIANTS.index(self.only)
        task_id = 0 if self.task == "classify" else 1  # detection and segmentation share scenes
        rng = np.random.default_rng([self.seed, task_id, self.size, int(index)])
        plain = self.variant(index) == "plain"
        if self.task == "classify":
            return self._render(rng, plain, 1, (0.3, 0.8))
        return self._render(rng, plain, int(rng.integers(1, 6)), (0.15, 0.45))

    def _render(
        self, rng: np.random.Generator, plain: bool, n: int, size_range: tuple[float, float]
    ) -> Scene:
        from matplotlib.lines import Line2D

        size = self.size
        scene, masks = _Canvas(size), _Canvas(size)
        bg = _saturated(rng) if plain else _any_color(rng)
        scene.fig.set_facecolor(bg)
        if not plain and rng.random() < 0.4:  # a two-colour gradient
            t = np.linspace(0, 1, 64)[None, :] * np.ones((64, 1))
            end = np.array(_any_color(rng))
            grad = np.array(bg)[None, None] * (1 - t[..., None]) + end * t[..., None]
            if rng.random() < 0.5:
                grad = grad.transpose(1, 0, 2)
            scene.ax.imshow(grad, extent=(0, size, size, 0), zorder=0, interpolation="bilinear")
            scene.ax.set_xlim(0, size)
            scene.ax.set_ylim(size, 0)
        for _ in range(int(rng.integers(2, 9))):
            xs, ys = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
            front = not plain and rng.random() < 0.3
            scene.ax.add_line(
                Line2D(
                    xs,
                    ys,
                    color=_any_color(rng),
                    linewidth=_pt(rng.uniform(0.6, 1.6)),
                    zorder=5 if front else 1,
                )
            )
        if not plain:
            for _ in range(int(rng.integers(0, 3))):
                word = "".join(rng.choice(list("abcdefghkmnprstuvwxyz0123456789"), 3))
                x, y = rng.uniform(0.05, 0.8) * size, rng.uniform(0.1, 0.95) * size
                scene.ax.text(x, y, word, fontsize=size / 18, color=_any_color(rng), zorder=1)

        labels: list[int] = []
        full: list[np.ndarray] = []
        visible: list[np.ndarray] = []
        for k in range(n):
            for _attempt in range(20):
                cls = int(rng.integers(len(CLASSES)))
                r = rng.uniform(*size_range) * size / 2
                cx, cy = rng.uniform(r * 0.75, size - r * 0.75, 2)
                angle = rng.uniform(0, 2 * math.pi)
                outline = 0.0
                if not plain and rng.random() < 0.2:
                    outline = _pt(rng.uniform(2, 5))
                pseed = int(rng.integers(2**31))  # the patch's own proportions
                mask = masks.mask(_patch(CLASSES[cls], cx, cy, r, angle, _rng(pseed)), outline)
                if mask.sum() >= 20 and visible_enough(mask, visible, full, 0.6):
                    break
            else:
                if k > 0:
                    continue
            parts = _patch(CLASSES[cls], cx, cy, r, angle, _rng(pseed))  # the same geometry
            fill = _far(rng, bg, _saturated if plain else _any_color)
            for p in parts:
                p.set(zorder=3 + k, linewidth=0)
                if outline:
                    p.set(facecolor="none", edgecolor=fill, linewidth=outline)
                elif not plain and rng.random() < 0.3:
                    p.set(facecolor=fill, hatch=str(rng.choice(HATCHES)), edgecolor=_any_color(rng))
                    p.set(linewidth=_pt(rng.uniform(0, 3)))
                else:
                    p.set(facecolor=fill)
                scene.ax.add_patch(p)
            labels.append(cls)
            visible = [v & ~mask for v in visible]
            visible.append(mask.copy())
            full.append(mask)
        return _scene_from_masks(scene.rgb(), labels, visible)

    def info(self) -> dict[str, Any]:
        return {
            "name": "SepViT-Shapes independent (matplotlib)",
            "task": self.task,
            "size": self.size,
            "length": self.length,
            "seed": self.seed,
            "variants": [self.only] if self.only else list(VARIANTS),
        }
