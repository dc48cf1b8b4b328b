"""pvit built-in plugin: the synth-regions dataset, a seeded procedural region-QA benchmark."""

from __future__ import annotations

import pvit


def make_synth_regions(
    split: str = "train",
    size: int = 1000,
    task="all-region",
    image_size: int = 64,
    seed: int = 0,
    questions_per_sample: int = 1,
    min_objects: int = 3,
    max_objects: int = 5,
    task_weights: dict | None = None,
    shapes: list | None = None,
    colors: list | None = None,
    words_per_image: int | None = None,
    object_size: list | tuple = (8, 24),
    scenes: int | None = None,
):
    """Build the synth-regions dataset: images of 3-5 shapes (and words) with region conversations.

    Options:
        split: "train", "val" or "test"; each split has its own random streams, so the images differ.
        size: number of samples (images); each is generated on demand from (seed, split, index).
        task: a task name, a list of them, or an alias. Region tasks (PVIT stage 2): "recognition"
            (shape word), "attribute" (colour word), "relationship" (left/right, above/below,
            larger/smaller between two regions), "ocr" (the word written in a region), "same-category"
            (yes/no). Stage 1: "caption" (objects left to right), "region-caption" ("a small red circle").
            Aliases: "all-region" (the five region tasks), "all" (every task).
        image_size: side of the square RGB images in pixels (default 64; object sizes scale with it).
        seed: base seed; the same options always give identical samples.
        questions_per_sample: questions per conversation (multi-turn); the last one is the eval reference.
        min_objects, max_objects: shapes per image (3-5 by default).
        task_weights: ``{task: weight}`` for drawing each question's task (default uniform).
        shapes: shape kinds to draw (default circle, square, triangle, cross, diamond; also ring,
            hexagon, star).
        colors: colour names (default red, green, blue, yellow, purple, cyan; also orange, pink).
        words_per_image: words drawn per image (default 1 when "ocr" is a task, else 0).
        object_size: [min, max] side of a shape in pixels at 64 px (default [8, 24]).
        scenes: draw images from a pool of this many scenes (sample i shows scene i mod ``scenes``, with its own
            questions) instead of one scene per sample (default). Datasets with the same ``seed``, ``split``,
            ``image_size``, object and word options share their pool whatever the tasks, so a frozen encoder's
            features of an image can be cached and reused across epochs and stages.

    The dataset also offers ``vocabulary()`` (every word the texts use), ``texts()``, ``scene(i)`` and
    ``write(path)`` (PVIT's directory format).
    """
    from pvit_synth.dataset import SynthRegions

    return SynthRegions(
        split=split, size=size, task=task, image_size=image_size, seed=seed,
        questions_per_sample=questions_per_sample, min_objects=min_objects, max_objects=max_objects,
        task_weights=task_weights, shapes=shapes, colors=colors, words_per_image=words_per_image,
        object_size=object_size, scenes=scenes,
    )


@pvit.hookimpl
def pvit_register_datasets(register):
    register("synth-regions", make_synth_regions)
