"""``gqa-regions``: GQA questions with their scene-graph boxes after the mentioned words (Shikra's "qb" mode)."""

from __future__ import annotations

import os
import re

from pvit.errors import DataError
from pvit.regions import format_pvit, from_coco_xywh, validate_box

from pvit_data.common import SampleDataset, check_image_size, read_json, resolve_dir

DEFAULT_PROMPT = "<image>\n{question}\nAnswer the question using a single word or phrase."
ANSWER_FIELDS = ("answer", "fullAnswer")
_TRAILING_PUNCT = re.compile(r"^(.*?)([?.!,;:]*)$", re.S)


def parse_span(span: str, n_tokens: int, where: str) -> tuple[int, int]:
    """A GQA annotation key, ``"start:end"`` (end exclusive) or a single token index ``"k"`` -> (start, end).

    Indices count the whitespace-separated words of the question, punctuation attached (as Shikra reads them).
    """
    try:
        parts = [int(p) for p in str(span).split(":")]
    except ValueError:
        raise DataError(f"{where}: annotation span {span!r} is not 'start:end' or a word index") from None
    if len(parts) == 1:
        parts = [parts[0], parts[0] + 1]
    start, end = parts if len(parts) == 2 else (-1, -1)
    if not 0 <= start < end <= n_tokens:
        raise DataError(f"{where}: annotation span {span!r} does not fit the question's {n_tokens} words")
    return start, end


def insert_regions(question: str, mentions: list[tuple[int, list[str]]], shikra_exact: bool = False) -> str:
    """Write region texts after the words they annotate.

    Args:
        question: the GQA question.
        mentions: ``(end, [region text, ...])`` per annotation: the regions go right after word ``end - 1``.
        shikra_exact: append to the whitespace word itself, after any punctuation, as Shikra does
            (``"pond?<box>"``); by default the regions go before trailing punctuation (``"pond <box>?"``).

    Returns:
        The words re-joined with single spaces (as Shikra does), regions inserted.
    """
    words = question.split()
    for end, regions in mentions:
        joined = " ".join(regions)
        word = words[end - 1]
        if shikra_exact:
            words[end - 1] = word + joined
        else:
            body, punct = _TRAILING_PUNCT.match(word).groups()
            words[end - 1] = f"{body} {joined}{punct}" if body else f"{joined}{punct}"
    return " ".join(words)


