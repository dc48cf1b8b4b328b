"""The synth-regions dataset: seeded, lazily generated images with region-level conversations."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from pvit.errors import ComponentOptionError
from pvit.interfaces import IMAGE_TOKEN
from pvit_synth import tasks as T
from pvit_synth.render import render
from pvit_synth.scene import Scene, sample_scene
from pvit_synth.vocab import (
    COLORS, DEFAULT_COLORS, DEFAULT_OBJECT_SIZE, DEFAULT_SHAPES, SHAPES, SIZE_CLASSES, WORDS, YES_NO,
)

#: Split -> stream code mixed into every per-sample seed (so splits never share a random stream).
SPLITS = {"train": 0, "val": 1, "test": 2}
#: Constant mixed into every seed so synth-regions streams differ from other users of the same integers.
_SALT = 0x5E6D_2023
_MENTION = re.compile(r"<Region>.*?</Region>")


def _bad(option: str, value, valid: str) -> ComponentOptionError:
    return ComponentOptionError(f"dataset 'synth-regions': option {option}={value!r} is invalid; {valid}")


def resolve_tasks(task) -> tuple[str, ...]:
    """Task option (a name, an alias such as "all-region", or a list of them) -> task names, in order."""
    names = [task] if isinstance(task, str) else list(task)
    out: list[str] = []
    for name in names:
        for t in T.TASK_ALIASES.get(name, (name,)):
            if t not in T.TASKS:
                raise _bad("task", task, f"tasks: {', '.join(T.TASKS)}; aliases: {', '.join(T.TASK_ALIASES)}")
            if t not in out:
                out.append(t)
    if not out:
        raise _bad("task", task, "give at least one task")
    return tuple(out)


class SynthRegions:
    """Map-style dataset of procedurally generated region-QA conversations; see the factory for options.

    Sample ``i`` is a pure function of the options and ``i``: its image, layout and questions come from a
    random stream seeded by (``seed``, ``split``, ``i``), so it is generated on demand and never cached.
    """

    def __init__(
        self,
        split: str = "train",
        size: int = 1000,
        task="all-region",
        image_size: int = 64,
        seed: int = 0,
        questions_per_sample: int = 1,
        min_objects: int = 3,
        max_objects: int = 5,
        task_weights: Mapping[str, float] | None = None,
        shapes: Sequence[str] | None = None,
        colors: Sequence[str] | None = None,
        words_per_image: int | None = None,
        object_size: Sequence[int] = DEFAULT_OBJECT_SIZE,
        scenes: int | None = None,
    ) -> None:
        if split not in SPLITS:
            raise _bad("split", split, f"splits: {', '.join(SPLITS)}")
        if int(size) < 0:
            raise _bad("size", size, "give a number of samples >= 0")
        if int(image_size) < 32:
            raise _bad("image_size", image_size, "give at least 32 pixels")
        if int(questions_per_sample) < 1:
            raise _bad("questions_per_sample", questions_per_sample, "give at least 1")
        if not 2 <= int(min_objects) <= int(max_objects):
            raise _bad("min_objects/max_objects", (min_objects, max_objects), "need 2 <= min_objects <= max_objects")
        if scenes is not None and int(scenes) < 1:
            raise _bad("scenes", scenes, "give a pool of at least 1 scene, or null for one scene per sample")
        self.scenes = None if scenes is None else int(scenes)
        self.split, self.size, self.seed = split, int(size), int(seed)
        self.image_size = int(image_size)
        self.questions_per_sample = int(questions_per_sample)
        self.min_objects, self.max_objects = int(min_objects), int(max_objects)
        self.tasks = resolve_tasks(task)
        self.shapes = tuple(shapes) if shapes is not None else DEFAULT_SHAPES
        self.colors = tuple(colors) if colors is not None else DEFAULT_COLORS
        for opt, chosen, known in (("shapes", self.shapes, SHAPES), ("colors", self.colors, tuple(COLORS))):
            if len(set(chosen)) < 2 or any(c not in known for c in chosen):
                raise _bad(opt, list(chosen), f"choose at least 2 distinct of: {', '.join(known)}")
        self.object_size = tuple(int(v) for v in object_size)
        if len(self.object_size) != 2 or not 3 <= self.object_size[0] <= self.object_size[1]:
            raise _bad("object_size", list(object_size), "give [min_side, max_side] in pixels at 64 px, min >= 3")
        if words_per_image is None:
            words_per_image = 1 if "ocr" in self.tasks else 0
        self.words_per_image = int(words_per_image)
        if "ocr" in self.tasks and self.words_per_image < 1:
            raise _bad("words_per_image", words_per_image, "the ocr task needs at least 1 word per image")
        weights = dict(task_weights or {})
        for name in weights:
            if name not in self.tasks:
                raise _bad("task_weights", weights, f"weights are for the chosen tasks: {', '.join(self.tasks)}")
        w = np.array([float(weights.get(t, 1.0)) for t in self.tasks])
        if (w < 0).any() or w.sum() <= 0:
            raise _bad("task_weights", weights, "weights must be >= 0 with a positive sum")
        self.task_probs = w / w.sum()

    # -- options and vocabulary ---------------------------------------------------------------------------
    @property
    def options(self) -> dict:
        """The options that reproduce this dataset (JSON-friendly)."""
        return {
            "split": self.split, "size": self.size, "task": list(self.tasks), "image_size": self.image_size,
            "seed": self.seed, "questions_per_sample": self.questions_per_sample, "scenes": self.scenes,
            "min_objects": self.min_objects, "max_objects": self.max_objects,
            "task_weights": dict(zip(self.tasks, self.task_probs.tolist())),
            "shapes": list(self.shapes), "colors": list(self.colors),
            "words_per_image": self.words_per_image, "object_size": list(self.object_size),
        }

    @staticmethod
    def texts() -> Iterator[str]:
        """Every text piece any synth-regions configuration can produce (templates with region slots
        removed, answers, descriptions, captions); the same for all options, so one tokenizer fits all."""
        for tmpl in T.TEMPLATES.values():
            yield tmpl.format(r0="", r1="")
        yield from SHAPES
        yield from COLORS
        yield from WORDS
        yield from YES_NO
        for pair in T.RELATION_ANSWERS:
            yield from pair
        for size, _bound in SIZE_CLASSES:
            yield f"a {size} , and . the word"

    @classmethod
    def vocabulary(cls) -> list[str]:
        """Sorted whitespace tokens of ``texts()`` (no region mentions, no ``<image>``)."""
        return sorted({tok for text in cls.texts() for tok in text.split()})

    # -- samples ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.size

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([_SALT, self.seed, SPLITS[self.split], index]))

    def _check_index(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"synth-regions indices are integers, got {type(index).__name__}")
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"synth-regions ({self.split}) has {self.size} samples; index {index} is out of range")
        return int(index)

    def _scene(self, rng: np.random.Generator, want_pair: bool, where: str) -> Scene:
        return sample_scene(
            rng, image_size=self.image_size, shapes=self.shapes, colors=self.colors, words=WORDS,
            min_objects=self.min_objects, max_objects=self.max_objects, num_words=self.words_per_image,
            object_size=self.object_size, want_pair=want_pair, where=where,
        )

    def _pooled(self, index: int) -> tuple[np.random.Generator, Scene]:
        """(render rng, scene) of pool scene ``index mod scenes``: a stream of its own, independent of tasks."""
        j = index % self.scenes
        rng = np.random.default_rng(np.random.SeedSequence([_SALT, self.seed, SPLITS[self.split], j, 1]))
        return rng, self._scene(rng, bool(rng.integers(0, 2)), f"synth-regions {self.split} scene {j}")

    def _plan(self, index: int):
        """(render rng, scene, turns) of sample ``index``: tasks are drawn first, then a scene that supports them
        (or, with a scene pool, the pooled scene: a task it cannot support asks about an attribute instead)."""
        rng = self._rng(index)
        chosen = rng.choice(len(self.tasks), size=self.questions_per_sample, p=self.task_probs).tolist()
        want_yes = [bool(rng.integers(0, 2)) for _ in chosen]
        need_pair = any(y and self.tasks[c] == "same-category" for c, y in zip(chosen, want_yes))
        if self.scenes:
            draw, scene = self._pooled(index)
        else:
            draw, scene = rng, self._scene(rng, need_pair, f"synth-regions {self.split}[{index}]")
        turns, used = [], set()
        for c, yes in zip(chosen, want_yes):
            task = self.tasks[c]
            turn = T.make_turn(task, scene, rng, used, len(self.shapes), len(self.colors), len(WORDS), yes)
            if turn is None:  # the scene has no unambiguous pair for this task: ask about an object instead
                turn = T.make_turn("attribute", scene, rng, used, len(self.shapes), len(self.colors), len(WORDS))
            used.update(turn.targets)
            turns.append(turn)
        return draw, scene, turns

    def scene(self, index: int) -> Scene:
        """The layout of sample ``index`` (no image rendered)."""
        return self._plan(self._check_index(index))[1]

    def __getitem__(self, index: int) -> dict:
        """Sample ``{"id", "image" (PIL RGB), "conversations", "meta"}``; the last gpt turn is the reference."""
        index = self._check_index(index)
        rng, scene, turns = self._plan(index)
        image = render(scene, rng)
        conversations = []
        for k, turn in enumerate(turns):
            prefix = f"{IMAGE_TOKEN}\n" if k == 0 else ""
            conversations.append({"from": "human", "value": prefix + turn.question})
            conversations.append({"from": "gpt", "value": turn.answer})
        n = self.image_size
        meta = {
            "task": turns[-1].task,
            "answer": turns[-1].answer,
            "num_choices": turns[-1].num_choices,
            "question_type": turns[-1].kind,
            "tasks": [t.task for t in turns],
            "answers": [t.answer for t in turns],
            "targets": [list(t.targets) for t in turns],
            "objects": [
                {"kind": it.kind, "color": it.color, "size": it.size, "word": it.word,
                 "box": [round(v, 6) for v in it.norm_box(n)]}
                for it in scene.items
            ],
            "split": self.split, "index": index, "seed": self.seed, "image_size": n,
        }
        return {"id": f"synth-{self.split}-s{self.seed}-{index:07d}", "image": image,
                "conversations": conversations, "meta": meta}

    def __iter__(self):
        for i in range(self.size):
            yield self[i]

    def write(self, path, *, key: str | None = None, source: str = "synth", image_dir: str = "images",
              image_format: str = "png", relative_to=None):
        """Write this split in PVIT's directory format; see [pvit_synth.writer.write_pvit][]."""
        from pvit_synth.writer import write_pvit

        return write_pvit(self, path, key=key, source=source, image_dir=image_dir, image_format=image_format,
                          relative_to=relative_to)

    def __repr__(self) -> str:
        return f"SynthRegions({', '.join(f'{k}={v!r}' for k, v in self.options.items())})"


def strip_mentions(text: str) -> str:
    """``text`` without region mentions and without ``<image>``: what a word-level tokenizer sees."""
    return _MENTION.sub(" ", text).replace(IMAGE_TOKEN, " ")
