"""Tests of the built-in evaluators with hand-made predictions whose accuracy is known."""

from __future__ import annotations

import json

import pytest

import pvit
from pvit.errors import ComponentOptionError, DataError
from pvit.interfaces import Evaluator
from pvit_evaluators.normalize import normalize_answer
from pvit_evaluators.synonyms import COCO_SYNONYMS, categories_in, names_of, plural, synonym_match

EVALUATORS = ("synth-regions", "region-recognition", "region-qa", "fine-eval")


def rec(i, prediction, answer, **meta):
    return {"id": str(i), "prompt": "<image>\nq", "prediction": prediction, "answer": answer, "meta": meta}


@pytest.mark.parametrize("name", EVALUATORS)
def test_registered_with_interface_and_protocol(name):
    ev = pvit.build("evaluator", name)
    assert isinstance(ev, Evaluator)
    assert ev.name == name and ev.max_new_tokens >= 1 and set(ev.data) == {"name", "options"}
    out = ev.score([rec(0, "dog", "dog", task="recognition", category="dog", image="0.jpg")])
    assert set(out) == {"metrics", "records", "protocol"}
    assert {"template", "coordinate_format", "matcher"} <= set(out["protocol"])
    assert out["protocol"]["template"] is None  # filled in by the core
    json.dumps(out)  # results are written as JSON


def test_synth_accuracy_per_task():
    shapes = {"shapes": ["circle", "star"]}
    ev = pvit.build("evaluator", "synth-regions", size=40, image_size=96, dataset_options=shapes)
    assert ev.data == {"name": "synth-regions", "options": {
        "split": "test", "size": 40, "task": "all-region", "image_size": 96, "seed": 0, "questions_per_sample": 1,
        "min_objects": 3, "max_objects": 5, "shapes": ["circle", "star"]}}
    records = (
        [rec(i, p, "circle", task="recognition", num_choices=5)
         for i, p in enumerate(["Circle.", "circle", "a circle", "square"])]
        + [rec(10 + i, p, "red", task="attribute", num_choices=6) for i, p in enumerate(["red", "blue"])]
        + [rec(20, "Yes", "yes", task="same-category", num_choices=2)]
    )
    out = ev.score(records)
    m = out["metrics"]
    assert m["accuracy/recognition"] == 0.75 and m["count/recognition"] == 4
    assert m["accuracy/attribute"] == 0.5 and m["accuracy/same-category"] == 1.0
    assert m["accuracy"] == pytest.approx(5 / 7) and m["accuracy_macro"] == pytest.approx((0.75 + 0.5 + 1) / 3)
    assert m["chance/recognition"] == pytest.approx(0.2) and m["chance/attribute"] == pytest.approx(1 / 6)
    assert [r["correct"] for r in out["records"]] == [True, True, True, False, True, False, True]
    assert out["records"][0]["id"] == "0" and out["records"][0]["task"] == "recognition"


def test_synth_evaluator_scores_dataset_references():
    """The dataset named in ``data`` builds, and its own references score 100%."""
    ev = pvit.build("evaluator", "synth-regions", size=25)
    ds = pvit.build("dataset", ev.data["name"], **ev.data["options"])
    records = [{"id": s["id"], "prediction": s["conversations"][-1]["value"], "answer": s["meta"]["answer"],
                "meta": s["meta"]} for s in ds]
    m = ev.score(records)["metrics"]
    assert m["accuracy"] == 1.0 and m["count"] == 25 and len([k for k in m if k.startswith("accuracy/")]) >= 3


@pytest.mark.parametrize(
    "text, expected",
    [(" The Two dogs.", "2 dogs"), ("A red-circle!", "red circle"), ("Man's hat", "mans hat"), ("1.5", "1.5"),
     ("  YES  ", "yes"), ("an apple, the pear", "apple pear"), (None, ""), ("ten", "10"), ("them", "them")],
)
def test_normalisation(text, expected):
    assert normalize_answer(text) == expected


def test_region_qa_gqa_normalisation_and_groups():
    ev = pvit.build("evaluator", "region-qa", dataset_options={"split": "testdev"})
    assert ev.data == {"name": "gqa-regions", "options": {"split": "testdev"}}
    out = ev.score([
        rec(0, "The table.", "table", task="object"),
        rec(1, "two", "2", task="count"),
        rec(2, "It is a table", "table", task="object"),
        rec(3, "Left", "left", task="relation"),
    ])
    m = out["metrics"]
    assert m["accuracy"] == 0.75
    assert m["accuracy/object"] == 0.5 and m["accuracy/count"] == 1.0 and m["count/object"] == 2
    assert "GQA" in out["protocol"]["matcher"] and out["protocol"]["group_by"] == "task"


