"""The canonical region box, its text forms (PVIT ``<L#>`` tokens, Shikra decimals) and its coordinate frames.

The canonical box is a tuple ``(x1, y1, x2, y2)`` of floats, fractions of the ORIGINAL image width / height,
with ``0 <= x1 < x2 <= 1`` and ``0 <= y1 < y2 <= 1`` (top-left, bottom-right). Everything that reads a box
from text or data validates it with [validate_box][pvit.regions.validate_box] under a *policy*:

- ``"error"`` (default): a malformed box raises [InvalidRegionError][pvit.errors.InvalidRegionError] naming
  where it was (file, sample), the box index (0-based, in mention order) and the offending value. Never a
  silent clamp.
- ``"clip"``: coordinates outside [0, 1] are clamped into it; a box that cannot be repaired (NaN, reversed
  corners, zero area before or after clamping, not four numbers) is dropped. Reversed corners are *not*
  swapped: they usually mean another convention (xywh, yxyx) and a swap would invent a box.
- ``"drop"``: every malformed box is dropped.

``clip`` and ``drop`` count what they did in a [RegionStats][pvit.regions.RegionStats] when one is given.
This module is pure Python (no torch).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from pvit.errors import InvalidRegionError
from pvit.interfaces import REGION_END, REGION_START

Box = tuple[float, float, float, float]

#: The location tokens of PVIT's coordinate vocabulary, ``<L0>``..``<L999>`` (value / 1000 of the image side).
LOC_TOKENS: list[str] = [f"<L{i}>" for i in range(1000)]
#: Number of steps of the coordinate grid used by both text forms.
GRID = 1000
#: Policies accepted wherever boxes are validated.
POLICIES = ("error", "clip", "drop")
#: Text that replaces a dropped mention in [rewrite_mentions][pvit.regions.rewrite_mentions].
DROPPED_REGION_TEXT = "the region"

_VALID = (
    "a box is (x1, y1, x2, y2) with 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1, "
    "as fractions of the original image width and height"
)
_NAMES = ("x1", "y1", "x2", "y2")


@dataclass
class RegionStats:
    """Counts of boxes seen, clipped and dropped under a ``clip``/``drop`` policy, plus a few examples."""

    total: int = 0
    clipped: int = 0
    dropped: int = 0
    examples: list[str] = field(default_factory=list)
    max_examples: int = 10

    def note(self, what: str, message: str) -> None:
        """Count one ``"clipped"`` or ``"dropped"`` box and keep its message if there is room."""
        setattr(self, what, getattr(self, what) + 1)
        if len(self.examples) < self.max_examples:
            self.examples.append(f"{what}: {message}")

    def merge(self, other: "RegionStats") -> "RegionStats":
        """Add ``other``'s counts (and examples, up to the cap) into this one; returns self."""
        self.total += other.total
        self.clipped += other.clipped
        self.dropped += other.dropped
        room = self.max_examples - len(self.examples)
        self.examples.extend(other.examples[: max(0, room)])
        return self

    def as_dict(self) -> dict:
        return {"total": self.total, "clipped": self.clipped, "dropped": self.dropped, "examples": list(self.examples)}

    def summary(self) -> str:
        return f"{self.total} boxes: {self.clipped} clipped, {self.dropped} dropped"


@dataclass
class RegionMention:
    """One region mention found in text.

    Attributes:
        start, end: the character span of the mention in the text (``text[start:end]``).
        box: the validated canonical box (x1, y1, x2, y2) in [0, 1].
        text: the mention as written.
        index: its 0-based position among all mentions of the text (dropped ones included), as error
            messages count it.
    """

    start: int
    end: int
    box: Box
    text: str
    index: int = 0


# --------------------------------------------------------------------------------------------- validation


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown region policy {policy!r}; valid policies: {', '.join(POLICIES)}")


def _prefix(where: str | None, index: int | str | None) -> str:
    parts = []
    if where:
        parts.append(str(where))
    if index is not None:
        parts.append(f"box {index}")
    return (", ".join(parts) + ": ") if parts else ""


def _fail(policy, where, index, stats, problem, *, what="dropped"):
    """Raise under ``error``; otherwise count the box as dropped and return None."""
    msg = f"{_prefix(where, index)}{problem}"
    if policy == "error":
        raise InvalidRegionError(
            f"{msg}; {_VALID} (set the data region policy to 'clip' or 'drop' to repair or skip such boxes)"
        )
    if stats is not None:
        stats.note(what, msg)
    return None


