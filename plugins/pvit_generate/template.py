"""``template``: a deterministic rule-based generator that reads the serialised context and writes replies in the
requested JSON format; it stands in for an LLM where none can run, and exercises the same parse/validate path."""

from __future__ import annotations

import json
import random
import re

from pvit_generate.generators import Reply

_LINE = re.compile(r"^- (<Region>\[[^\]]*\]</Region>) (\S+)(?:; (.*))?$")


def _regions(text: str) -> list[dict]:
    out, on = [], False
    for line in text.splitlines():
        if line.startswith("Regions:"):
            on = True
            continue
        if on and not line.startswith("- "):
            break
        m = _LINE.match(line) if on else None
        if m:
            extra = dict(p.split(": ", 1) for p in (m.group(3) or "").split("; ") if ": " in p)
            box = [float(v) for v in m.group(1)[9:-10].split(",")]
            out.append({"r": m.group(1), "label": m.group(2), "attrs": extra.get("attributes", ""),
                        "text": extra.get("text"), "box": box})
    return out


def _side(a: dict, b: dict) -> str:
    ax, bx = (a["box"][0] + a["box"][2]) / 2, (b["box"][0] + b["box"][2]) / 2
    return "left" if ax < bx else "right"


def _turn(task: str, regs: list[dict], rng: random.Random) -> tuple[str, str] | None:
    shapes = [r for r in regs if r["label"] != "word"]
    words = [r for r in regs if r["label"] == "word" and r["text"]]
    if task == "ocr":
        if not words:
            return None
        w = rng.choice(words)
        return f"What word is written in {w['r']}?", w["text"].lower()
    if not shapes:
        return None
    a = rng.choice(shapes)
    if task == "small-objects":
        a = min(shapes, key=lambda r: (r["box"][2] - r["box"][0]) * (r["box"][3] - r["box"][1]))
        return f"What is the small object in {a['r']}?", f"It is a {a['attrs'].replace(', ', ' ')} {a['label']}."
    if task == "attributes":
        colour = a["attrs"].split(",")[0]
        return f"What colour is the object in {a['r']}?", colour
    if len(shapes) < 2:
        return None
    b = rng.choice([s for s in shapes if s is not a])
    if task == "relationships":
        return (f"Is {a['r']} to the left or to the right of {b['r']}?",
                f"The {a['label']} {a['r']} is to the {_side(a, b)} of the {b['label']} {b['r']}.")
    if task == "same-category":
        return f"Are {a['r']} and {b['r']} the same kind of shape?", "yes" if a["label"] == b["label"] else "no"
    return f"What is in {a['r']}?", f"a {a['attrs'].replace(', ', ' ')} {a['label']}"


class TemplateGenerator:
    """See [make_template][pvit_generate.generators.make_template]."""

    TASKS = ("small-objects", "relationships", "ocr", "attributes", "same-category")

    def __init__(self, fail_every: int = 0):
        self.fail_every = int(fail_every)

    def describe(self) -> dict:
        return {"name": "template", "fail_every": self.fail_every}

    def complete(self, messages, *, max_tokens: int, temperature: float, seed: int, timeout: float) -> Reply:
        user = messages[-1]["content"]
        task = user.splitlines()[0].removeprefix("Task: ").strip()
        regs, rng = _regions(user), random.Random(seed)
        if task == "multi-turn":
            tasks = rng.sample(self.TASKS, 3)
        else:
            tasks = [task]
        turns = [t for t in (_turn(k, regs, rng) for k in tasks) if t is not None]
        if self.fail_every and seed % self.fail_every == 0 and turns:
            q, a = turns[0]
            turns[0] = (q + " Compare it with <Region>[0.999, 0.999, 1.000, 1.000]</Region>.", a)
        text = json.dumps({"conversations": [{"question": q, "answer": a} for q, a in turns]})
        return Reply(text, "stop", sum(len(m["content"]) for m in messages) // 4, len(text) // 4)