def test_region_recognition_exact_and_synonym():
    ev = pvit.build("evaluator", "region-recognition", dataset_options={"split": "val2017"})
    assert ev.data["name"] == "coco-regions" and ev.data["options"] == {"split": "val2017"}
    out = ev.score([
        rec(0, "person", "person", category="person"),
        rec(1, "A man.", "person", category="person"),
        rec(2, "puppies", "dog", category="dog"),
        rec(3, "cat", "dog", category="dog"),
        rec(4, "a man riding a horse", "person", category="person"),
        rec(5, "Television", "tv"),  # category from the answer when meta has none
    ])
    m = out["metrics"]
    assert m["accuracy/exact"] == pytest.approx(1 / 6)
    assert m["accuracy/synonym"] == pytest.approx(4 / 6) and m["accuracy"] == m["accuracy/synonym"]
    assert m["accuracy/synonym/person"] == pytest.approx(2 / 3) and m["accuracy/exact/person"] == pytest.approx(1 / 3)
    assert m["accuracy/synonym/dog"] == 0.5 and m["count/dog"] == 2 and m["accuracy/synonym/tv"] == 1.0
    exact = pvit.build("evaluator", "region-recognition", primary="exact").score(out["records"][:2])
    assert exact["metrics"]["accuracy"] == 0.5
    with pytest.raises(ComponentOptionError, match="primary"):
        pvit.build("evaluator", "region-recognition", primary="fuzzy")


def test_coco_synonym_table():
    assert len(COCO_SYNONYMS) == 80
    owner = {}
    for cat in COCO_SYNONYMS:
        for name in names_of(cat):
            assert owner.setdefault(name, cat) == cat, f"{name!r} names both {owner[name]!r} and {cat!r}"
    assert plural("wine glass") == "wine glasses" and plural("knife") == "knives" and plural("bus") == "buses"
    assert plural("sheep") == "sheep" and plural("person") == "people" and plural("strawberry") == "strawberries"
    assert synonym_match("hot dogs", "hot dog") and not synonym_match("hot dog", "dog")
    assert synonym_match("a teddy", "teddy bear") and not synonym_match("teddy bear", "bear")
    assert categories_in("a microwave oven next to a fridge") == {"microwave", "refrigerator"}
    assert synonym_match("it is a sofa", "couch") and not synonym_match("", "couch")
    assert synonym_match("unicorns", "unicorn") and not synonym_match("a unicorn and a dog", "unicorn")


def test_fine_eval_output_records_and_jsonl(tmp_path):
    ev = pvit.build("evaluator", "fine-eval", output_name="tiny")
    out = ev.score([
        {"id": "a", "prompt": "<image>\nWhat is in <Region><L1><L2><L30><L40></Region>?", "prediction": " A cat. ",
         "answer": None, "meta": {"image": "0000.jpg"}},
        {"id": "b", "prompt": "ignored", "prediction": "", "answer": None,
         "meta": {"image": "0001.jpg", "instruction": "Describe <Region><L1><L2><L30><L40></Region>."}},
    ])
    assert out["records"] == [
        {"image": "0000.jpg", "instruction": "What is in <Region><L1><L2><L30><L40></Region>?", "output": "A cat."},
        {"image": "0001.jpg", "instruction": "Describe <Region><L1><L2><L30><L40></Region>.", "output": ""},
    ]
    assert out["metrics"] == {"count": 2.0, "empty": 1.0, "mean_output_words": 1.0}
    assert out["protocol"]["output_file"] == "tiny.jsonl" and "accuracy" not in out["metrics"]
    path = ev.write(out["records"], tmp_path / "eval" / "tiny.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == out["records"]
    assert list(json.loads(lines[0])) == ["image", "instruction", "output"]


def test_bad_records_name_the_record():
    ev = pvit.build("evaluator", "synth-regions")
    with pytest.raises(DataError, match=r"record 1 \(id 'x'\) lacks prediction"):
        ev.score([rec(0, "a", "a"), {"id": "x", "answer": "a"}])
    empty = ev.score([])
    assert empty["metrics"]["accuracy"] == 0.0 and empty["records"] == []


@pytest.mark.parametrize("name", ["synth-regions", "region-recognition", "region-qa", "fine-eval"])
def test_decoding_options_are_recipe_options(name):
    from pvit.evaluate import generation_options

    ev = pvit.build("evaluator", name, generation={"do_sample": True, "temperature": 0.7, "batch_size": 4})
    opts = generation_options(ev)
    assert opts["do_sample"] is True and opts["temperature"] == 0.7 and opts["batch_size"] == 4
    assert generation_options(pvit.build("evaluator", name))["do_sample"] is False
    bad = pvit.build("evaluator", name, generation={"temprature": 0.7})
    with pytest.raises(ValueError, match="temprature"):
        generation_options(bad)
