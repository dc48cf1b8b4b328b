"""Region mentions of a sample's turns -> the region encoder's text, with the boxes they carry."""

from __future__ import annotations

import re
from typing import Callable

from pvit.boxes import RegionStats, validate_box
from pvit.errors import DataError
from pvit.interfaces import REGION_END, REGION_PATCH_TOKEN, REGION_START
from pvit.regions import DROPPED_REGION_TEXT, rewrite_mentions
from pvit.truncate import R0, R1

ANY_MENTION = re.compile(re.escape(REGION_START) + r".*?" + re.escape(REGION_END), re.S)


def render_region(encoder, tokens_per_region: int, box, where: str) -> str:
    """One region mention's text, marked as a span; its placeholder count is checked against K (item 18)."""
    if encoder is None:
        raise DataError(
            f"{where}: the text has region mentions but the recipe has no region encoder "
            "(set model.region_encoder, e.g. 'none' to write regions as plain text)"
        )
    text = encoder.region_text(box)
    n = text.count(REGION_PATCH_TOKEN)
    if n != tokens_per_region:
        raise DataError(
            f"{where}: region encoder {type(encoder).__name__} renders a region as {text!r} with "
            f"{n} {REGION_PATCH_TOKEN} placeholders but declares tokens_per_region={tokens_per_region}; "
            "text and region features would disagree (fix the encoder's region_text or tokens_per_region)"
        )
    return R0 + text + R1


def check_box_count(texts: list[str], explicit, where: str) -> list:
    """A sample's explicit ``boxes`` as a list, after checking there is one per region mention (item 18)."""
    explicit = list(explicit)
    found = sum(len(ANY_MENTION.findall(t)) for t in texts)
    if found != len(explicit):
        raise DataError(
            f"{where}: {found} region mention(s) in the text but {len(explicit)} box(es) in the sample's "
            "'boxes'; each <Region>...</Region> mention needs exactly one box, in mention order"
        )
    return explicit


def rewrite_turns(
    texts: list[str], explicit, where: str, *, render: Callable[[tuple], str], policy: str, stats: RegionStats
) -> tuple[list[str], list[list[tuple]]]:
    """Region mentions of every turn -> ``render(box)`` text; returns (texts, boxes per turn).

    Boxes come from the mentions, or from ``explicit`` (one per mention, in mention order) when it is not None.
    Invalid boxes follow ``policy`` (docs/reliability.md item 17) and are counted in ``stats``.
    """
    if explicit is None:
        out, boxes = [], []
        for j, text in enumerate(texts):
            new, bx = rewrite_mentions(text, render, policy=policy, where=f"{where} turn {j}", stats=stats)
            out.append(new)
            boxes.append([tuple(float(v) for v in b) for b in bx])
        return out, boxes
    explicit = check_box_count(texts, explicit, where)
    out, boxes, k = [], [], 0
    for text in texts:
        turn_boxes, pieces, last = [], [], 0
        for m in ANY_MENTION.finditer(text):
            box = validate_box(explicit[k], policy=policy, where=f"{where} boxes", index=k, stats=stats)
            pieces += [text[last:m.start()], DROPPED_REGION_TEXT if box is None else render(box)]
            if box is not None:
                turn_boxes.append(tuple(float(v) for v in box))
            last, k = m.end(), k + 1
        pieces.append(text[last:])
        rest = ANY_MENTION.sub("", text)
        if REGION_START in rest or REGION_END in rest:
            raise DataError(f"{where}: a {REGION_START} or {REGION_END} tag without its partner in {text!r}")
        out.append("".join(pieces))
        boxes.append(turn_boxes)
    return out, boxes
