"""Region mentions in text: PVIT ``<Region><L#>...</Region>`` location tokens and Shikra decimals.

Both forms write a canonical box (see [pvit.boxes][]) on a grid of 1000 steps per image side. The parsers
validate every box under a policy (``error``, ``clip`` or ``drop``) with [validate_box][pvit.boxes.validate_box].
The box names ([pvit.boxes][]) and the coordinate frames ([pvit.frames][]) stay importable from here.
This module is pure Python (no torch).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

from pvit.boxes import COORD_NAMES, Box, RegionStats, check_policy, reject_box, validate_box, where_prefix
from pvit.errors import InvalidRegionError
from pvit.interfaces import REGION_END, REGION_START

# Names that moved out of this module, still importable from here.
from pvit.boxes import POLICIES  # noqa: F401
from pvit.frames import (  # noqa: F401
    from_coco_xywh,
    from_pixels,
    from_square,
    resize_box_pixels,
    square_offsets,
    to_coco_xywh,
    to_pixels,
    to_square,
)

#: The location tokens of PVIT's coordinate vocabulary, ``<L0>``..``<L999>`` (value / 1000 of the image side).
LOC_TOKENS: list[str] = [f"<L{i}>" for i in range(1000)]
#: Number of steps of the coordinate grid used by both text forms.
GRID = 1000
#: Text that replaces a dropped mention in [rewrite_mentions][pvit.regions.rewrite_mentions].
DROPPED_REGION_TEXT = "the region"


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
        return reject_box(policy, where, index, stats, f"mention {whole!r} has no matching {missing}")
    tokens = _LOC_RE.findall(inner)
    rest = _LOC_RE.sub("", inner).strip()
    if not tokens and _BRACKET_RE.fullmatch(inner):  # <Region>[0.064, 0.345, 0.202, 0.599]</Region>
        values = _parse_numbers(_BRACKET_RE.fullmatch(inner).group(1))
        if values is None:
            if stats is not None:
                stats.total += 1
            return reject_box(policy, where, index, stats, f"mention {whole!r} holds no parseable coordinates")
        return validate_box(values, policy=policy, where=where, index=index, stats=stats, text=whole)
    if rest or not tokens:
        if stats is not None:
            stats.total += 1
        what = "holds no box" if not tokens and not rest else f"holds unexpected text {rest!r}"
        return reject_box(
            policy, where, index, stats, f"mention {whole!r} {what}; expected four location tokens <L0>..<L999>"
        )
    ints = []
    for t in tokens:
        if not re.fullmatch(r"[-+]?\d+", t.strip()):
            if stats is not None:
                stats.total += 1
            problem = f"mention {whole!r}: <L{t}> is not a location token <L0>..<L999>"
            return reject_box(policy, where, index, stats, problem)
        ints.append(int(t))
    if len(ints) != 4:
        if stats is not None:
            stats.total += 1
        return reject_box(policy, where, index, stats, f"mention {whole!r} has {len(ints)} coordinates, expected 4")
    if policy == "error":
        for name, i in zip(COORD_NAMES, ints):
            if not 0 <= i < GRID:
                raise InvalidRegionError(
                    f"{where_prefix(where, index)}mention {whole!r}: {name} token <L{i}> is not a location token; "
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
    [validate_box][pvit.boxes.validate_box] are malformed. Dropped mentions are left out of the result
    (their ``index`` is still consumed, so indices keep pointing at the source).

    Args:
        text: the text to scan.
        policy: ``"error"`` | ``"clip"`` | ``"drop"``.
        where: source for messages, e.g. ``"data/stage2/x.json sample 12"``.
        stats: counts boxes seen, clipped and dropped.
    """
    check_policy(policy)
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
    check_policy(policy)
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
    check_policy(policy)
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
                reject_box(policy, where, k, stats, f"box {m.group(0)!r} has {n} coordinates, expected 4")
            else:
                box = validate_box(values, policy=policy, where=where, index=k, stats=stats, text=m.group(0))
                if box is not None:
                    out.append(RegionMention(m.start(), m.end(), box, m.group(0), k))
            k += 1
    return out
