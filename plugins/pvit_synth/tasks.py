"""Question templates of synth-regions and the builders that turn a scene into (question, answer) turns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pvit_synth.scene import Item, Scene
from pvit_synth.vocab import RELATION_ANSWERS

#: The five region tasks of PVIT's stage-2 data, as named in recipes.
REGION_TASKS = ("recognition", "attribute", "relationship", "ocr", "same-category")
#: Stage-1 tasks: image captions listing the objects left to right, and one-region descriptions.
STAGE1_TASKS = ("caption", "region-caption")
TASKS = REGION_TASKS + STAGE1_TASKS
#: Task-set aliases accepted by the ``task`` option.
TASK_ALIASES = {"all-region": REGION_TASKS, "all": TASKS}

#: Templates: ``{r0}``/``{r1}`` are region mentions; tokens are separated by spaces (word-level tokenizers).
TEMPLATES = {
    "recognition": "What is the object in {r0} ?",
    "attribute": "What color is {r0} ?",
    "relationship/left": "Is {r0} left or right of {r1} ?",
    "relationship/above": "Is {r0} above or below {r1} ?",
    "relationship/larger": "Is {r0} larger or smaller than {r1} ?",
    "ocr": "What word is written in {r0} ?",
    "same-category": "Are {r0} and {r1} the same shape ?",
    "caption": "Describe the image briefly .",
    "region-caption": "Describe {r0} briefly .",
}

#: Side ratio above which "larger"/"smaller" counts as unambiguous.
LARGER_RATIO = 1.3


def mention(box) -> str:
    """PVIT region mention of a normalised xyxy box: ``<Region><L..>x4</Region>``."""
    from pvit.regions import format_pvit

    return format_pvit(box)


@dataclass
class Turn:
    """One generated question with its answer, task, target item indices and answer-space size."""

    question: str
    answer: str
    task: str
    targets: tuple[int, ...]
    num_choices: int
    kind: str = ""  # template key, e.g. "relationship/left"


def _fill(key: str, scene: Scene, targets) -> str:
    boxes = [mention(scene.items[t].norm_box(scene.image_size)) for t in targets]
    return TEMPLATES[key].format(**{f"r{k}": b for k, b in enumerate(boxes)})


def _pick(rng: np.random.Generator, candidates: list[int], used: set[int]) -> int:
    fresh = [c for c in candidates if c not in used] or candidates
    return fresh[int(rng.integers(0, len(fresh)))]


def _pick_pair(rng: np.random.Generator, pairs: list, used: set[int]):
    """A random pair, preferring pairs not already asked about together."""
    fresh = [p for p in pairs if not (p[0] in used and p[1] in used)] or pairs
    return fresh[int(rng.integers(0, len(fresh)))]


def _relation(a: Item, b: Item, rel: str) -> str | None:
    """Answer to "is a <rel-pair> b" when unambiguous (boxes separated / sides differ), else None."""
    if rel == "left":
        if a.box[2] <= b.box[0]:
            return "left"
        return "right" if b.box[2] <= a.box[0] else None
    if rel == "above":
        if a.box[3] <= b.box[1]:
            return "above"
        return "below" if b.box[3] <= a.box[1] else None
    if a.side >= LARGER_RATIO * b.side:
        return "larger"
    return "smaller" if b.side >= LARGER_RATIO * a.side else None


def make_turn(task: str, scene: Scene, rng: np.random.Generator, used: set[int], num_kinds: int, num_colors: int,
              num_words: int, want_yes: bool = False) -> Turn | None:
    """One question of ``task`` about ``scene``, or None when the scene cannot support it.

    ``used`` holds items already asked about in this conversation (avoided when others exist).
    """
    shapes = [i for i, it in enumerate(scene.items) if it.kind != "word"]
    words = [i for i, it in enumerate(scene.items) if it.kind == "word"]
    if task == "recognition":
        t = _pick(rng, shapes, used)
        return Turn(_fill(task, scene, (t,)), scene.items[t].kind, task, (t,), num_kinds, task)
    if task == "attribute":
        t = _pick(rng, shapes, used)
        return Turn(_fill(task, scene, (t,)), scene.items[t].color, task, (t,), num_colors, task)
    if task == "ocr":
        if not words:
            return None
        t = _pick(rng, words, used)
        return Turn(_fill(task, scene, (t,)), scene.items[t].word, task, (t,), num_words, task)
    if task == "region-caption":
        t = _pick(rng, list(range(len(scene.items))), used)
        return Turn(_fill(task, scene, (t,)), describe(scene.items[t]), task, (t,), 0, task)
    if task == "caption":
        return Turn(TEMPLATES["caption"], caption(scene), task, (), 0, task)
    pairs = [(a, b) for a in shapes for b in shapes if a != b]
    if task == "same-category":
        same = [p for p in pairs if scene.items[p[0]].kind == scene.items[p[1]].kind]
        diff = [p for p in pairs if scene.items[p[0]].kind != scene.items[p[1]].kind]
        pool = same if (want_yes and same) or not diff else diff
        if not pool:
            return None
        a, b = _pick_pair(rng, pool, used)
        answer = "yes" if scene.items[a].kind == scene.items[b].kind else "no"
        return Turn(_fill(task, scene, (a, b)), answer, task, (a, b), 2, task)
    if task == "relationship":
        rels = [r[0] for r in RELATION_ANSWERS]
        first = int(rng.integers(0, len(rels)))
        for rel in rels[first:] + rels[:first]:  # the drawn relation first, others if it has no clear pair
            ok = [(a, b, ans) for a, b in pairs if (ans := _relation(scene.items[a], scene.items[b], rel))]
            if ok:
                a, b, ans = _pick_pair(rng, ok, used)
                key = f"relationship/{rel}"
                return Turn(_fill(key, scene, (a, b)), ans, task, (a, b), 2, key)
        return None
    raise ValueError(f"unknown synth-regions task {task!r}; tasks: {', '.join(TASKS)}")


def describe(item: Item) -> str:
    """Region description: "a small red circle", or "the word cat"."""
    if item.kind == "word":
        return f"the word {item.word}"
    return f"a {item.size} {item.color} {item.kind}"


def caption(scene: Scene) -> str:
    """Image caption listing the items left to right with their region descriptions:
    "a small red circle , a large blue square and the word cat ." (the same phrases as ``region-caption``, so a
    language model aligned on captions already knows every word stage 1 asks of it)."""
    items = sorted(scene.items, key=lambda it: (it.center[0], it.center[1]))
    parts = [describe(it) for it in items]
    if len(parts) == 1:
        return parts[0] + " ."
    return " , ".join(parts[:-1]) + " and " + parts[-1] + " ."
