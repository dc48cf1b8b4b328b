"""Coordinate frames of a canonical box: pixels, COCO xywh, the expand2square canvas, resized images."""

from __future__ import annotations

from typing import Sequence

from pvit.boxes import Box


def _check_size(w, h) -> None:
    if not (w > 0 and h > 0):
        raise ValueError(f"image size must be positive, got w={w}, h={h}")


def to_pixels(box: Sequence[float], w: float, h: float) -> Box:
    """Canonical box -> pixel xyxy in an image of width ``w`` and height ``h``."""
    _check_size(w, h)
    x1, y1, x2, y2 = box
    return (x1 * w, y1 * h, x2 * w, y2 * h)


def from_pixels(xyxy: Sequence[float], w: float, h: float) -> Box:
    """Pixel xyxy in a ``w`` x ``h`` image -> canonical box (not validated or clamped)."""
    _check_size(w, h)
    x1, y1, x2, y2 = xyxy
    return (x1 / w, y1 / h, x2 / w, y2 / h)


def from_coco_xywh(xywh: Sequence[float], w: float, h: float) -> Box:
    """COCO ``[x, y, width, height]`` in pixels -> canonical box (not validated or clamped)."""
    _check_size(w, h)
    x, y, bw, bh = xywh
    return (x / w, y / h, (x + bw) / w, (y + bh) / h)


def to_coco_xywh(box: Sequence[float], w: float, h: float) -> Box:
    """Canonical box -> COCO ``[x, y, width, height]`` in pixels."""
    _check_size(w, h)
    x1, y1, x2, y2 = box
    return (x1 * w, y1 * h, (x2 - x1) * w, (y2 - y1) * h)


def square_offsets(w: int, h: int) -> tuple[int, int, int]:
    """``(side, dx, dy)`` of LLaVA/Shikra ``expand2square``: the image is pasted at ``(dx, dy)`` of a
    ``side`` x ``side`` canvas, ``side = max(w, h)``, centred with floor division (``(w - h) // 2``)."""
    if w > h:
        return w, 0, (w - h) // 2
    return h, (h - w) // 2, 0


def to_square(box: Sequence[float], w: int, h: int) -> Box:
    """Canonical box of a ``w`` x ``h`` image -> the same box as fractions of its expand2square canvas.

    This is Shikra's box frame before its 3-decimal rounding (``format_shikra`` rounds).
    """
    _check_size(w, h)
    side, dx, dy = square_offsets(w, h)
    x1, y1, x2, y2 = to_pixels(box, w, h)
    return ((x1 + dx) / side, (y1 + dy) / side, (x2 + dx) / side, (y2 + dy) / side)


def from_square(box: Sequence[float], w: int, h: int) -> Box:
    """Inverse of [to_square][pvit.frames.to_square]: box on the square canvas -> canonical box."""
    _check_size(w, h)
    side, dx, dy = square_offsets(w, h)
    x1, y1, x2, y2 = (v * side for v in box)
    return from_pixels((x1 - dx, y1 - dy, x2 - dx, y2 - dy), w, h)


def resize_box_pixels(xyxy: Sequence[float], size: tuple[float, float], new_size: tuple[float, float]) -> Box:
    """Pixel xyxy in an image of ``size`` (w, h) -> pixel xyxy after resizing the image to ``new_size`` (w, h)."""
    (w, h), (nw, nh) = size, new_size
    _check_size(w, h)
    _check_size(nw, nh)
    sx, sy = nw / w, nh / h
    x1, y1, x2, y2 = xyxy
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)
