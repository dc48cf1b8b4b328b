"""Rendering of a synth-regions scene: anti-aliased shapes and bitmap-font words on a dark noisy background."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from pvit_synth.scene import Scene, text_scale, word_mask

#: Shapes are drawn at this multiple of the image size and box-filtered down (anti-aliasing).
SUPERSAMPLE = 4


def _polygon(kind: str, x: float, y: float, s: float) -> list[tuple[float, float]] | None:
    """Outline of polygon kinds inside the square (x, y, x+s, y+s); None for kinds drawn otherwise."""
    cx, cy, r = x + s / 2, y + s / 2, s / 2
    if kind == "triangle":
        return [(cx, y), (x + s, y + s), (x, y + s)]
    if kind == "diamond":
        return [(cx, y), (x + s, cy), (cx, y + s), (x, cy)]
    if kind == "hexagon":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (k * math.pi / 3 for k in range(6))]
    if kind == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + r * 0.1 + rad * math.sin(a)))
        return pts
    return None


def _draw_shape(draw, kind: str, box, fill) -> None:
    """Draw one shape filling the square ``box`` (supersampled pixels) on an ImageDraw."""
    x1, y1, x2, y2 = box
    s = x2 - x1
    if kind == "circle":
        draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
    elif kind == "square":
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)
    elif kind == "cross":
        t = s / 3
        draw.rectangle((x1 + t, y1, x2 - t - 1, y2 - 1), fill=fill)
        draw.rectangle((x1, y1 + t, x2 - 1, y2 - t - 1), fill=fill)
    elif kind == "ring":
        draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
        t = s * 0.28
        draw.ellipse((x1 + t, y1 + t, x2 - t - 1, y2 - t - 1), fill=0)
    else:
        pts = _polygon(kind, x1, y1, s)
        if pts is None:
            raise ValueError(f"synth-regions cannot draw shape kind {kind!r}")
        draw.polygon(pts, fill=fill)


@lru_cache(maxsize=1024)
def shape_alpha(kind: str, side: int) -> np.ndarray:
    """Coverage of ``kind`` drawn in a ``side`` x ``side`` box, anti-aliased: (side, side, 1) float32 in [0, 1]."""
    from PIL import Image, ImageDraw

    n = side * SUPERSAMPLE
    tile = Image.new("L", (n, n))
    _draw_shape(ImageDraw.Draw(tile), kind, (0, 0, n, n), 255)
    alpha = np.asarray(tile.reduce(SUPERSAMPLE), dtype=np.float32)[..., None] / 255.0  # (side, side, 1)
    alpha.flags.writeable = False
    return alpha


def render(scene: Scene, rng: np.random.Generator):
    """Draw ``scene`` as a PIL RGB image of ``scene.image_size`` pixels; noise comes from ``rng``."""
    from PIL import Image

    n = scene.image_size
    out = rng.integers(4, 46, size=(n, n, 3), dtype=np.uint8).astype(np.float32)  # (H, W, 3) dark noise
    for item in scene.shapes:
        x1, y1, x2, y2 = item.box
        alpha = shape_alpha(item.kind, x2 - x1)  # (h, w, 1), cached per (kind, side)
        region = out[y1:y2, x1:x2]
        region *= 1.0 - alpha
        region += alpha * np.asarray(item.rgb, dtype=np.float32)
    ts = text_scale(scene.image_size)
    for item in scene.words:
        mask = word_mask(item.word, ts)  # (h, w) bool
        x, y = item.box[0] + ts, item.box[1] + ts
        out[y : y + mask.shape[0], x : x + mask.shape[1]][mask] = item.rgb
    return Image.fromarray(out.astype(np.uint8), "RGB")
