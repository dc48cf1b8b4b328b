"""The demo's page-independent logic: annotator value -> (image, boxes), the region hint, answer boxes drawn.

Nothing here imports gradio, so it is tested without a browser.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import NamedTuple

from PIL import Image, ImageDraw, ImageFont

#: The annotator shows the image turned clockwise by ``orientation`` quarter turns; its boxes are in that frame.
_TURNS = {1: Image.Transpose.ROTATE_270, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_90}
REGION_COLOUR = (92, 172, 238)  # a region whose colour the annotator did not say
ANSWER_COLOUR = (200, 0, 160)


class Drawn(NamedTuple):
    """What the user drew: the image as shown, boxes as pixel xyxy in drawing order, each box's colour."""

    image: Image.Image | None
    boxes: list[list[float]]
    colours: list[tuple[int, int, int]]


def from_annotator(value: dict | None) -> Drawn:
    """The annotator's value as a ``Drawn``: ``boxes[0]`` is ``<region1>``.

    ``value`` is what gradio-image-annotation's ``image_annotator`` (``image_type="pil"``) hands a callback:
    ``{"image", "boxes": [{"xmin", "ymin", "xmax", "ymax", "color"...}], "orientation"}``. The annotator puts
    each new box first in its list, so drawing order is the list reversed; it shows the image turned by
    ``orientation`` quarter turns and gives boxes in that frame. Boxes are clipped to the image.
    """
    if not value or value.get("image") is None:
        return Drawn(None, [], [])
    image = value["image"]
    if not isinstance(image, Image.Image):
        image = Image.open(image)
    image = image.convert("RGB")
    turn = _TURNS.get(int(value.get("orientation") or 0) % 4)
    if turn is not None:
        image = image.transpose(turn)
    w, h = image.size
    boxes, colours = [], []
    for b in reversed(value.get("boxes") or []):
        x1, x2 = sorted((float(b["xmin"]), float(b["xmax"])))
        y1, y2 = sorted((float(b["ymin"]), float(b["ymax"])))
        boxes.append([min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h)])
        colour = tuple(int(c) for c in (b.get("color") or ())[:3])
        colours.append(colour if len(colour) == 3 and colour != (0, 0, 0) else REGION_COLOUR)
    return Drawn(image, boxes, colours)


def _fmt(box: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in box)


def region_hint(image: Image.Image | None, boxes: list[list[float]]) -> str:
    """Markdown under the image: how many regions are drawn and how to refer to them."""
    if image is None:
        return ("Upload an image, then draw boxes on it (box tool, or key C). Each box becomes `<region1>`, "
                "`<region2>`, ... in the order you draw them.")
    if not boxes:
        return ("No boxes: ask about the whole image, or draw boxes; each becomes `<region1>`, `<region2>`, ... "
                "in drawing order.")
    listed = "; ".join(f"`<region{i + 1}>` = ({_fmt(b)})" for i, b in enumerate(boxes))
    refs = ", ".join(f"`<region{i + 1}>`" for i in range(len(boxes)))
    return (f"**{len(boxes)} region(s)** (pixels x1, y1, x2, y2): {listed}. "
            f"Refer to every box in the question: {refs}.")


def problem(message: str, code: str, n_boxes: int) -> str:
    """Markdown for a request the model cannot answer (a ``PredictError``), escaped so ``<regionN>`` shows."""
    title = "Region mismatch" if code in ("region_without_box", "box_without_mention") else "Cannot answer"
    drawn = (f"{n_boxes} box(es) drawn: refer to them as " + ", ".join(f"<region{i + 1}>" for i in range(n_boxes))
             if n_boxes else "no boxes drawn: draw one for each <regionN> in the question")
    message = message.removeprefix("prompt: ")
    return f"**{title}:** {html.escape(message)}  \n{html.escape(drawn)}."


def answer_summary(boxes: list[Sequence[float]]) -> str:
    """Markdown naming the boxes of an answer (pixels of the image)."""
    if not boxes:
        return "The answer mentions no boxes."
    return "Boxes in the answer (pixels x1, y1, x2, y2): " + "; ".join(
        f"answer {i + 1} = ({_fmt(b)})" for i, b in enumerate(boxes))


def draw_boxes(image: Image.Image, regions: list[Sequence[float]], answer: list[Sequence[float]],
               colours: Sequence[tuple[int, int, int]] = ()) -> Image.Image:
    """A copy of ``image`` with the question's regions (thin, in ``colours``, the annotator's) and the
    answer's boxes (thick, magenta), each labelled."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    side = min(out.size)
    width = max(2, round(side / 150))
    font = ImageFont.load_default(size=max(10, round(side / 30)))
    marks = [(f"region{i + 1}", colours[i] if i < len(colours) else REGION_COLOUR, width, b)
             for i, b in enumerate(regions)]
    marks += [(f"answer{i + 1}", ANSWER_COLOUR, 2 * width, b) for i, b in enumerate(answer)]
    for text, colour, line, b in marks:
        x1, y1, x2, y2 = (float(v) for v in b)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        _, top, _, bottom = draw.textbbox((0, 0), text, font=font)
        ty = y1 - (bottom - top) - 2 * line
        ty = ty if ty >= 0 else y1 + line  # above the box, or inside it at the image's top edge
        tag = draw.textbbox((x1 + line, ty), text, font=font)
        draw.rectangle([tag[0] - 1, tag[1] - 1, tag[2] + 1, tag[3] + 1], fill=colour)
        draw.text((x1 + line, ty), text, fill=_ink(colour), font=font)
    return out


def _ink(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``colour``."""
    r, g, b = colour
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)
