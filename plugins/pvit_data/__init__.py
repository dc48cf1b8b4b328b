"""pvit built-in plugin: datasets in their official formats (PVIT instruction data, COCO, GQA, FineEval).

Every dataset is map-style, opens images only in ``__getitem__`` and yields
``{"id", "image" (PIL RGB or None), "conversations": [{"from": "human"|"gpt", "value"}], "meta"}`` with
region mentions written ``<Region><L#><L#><L#><L#></Region>``. For evaluation datasets the last gpt turn is
the reference answer. Options shared by all: ``region_policy`` (``error`` | ``clip`` | ``drop``, see
[pvit.regions][]), ``image_policy`` (``error`` | ``skip``) with ``max_skip_fraction`` (see [pvit.images][]),
and ``root``, the folder relative paths start from (default: the working directory).
"""

import pvit
from pvit.options import LocalPath, LocalPaths


def make_pvit_instruct(
    path: LocalPath,
    image_folder: LocalPath | None = None,
    image_roots: LocalPaths | None = None,
    root: LocalPath | None = None,
    sample_ratio: dict | None = None,
    box_jitter: float = 0.0,
    seed: int = 0,
    region_policy: str = "error",
    image_policy: str = "error",
    max_skip_fraction: float = 0.01,
):
    """PVIT's released training data, read unchanged.

    Options:
        path: a stage folder (``mapping.yaml`` + one JSON array ``<key>.json`` per data key) or one JSON file.
        image_folder: single-file mode only: the folder the records' ``image`` paths are relative to.
        image_roots: ``{source: folder}`` replacing the folders of mapping.yaml's ``image_paths`` (no need
            to edit mapping.yaml).
        root: folder that relative paths (``path`` and the image folders) start from; PVIT resolves them
            against the working directory (its repository root), which is the default.
        sample_ratio: ``{data key: ratio}``; below 1 keeps a seeded subset of ``round(ratio * n)`` records,
            above 1 repeats the key ``floor(ratio)`` times plus a seeded subset for the fraction.
        box_jitter: PVIT's training jitter (0.02 in the paper): each box coordinate moves by
            ``U(-j, j)`` times the box width or height, clipped to the image; deterministic per
            (seed, epoch, sample index): call ``dataset.set_epoch(e)`` each epoch. 0 (default) is off.
        seed: seeds sample_ratio subsets and the jitter.
        region_policy: ``error`` | ``clip`` | ``drop`` for malformed boxes (errors name file, sample, turn, box).
        image_policy, max_skip_fraction: ``error`` | ``skip`` for unusable images, and the bound on skips.

    Records without ``image`` are text-only samples (``image: None``). A leading non-human turn is dropped;
    the others must alternate human/gpt.
    """
    from pvit_data.instruct import PvitInstructDataset

    return PvitInstructDataset(
        path,
        image_folder=image_folder,
        image_roots=image_roots,
        root=root,
        sample_ratio=sample_ratio,
        box_jitter=box_jitter,
        seed=seed,
        region_policy=region_policy,
        image_policy=image_policy,
        max_skip_fraction=max_skip_fraction,
    )


def make_coco_regions(
    annotations: LocalPath,
    image_folder: LocalPath,
    max_samples: int | None = None,
    min_box_area: float = 1.0,
    prompt: str = "<image>\nWhat is the object in {region}?",
    root: LocalPath | None = None,
    region_policy: str = "error",
    image_policy: str = "error",
    max_skip_fraction: float = 0.01,
):
    """Region classification on COCO: one question per ground-truth box, answered by the category name.

    Options:
        annotations: a COCO ``instances_*.json``.
        image_folder: the folder of its images (``file_name`` is relative to it).
        max_samples: keep the first N usable annotations (file order).
        min_box_area: skip boxes of fewer square pixels (default 1: degenerate boxes). Crowd annotations
            (``iscrowd: 1``, one box around a group) are always skipped; ``dataset.stats`` counts both.
        prompt: the human turn; ``{region}`` becomes the PVIT region mention.
        root, region_policy, image_policy, max_skip_fraction: as for every pvit_data dataset.

    ``meta``: dataset, task ("recognition"), answer and category (the name), category_id, image_id, ann_id,
    file_name, box (canonical xyxy).
    """
    from pvit_data.coco import CocoRegionsDataset

    return CocoRegionsDataset(
        annotations,
        image_folder,
        max_samples=max_samples,
        min_box_area=min_box_area,
        prompt=prompt,
        root=root,
        region_policy=region_policy,
        image_policy=image_policy,
        max_skip_fraction=max_skip_fraction,
    )