def validate_box(
    box,
    *,
    policy: str = "error",
    where: str | None = None,
    index: int | None = None,
    stats: RegionStats | None = None,
    text: str | None = None,
) -> Box | None:
    """Check a canonical box and return it as a tuple of 4 floats, or None when ``policy`` dropped it.

    Args:
        box: a sequence of 4 numbers (x1, y1, x2, y2), fractions of the original image size.
        policy: ``"error"`` | ``"clip"`` | ``"drop"`` (see the module docstring).
        where: where the box came from, for messages (e.g. ``"data/stage2/x.json sample 12"``).
        index: the box's 0-based index in mention order, for messages.
        stats: counts ``total`` always, and ``clipped`` / ``dropped`` when the policy acted.
        text: the mention the box was read from, quoted in messages.

    Raises:
        InvalidRegionError: under ``"error"``, for anything but a valid box.
    """
    _check_policy(policy)
    if stats is not None:
        stats.total += 1
    if text is not None:
        index = f"{index} {text!r}" if index is not None else f"in {text!r}"
    try:
        values = list(box)
    except TypeError:
        return _fail(policy, where, index, stats, f"{box!r} is not a sequence of 4 coordinates")
    if len(values) != 4:
        return _fail(policy, where, index, stats, f"{box!r} has {len(values)} coordinates, expected 4")
    try:  # numbers, including numpy / torch scalars; not strings, bools or None
        if any(isinstance(v, (str, bytes, bool)) or v is None for v in values):
            raise TypeError
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        return _fail(policy, where, index, stats, f"{box!r} has a coordinate that is not a number")
    for name, v in zip(_NAMES, values):
        if not math.isfinite(v):
            return _fail(policy, where, index, stats, f"{name}={v} is not finite in {tuple(values)}")
    x1, y1, x2, y2 = values
    for lo, hi, a, b in ((x1, x2, "x1", "x2"), (y1, y2, "y1", "y2")):
        if hi < lo:
            return _fail(policy, where, index, stats, f"{b}={hi} < {a}={lo} in {tuple(values)}")
    out_of_range = [(n, v) for n, v in zip(_NAMES, values) if v < 0.0 or v > 1.0]
    if out_of_range:
        n, v = out_of_range[0]
        problem = f"{n}={v} is {'negative' if v < 0 else 'beyond the image (> 1)'} in {tuple(values)}"
        if policy != "clip":
            return _fail(policy, where, index, stats, problem)
        clipped = [min(1.0, max(0.0, v)) for v in values]
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            return _fail(policy, where, index, stats, f"{problem}; zero area after clipping")
        if stats is not None:
            stats.note("clipped", f"{_prefix(where, index)}{problem}; clipped to {tuple(clipped)}")
        return tuple(clipped)
    if x2 == x1 or y2 == y1:
        axis = "x1 == x2" if x2 == x1 else "y1 == y2"
        return _fail(policy, where, index, stats, f"zero area ({axis}) in {tuple(values)}")
    return (x1, y1, x2, y2)


# ------------------------------------------------------------------------------------------------ tokens


def encode_coord(x: float) -> int:
    """A coordinate in [0, 1] -> its location-token index, ``min(999, round(x * 1000))``."""
    numeric = hasattr(x, "__float__") and not isinstance(x, (str, bytes, bool))  # numpy / torch scalars too
    v = float(x) if numeric else math.nan
    if not math.isfinite(v) or v < 0.0 or v > 1.0:
        raise InvalidRegionError(f"coordinate {x!r} cannot be encoded: valid coordinates are numbers in [0, 1]")
    return min(GRID - 1, round(v * GRID))


def decode_coord(i: int) -> float:
    """A location-token index in 0..999 -> the coordinate ``i / 1000``."""
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < GRID:
        raise InvalidRegionError(f"location index {i!r} is not a token: valid indices are 0..{GRID - 1} (<L0>..<L999>)")
    return i / GRID


def _grid(box, top: int) -> list[int]:
    """Validated box -> integer grid codes in 0..top, each axis at least one step wide."""
    b = validate_box(box)
    codes = [min(top, round(v * GRID)) for v in b]
    for a in (0, 1):  # a box narrower than one grid step is widened to one step so it stays a valid box
        if codes[a + 2] <= codes[a]:
            if codes[a] >= top:
                codes[a] = top - 1
            codes[a + 2] = codes[a] + 1
    return codes


