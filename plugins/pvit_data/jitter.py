"""PVIT's training box jitter (``perturb_bbox``), deterministic per (seed, epoch, sample index)."""

from __future__ import annotations

import random

from pvit.errors import DataError


def check_jitter(box_jitter: float) -> float:
    """Validate the jitter fraction: 0 disables it, PVIT uses 0.02; it must stay below 0.5."""
    j = float(box_jitter)
    if not (0.0 <= j < 0.5):
        raise DataError(
            f"box_jitter={box_jitter!r} is out of range: use 0.0 (off) up to below 0.5; PVIT's value is 0.02 (+-2%)"
        )
    return j


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """A generator that depends only on (seed, epoch, index), the same in every process and worker."""
    return random.Random(f"pvit-jitter:{int(seed)}:{int(epoch)}:{int(index)}")


def jitter_box(box, amount: float, rng: random.Random) -> tuple[float, float, float, float]:
    """Shift each coordinate of a canonical box by ``U(-amount, amount)`` times the box width (x) or height (y),
    then clip to the image [0, 1], as PVIT's ``perturb_bbox`` does in pixels.

    With ``amount < 0.5`` the corners cannot cross, so the result is still a valid box.
    """
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    shifts = [rng.uniform(-amount, amount) for _ in range(4)]
    out = (x1 + shifts[0] * bw, y1 + shifts[1] * bh, x2 + shifts[2] * bw, y2 + shifts[3] * bh)
    return tuple(min(1.0, max(0.0, v)) for v in out)
