"""Parsing and validating generated replies: every box must match an input box, structure and lengths are
bounded, refusals, truncations and duplicates are rejected; each rejection has a reason."""

from __future__ import annotations

import hashlib
import json
import re
import threading

from pvit.regions import format_pvit

#: Rejection reasons, in report order.
REASONS = ("truncated", "malformed-json", "bad-structure", "refusal", "too-many-turns", "too-long",
           "malformed-box", "invented-box", "box-in-answer", "no-region-in-question", "duplicate",
           "near-duplicate", "request-failed")

_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)
_REGION = re.compile(r"<Region>(.*?)</Region>", re.S)
_BARE = re.compile(r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\]")
_REFUSAL = re.compile(r"\b(I'?m sorry|I am sorry|I cannot|I can't|I'm unable|I am unable|as an AI( language model)?)\b",
                      re.I)
_CONVERTED = re.compile(r"<Region>(?:<L\d+>){4}</Region>")
_WORD = re.compile(r"[a-z0-9]+|<b\d+>")


class Rejected(Exception):
    """A sample that fails validation: ``reason`` is one of REASONS, ``detail`` says what and where."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def parse_reply(text: str, finish_reason: str | None) -> list[tuple[str, str]]:
    """A reply -> ``[(question, answer), ...]``; raises Rejected for truncated or malformed replies.

    Accepted: ``{"conversations": [{"question", "answer"}, ...]}`` or the bare list, optionally in a code fence.
    """
    if finish_reason == "length":
        raise Rejected("truncated", "the reply hit the output-token limit (finish_reason 'length')")
    m = _FENCE.match(text or "")
    body = m.group(1) if m else (text or "")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        if _REFUSAL.search(body):
            raise Rejected("refusal", f"the reply declines the task: {body[:80]!r}") from None
        raise Rejected("malformed-json", f"{e.msg} at character {e.pos}") from None
    turns = data.get("conversations") if isinstance(data, dict) else data
    if not isinstance(turns, list):
        raise Rejected("bad-structure", "expected {'conversations': [...]} or a list of turns")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or not isinstance(t.get("question"), str) or not isinstance(t.get("answer"), str):
            raise Rejected("bad-structure", f"turn {i} is not {{'question': str, 'answer': str}}")
        q, a = t["question"].strip(), t["answer"].strip()
        if not q or not a:
            raise Rejected("bad-structure", f"turn {i} has an empty question or answer")
        out.append((q, a))
    return out


def _match(box: tuple[float, ...], inputs: list, tol: float) -> tuple | None:
    best, err = None, tol
    for b in inputs:
        e = max(abs(x - y) for x, y in zip(box, b))
        if e <= err:
            best, err = b, e
    return best


def convert_boxes(text: str, inputs: list, tol: float, where: str) -> tuple[str, int]:
    """Rewrite every ``<Region>[...]</Region>`` (and bare ``[x1, y1, x2, y2]``) as ``<Region><L..>x4</Region>`` of
    the input box it matches within ``tol`` per coordinate; returns (text, number of boxes)."""
    count = 0

    def region(m: re.Match) -> str:
        inner = m.group(1).strip()
        nums = _BARE.fullmatch(inner)
        if nums is None:
            raise Rejected("malformed-box", f"{where}: {m.group(0)[:60]!r} is not <Region>[x1, y1, x2, y2]</Region>")
        return _convert(tuple(float(v) for v in nums.groups()), m.group(0))

    def _convert(box: tuple, shown: str) -> str:
        nonlocal count
        hit = _match(box, inputs, tol)
        if hit is None:
            raise Rejected("invented-box", f"{where}: {shown} matches no input box within {tol}")
        count += 1
        return format_pvit(hit)

    text = _REGION.sub(region, text)
    rest = _CONVERTED.sub("", text)
    if "<Region>" in rest or "</Region>" in rest:
        raise Rejected("malformed-box", f"{where}: an unclosed or stray <Region> tag")
    text = _BARE.sub(lambda m: _convert(tuple(float(v) for v in m.groups()), m.group(0)), text)
    return text, count


def build_conversation(turns, inputs: list, task: str, rules: dict) -> list[dict]:
    """Validated turns -> PVIT conversations (``<image>`` first, boxes converted); raises Rejected."""
    if len(turns) < rules["min_turns"] or len(turns) > rules["max_turns"]:
        raise Rejected("too-many-turns" if turns else "bad-structure",
                       f"{len(turns)} turns; allowed {rules['min_turns']}..{rules['max_turns']}")
    conv, total_q = [], 0
    for i, (q, a) in enumerate(turns):
        for role, text in (("question", q), ("answer", a)):
            if _REFUSAL.search(text):
                raise Rejected("refusal", f"turn {i} {role} declines: {text[:60]!r}")
            if len(text) > rules["max_chars"]:
                raise Rejected("too-long", f"turn {i} {role} has {len(text)} characters (max {rules['max_chars']})")
        q2, nq = convert_boxes(q, inputs, rules["box_tolerance"], f"turn {i} question")
        a2, na = convert_boxes(a, inputs, rules["box_tolerance"], f"turn {i} answer")
        if na and task in rules["no_boxes_in_answers"]:
            raise Rejected("box-in-answer", f"turn {i}: task {task!r} does not allow boxes in answers")
        total_q += nq
        conv += [{"from": "human", "value": ("<image>\n" if i == 0 else "") + q2}, {"from": "gpt", "value": a2}]
    if rules["require_region"] and total_q == 0:
        raise Rejected("no-region-in-question", "no question refers to a region")
    return conv


def _normal(conv: list[dict]) -> str:
    text = " ".join(t["value"] for t in conv).lower()
    return re.sub(r"<region>((?:<l\d+>)+)</region>", lambda m: " <b" + re.sub(r"\D", "", m.group(1)) + "> ", text)


class Deduper:
    """Exact duplicates (normalised text, over the whole job) and near duplicates (word-trigram Jaccard at or
    above ``threshold``, among samples of the same image). Thread-safe."""

    def __init__(self, threshold: float):
        self.threshold, self.exact, self.by_image = threshold, set(), {}
        self.lock = threading.Lock()

    @staticmethod
    def _shingles(text: str) -> frozenset:
        w = _WORD.findall(text)
        return frozenset(zip(w, w[1:], w[2:])) if len(w) >= 3 else frozenset([tuple(w)])

    def check_and_add(self, image: str, conv: list[dict]) -> None:
        text = _normal(conv)
        digest = hashlib.sha256(text.encode()).hexdigest()
        sh = self._shingles(text)
        with self.lock:
            if digest in self.exact:
                raise Rejected("duplicate", "the same conversation was already accepted")
            for other in self.by_image.get(image, []):
                j = len(sh & other) / max(1, len(sh | other))
                if j >= self.threshold:
                    raise Rejected("near-duplicate", f"word-trigram overlap {j:.2f} with an earlier sample of {image}")
            self.exact.add(digest)
            self.by_image.setdefault(image, []).append(sh)