class GqaRegionsDataset(SampleDataset):
    """GQA with question boxes; see ``pvit_data.make_gqa_regions`` for the options.

    The reference answer (last gpt turn) is the question's ``answer`` (or ``fullAnswer``).
    """

    name = "gqa-regions"

    def __init__(
        self,
        questions,
        image_folder,
        scene_graphs=None,
        boxes: bool = True,
        max_samples: int | None = None,
        prompt: str = DEFAULT_PROMPT,
        answer_field: str = "answer",
        shikra_exact: bool = False,
        root=None,
        region_policy: str = "error",
        image_policy: str = "error",
        max_skip_fraction: float = 0.01,
    ):
        super().__init__(region_policy=region_policy, image_policy=image_policy, max_skip_fraction=max_skip_fraction)
        if "{question}" not in prompt:
            raise DataError(f"gqa-regions: prompt {prompt!r} has no '{{question}}' placeholder")
        if answer_field not in ANSWER_FIELDS:
            raise DataError(f"gqa-regions: answer_field {answer_field!r} is not one of {', '.join(ANSWER_FIELDS)}")
        if boxes and scene_graphs is None:
            raise DataError(
                "gqa-regions: boxes=True needs scene_graphs (the *_sceneGraphs.json of the same split); "
                "set boxes: false for plain questions"
            )
        self.prompt, self.answer_field, self.boxes, self.shikra_exact = prompt, answer_field, bool(boxes), shikra_exact
        self.file = resolve_dir(questions, root)
        self.image_folder = resolve_dir(image_folder, root)
        if not self.image_folder.is_dir():
            raise DataError(f"gqa-regions: image_folder {str(self.image_folder)!r} does not exist")
        data = read_json(self.file, "GQA questions file")
        if not isinstance(data, dict):
            raise DataError(f"gqa-regions: {str(self.file)!r} is not a GQA questions file ({{question id: question}})")
        self.questions: list[tuple[str, dict]] = []
        for qid, q in data.items():
            if max_samples is not None and len(self.questions) >= max_samples:
                break
            if not isinstance(q, dict) or "imageId" not in q or "question" not in q:
                raise DataError(f"{self.file} question {qid}: needs 'imageId' and 'question'")
            keep = {k: q.get(k) for k in ("imageId", "question", "answer", "fullAnswer", "types")}
            keep["spans"] = ((q.get("annotations") or {}).get("question") or {}) if self.boxes else {}
            self.questions.append((str(qid), keep))
        del data
        self.scenes: dict[str, tuple[int, int, dict]] = {}  # image id -> (width, height, {object id: xywh, name})
        self.scene_file = None
        if scene_graphs is not None:
            self.scene_file = resolve_dir(scene_graphs, root)
            graphs = read_json(self.scene_file, "GQA scene graphs file")
            if not isinstance(graphs, dict):
                raise DataError(f"gqa-regions: {str(self.scene_file)!r} is not a GQA scene graphs file")
            needed = {q["imageId"] for _, q in self.questions}
            for image_id, g in graphs.items():
                if image_id in needed:
                    objects = {
                        str(oid): (o["x"], o["y"], o["w"], o["h"], o.get("name"))
                        for oid, o in (g.get("objects") or {}).items()
                    }
                    self.scenes[image_id] = (int(g["width"]), int(g["height"]), objects)

    def __len__(self) -> int:
        return len(self.questions)

    def sample_id(self, index: int) -> str:
        return f"gqa-{self.questions[index][0]}"

    def _boxes(self, qid: str, q: dict, words: int, where: str) -> tuple[list[tuple[int, list[str]]], list]:
        """(end word, [PVIT region text]) per annotation, and every canonical box in mention order."""
        if not q["spans"]:
            return [], []
        scene = self.scenes.get(q["imageId"])
        if scene is None:
            raise DataError(
                f"{where}: image {q['imageId']!r} has no scene graph in {str(self.scene_file)!r} (GQA publishes "
                "scene graphs for train and val only; use boxes: false for other splits)"
            )
        w, h, objects = scene
        mentions, boxes, k = [], [], 0
        spans = sorted((parse_span(span, words, where)[::-1], span, ids) for span, ids in q["spans"].items())
        for (end, _start), span, ids in spans:  # in text order: by the word the regions follow
            texts = []
            for oid in str(ids).split(","):
                if oid not in objects:
                    raise DataError(
                        f"{where}: annotation {span!r} names object {oid!r}, which is not in the image's scene graph"
                    )
                x, y, bw, bh, _name = objects[oid]
                box = validate_box(
                    from_coco_xywh((x, y, bw, bh), w, h),
                    policy=self.region_policy,
                    where=f"{where} (object {oid}, xywh {[x, y, bw, bh]} in a {w}x{h} image)",
                    index=k,
                    stats=self.region_stats,
                )
                k += 1
                if box is not None:
                    texts.append(format_pvit(box))
                    boxes.append(box)
            if texts:
                mentions.append((end, texts))
        return mentions, boxes

    def _sample(self, index: int) -> dict | None:
        qid, q = self.questions[index]
        sid = f"gqa-{qid}"
        where = f"{self.file} question {qid}"
        path = os.path.join(self.image_folder, f"{q['imageId']}.jpg")
        image = self.load_image(path, sid, where)
        if image is None:
            return None
        mentions, boxes = self._boxes(qid, q, len(q["question"].split()), where)
        if self.boxes and q["imageId"] in self.scenes:
            check_image_size(image, self.scenes[q["imageId"]][:2], sid, where, path)
        text = insert_regions(q["question"], mentions, self.shikra_exact) if mentions else q["question"]
        answer = q.get(self.answer_field) or ""
        types = q.get("types") or {}
        return {
            "id": sid,
            "image": image,
            "conversations": [
                {"from": "human", "value": self.prompt.replace("{question}", text)},
                {"from": "gpt", "value": answer},
            ],
            "meta": {
                "dataset": "gqa-regions",
                "task": types.get("structural") or "gqa",
                "question_id": qid,
                "image_id": q["imageId"],
                "question": q["question"],
                "answer": q.get("answer"),
                "full_answer": q.get("fullAnswer"),
                "category": types.get("semantic"),
                "types": types,
                "boxes": [list(b) for b in boxes],
            },
        }
