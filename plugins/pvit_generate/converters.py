"""Converters without an LLM: GQA (questions + scene graphs), VCR (object-index references) and Shikra jsonl.

Each yields ``("ok", record)`` or ``("rejected", {"id", "reason", "detail"})``; a record is PVIT's
``{"id", "image", "conversations", "meta"}`` with boxes written ``<Region><L#>x4</Region>``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

from pvit.errors import DataError, InvalidRegionError
from pvit.regions import format_pvit, from_coco_xywh, from_pixels, validate_box

from pvit_data.gqa import insert_regions, parse_span

IMAGE = "<image>\n"
WHY_PROMPT = "Why is that the right answer?"
SHIKRA_PROMPT = "Describe the image and give the region of everything you mention."


def _read_json(path: Path, what: str):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{what} {str(path)!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{what} {str(path)!r} is not JSON: {e}") from None


def _jsonl(path: Path, what: str) -> Iterator[tuple[int, dict]]:
    if not Path(path).is_file():
        raise DataError(f"{what} {str(path)!r} does not exist")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not a JSON line: {e}") from None


def _region(box, where: str) -> str:
    return format_pvit(validate_box(box, policy="error", where=where))


def _reject(rid: str, reason: str, detail: str) -> tuple[str, dict]:
    return "rejected", {"id": rid, "reason": reason, "detail": detail}


# ------------------------------------------------------------------------------------------------ GQA


def convert_gqa(questions, scene_graphs, max_samples: int | None = None,
                image_ext: str = ".jpg") -> Iterator[tuple[str, dict]]:
    """GQA questions -> one region QA each: the boxes of the objects a question's annotations refer to go
    after their words (``"the cup <Region>..</Region> on the table <Region>..</Region>?"``); the image is
    ``<imageId><image_ext>``."""
    data = _read_json(questions, "GQA questions file")
    graphs = _read_json(scene_graphs, "GQA scene graphs file")
    if not isinstance(data, dict) or not isinstance(graphs, dict):
        raise DataError("GQA files must be JSON objects: {question id: question} and {image id: scene graph}")
    n = 0
    for qid, q in data.items():
        if max_samples is not None and n >= max_samples:
            return
        rid = f"gqa-{qid}"
        g = graphs.get(str(q.get("imageId")))
        if g is None:
            yield _reject(rid, "missing-scene-graph", f"image {q.get('imageId')!r} has no scene graph")
            continue
        words = q["question"].split()
        mentions, missing = [], []
        try:
            for span, oid in ((q.get("annotations") or {}).get("question") or {}).items():
                o = (g.get("objects") or {}).get(str(oid))
                if o is None:
                    missing.append(str(oid))
                    continue
                _, end = parse_span(span, len(words), f"GQA question {qid}")
                box = from_coco_xywh((o["x"], o["y"], o["w"], o["h"]), g["width"], g["height"])
                mentions.append((end, [_region(box, f"GQA question {qid} object {oid}")]))
        except (DataError, InvalidRegionError) as e:
            yield _reject(rid, "bad-annotation", str(e))
            continue
        if missing:
            yield _reject(rid, "missing-object", f"objects {missing} are not in the scene graph")
            continue
        mentions.sort(key=lambda m: m[0])
        text = insert_regions(q["question"], mentions)
        answer = q.get("fullAnswer") or q.get("answer") or ""
        if not answer:
            yield _reject(rid, "no-answer", "question has neither fullAnswer nor answer")
            continue
        n += 1
        yield "ok", {"id": rid, "image": f"{q['imageId']}{image_ext}",
                     "conversations": [{"from": "human", "value": IMAGE + text}, {"from": "gpt", "value": answer}],
                     "meta": {"source": "gqa", "task": "gqa", "answer": q.get("answer")}}


# ------------------------------------------------------------------------------------------------ VCR

_NO_SPACE_BEFORE = re.compile(r"\s+([?.!,;:'])")


def vcr_text(tokens: list, names: list[str], boxes: list, w: float, h: float, where: str) -> str:
    """VCR tokens -> text; an index list ``[0, 2]`` becomes ``person <Region>..</Region> and car <Region>..</Region>``."""
    out = []
    for tok in tokens:
        if isinstance(tok, list):
            parts = []
            for i in tok:
                if not isinstance(i, int) or not 0 <= i < len(names) or i >= len(boxes):
                    raise DataError(f"{where}: object reference {i!r} is not one of the {len(names)} objects")
                parts.append(f"{names[i]} {_region(from_pixels(boxes[i][:4], w, h), f'{where} object {i}')}")
            out.append(" and ".join(parts))
        else:
            out.append(str(tok))
    return _NO_SPACE_BEFORE.sub(r"\1", " ".join(out))


def convert_vcr(annotations, image_folder, max_samples: int | None = None,
                why_prompt: str = WHY_PROMPT) -> Iterator[tuple[str, dict]]:
    """VCR jsonl (+ per-image metadata JSON with ``boxes``, ``width``, ``height``) -> Q->A then QA->R turns."""
    folder = Path(image_folder)
    n = 0
    for line, a in _jsonl(Path(annotations), "VCR annotations file"):
        if max_samples is not None and n >= max_samples:
            return
        rid = f"vcr-{a.get('annot_id', line)}"
        try:
            meta = _read_json(folder / a["metadata_fn"], "VCR metadata file")
            w, h, boxes, names = meta["width"], meta["height"], meta["boxes"], a["objects"]
            where = f"VCR {annotations}:{line}"
            q = vcr_text(a["question"], names, boxes, w, h, where)
            ans = vcr_text(a["answer_choices"][a["answer_label"]], names, boxes, w, h, where)
            why = vcr_text(a["rationale_choices"][a["rationale_label"]], names, boxes, w, h, where)
        except (KeyError, IndexError, TypeError) as e:
            yield _reject(rid, "bad-record", f"line {line}: missing or malformed field {e}")
            continue
        except (DataError, InvalidRegionError) as e:
            yield _reject(rid, "bad-annotation", str(e))
            continue
        n += 1
        conv = [{"from": "human", "value": IMAGE + q}, {"from": "gpt", "value": ans},
                {"from": "human", "value": why_prompt}, {"from": "gpt", "value": why}]
        yield "ok", {"id": rid, "image": a["img_fn"], "conversations": conv, "meta": {"source": "vcr", "task": "vcr"}}


# --------------------------------------------------------------------------------------------- Shikra


def _fill_boxes(text: str, seq: list, boxes: list, size, where: str) -> str:
    """Replace each ``<boxes>`` with the boxes of the next ``boxes_seq`` entry; drop ``<ph_st>``/``<ph_ed>``."""
    pieces = text.split("<boxes>")
    if len(pieces) - 1 != len(seq):
        raise DataError(f"{where}: {len(pieces) - 1} <boxes> placeholders but {len(seq)} boxes_seq entries")
    out = [pieces[0]]
    for k, idx in enumerate(seq):
        regions = []
        for i in idx:
            if not isinstance(i, int) or not 0 <= i < len(boxes):
                raise DataError(f"{where}: boxes_seq index {i!r} is not one of the {len(boxes)} boxes")
            regions.append(_region(from_pixels(boxes[i], *size), f"{where} box {i}"))
        out.append(" " + " ".join(regions) + pieces[k + 1])
    return re.sub(r" +", " ", "".join(out).replace("<ph_st>", "").replace("<ph_ed>", "")).strip()


def read_shikra(path, image_folder, max_samples: int | None = None,
                prompt: str = SHIKRA_PROMPT) -> Iterator[tuple[str, dict]]:
    """Shikra's one-record-per-line jsonl: ``boxes`` (pixel xyxy) and ``boxes_seq`` (box indices per
    ``<boxes>`` placeholder). Records with ``question``/``answer`` (and ``question_boxes_seq``/
    ``answer_boxes_seq``) give one QA turn; ``sentence``/``expression``/``caption`` records answer ``prompt``."""
    from PIL import Image

    folder = Path(image_folder)
    n = 0
    for line, r in _jsonl(Path(path), "Shikra jsonl file"):
        if max_samples is not None and n >= max_samples:
            return
        image = r.get("img_path") or r.get("image")
        rid = f"shikra-{r.get('id', line)}"
        where = f"{path}:{line}"
        try:
            size = (r["width"], r["height"]) if "width" in r and "height" in r else Image.open(folder / image).size
            boxes = r["boxes"]
            if "question" in r:
                q = _fill_boxes(r["question"], r.get("question_boxes_seq") or [], boxes, size, where)
                a = _fill_boxes(r["answer"], r.get("answer_boxes_seq") or [], boxes, size, where)
            else:
                text = next(r[k] for k in ("sentence", "expression", "caption") if k in r)
                q, a = prompt, _fill_boxes(text, r.get("boxes_seq") or [], boxes, size, where)
        except (KeyError, StopIteration, TypeError) as e:
            yield _reject(rid, "bad-record", f"{where}: missing or malformed field {e!r}")
            continue
        except OSError as e:
            yield _reject(rid, "missing-image", f"{where}: {e}")
            continue
        except (DataError, InvalidRegionError) as e:
            yield _reject(rid, "bad-annotation", str(e))
            continue
        n += 1
        conv = [{"from": "human", "value": IMAGE + q}, {"from": "gpt", "value": a}]
        yield "ok", {"id": rid, "image": image, "conversations": conv, "meta": {"source": "shikra", "task": "shikra"}}
