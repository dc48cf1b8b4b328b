"""Prompt and reply text for the Predictor: ``<regionN>`` references, Shikra inputs, stop strings, answer boxes."""

from __future__ import annotations

import re
from typing import Sequence

from pvit.frames import from_pixels, to_pixels
from pvit.regions import find_mentions, find_shikra, format_pvit

#: ``<region1>``, ``<region2>``... in a prompt refer to the first, second... box given with it.
REGION_REF = re.compile(r"<region(\d+)>")
BOX_FORMATS = ("pixels", "normalized")


class PredictError(ValueError):
    """A request the Predictor cannot serve (bad box, region reference, image, prompt too long); ``code`` names it."""

    def __init__(self, message: str, code: str = "invalid_request"):
        super().__init__(message)
        self.code = code


def normalise_box(box: Sequence[float], fmt: str, size: tuple[int, int], where: str) -> tuple[float, ...]:
    """One given box -> canonical xyxy in [0, 1] of the image; raises PredictError when it is outside or empty."""
    if fmt not in BOX_FORMATS:
        raise PredictError(f"{where}: box format {fmt!r} is unknown; valid: {', '.join(BOX_FORMATS)}", "invalid_box")
    try:
        vals = [float(v) for v in box]
    except (TypeError, ValueError):
        raise PredictError(f"{where}: box {box!r} is not 4 numbers x1,y1,x2,y2", "invalid_box") from None
    if len(vals) != 4 or any(v != v for v in vals):
        raise PredictError(f"{where}: box {box!r} is not 4 numbers x1,y1,x2,y2", "invalid_box")
    w, h = size
    limit = (w, h, w, h) if fmt == "pixels" else (1, 1, 1, 1)
    if any(v < 0 or v > lim for v, lim in zip(vals, limit)):
        raise PredictError(f"{where}: box {vals} is outside the image ({fmt}: 0..{limit[0]} x 0..{limit[1]})",
                           "invalid_box")
    if vals[2] <= vals[0] or vals[3] <= vals[1]:
        raise PredictError(f"{where}: box {vals} is degenerate (needs x2 > x1 and y2 > y1)", "invalid_box")
    return tuple(from_pixels(vals, w, h)) if fmt == "pixels" else tuple(vals)


def resolve_regions(texts: list[str], boxes: list[tuple[float, ...]], where: str = "prompt",
                    max_regions: int | None = None) -> list[str]:
    """Replace ``<regionN>`` (boxes[N-1]) and Shikra ``[x1,y1,x2,y2]`` boxes with PVIT ``<Region>`` mentions.

    Every given box must be mentioned and every mention must have a box. PVIT ``<Region><L..>x4</Region>``
    text is left as written (the collator reads it).
    """
    if max_regions is not None and len(boxes) > max_regions:
        raise PredictError(f"{where}: {len(boxes)} regions given; at most {max_regions} are allowed", "too_many_regions")
    used: set[int] = set()

    def sub(m: re.Match) -> str:
        n = int(m.group(1))
        if not 1 <= n <= len(boxes):
            raise PredictError(f"{where}: {m.group(0)} has no box ({len(boxes)} box(es) given: "
                               f"<region1>..<region{len(boxes)}>)" if boxes else
                               f"{where}: {m.group(0)} is mentioned but no boxes were given", "region_without_box")
        used.add(n)
        return format_pvit(boxes[n - 1])

    out = []
    for text in texts:
        text = REGION_REF.sub(sub, text)
        pieces, last = [], 0
        for m in _shikra_groups(text, where):
            pieces += [text[last:m[0]], " ".join(format_pvit(b) for b in m[2])]
            last = m[1]
        out.append("".join(pieces) + text[last:])
    unused = sorted(set(range(1, len(boxes) + 1)) - used)
    if unused:
        raise PredictError(f"{where}: box(es) {unused} given but <region{unused[0]}> is not in the text; "
                           "refer to each box as <regionN>", "box_without_mention")
    return out


def _shikra_groups(text: str, where: str) -> list[tuple[int, int, list]]:
    from pvit.errors import InvalidRegionError

    try:
        found = find_shikra(text, policy="error", where=where)
    except InvalidRegionError as e:
        raise PredictError(str(e), "invalid_box") from None
    groups: dict[tuple[int, int], list] = {}
    for m in found:
        groups.setdefault((m.start, m.end), []).append(m.box)
    return [(s, e, bs) for (s, e), bs in groups.items()]


def cut_at_stop(text: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    """``text`` up to the first stop string; ``(text, stopped)``."""
    cuts = [text.find(s) for s in (stop or ()) if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def reply_boxes(text: str, region_encoder, size: tuple[int, int]) -> list[tuple[float, ...]]:
    """Boxes the model wrote in ``text`` (its own coordinate format), as pixel xyxy of an image of ``size``."""
    decode = getattr(region_encoder, "decode", None)
    boxes = decode(text) if callable(decode) else [m.box for m in find_mentions(text, policy="drop")]
    return [tuple(round(v, 2) for v in to_pixels(b, *size)) for b in boxes]