def make_gqa_regions(
    questions: LocalPath,
    image_folder: LocalPath,
    scene_graphs: LocalPath | None = None,
    boxes: bool = True,
    max_samples: int | None = None,
    prompt: str = "<image>\n{question}\nAnswer the question using a single word or phrase.",
    answer_field: str = "answer",
    shikra_exact: bool = False,
    root: LocalPath | None = None,
    region_policy: str = "error",
    image_policy: str = "error",
    max_skip_fraction: float = 0.01,
):
    """GQA questions with the boxes of the objects they mention (Shikra's "question with boxes" protocol).

    Options:
        questions: a GQA ``*_questions.json`` (``{question id: {imageId, question, answer, annotations}}``).
        image_folder: the GQA images (``<imageId>.jpg``).
        scene_graphs: the split's ``*_sceneGraphs.json``; needed when ``boxes`` is true.
        boxes: insert the boxes of ``annotations.question`` after the annotated words (false: plain questions).
        max_samples: keep the first N questions (file order).
        prompt: the human turn; ``{question}`` becomes the question with its regions. The default is the
            LLaVA-1.5 short-answer prompt.
        answer_field: ``answer`` (short, default) or ``fullAnswer`` as the reference.
        shikra_exact: place regions exactly as Shikra does, glued after the whitespace word including its
            punctuation (``pond?<Region>..``); by default they go before trailing punctuation (``pond <Region>..?``).
        root, region_policy, image_policy, max_skip_fraction: as for every pvit_data dataset.

    ``meta``: dataset, task (GQA structural type: query, verify, logical, choose, compare), category (GQA
    semantic type: obj, attr, cat, rel, global), question_id, image_id, question, answer, full_answer, types,
    boxes (canonical, in mention order).
    """
    from pvit_data.gqa import GqaRegionsDataset

    return GqaRegionsDataset(
        questions,
        image_folder,
        scene_graphs=scene_graphs,
        boxes=boxes,
        max_samples=max_samples,
        prompt=prompt,
        answer_field=answer_field,
        shikra_exact=shikra_exact,
        root=root,
        region_policy=region_policy,
        image_policy=image_policy,
        max_skip_fraction=max_skip_fraction,
    )


def make_fine_eval(
    path: LocalPath,
    image_folder: LocalPath | None = None,
    mode: str = "single",
    use_regions: bool = True,
    root: LocalPath | None = None,
    region_policy: str = "error",
    image_policy: str = "error",
    max_skip_fraction: float = 0.01,
):
    """PVIT's FineEval: open-ended region questions judged by people (no reference answers).

    Options:
        path: ``instructions.jsonl`` (or its folder).
        image_folder: default ``images/`` beside the file.
        mode: ``single`` (default): one sample per line, ``<image>\n`` + instruction, as PVIT's
            ``run_fine_eval.py`` sends them (and as its released outputs were made); consecutive lines about
            the same image are one conversation, named in ``meta`` (conversation_id, turn, history: the
            earlier instructions). ``conversation``: one multi-turn sample per conversation, human turns
            interleaved with empty gpt turns, for a runner that generates turn by turn.
        use_regions: false uses ``instruction_no_region`` (the text-only variant given to LLaVA).
        root, region_policy, image_policy, max_skip_fraction: as for every pvit_data dataset.

    ``meta``: dataset, task, has_reference (False), reference (None), image (file name), instruction (the
    text asked, as PVIT's output files record it), conversation_id, turn, history, lines, turns, instructions,
    instructions_no_region, use_regions.
    """
    from pvit_data.fine_eval import FineEvalDataset

    return FineEvalDataset(
        path,
        image_folder=image_folder,
        mode=mode,
        use_regions=use_regions,
        root=root,
        region_policy=region_policy,
        image_policy=image_policy,
        max_skip_fraction=max_skip_fraction,
    )


@pvit.hookimpl
def pvit_register_datasets(register):
    register("pvit-instruct", make_pvit_instruct)
    register("coco-regions", make_coco_regions)
    register("gqa-regions", make_gqa_regions)
    register("fine-eval", make_fine_eval)
