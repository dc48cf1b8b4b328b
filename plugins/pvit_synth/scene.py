"""Scene layout of synth-regions: non-overlapping shapes and words with pixel boxes, sampled from one RNG."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from pvit.errors import DataError
from pvit_synth.vocab import COLORS, size_word


@dataclass(frozen=True)
class Item:
    """One object of a scene.

    Attributes:
        kind: a shape name, or ``"word"`` for rendered text.
        color: colour name (shapes) or None (words, drawn light grey).
        box: (x1, y1, x2, y2) in pixels, x2/y2 exclusive.
        size: size class word ("small", "medium", "large"); words are "medium".
        word: the text of a word item, else None.
        rgb: the jittered RGB the item is drawn with.
    """

    kind: str
    color: str | None
    box: tuple[int, int, int, int]
    size: str
    word: str | None = None
    rgb: tuple[int, int, int] = (230, 230, 230)

    @property
    def side(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0)

    def norm_box(self, image_size: int) -> tuple[float, float, float, float]:
        """Box as xyxy fractions of the image size."""
        return tuple(v / image_size for v in self.box)  # type: ignore[return-value]


@dataclass
class Scene:
    """A laid-out image: its size and items (shapes first, then words)."""

    image_size: int
    items: list[Item] = field(default_factory=list)

    @property
    def shapes(self) -> list[Item]:
        return [it for it in self.items if it.kind != "word"]

    @property
    def words(self) -> list[Item]:
        return [it for it in self.items if it.kind == "word"]


def text_scale(image_size: int) -> int:
    """Integer upscale of the 6x11 bitmap font: 1 up to 119 px, 2 from 120 px, 3 from 200 px."""
    return max(1, round(image_size / 80))


@lru_cache(maxsize=256)
def word_mask(word: str, scale: int) -> np.ndarray:
    """Ink of ``word`` in PIL's default bitmap font, upper case, cropped and upscaled: (h, w) bool."""
    from PIL import Image, ImageDraw, ImageFont

    loader = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)
    font = loader()
    canvas = Image.new("L", (8 * len(word) + 8, 16))
    ImageDraw.Draw(canvas).text((0, 0), word.upper(), font=font, fill=255)
    canvas = canvas.crop(canvas.getbbox())
    if scale > 1:
        canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST)
    return np.asarray(canvas) > 0  # (h, w)


def _overlaps(box, boxes, gap: int) -> bool:
    x1, y1, x2, y2 = box
    for a1, b1, a2, b2 in boxes:
        if x1 < a2 + gap and a1 < x2 + gap and y1 < b2 + gap and b1 < y2 + gap:
            return True
    return False


def _place(rng: np.random.Generator, w: int, h: int, image_size: int, boxes, gap: int, tries: int = 40):
    """A free (x1, y1, x2, y2) for a w x h item, or None after ``tries`` random positions."""
    hi_x, hi_y = image_size - w - gap, image_size - h - gap
    if hi_x < gap or hi_y < gap:
        return None
    xy = rng.integers((gap, gap), (hi_x + 1, hi_y + 1), size=(tries, 2))  # (tries, 2)
    for x, y in xy.tolist():
        box = (x, y, x + w, y + h)
        if not _overlaps(box, boxes, gap):
            return box
    return None


def _jitter(rgb, delta) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + v)) for c, v in zip(rgb, delta))  # type: ignore[return-value]


def sample_scene(
    rng: np.random.Generator,
    *,
    image_size: int,
    shapes: tuple[str, ...],
    colors: tuple[str, ...],
    words: tuple[str, ...],
    min_objects: int,
    max_objects: int,
    num_words: int = 0,
    object_size: tuple[int, int] = (8, 24),
    want_pair: bool = False,
    where: str = "synth-regions",
) -> Scene:
    """Lay out ``min_objects..max_objects`` non-overlapping shapes (sides ``object_size`` at 64 px, scaled
    with ``image_size``) plus ``num_words`` words. ``want_pair`` makes two shapes share a kind.

    Raises DataError naming ``where`` when the shapes do not fit after many attempts.
    """
    scale = image_size / 64.0
    gap = max(1, round(scale))
    ts = text_scale(image_size)
    for _attempt in range(30):
        n = int(rng.integers(min_objects, max_objects + 1))
        kinds = rng.integers(0, len(shapes), size=n).tolist()
        if want_pair and n >= 2 and len(set(kinds)) == n:
            kinds[1] = kinds[0]
        cols = rng.integers(0, len(colors), size=n).tolist()
        sides = rng.integers(object_size[0], object_size[1] + 1, size=n).tolist()
        jitter = rng.integers(-20, 21, size=(n + num_words, 3)).tolist()  # (items, RGB) colour offsets
        boxes: list[tuple[int, int, int, int]] = []
        items: list[Item] = []
        word_items: list[Item] = []
        for w in range(num_words):
            word = words[int(rng.integers(0, len(words)))]
            mh, mw = word_mask(word, ts).shape
            box = _place(rng, mw + 2 * ts, mh + 2 * ts, image_size, boxes, gap)
            if box is not None:
                boxes.append(box)
                word_items.append(Item("word", None, box, "medium", word, _jitter((230, 230, 230), jitter[n + w])))
        for k, c, s64, dc in zip(kinds, cols, sides, jitter):
            box = None
            while box is None and s64 >= object_size[0]:
                side = max(3, round(s64 * scale))
                box = _place(rng, side, side, image_size, boxes, gap)
                if box is None:
                    s64 = int(s64 * 0.8)
            if box is None:
                continue
            boxes.append(box)
            color = colors[c]
            items.append(Item(shapes[k], color, box, size_word(s64), None, _jitter(COLORS[color], dc)))
        if len(items) >= min_objects and len(word_items) == num_words:
            return Scene(image_size, items + word_items)
    raise DataError(
        f"{where}: could not place {min_objects}-{max_objects} objects of side {object_size} (at 64 px) and "
        f"{num_words} word(s) without overlap in a {image_size} px image; lower max_objects or object_size"
    )
