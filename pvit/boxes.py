"""The canonical region box and its validation under a policy (``error``, ``clip`` or ``drop``).

The canonical box is a tuple ``(x1, y1, x2, y2)`` of floats, fractions of the ORIGINAL image width / height,
with ``0 <= x1 < x2 <= 1`` and ``0 <= y1 < y2 <= 1`` (top-left, bottom-right). Everything that reads a box
from text or data validates it with [validate_box][pvit.boxes.validate_box] under a *policy*:

- ``"error"`` (default): a malformed box raises [InvalidRegionError][pvit.errors.InvalidRegionError] naming
  where it was (file, sample), the box index (0-based, in mention order) and the offending value. Never a
  silent clamp.
- ``"clip"``: coordinates outside [0, 1] are clamped into it; a box that cannot be repaired (NaN, reversed
  corners, zero area before or after clamping, not four numbers) is dropped. Reversed corners are *not*
  swapped: they usually mean another convention (xywh, yxyx) and a swap would invent a box.
- ``"drop"``: every malformed box is dropped.

``clip`` and ``drop`` count what they did in a [RegionStats][pvit.boxes.RegionStats] when one is given.
Its text forms are in [pvit.regions][], its coordinate frames in [pvit.frames][]. This module is pure Python
(no torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pvit.errors import InvalidRegionError

Box = tuple[float, float, float, float]

#: Policies accepted wherever boxes are validated.
POLICIES = ("error", "clip", "drop")
#: The names of a box's four coordinates, in order, as messages name them.
COORD_NAMES = ("x1", "y1", "x2", "y2")

_VALID = (
    "a box is (x1, y1, x2, y2) with 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1, "
    "as fractions of the original image width and height"
)


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
        """The counts and examples as plain data (for reports)."""
        return {"total": self.total, "clipped": self.clipped, "dropped": self.dropped, "examples": list(self.examples)}

    def summary(self) -> str:
        """One line: ``"<total> boxes: <clipped> clipped, <dropped> dropped"``."""
        return f"{self.total} boxes: {self.clipped} clipped, {self.dropped} dropped"


# --------------------------------------------------------------------------------------------- validation


def check_policy(policy: str) -> None:
    """Raise ValueError naming the valid policies unless ``policy`` is one of ``POLICIES``."""
    if policy not in POLICIES:
        raise ValueError(f"unknown region policy {policy!r}; valid policies: {', '.join(POLICIES)}")


def where_prefix(where: str | None, index: int | str | None) -> str:
    """The ``"<where>, box <index>: "`` that starts a message about one box (empty when neither is known)."""
    parts = []
    if where:
        parts.append(str(where))
    if index is not None:
        parts.append(f"box {index}")
    return (", ".join(parts) + ": ") if parts else ""


def reject_box(
    policy: str,
    where: str | None,
    index: int | str | None,
    stats: RegionStats | None,
    problem: str,
) -> None:
    """Reject one malformed box: raise InvalidRegionError under ``error`` (``problem`` prefixed with where and
    which box, followed by what a valid box is); otherwise count it in ``stats`` as dropped and return None."""
    msg = f"{where_prefix(where, index)}{problem}"
    if policy == "error":
        raise InvalidRegionError(
            f"{msg}; {_VALID} (set the data region policy to 'clip' or 'drop' to repair or skip such boxes)"
        )
    if stats is not None:
        stats.note("dropped", msg)
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
    check_policy(policy)
    if stats is not None:
        stats.total += 1
    if text is not None:
        index = f"{index} {text!r}" if index is not None else f"in {text!r}"
    try:
        values = list(box)
    except TypeError:
        return reject_box(policy, where, index, stats, f"{box!r} is not a sequence of 4 coordinates")
    if len(values) != 4:
        return reject_box(policy, where, index, stats, f"{box!r} has {len(values)} coordinates, expected 4")
    try:  # numbers, including numpy / torch scalars; not strings, bools or None
        if any(isinstance(v, (str, bytes, bool)) or v is None for v in values):
            raise TypeError
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        return reject_box(policy, where, index, stats, f"{box!r} has a coordinate that is not a number")
    for name, v in zip(COORD_NAMES, values):
        if not math.isfinite(v):
            return reject_box(policy, where, index, stats, f"{name}={v} is not finite in {tuple(values)}")
    x1, y1, x2, y2 = values
    for lo, hi, a, b in ((x1, x2, "x1", "x2"), (y1, y2, "y1", "y2")):
        if hi < lo:
            return reject_box(policy, where, index, stats, f"{b}={hi} < {a}={lo} in {tuple(values)}")
    out_of_range = [(n, v) for n, v in zip(COORD_NAMES, values) if v < 0.0 or v > 1.0]
    if out_of_range:
        n, v = out_of_range[0]
        problem = f"{n}={v} is {'negative' if v < 0 else 'beyond the image (> 1)'} in {tuple(values)}"
        if policy != "clip":
            return reject_box(policy, where, index, stats, problem)
        clipped = [min(1.0, max(0.0, v)) for v in values]
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            return reject_box(policy, where, index, stats, f"{problem}; zero area after clipping")
        if stats is not None:
            stats.note("clipped", f"{where_prefix(where, index)}{problem}; clipped to {tuple(clipped)}")
        return tuple(clipped)
    if x2 == x1 or y2 == y1:
        axis = "x1 == x2" if x2 == x1 else "y1 == y2"
        return reject_box(policy, where, index, stats, f"zero area ({axis}) in {tuple(values)}")
    return (x1, y1, x2, y2)