def format_pvit(box) -> str:
    """Canonical box -> ``<Region><L204><L469><L810><L960></Region>`` (indices not zero-padded).

    Each coordinate is ``min(999, round(x * 1000))``; a box that would collapse to zero width or height on
    that grid is widened to one step (so the text always parses back to a valid box).
    """
    return REGION_START + "".join(f"<L{c}>" for c in _grid(box, GRID - 1)) + REGION_END


def format_shikra(box) -> str:
    """Canonical box -> Shikra's plain form ``[0.204,0.469,0.810,0.960]`` (three decimals, no spaces)."""
    return "[" + ",".join(f"{c / GRID:.3f}" for c in _grid(box, GRID)) + "]"


# --------------------------------------------------------------------------------------------- parsing

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?)"
# A full mention (not crossing another tag), an unclosed <Region> with the tokens after it, or a stray </Region>.
_MENTION_RE = re.compile(
    r"<Region>(?P<inner>(?:(?!</?Region>).)*?)</Region>"
    r"|<Region>(?P<open>(?:\s*<L[^<>]*>)*)"
    r"|</Region>",
    re.S,
)
_LOC_RE = re.compile(r"<L([^<>]*)>")
_BRACKET_RE = re.compile(r"\s*\[([^\[\]]*)\]\s*")
_NUM_RE = re.compile(rf"^\s*(?:{_NUM})\s*$", re.I)
# Shikra: [n,n,n,n] or [b1;b2;...]; any bracket of numbers is a candidate, classified below.
_SHIKRA_RE = re.compile(rf"\[\s*(?:{_NUM})(?:\s*[,;]\s*(?:{_NUM}))*\s*\]", re.I)


def _parse_numbers(s: str) -> list[float] | None:
    parts = [p for p in s.split(",")]
    if not all(_NUM_RE.match(p) for p in parts):
        return None
    return [float(p) for p in parts]


def _mention_box(m: re.Match, policy, where, index, stats) -> Box | None:
    """The box of one ``<Region>`` match, validated under ``policy`` (None when dropped)."""
    whole = m.group(0)
    inner = m.group("inner")
    if inner is None:  # unclosed <Region> or stray </Region>
        if stats is not None:
            stats.total += 1
        missing = REGION_END if whole.startswith(REGION_START) else REGION_START
        return _fail(policy, where, index, stats, f"mention {whole!r} has no matching {missing}")
    tokens = _LOC_RE.findall(inner)
    rest = _LOC_RE.sub("", inner).strip()
    if not tokens and _BRACKET_RE.fullmatch(inner):  # <Region>[0.064, 0.345, 0.202, 0.599]</Region>
        values = _parse_numbers(_BRACKET_RE.fullmatch(inner).group(1))
        if values is None:
            if stats is not None:
                stats.total += 1
            return _fail(policy, where, index, stats, f"mention {whole!r} holds no parseable coordinates")
        return validate_box(values, policy=policy, where=where, index=index, stats=stats, text=whole)
    if rest or not tokens:
        if stats is not None:
            stats.total += 1
        what = "holds no box" if not tokens and not rest else f"holds unexpected text {rest!r}"
        return _fail(
            policy, where, index, stats, f"mention {whole!r} {what}; expected four location tokens <L0>..<L999>"
        )
    ints = []
    for t in tokens:
        if not re.fullmatch(r"[-+]?\d+", t.strip()):
            if stats is not None:
                stats.total += 1
            return _fail(policy, where, index, stats, f"mention {whole!r}: <L{t}> is not a location token <L0>..<L999>")
        ints.append(int(t))
    if len(ints) != 4:
        if stats is not None:
            stats.total += 1
        return _fail(policy, where, index, stats, f"mention {whole!r} has {len(ints)} coordinates, expected 4")
    if policy == "error":
        for name, i in zip(_NAMES, ints):
            if not 0 <= i < GRID:
                raise InvalidRegionError(
                    f"{_prefix(where, index)}mention {whole!r}: {name} token <L{i}> is not a location token; "
                    f"valid tokens are <L0>..<L{GRID - 1}> (value / {GRID} of the original image side)"
                )
    return validate_box([i / GRID for i in ints], policy=policy, where=where, index=index, stats=stats, text=whole)


