"""The closed word lists of synth-regions: shape kinds, colours, size classes and the words drawn for OCR."""

from __future__ import annotations

#: Every shape kind the renderer can draw (the first five are the default set of the tiny run, docs/reproduce.md).
SHAPES = ("circle", "square", "triangle", "cross", "diamond", "ring", "hexagon", "star")
DEFAULT_SHAPES = SHAPES[:5]

#: Colour name -> base RGB; each object jitters its colour a little around the base.
COLORS = {
    "red": (220, 45, 45),
    "green": (45, 195, 70),
    "blue": (55, 95, 235),
    "yellow": (230, 215, 45),
    "purple": (150, 65, 205),
    "cyan": (45, 210, 220),
    "orange": (240, 140, 35),
    "pink": (240, 125, 185),
}
DEFAULT_COLORS = ("red", "green", "blue", "yellow", "purple", "cyan")

#: Words rendered in the image for the OCR task (drawn upper case, answered lower case); 3 letters fit 64 px.
WORDS = ("cat", "dog", "sun", "box", "cup", "hat", "key", "map", "pen", "car", "fox", "owl")

#: Object side in pixels at 64 px (scaled with the image); size classes by side at 64 px.
DEFAULT_OBJECT_SIZE = (8, 24)
SIZE_CLASSES = (("small", 13), ("medium", 19), ("large", 10**9))  # (name, side < bound at 64 px)

#: One-word answers of the relationship questions (kept in sorted pairs).
RELATION_ANSWERS = (("left", "right"), ("above", "below"), ("larger", "smaller"))
YES_NO = ("yes", "no")


def size_word(side64: float) -> str:
    """Size class of a shape whose side is ``side64`` pixels at 64 px: "small", "medium" or "large"."""
    for name, bound in SIZE_CLASSES:
        if side64 < bound:
            return name
    return SIZE_CLASSES[-1][0]
