"""SepViT-Shapes style 2: the domain-randomised scene recipe (training for demo models that
generalise to drawings made elsewhere; issue 18).

Style 1 (:func:`sepvit.data.shapes.render_scene`) keeps backgrounds near the normalisation mean,
which is what let SepViT-Lite learn shapes from scratch on CPU budgets. A model trained only on it
misreads shapes drawn on saturated backgrounds. Style 2 fine-tunes that model on scenes that vary
everything a drawing program varies and keep only the shape classes fixed:

* **background** (one of): the style-1 mid-tone (so the own split is not forgotten), a solid
  colour of any saturation and brightness, a linear or radial two-colour gradient, coloured
  noise (pixel or low-frequency blotches), or a texture (stripes, checkerboard, sinusoidal
  waves); optional pixel noise on top;
* **clutter**: 0-12 thin lines, open arcs, specks and irregular blobs (smooth random outlines far
  from any class shape) under the objects;
* **objects**: class, size and position as style 1 but a wider size range; star inner radius,
  cross arm width and ellipse aspect vary; fill style is solid, outline (width 4-15 % of the
  size), filled with a contrasting edge, a two-colour gradient, or stripes; anti-aliased edges
  (4x supersampling) or hard edges; colours at least 90 (RGB distance) from the background under
  the object;
* **whole image**: optional Gaussian blur, pixel noise and JPEG compression (quality 25-95).

Style 3 (``extended=True``) is style 2 with what drawing programs add on top: thin outlines
(1-5 px at 224², whatever the object's size), hatch fills (fine line, cross-hatch and dot patterns
of 4-12 px over a fill colour), short words of text behind or in front of the objects, and lines
in front of them. Its scenes are seeded apart from style 2's, so style 2 stays as published.

Labels follow style 1: masks are the object pixels at alpha >= 0.5, boxes and the segmentation map
come from the visible masks.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .shapes import Scene, _background, _clutter, _scene_from_masks, shape_polygon, visible_enough

__all__ = ["render_randomised"]

SUPERSAMPLE = 4


def _random_color(rng: np.random.Generator) -> np.ndarray:
    """Any hue, saturation and brightness (HSV drawn uniformly)."""
    h, s, v = rng.random(), rng.random(), rng.uniform(0.05, 1.0)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb) * 255.0


def _ramp(rng: np.random.Generator, size: int, radial: bool) -> np.ndarray:
    """A [H, W] field in [0, 1]: linear at a random angle, or radial around a random centre."""
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    if radial:
        cx, cy = rng.uniform(-0.2, 1.2, 2)
        t = np.hypot(xx - cx, yy - cy)
    else:
        theta = rng.uniform(0, 2 * math.pi)
        t = np.cos(theta) * xx + np.sin(theta) * yy
    return (t - t.min()) / max(float(t.max() - t.min()), 1e-6)


def _two_tone(t: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """Blend of colours (``[3]`` or ``[H, W, 3]``) by the field ``t`` ``[H, W]`` in [0, 1]."""
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Stripes, checkerboard or sinusoidal waves in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period = rng.uniform(0.03, 0.25) * size
    theta = rng.uniform(0, math.pi)
    u = (np.cos(theta) * xx + np.sin(theta) * yy) / period
    kind = rng.random()
    if kind < 0.4:
        return (np.floor(u) % 2).astype(np.float64)
    if kind < 0.7:
        v = (-np.sin(theta) * xx + np.cos(theta) * yy) / period
        return ((np.floor(u) + np.floor(v)) % 2).astype(np.float64)
    return 0.5 + 0.5 * np.sin(2 * math.pi * u + rng.uniform(0, 2 * math.pi))


def _random_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """[H, W, 3] float background of a random kind (see the module docstring)."""
    kind = rng.random()
    if kind < 0.15:
        return _background(rng, size).astype(np.float64)
    c0, c1 = _random_color(rng), _random_color(rng)
    if kind < 0.45:
        img = np.broadcast_to(c0, (size, size, 3)).astype(np.float64)
    elif kind < 0.65:
        img = _two_tone(_ramp(rng, size, radial=rng.random() < 0.35), c0, c1)
    elif kind < 0.8:
        cells = int(rng.integers(2, 9))
        grid = rng.normal(0, rng.uniform(15, 60), (cells, cells, 3)) + c0
        blot = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8)).resize(
            (size, size), Image.Resampling.BICUBIC
        )
        img = np.asarray(blot).astype(np.float64)
    else:
        img = _two_tone(_texture(rng, size), c0, c1)
    if rng.random() < 0.3:
        img = img + rng.normal(0, rng.uniform(3, 25), img.shape)
    return np.clip(img, 0, 255)


def _blob(rng: np.random.Generator, size: int) -> list[tuple[float, float]]:
    """An irregular closed outline (low-order random Fourier radius) that matches no class."""
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    r = np.ones_like(t)
    for k in (2, 3):
        r += rng.uniform(0.15, 0.35) * np.cos(k * t + rng.uniform(0, 2 * math.pi))
    r += rng.normal(0, 0.06, t.shape)
    scale = rng.uniform(0.04, 0.14) * size
    cx, cy = rng.uniform(0, size, 2)
    return [
        (cx + scale * a * math.cos(b), cy + scale * a * math.sin(b))
        for a, b in zip(r, t, strict=True)
    ]


def _lines(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int, n: int) -> None:
    """``n`` thin lines of any colour across the image."""
    for _ in range(n):
        x0, y0, x1, y1 = rng.uniform(-0.1, 1.1, 4) * size
        color = tuple(int(v) for v in _random_color(rng))
        draw.line([(x0, y0), (x1, y1)], fill=color, width=int(rng.integers(1, 3)))


def _random_clutter(rng: np.random.Generator, canvas: Image.Image, size: int) -> None:
    draw = ImageDraw.Draw(canvas)
    if rng.random() < 0.3:  # style 1's arcs, segments and specks
        _clutter(rng, draw, size)
    _lines(rng, draw, size, int(rng.integers(0, 13)) if rng.random() < 0.6 else 0)
    for _ in range(int(rng.integers(1, 4)) if rng.random() < 0.25 else 0):  # blobs
        draw.polygon(_blob(rng, size), fill=tuple(int(v) for v in _random_color(rng)))


def _alpha(poly: list[tuple[float, float]], size: int, outline: int, smooth: bool) -> np.ndarray:
    """Coverage in [0, 1] of a filled polygon (``outline`` 0) or of its outline of that width;
    ``smooth``: anti-aliased by supersampling, else hard edges."""
    f = SUPERSAMPLE if smooth else 1
    img = Image.new("L", (size * f, size * f), 0)
    d = ImageDraw.Draw(img)
    pts = [(x * f, y * f) for x, y in poly]
    if outline:
        d.line([*pts, pts[0]], fill=255, width=outline * f, joint="curve")
    else:
        d.polygon(pts, fill=255)
    if f > 1:
        img = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(img).astype(np.float64) / 255.0


def _contrasting(rng: np.random.Generator, ref: np.ndarray, min_dist: float = 90.0) -> np.ndarray:
    for _ in range(50):
        c = _random_color(rng)
        if np.linalg.norm(c - ref) > min_dist:
            return c
    return 255.0 - ref  # the complement always contrasts


def _hatch(rng: np.random.Generator, size: int) -> np.ndarray:
    """A fine hatch pattern in [0, 1] ``[H, W]``: parallel lines, a cross-hatch grid or dots, with a
    period of 4-12 px at 224² and lines of 1-2 px."""
    scale = size / 224
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period = max(3.0, rng.uniform(4, 12) * scale)
    width = max(1.0, rng.uniform(1, 2.2) * scale)
    theta = rng.choice([0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4]) + rng.normal(0, 0.05)
    u = np.cos(theta) * xx + np.sin(theta) * yy
    v = -np.sin(theta) * xx + np.cos(theta) * yy
    du = np.abs((u % period) - period / 2)
    dv = np.abs((v % period) - period / 2)
    kind = rng.random()
    if kind < 0.4:  # lines
        return (du < width / 2).astype(np.float64)
    if kind < 0.75:  # cross-hatch grid
        return ((du < width / 2) | (dv < width / 2)).astype(np.float64)
    return (np.hypot(du, dv) < max(1.0, rng.uniform(0.18, 0.35) * period)).astype(np.float64)


def _paint(
    rng: np.random.Generator,
    size: int,
    ref: np.ndarray,
    poly: list[tuple[float, float]],
    diameter: float,
    smooth: bool,
    extended: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """An object's coverage ``[H, W]`` and colour ``[H, W, 3]`` in a random fill style (style 3,
    ``extended``: thin outlines and hatch fills too)."""
    yy, xx = np.mgrid[0:size, 0:size]
    c0 = _contrasting(rng, ref)
    style = rng.random()
    if extended:
        if style < 0.15:  # a thin outline, 1-5 px at 224² whatever the object's size
            width = max(1, round(rng.uniform(1.0, 5.5) * size / 224))
            return _alpha(poly, size, width, smooth), np.broadcast_to(c0, (size, size, 3))
        if style < 0.3:  # a hatch fill, sometimes with an edge of the hatch colour
            alpha = _alpha(poly, size, 0, smooth)
            c1 = _contrasting(rng, c0, 60.0)
            t = _hatch(rng, size)
            if rng.random() < 0.5:
                t = np.maximum(t, _alpha(poly, size, max(1, round(rng.uniform(1, 3))), smooth))
            return alpha, _two_tone(t, c0, c1)
        style = (style - 0.3) / 0.7  # the style-2 mix for the rest
    if style < 0.15:  # outline only
        width = max(2, round(rng.uniform(0.04, 0.15) * diameter))
        return _alpha(poly, size, width, smooth), np.broadcast_to(c0, (size, size, 3))
    alpha = _alpha(poly, size, 0, smooth)
    if style < 0.55:  # solid
        color = np.broadcast_to(c0, (size, size, 3)).astype(np.float64)
    elif style < 0.7:  # gradient across the object
        color = _two_tone(_ramp(rng, size, radial=False), c0, _contrasting(rng, ref))
    elif style < 0.8:  # stripes
        period = rng.uniform(0.1, 0.3) * diameter
        theta = rng.uniform(0, math.pi)
        t = (np.floor((np.cos(theta) * xx + np.sin(theta) * yy) / period) % 2).astype(float)
        color = _two_tone(t, c0, _contrasting(rng, ref))
    else:  # filled, with an edge of another colour
        width = max(1, round(rng.uniform(0.02, 0.1) * diameter))
        edge = _alpha(poly, size, width, smooth)
        color = _two_tone(edge, c0, _contrasting(rng, c0, 60.0))
        alpha = np.maximum(alpha, edge)
    shade = rng.normal(0, rng.uniform(0, 8), (size, size, 1))
    return alpha, color + shade


_WORD_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789")


def _words(rng: np.random.Generator, canvas: Image.Image, size: int, front: bool) -> None:
    """Style 3: 0-3 short words of text in random colours and sizes."""
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 4))):
        if (rng.random() < 0.3) != front:
            continue
        word = "".join(rng.choice(_WORD_CHARS, int(rng.integers(2, 6))))
        font = ImageFont.load_default(size=max(6, round(rng.uniform(0.04, 0.1) * size)))
        xy = (float(rng.uniform(0, 0.85) * size), float(rng.uniform(0, 0.9) * size))
        draw.text(xy, word, fill=tuple(int(v) for v in _random_color(rng)), font=font)


def _finish(rng: np.random.Generator, img: np.ndarray, size: int) -> np.ndarray:
    """Whole-image degradations: blur, pixel noise, JPEG."""
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if rng.random() < 0.35:
        out = out.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.3, 1.4) * size / 160))
    arr = np.asarray(out).astype(np.float64)
    if rng.random() < 0.25:
        arr = np.clip(arr + rng.normal(0, rng.uniform(2, 12), arr.shape), 0, 255)
    out = Image.fromarray(arr.astype(np.uint8))
    if rng.random() < 0.4:
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=int(rng.integers(25, 96)))
        out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(out).copy()


def render_randomised(
    rng: np.random.Generator,
    size: int,
    num_objects: int,
    size_range: tuple[float, float],
    min_visible: float = 0.6,
    extended: bool = False,
) -> Scene:
    """A style-2 scene (style 3 with ``extended``) with up to ``num_objects`` shapes (placement
    rules as style 1)."""
    canvas = Image.fromarray(_random_background(rng, size).astype(np.uint8))
    _random_clutter(rng, canvas, size)
    if extended:
        _words(rng, canvas, size, front=False)
    img = np.asarray(canvas).astype(np.float64)
    labels: list[int] = []
    full: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    for k in range(num_objects):
        for _attempt in range(20):
            cls = int(rng.integers(8))
            diameter = rng.uniform(*size_range) * size
            radius = diameter / 2
            cx, cy = rng.uniform(radius * 0.7, size - radius * 0.7, 2)
            poly = shape_polygon(
                cls,
                (cx, cy),
                radius,
                rng.uniform(0, 2 * math.pi),
                aspect=rng.uniform(0.4, 0.65),
                star_inner=rng.uniform(0.36, 0.5),
                cross_arm=rng.uniform(0.22, 0.4),
            )
            under = _alpha(poly, size, 0, False) > 0.5
            if under.sum() >= 20 and visible_enough(under, visible, full, min_visible):
                break
        else:
            if k > 0:
                continue
        smooth = rng.random() < 0.6
        alpha, color = _paint(rng, size, img[under].mean(0), poly, diameter, smooth, extended)
        img = img * (1 - alpha[..., None]) + color * alpha[..., None]
        mask = alpha >= 0.5
        visible = [v & ~mask for v in visible]
        visible.append(mask.copy())
        full.append(mask)
        labels.append(cls)
    if extended:  # lines (in 35 % of scenes) and words over the objects, not in any mask
        canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        if rng.random() < 0.35:
            _lines(rng, ImageDraw.Draw(canvas), size, int(rng.integers(1, 5)))
        _words(rng, canvas, size, front=True)
        img = np.asarray(canvas).astype(np.float64)
    return _scene_from_masks(_finish(rng, img, size), labels, visible)
