"""`pvit generate` pieces without a server: converters on files in the real formats, reply validation, recipe errors."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from pvit.errors import RecipeError
from pvit_generate.config import load_generate_recipe
from pvit_generate.converters import convert_gqa, convert_vcr, read_shikra
from pvit_generate.prompting import Prompts, plan_requests, region_text
from pvit_generate.sources import Context, Region
from pvit_generate.validate import Deduper, Rejected, build_conversation, parse_reply

RULES = {"box_tolerance": 0.005, "max_turns": 3, "min_turns": 1, "max_chars": 200, "require_region": True,
         "no_boxes_in_answers": ["ocr"]}
BOXES = [(0.1, 0.2, 0.3, 0.4), (0.5, 0.5, 0.9, 0.9)]


def test_gqa_boxes_follow_the_annotated_words(tmp_path):
    (tmp_path / "q.json").write_text(json.dumps({
        "201": {"imageId": "n1", "question": "Is the cup on the wooden table?", "answer": "yes",
                "fullAnswer": "Yes, the cup is on the table.", "annotations": {"question": {"2": "7", "5:7": "9"}}},
        "202": {"imageId": "n1", "question": "Is the cat big?", "answer": "no",
                "annotations": {"question": {"2": "404"}}}}))
    (tmp_path / "sg.json").write_text(json.dumps({"n1": {"width": 200, "height": 100, "objects": {
        "7": {"name": "cup", "x": 20, "y": 10, "w": 40, "h": 30},
        "9": {"name": "table", "x": 0, "y": 50, "w": 200, "h": 50}}}}))
    out = list(convert_gqa(tmp_path / "q.json", tmp_path / "sg.json"))
    assert out[0][0] == "ok"
    assert out[0][1]["conversations"][0]["value"] == (
        "<image>\nIs the cup <Region><L100><L100><L300><L400></Region> on the wooden table "
        "<Region><L0><L500><L999><L999></Region>?")
    assert out[0][1]["image"] == "n1.jpg" and out[0][1]["conversations"][1]["value"] == "Yes, the cup is on the table."
    assert out[1][0] == "rejected" and out[1][1]["reason"] == "missing-object"


def test_vcr_object_references_become_regions_with_q_a_and_qa_r_turns(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"boxes": [[0, 0, 50, 50, 0.9], [50, 50, 100, 100, 0.8]],
                                                 "width": 100, "height": 100}))
    line = {"annot_id": "val-1", "img_fn": "a.jpg", "metadata_fn": "m.json", "objects": ["person", "dog"],
            "question": ["Why", "is", [0], "smiling", "?"],
            "answer_choices": [["Because", [1], "is", "cute", "."], ["No", "."]], "answer_label": 0,
            "rationale_choices": [[[0, 1], "are", "playing", "."]], "rationale_label": 0}
    bad = dict(line, annot_id="val-2", question=["Who", "is", [5], "?"])
    (tmp_path / "v.jsonl").write_text(json.dumps(line) + "\n" + json.dumps(bad) + "\n")
    out = list(convert_vcr(tmp_path / "v.jsonl", tmp_path))
    conv = out[0][1]["conversations"]
    assert conv[0]["value"] == "<image>\nWhy is person <Region><L0><L0><L500><L500></Region> smiling?"
    assert conv[1]["value"] == "Because dog <Region><L500><L500><L999><L999></Region> is cute."
    assert conv[3]["value"].startswith("person <Region><L0><L0><L500><L500></Region> and dog <Region>")
    assert [t["from"] for t in conv] == ["human", "gpt", "human", "gpt"]
    assert out[1][0] == "rejected" and out[1][1]["reason"] == "bad-annotation"


def test_shikra_jsonl_boxes_seq_fill_the_placeholders(tmp_path):
    Image.new("RGB", (200, 100)).save(tmp_path / "x.jpg")
    recs = [{"img_path": "x.jpg", "boxes": [[0, 0, 100, 50], [100, 50, 200, 100]],
             "sentence": "<ph_st>A man<ph_ed><boxes> walks <ph_st>a dog<ph_ed><boxes>.", "boxes_seq": [[0], [1]]},
            {"img_path": "x.jpg", "boxes": [[0, 0, 100, 50]], "question": "What is <boxes>?", "answer": "a man",
             "question_boxes_seq": [[0]], "answer_boxes_seq": []},
            {"img_path": "x.jpg", "boxes": [[0, 0, 10, 10]], "sentence": "A <boxes> <boxes>", "boxes_seq": [[0]]}]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = list(read_shikra(tmp_path / "s.jsonl", tmp_path))
    assert out[0][1]["conversations"][1]["value"] == (
        "A man <Region><L0><L0><L500><L500></Region> walks a dog <Region><L500><L500><L999><L999></Region>.")
    assert out[1][1]["conversations"][0]["value"] == "<image>\nWhat is <Region><L0><L0><L500><L500></Region>?"
    assert out[2][0] == "rejected" and "placeholders" in out[2][1]["detail"]


def _reply(*turns) -> str:
    return json.dumps({"conversations": [{"question": q, "answer": a} for q, a in turns]})


def _check(text, task="attributes", finish="stop"):
    return build_conversation(parse_reply(text, finish), BOXES, task, RULES)


def test_boxes_within_tolerance_are_snapped_to_the_input_box_and_converted():
    conv = _check(_reply((f"What colour is <Region>[0.104, 0.200, 0.300, 0.396]</Region>?", "red")))
    assert conv[0]["value"] == "<image>\nWhat colour is <Region><L100><L200><L300><L400></Region>?"
    assert conv[1] == {"from": "gpt", "value": "red"}


@pytest.mark.parametrize("text,task,finish,reason", [
    (_reply(("What is <Region>[0.106, 0.2, 0.3, 0.4]</Region>?", "x")), "attributes", "stop", "invented-box"),
    (_reply(("What is [0.5, 0.5, 0.7, 0.7]?", "x")), "attributes", "stop", "invented-box"),
    (_reply(("Read <Region>[0.1, 0.2, 0.3, 0.4]</Region>", "at <Region>[0.5, 0.5, 0.9, 0.9]</Region>")), "ocr",
     "stop", "box-in-answer"),
    (_reply(("What is <Region>[0.1, 0.2]</Region>?", "x")), "attributes", "stop", "malformed-box"),
    (_reply(("What is this?", "x")), "attributes", "stop", "no-region-in-question"),
    (_reply(*[(f"Q{i} <Region>[0.1, 0.2, 0.3, 0.4]</Region>", "a") for i in range(4)]), "attributes", "stop",
     "too-many-turns"),
    (_reply(("Q <Region>[0.1, 0.2, 0.3, 0.4]</Region>", "a" * 201)), "attributes", "stop", "too-long"),
    (_reply(("Q <Region>[0.1, 0.2, 0.3, 0.4]</Region>", "I'm sorry, I cannot help.")), "attributes", "stop",
     "refusal"),
    ("I'm sorry, but I can't do that.", "attributes", "stop", "refusal"),
    ('{"conversations": [{"question": "Q"', "attributes", "length", "truncated"),
    ('{"conversations": [{"question": "Q", }', "attributes", "stop", "malformed-json"),
    ('{"conversations": [{"question": "Q"}]}', "attributes", "stop", "bad-structure"),
])
def test_each_rule_rejects_with_its_reason(text, task, finish, reason):
    with pytest.raises(Rejected) as e:
        _check(text, task, finish)
    assert e.value.reason == reason


def test_code_fenced_replies_parse():
    assert parse_reply("```json\n" + _reply(("q", "a")) + "\n```", "stop") == [("q", "a")]


def test_exact_and_near_duplicates_are_dropped():
    d = Deduper(0.8)
    conv = _check(_reply(("What colour is the big thing in <Region>[0.1, 0.2, 0.3, 0.4]</Region> today?", "red")))
    d.check_and_add("a.jpg", conv)
    with pytest.raises(Rejected, match="duplicate"):
        d.check_and_add("b.jpg", conv)
    near = _check(_reply(("what colour is the big thing in <Region>[0.1, 0.2, 0.3, 0.4]</Region> today ?", "red!")))
    with pytest.raises(Rejected) as e:
        d.check_and_add("a.jpg", near)
    assert e.value.reason == "near-duplicate"
    d.check_and_add("b.jpg", near)  # another image: not a near duplicate


def test_same_seed_plans_the_same_requests(tmp_path):
    (tmp_path / "p.txt").write_text("Write questions.")
    (tmp_path / "s.json").write_text(json.dumps({"ocr": [{"context": f"c{i}", "reply": {"i": i}} for i in range(5)]}))
    prompts = Prompts({"system": {"default": "p.txt"}, "seeds": "s.json", "shots": 2}, tmp_path, ["ocr"])
    ctxs = [Context(f"c{i}", "x.png", ["cap"], [Region(BOXES[0], "sign", text="HI")]) for i in range(3)]
    a = [(r.id, r.messages, r.seed) for r in plan_requests(ctxs, ["ocr"], prompts, seed=3)]
    b = [(r.id, r.messages, r.seed) for r in plan_requests(ctxs, ["ocr"], prompts, seed=3)]
    c = [(r.id, r.messages, r.seed) for r in plan_requests(ctxs, ["ocr"], prompts, seed=4)]
    assert a == b and a != c
    assert region_text(BOXES[0]) in a[0][1][-1]["content"] and "<Region>[0.100, 0.200, 0.300, 0.400]</Region>" in \
        a[0][1][-1]["content"]


def test_recipe_errors_name_the_key_and_suggest(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("generate:\n  name: x\n  strategy: task-specifc\n  output: o\n  sources: [{name: coco}]\n"
                 "  requets: {}\n  tasks: [ocrr]\n")
    with pytest.raises(RecipeError) as e:
        load_generate_recipe(p)
    msg = str(e.value)
    assert "generate.requets: unknown key; did you mean 'requests'?" in msg
    p.write_text("generate:\n  name: x\n  strategy: task-specifc\n  output: o\n  sources: [{name: coco}]\n"
                 "  tasks: [ocrr]\n")
    msg = str(pytest.raises(RecipeError, load_generate_recipe, p).value)
    assert "generate.strategy: unknown strategy 'task-specifc'; did you mean 'task-specific'?" in msg
    assert "generate.tasks[0]: unknown task 'ocrr'; did you mean 'ocr'?" in msg