def find_mentions(
    text: str,
    *,
    policy: str = "error",
    where: str | None = None,
    stats: RegionStats | None = None,
) -> list[RegionMention]:
    """Region mentions in PVIT form, ``<Region><L204><L469><L810><L960></Region>``, in order of appearance.

    Whitespace between the tags is tolerated (as PVIT's regex does), and so is the data-generation form
    ``<Region>[0.064, 0.345, 0.202, 0.599]</Region>``. A ``<Region>`` without ``</Region>`` (or the
    reverse), an empty mention, a count other than 4, ``<L1500>``, and every box problem of
    [validate_box][pvit.regions.validate_box] are malformed. Dropped mentions are left out of the result
    (their ``index`` is still consumed, so indices keep pointing at the source).

    Args:
        text: the text to scan.
        policy: ``"error"`` | ``"clip"`` | ``"drop"``.
        where: source for messages, e.g. ``"data/stage2/x.json sample 12"``.
        stats: counts boxes seen, clipped and dropped.
    """
    _check_policy(policy)
    out = []
    for k, m in enumerate(_MENTION_RE.finditer(text)):
        box = _mention_box(m, policy, where, k, stats)
        if box is not None:
            out.append(RegionMention(m.start(), m.end(), box, m.group(0), k))
    return out


def rewrite_mentions(
    text: str,
    render: Callable[[Box], str],
    *,
    policy: str = "error",
    where: str | None = None,
    stats: RegionStats | None = None,
    dropped_text: str = DROPPED_REGION_TEXT,
) -> tuple[str, list[Box]]:
    """Replace each PVIT-form mention with ``render(box)``; returns ``(new text, boxes in mention order)``.

    A mention dropped under ``policy`` (``clip`` or ``drop``) is replaced by ``dropped_text``
    (default ``"the region"``) so the sentence still reads, and contributes no box; a stray ``</Region>``
    is removed.
    """
    _check_policy(policy)
    pieces, boxes, last = [], [], 0
    for k, m in enumerate(_MENTION_RE.finditer(text)):
        box = _mention_box(m, policy, where, k, stats)
        pieces.append(text[last : m.start()])
        if box is None:
            pieces.append("" if m.group(0) == REGION_END else dropped_text)  # a stray </Region> just goes
        else:
            pieces.append(render(box))
            boxes.append(box)
        last = m.end()
    pieces.append(text[last:])
    return "".join(pieces), boxes


def find_shikra(
    text: str,
    *,
    policy: str = "error",
    where: str | None = None,
    stats: RegionStats | None = None,
) -> list[RegionMention]:
    """Boxes written in Shikra's plain form, ``[0.204,0.469,0.810,0.960]``, in order of appearance.

    Spaces after commas are tolerated. A multi-box mention ``[b1;b2;...]`` yields ONE RegionMention PER BOX;
    the boxes of one group share the group's ``start``, ``end`` and ``text`` (group them by span if needed).
    A bracket of exactly four numbers is always read as a box (so ``[1, 2, 3, 4]`` is a box beyond the
    image); a bracket with another count is treated as a malformed box only when it holds a decimal point
    (``[0.1,0.2,0.3]``), and otherwise left alone as ordinary text (``[1, 2]``).
    """
    _check_policy(policy)
    out = []
    k = 0
    for m in _SHIKRA_RE.finditer(text):
        groups = m.group(0)[1:-1].split(";")
        parsed = [_parse_numbers(g) for g in groups]
        if not any(p is not None and len(p) == 4 for p in parsed) and "." not in m.group(0):
            continue  # a plain list of integers, not a box
        for values in parsed:
            if values is None or len(values) != 4:
                if stats is not None:
                    stats.total += 1
                n = 0 if values is None else len(values)
                _fail(policy, where, k, stats, f"box {m.group(0)!r} has {n} coordinates, expected 4")
            else:
                box = validate_box(values, policy=policy, where=where, index=k, stats=stats, text=m.group(0))
                if box is not None:
                    out.append(RegionMention(m.start(), m.end(), box, m.group(0), k))
            k += 1
    return out


# ---------------------------------------------------------------------------------------- coordinate frames


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
    """Inverse of [to_square][pvit.regions.to_square]: box on the square canvas -> canonical box."""
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
