"""pvit built-in plugin: evaluators (synth-regions, region-recognition, region-qa, fine-eval)."""

from __future__ import annotations

from typing import Annotated

import pvit
from pvit.options import NestedOptions

#: Options of the dataset the ``dataset`` option names; its file options are checked before a run starts.
DatasetOptions = Annotated[dict, NestedOptions("dataset", name_option="dataset")]


def make_synth_regions_eval(
    split: str = "test",
    size: int = 500,
    task="all-region",
    image_size: int = 64,
    seed: int = 0,
    questions_per_sample: int = 1,
    min_objects: int = 3,
    max_objects: int = 5,
    dataset_options: Annotated[dict | None, NestedOptions("dataset", name="synth-regions")] = None,
    max_new_tokens: int = 5,
    generation: dict | None = None,
):
    """Exact-match accuracy per task on the ``synth-regions`` dataset.

    Options:
        split, size, task, image_size, seed, questions_per_sample, min_objects, max_objects: forwarded to
            the ``synth-regions`` dataset (test split, 500 images, the five region tasks, 64 px by default).
        dataset_options: further ``synth-regions`` options (e.g. ``shapes``, ``colors``, ``object_size``).
        max_new_tokens: generation budget per question (answers are one word).
        generation: decoding options ``{do_sample, temperature, top_p, seed, batch_size}`` (greedy by default).
    """
    from pvit_evaluators.synth import SynthRegionsEvaluator

    options = {
        "split": split, "size": size, "task": task, "image_size": image_size, "seed": seed,
        "questions_per_sample": questions_per_sample, "min_objects": min_objects, "max_objects": max_objects,
        **dict(dataset_options or {}),
    }
    ev = SynthRegionsEvaluator("synth-regions", {"name": "synth-regions", "options": options}, max_new_tokens)
    ev.generation = dict(generation or {})
    return ev


def make_region_recognition(
    dataset: str = "coco-regions",
    dataset_options: DatasetOptions | None = None,
    max_new_tokens: int = 16,
    generation: dict | None = None,
    primary: str = "synonym",
):
    """Region recognition accuracy (exact and COCO-synonym matchers), overall and per category.

    Options:
        dataset: the dataset to generate on (default ``coco-regions``); its samples' reference is the
            category name (``meta["category"]`` when present, else the last assistant turn).
        dataset_options: that dataset's options, passed through unchanged.
        max_new_tokens: generation budget per question.
        generation: decoding options ``{do_sample, temperature, top_p, seed, batch_size}`` (greedy by default).
        primary: the matcher reported as ``accuracy``: "synonym" (default) or "exact".
    """
    from pvit_evaluators.recognition import RegionRecognitionEvaluator

    data = {"name": dataset, "options": dict(dataset_options or {})}
    ev = RegionRecognitionEvaluator("region-recognition", data, max_new_tokens, primary=primary)
    ev.generation = dict(generation or {})
    return ev


def make_region_qa(
    dataset: str = "gqa-regions",
    dataset_options: DatasetOptions | None = None,
    max_new_tokens: int = 16,
    generation: dict | None = None,
    group_by: str = "task",
):
    """Region question answering: exact match after GQA-style normalisation.

    Options:
        dataset: the dataset to generate on (default ``gqa-regions``).
        dataset_options: that dataset's options, passed through unchanged.
        max_new_tokens: generation budget per question.
        generation: decoding options ``{do_sample, temperature, top_p, seed, batch_size}`` (greedy by default).
        group_by: ``meta`` key whose values get their own accuracy (default "task").
    """
    from pvit_evaluators.region_qa import RegionQAEvaluator

    data = {"name": dataset, "options": dict(dataset_options or {})}
    ev = RegionQAEvaluator("region-qa", data, max_new_tokens, group_by=group_by)
    ev.generation = dict(generation or {})
    return ev


def make_fine_eval(
    dataset: str = "fine-eval",
    dataset_options: DatasetOptions | None = None,
    max_new_tokens: int = 512,
    generation: dict | None = None,
    output_name: str = "pvit",
):
    """Collect answers to PVIT's fine-grained instructions as ``{image, instruction, output}`` JSONL.

    No accuracy: ``score`` returns counts and the output records; the core writes them to
    ``protocol["output_file"]`` (``<output_name>.jsonl``) with the evaluator's ``write(records, path)``.

    Options:
        dataset: the dataset of instructions (default ``fine-eval``: PVIT's ``fine_eval/instructions.jsonl``).
        dataset_options: that dataset's options, passed through unchanged.
        max_new_tokens: generation budget per instruction.
        generation: decoding options ``{do_sample, temperature, top_p, seed, batch_size}`` (greedy by default).
        output_name: stem of the output file, as in PVIT's ``pvit.jsonl`` / ``llava.jsonl``.
    """
    from pvit_evaluators.fine_eval import FineEvalEvaluator

    data = {"name": dataset, "options": dict(dataset_options or {})}
    ev = FineEvalEvaluator("fine-eval", data, max_new_tokens, output_name=output_name)
    ev.generation = dict(generation or {})
    return ev


@pvit.hookimpl
def pvit_register_evaluators(register):
    register("synth-regions", make_synth_regions_eval)
    register("region-recognition", make_region_recognition)
    register("region-qa", make_region_qa)
    register("fine-eval", make_fine_eval)
