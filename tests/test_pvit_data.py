"""pvit_data datasets read small files written in the official formats (PVIT, COCO, GQA, FineEval)."""

from __future__ import annotations

import inspect
import json
import re

import pytest
from PIL import Image

import pvit
import pvit_data
from pvit.errors import DataError, InvalidRegionError
from pvit.regions import find_mentions, format_pvit, from_coco_xywh
from pvit_data.coco import DEFAULT_PROMPT as COCO_PROMPT
from pvit_data.gqa import DEFAULT_PROMPT as GQA_PROMPT
from pvit_data.gqa import insert_regions
from pvit_data.jitter import jitter_box, sample_rng

R1 = "<Region><L204><L469><L810><L960></Region>"
R2 = "<Region><L100><L200><L300><L400></Region>"
B1, B2 = (0.204, 0.469, 0.81, 0.96), (0.1, 0.2, 0.3, 0.4)


def _img(path, size=(20, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 200, 30)).save(path)
    return path


def _conv(*values, first="human"):
    roles = ["human", "gpt"] if first == "human" else ["gpt", "human"]
    return [{"from": roles[i % 2], "value": v} for i, v in enumerate(values)]


def _stage(tmp_path, records: dict, bbox=None, image_paths=None, sources=None):
    """A PVIT stage folder: mapping.yaml + <key>.json, images under tmp_path/<source>_images."""
    stage = tmp_path / "stage"
    stage.mkdir()
    sources = sources or {k: "coco2017" for k in records}
    image_paths = image_paths or {s: f"data/{s}_images" for s in set(sources.values())}
    lines = ["image_paths:"] + [f"  {s}: {d}" for s, d in image_paths.items()]
    lines += ["mapping:"] + [f"  {k}: {s}" for k, s in sources.items()]
    if bbox:
        lines += ["bbox:"] + [f"  {k}: {v}" for k, v in bbox.items()]
    lines += ["count:"] + [f"  {k}: {len(v)}" for k, v in records.items()]
    (stage / "mapping.yaml").write_text("\n".join(lines) + "\n")
    for key, recs in records.items():
        (stage / f"{key}.json").write_text(json.dumps(recs))
    for s, d in image_paths.items():
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    return stage


def _boxes(sample):
    return [m.box for t in sample["conversations"] for m in find_mentions(t["value"])]


def _rec(image, *values, **extra):
    rec = {"conversations": _conv(*values), **extra}
    if image is not None:
        rec["image"] = image
    return rec


# ------------------------------------------------------------------------------------------ pvit-instruct


def test_stage_folder_samples_and_boxes(tmp_path):
    _img(tmp_path / "data/coco2017_images/a.jpg")
    _img(tmp_path / "data/vg_images/sub/b.png", size=(8, 8))
    recs = {
        "small_objects": [
            _rec("a.jpg", f"<image>\nWhat is in {R1}?", "A dog.", id="x1"),
            {"image": "a.jpg", "conversations": _conv("sys", f"<image>\nAnd {R2} and {R1}?", "Two.", first="gpt")},
        ],
        "vg_regions": [_rec("sub/b.png", "<image>\nDescribe.", "Green.")],
    }
    stage = _stage(tmp_path, recs, sources={"small_objects": "coco2017", "vg_regions": "vg"})
    ds = pvit.build("dataset", "pvit-instruct", path=str(stage), root=str(tmp_path))
    assert len(ds) == 3 and ds.counts() == {"small_objects": 2, "vg_regions": 1}
    s0 = ds[0]
    assert s0["id"] == "small_objects/0" and s0["image"].size == (20, 10) and s0["image"].mode == "RGB"
    assert s0["conversations"] == _conv(f"<image>\nWhat is in {R1}?", "A dog.")
    assert s0["meta"]["record_id"] == "x1" and s0["meta"]["source"] == "small_objects"
    assert _boxes(s0) == [B1]
    s1 = ds[1]  # the leading gpt turn is dropped
    assert [t["from"] for t in s1["conversations"]] == ["human", "gpt"]
    assert _boxes(s1) == [B2, B1]
    assert ds[2]["image"].size == (8, 8) and ds[-1]["id"] == "vg_regions/0"
    with pytest.raises(IndexError):
        ds[3]


def test_bbox_section_loads_only_input_keys(tmp_path):
    recs = {k: [_rec(None, "hi", "hello")] for k in ("a", "b", "c")}
    stage = _stage(tmp_path, recs, bbox={"a": "input", "b": "output", "c": "neither"})
    ds = pvit_data.make_pvit_instruct(str(stage), root=str(tmp_path))
    assert ds.counts() == {"a": 1}


def test_image_roots_override_and_root(tmp_path, monkeypatch):
    recs = {"k": [_rec("x.png", "<image>\nq", "a")]}
    stage = _stage(tmp_path, recs)
    _img(tmp_path / "elsewhere/x.png", size=(5, 7))
    monkeypatch.chdir(tmp_path / "stage")  # relative dirs would resolve against the CWD without root
    with pytest.raises(DataError, match="image_roots"):
        pvit_data.make_pvit_instruct(str(stage))
    ds = pvit_data.make_pvit_instruct(str(stage), image_roots={"coco2017": "elsewhere"}, root=str(tmp_path))
    assert ds[0]["image"].size == (5, 7)
    ds = pvit_data.make_pvit_instruct(str(stage), image_roots={"coco2017": str(tmp_path / "elsewhere")})
    assert ds[0]["image"].size == (5, 7)
    with pytest.raises(DataError, match=r"unknown source.*'vg'.*coco2017"):
        pvit_data.make_pvit_instruct(str(stage), image_roots={"vg": "elsewhere"}, root=str(tmp_path))


def test_sample_ratio_counts_and_determinism(tmp_path):
    recs = {"a": [_rec(None, f"q{i}", "x") for i in range(10)], "b": [_rec(None, f"r{i}", "y") for i in range(4)]}
    stage = _stage(tmp_path, recs)
    ds = pvit_data.make_pvit_instruct(str(stage), root=str(tmp_path), sample_ratio={"a": 0.5, "b": 2.5}, seed=3)
    assert ds.counts() == {"a": 5, "b": 10} and len(ds) == 15

    def picked(d):
        return [d[i]["id"] for i in range(len(d))]

    first = picked(ds)
    assert len(set(first[:5])) == 5
    assert sorted(set(first[5:])) == [f"b/{i}" for i in range(4)]  # 2 full passes + 2 extra
    again = pvit_data.make_pvit_instruct(str(stage), root=str(tmp_path), sample_ratio={"a": 0.5, "b": 2.5}, seed=3)
    assert picked(again) == first
    other = pvit_data.make_pvit_instruct(str(stage), root=str(tmp_path), sample_ratio={"a": 0.5}, seed=4)
    assert picked(other)[:5] != first[:5] and other.counts() == {"a": 5, "b": 4}
    zero = pvit_data.make_pvit_instruct(str(stage), root=str(tmp_path), sample_ratio={"a": 0})
    assert zero.counts() == {"a": 0, "b": 4}
    with pytest.raises(DataError, match="unknown key"):
        pvit_data.make_pvit_instruct(str(stage), root=str(tmp_path), sample_ratio={"zz": 0.5})
    with pytest.raises(DataError, match=">= 0"):
        pvit_data.make_pvit_instruct(str(stage), root=str(tmp_path), sample_ratio={"a": -1})


def test_box_jitter_bounds_and_determinism(tmp_path):
    _img(tmp_path / "data/coco2017_images/a.png")
    big = "<Region><L100><L200><L700><L900></Region>"
    edge = "<Region><L0><L0><L500><L1000></Region>".replace("<L1000>", "<L999>")
    recs = {"k": [_rec("a.png", f"<image>\n{big} {edge}", f"see {big}")] * 3}
    stage = _stage(tmp_path, recs)
    j = 0.1
    ds = pvit_data.make_pvit_instruct(str(stage), root=str(tmp_path), box_jitter=j, seed=7)
    orig = [(0.1, 0.2, 0.7, 0.9), (0.0, 0.0, 0.5, 0.999), (0.1, 0.2, 0.7, 0.9)]
    seen = set()
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            got = _boxes(ds[i])
            assert got == _boxes(ds[i])  # deterministic per (seed, epoch, index)
            seen.add(tuple(got))
            for b, o in zip(got, orig):
                w, h = o[2] - o[0], o[3] - o[1]
                for v, ov, size in zip(b, o, (w, h, w, h)):
                    assert abs(v - ov) <= j * size + 0.0005 + 1e-9
                    assert 0.0 <= v <= 0.999
    assert len(seen) == 9  # every (epoch, index) differs
    again = pvit_data.make_pvit_instruct(str(stage), root=str(tmp_path), box_jitter=j, seed=7)
    again.set_epoch(2)
    assert _boxes(again[1]) == _boxes(ds[1])
    plain = pvit_data.make_pvit_instruct(str(stage), root=str(tmp_path))
    assert _boxes(plain[0]) == orig
    with pytest.raises(DataError, match="box_jitter"):
        pvit_data.make_pvit_instruct(str(stage), root=str(tmp_path), box_jitter=0.6)


def test_jitter_box_never_exceeds_its_bound():
    rng = sample_rng(0, 0, 0)
    for _ in range(200):
        b = jitter_box((0.2, 0.3, 0.4, 0.9), 0.02, rng)
        assert all(abs(v - o) <= 0.02 * s + 1e-12 for v, o, s in zip(b, (0.2, 0.3, 0.4, 0.9), (0.2, 0.6, 0.2, 0.6)))


def test_text_only_records_pass_through(tmp_path):
    recs = {"k": [_rec(None, "What is 2+2?", "4."), _rec(None, "<image>\nq", "a"), _rec(None, f"in {R1}?", "a")]}
    stage = _stage(tmp_path, recs)
    ds = pvit_data.make_pvit_instruct(str(stage), root=str(tmp_path))
    s = ds[0]
    assert s["image"] is None and s["conversations"] == _conv("What is 2+2?", "4.") and s["meta"]["image_path"] is None
    with pytest.raises(DataError, match="<image> placeholder"):
        ds[1]
    with pytest.raises(DataError, match="region mention"):
        ds[2]


def test_bad_boxes_raise_naming_file_sample_and_box(tmp_path):
    _img(tmp_path / "data/coco2017_images/a.png")
    bad_order = "<Region><L900><L100><L200><L300></Region>"
    recs = {"k": [_rec("a.png", "<image>\nfine", "ok"), _rec("a.png", f"<image>\n{R1} and {bad_order}", "x"),
                  _rec("a.png", "<image>\nq", "<Region><L10><L10><L1500><L20></Region>")]}
    stage = _stage(tmp_path, recs)
    ds = pvit_data.make_pvit_instruct(str(stage), root=str(tmp_path))
    assert ds[0]["id"] == "k/0"
    with pytest.raises(InvalidRegionError) as e:
        ds[1]
    msg = str(e.value)
    assert str(stage / "k.json") in msg and "sample 1" in msg and "box 1" in msg and "<L900>" in msg
    with pytest.raises(InvalidRegionError, match=r"sample 2 turn 1, box 0.*<L1500>"):
        ds[2]
    with pytest.raises(InvalidRegionError, match="sample 1"):
        ds.validate()
    dropped = pvit_data.make_pvit_instruct(str(stage), root=str(tmp_path), region_policy="drop")
    s1 = dropped[1]
    assert _boxes(s1) == [B1] and "the region" in s1["conversations"][0]["value"]
    assert dropped.report()["regions"]["dropped"] == 1


def test_non_alternating_turns_raise(tmp_path):
    two_human = {"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}
    recs = {"k": [_rec(None, "hi", "hello"), two_human, {"conversations": [{"from": "user", "value": "a"}]}]}
    stage = _stage(tmp_path, recs)
    ds = pvit_data.make_pvit_instruct(str(stage), root=str(tmp_path))
    with pytest.raises(DataError) as e:
        ds[1]
    assert str(stage / "k.json") in str(e.value) and "sample 1" in str(e.value) and "alternate" in str(e.value)
    with pytest.raises(DataError, match="sample 2: turn 0 is from 'user'"):
        ds[2]


def test_missing_image_names_path_and_sample(tmp_path):
    recs = {"k": [_rec("gone.jpg", "<image>\nq", "a")]}
    stage = _stage(tmp_path, recs)
    ds = pvit_data.make_pvit_instruct(str(stage), root=str(tmp_path))
    with pytest.raises(DataError) as e:
        ds[0]
    msg = str(e.value)
    assert str(tmp_path / "data/coco2017_images/gone.jpg") in msg and "k/0" in msg and "not found" in msg


def test_skip_policy_substitutes_next_sample_and_reports(tmp_path):
    for i in (0, 2, 3):
        _img(tmp_path / f"data/coco2017_images/{i}.png")
    recs = {"k": [_rec(f"{i}.png", "<image>\nq", "a") for i in range(4)]}
    stage = _stage(tmp_path, recs)
    ds = pvit_data.make_pvit_instruct(str(stage), root=str(tmp_path), image_policy="skip", max_skip_fraction=0.25)
    s = ds[1]
    assert s["id"] == "k/2" and s["meta"]["substituted_for"] == "k/1"
    rep = ds.report()["images"]
    assert rep["skipped_ids"] == ["k/1"] and rep["reasons"] == {"missing": 1}
    strict = pvit_data.make_pvit_instruct(str(stage), root=str(tmp_path), image_policy="skip", max_skip_fraction=0.0)
    with pytest.raises(DataError, match="too many unusable images"):
        strict[1]


def test_single_file_mode(tmp_path):
    _img(tmp_path / "imgs/a.png")
    f = tmp_path / "train.json"
    f.write_text(json.dumps([_rec("a.png", f"<image>\n{R2}", "b"), _rec(None, "t", "u")]))
    ds = pvit.build("dataset", "pvit-instruct", path=str(f), image_folder=str(tmp_path / "imgs"))
    assert len(ds) == 2 and ds[0]["id"] == "train/0" and ds[0]["image"].size == (20, 10) and ds[1]["image"] is None
    with pytest.raises(DataError, match="set image_folder"):
        pvit_data.make_pvit_instruct(str(f))
    with pytest.raises(DataError, match="not found"):
        pvit_data.make_pvit_instruct(str(tmp_path / "nope.json"))


# ------------------------------------------------------------------------------------------ coco-regions


def _coco(tmp_path, size=(40, 20)):
    _img(tmp_path / "val/1.jpg", size=size)
    _img(tmp_path / "val/2.jpg", size=(10, 10))
    data = {
        "images": [{"id": 1, "file_name": "1.jpg", "width": 40, "height": 20},
                   {"id": 2, "file_name": "2.jpg", "width": 10, "height": 10}],
        "categories": [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 101, "image_id": 1, "category_id": 18, "bbox": [4, 2, 20, 10], "area": 200, "iscrowd": 0},
            {"id": 102, "image_id": 1, "category_id": 3, "bbox": [0, 0, 40, 20], "area": 800, "iscrowd": 1},
            {"id": 103, "image_id": 2, "category_id": 3, "bbox": [1, 1, 0.5, 1], "area": 0.5, "iscrowd": 0},
            {"id": 104, "image_id": 2, "category_id": 3, "bbox": [2, 2, 6, 8], "area": 48, "iscrowd": 0},
        ],
    }
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_regions_one_question_per_box(tmp_path):
    ann = _coco(tmp_path)
    ds = pvit.build("dataset", "coco-regions", annotations=str(ann), image_folder=str(tmp_path / "val"))
    assert len(ds) == 2 and ds.stats == {"annotations": 4, "crowd": 1, "small": 1, "bad_box": 0, "kept": 2}
    s = ds[0]
    box = from_coco_xywh([4, 2, 20, 10], 40, 20)
    assert s["conversations"] == [
        {"from": "human", "value": f"<image>\nWhat is the object in {format_pvit(box)}?"},
        {"from": "gpt", "value": "dog"},
    ]
    assert format_pvit(box) == "<Region><L100><L100><L600><L600></Region>"
    assert s["meta"] == {"dataset": "coco-regions", "task": "recognition", "answer": "dog", "category": "dog",
                         "category_id": 18, "image_id": 1, "ann_id": 101, "file_name": "1.jpg", "box": list(box)}
    assert s["id"] == "coco-101" and ds[1]["conversations"][1]["value"] == "car"
    assert ds.category_names() == ["car", "dog"]
    small = pvit_data.make_coco_regions(
        str(ann), str(tmp_path / "val"), min_box_area=100, max_samples=5, prompt="{region}?"
    )
    assert len(small) == 1 and small[0]["conversations"][0]["value"] == f"{format_pvit(box)}?"
    with pytest.raises(DataError, match="placeholder"):
        pvit_data.make_coco_regions(str(ann), str(tmp_path / "val"), prompt="what?")


def test_coco_regions_bad_box_and_wrong_image_size(tmp_path):
    ann = _coco(tmp_path, size=(41, 20))
    data = json.loads(ann.read_text())
    ds = pvit_data.make_coco_regions(str(ann), str(tmp_path / "val"))
    with pytest.raises(DataError, match=r"41x20 but its annotations give 40x20"):
        ds[0]
    data["annotations"][0]["bbox"] = [30, 2, 20, 10]  # beyond the 40 px width
    ann.write_text(json.dumps(data))
    with pytest.raises(InvalidRegionError, match=r"annotation id 101.*beyond the image"):
        pvit_data.make_coco_regions(str(ann), str(tmp_path / "val"))
    clipped = pvit_data.make_coco_regions(str(ann), str(tmp_path / "val"), region_policy="clip")
    assert clipped.items[0][3] == (0.75, 0.1, 1.0, 0.6)


# ------------------------------------------------------------------------------------------ gqa-regions


def _gqa(tmp_path):
    _img(tmp_path / "gqa/2375429.jpg", size=(50, 40))
    questions = {
        "07333408": {
            "imageId": "2375429", "question": "What is on the white wall?", "answer": "pipe",
            "fullAnswer": "The pipe is on the wall.",
            "annotations": {"answer": {"0": "722335"}, "question": {"4:6": "722332"}, "fullAnswer": {"1": "722335"}},
            "types": {"detailed": "relS", "semantic": "rel", "structural": "query"},
        },
        "00001": {
            "imageId": "2375429", "question": "Are there carts near the pond?", "answer": "yes", "fullAnswer": "Yes.",
            "annotations": {"answer": {}, "question": {"5": "722332", "2": "722335,722336"}, "fullAnswer": {}},
            "types": {"structural": "verify"},
        },
        "00002": {"imageId": "2375429", "question": "Is it indoors?", "answer": "no",
                  "annotations": {"answer": {}, "question": {}, "fullAnswer": {}}},
        "00003": {"imageId": "2375429", "question": "Is the cat big?", "answer": "no",
                  "annotations": {"question": {"2": "999"}}},
    }
    graphs = {"2375429": {"width": 50, "height": 40, "objects": {
        "722332": {"name": "wall", "x": 0, "y": 0, "w": 50, "h": 20, "attributes": [], "relations": []},
        "722335": {"name": "pipe", "x": 10, "y": 4, "w": 5, "h": 10},
        "722336": {"name": "cart", "x": 20, "y": 20, "w": 10, "h": 10},
    }}}
    (tmp_path / "val_balanced_questions.json").write_text(json.dumps(questions))
    (tmp_path / "val_sceneGraphs.json").write_text(json.dumps(graphs))
    return tmp_path / "val_balanced_questions.json", tmp_path / "val_sceneGraphs.json"


def test_gqa_regions_inserts_boxes_after_mentions(tmp_path):
    q, sg = _gqa(tmp_path)
    ds = pvit.build(
        "dataset", "gqa-regions", questions=str(q), scene_graphs=str(sg), image_folder=str(tmp_path / "gqa"),
        prompt="{question}",
    )
    wall = format_pvit((0, 0, 1, 0.5))
    pipe = format_pvit((0.2, 0.1, 0.3, 0.35))
    cart = format_pvit((0.4, 0.5, 0.6, 0.75))
    s = ds[0]
    assert s["id"] == "gqa-07333408"
    assert s["conversations"] == [{"from": "human", "value": f"What is on the white wall {wall}?"},
                                  {"from": "gpt", "value": "pipe"}]
    assert s["meta"]["task"] == "query" and s["meta"]["category"] == "rel"
    assert s["meta"]["boxes"] == [[0.0, 0.0, 1.0, 0.5]] and s["meta"]["answer"] == "pipe"
    assert s["meta"]["full_answer"] == "The pipe is on the wall."
    assert ds[1]["conversations"][0]["value"] == f"Are there carts {pipe} {cart} near the pond {wall}?"
    assert ds[1]["meta"]["boxes"] == [[0.2, 0.1, 0.3, 0.35], [0.4, 0.5, 0.6, 0.75], [0.0, 0.0, 1.0, 0.5]]
    assert ds[2]["conversations"][0]["value"] == "Is it indoors?" and ds[2]["meta"]["boxes"] == []
    with pytest.raises(DataError, match=r"question 00003.*object '999'"):
        ds[3]
    default = pvit_data.make_gqa_regions(str(q), str(tmp_path / "gqa"), scene_graphs=str(sg), boxes=False,
                                         answer_field="fullAnswer")
    assert default[0]["conversations"][0]["value"] == GQA_PROMPT.replace("{question}", "What is on the white wall?")
    assert default[0]["conversations"][1]["value"] == "The pipe is on the wall."


def test_gqa_shikra_exact_placement_and_spans():
    words = "What is on the white wall?"
    assert insert_regions(words, [(6, ["<B>"])], shikra_exact=True) == "What is on the white wall?<B>"
    assert insert_regions(words, [(6, ["<B>"])]) == "What is on the white wall <B>?"
    assert insert_regions("Is it  there ?", [(4, ["<B>"])]) == "Is it there <B>?"


def test_gqa_requires_scene_graphs_for_boxes(tmp_path):
    q, _ = _gqa(tmp_path)
    with pytest.raises(DataError, match="scene_graphs"):
        pvit_data.make_gqa_regions(str(q), str(tmp_path / "gqa"))


# ------------------------------------------------------------------------------------------ fine-eval


def _fine_eval(tmp_path):
    folder = tmp_path / "fine_eval"
    _img(folder / "images/0000.jpg")
    _img(folder / "images/0001.jpg")
    lines = [
        {"image": "0000.jpg", "instruction": f"what are they doing in {R1}?", "instruction_no_region": "On the river?"},
        {"image": "0000.jpg", "instruction": "What risks might they encounter?", "instruction_no_region": "risks?"},
        {"image": "0001.jpg", "instruction": f"Compare {R2} and {R1}.", "instruction_no_region": "compare."},
        {"image": "0000.jpg", "instruction": "Again?", "instruction_no_region": "again?"},
    ]
    (folder / "instructions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def test_fine_eval_groups_consecutive_turns(tmp_path):
    folder = _fine_eval(tmp_path)
    ds = pvit.build("dataset", "fine-eval", path=str(folder / "instructions.jsonl"), mode="conversation")
    assert len(ds) == 3
    s = ds[0]
    assert s["id"] == "fine-eval/0000@1" and s["image"].size == (20, 10)
    assert s["conversations"] == [
        {"from": "human", "value": f"<image>\nwhat are they doing in {R1}?"}, {"from": "gpt", "value": ""},
        {"from": "human", "value": "What risks might they encounter?"}, {"from": "gpt", "value": ""},
    ]
    assert s["meta"]["has_reference"] is False and s["meta"]["reference"] is None and s["meta"]["turns"] == 2
    assert s["meta"]["lines"] == [1, 2]
    assert [ds[i]["id"] for i in range(3)] == ["fine-eval/0000@1", "fine-eval/0001", "fine-eval/0000@4"]
    assert _boxes(ds[1]) == [B2, B1]


def test_fine_eval_single_mode_and_no_region_text(tmp_path):
    folder = _fine_eval(tmp_path)
    single = pvit.build("dataset", "fine-eval", path=str(folder))  # single is the default
    assert [single.sample_id(i) for i in range(len(single))] == [
        "fine-eval/0000@1#0", "fine-eval/0000@1#1", "fine-eval/0001#0", "fine-eval/0000@4#0"
    ]
    s = single[1]
    assert s["conversations"] == [{"from": "human", "value": "<image>\nWhat risks might they encounter?"},
                                  {"from": "gpt", "value": ""}]
    assert s["meta"]["image"] == "0000.jpg" and s["meta"]["instruction"] == "What risks might they encounter?"
    assert s["meta"]["conversation_id"] == "fine-eval/0000@1" and s["meta"]["turn"] == 1
    assert s["meta"]["history"] == [f"what are they doing in {R1}?"] and s["meta"]["has_reference"] is False
    plain = pvit_data.make_fine_eval(str(folder), use_regions=False, mode="conversation")
    assert plain[0]["conversations"][0]["value"] == "<image>\nOn the river?"
    assert not any(re.search("<Region>", t["value"]) for t in plain[1]["conversations"])


# ------------------------------------------------------------------------------------------ plumbing


def test_factory_defaults_match_modules():
    assert inspect.signature(pvit_data.make_coco_regions).parameters["prompt"].default == COCO_PROMPT
    assert inspect.signature(pvit_data.make_gqa_regions).parameters["prompt"].default == GQA_PROMPT


def test_datasets_pickle_for_loader_workers(tmp_path):
    import pickle

    _img(tmp_path / "data/coco2017_images/a.png")
    stage = _stage(tmp_path, {"k": [_rec("a.png", f"<image>\n{R1}", "x")]})
    ds = pvit_data.make_pvit_instruct(str(stage), root=str(tmp_path), box_jitter=0.02)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[0]["conversations"] == ds[0]["conversations"]


def test_error_turn_index_counts_the_dropped_leading_turn(tmp_path):
    bad = "<Region><L1><L2><L3></Region>"
    rec = {"image": "a.png", "conversations": _conv("system says", "q", f"a {bad}", first="gpt")}
    _img(tmp_path / "data/coco2017_images/a.png")
    stage = _stage(tmp_path, {"k": [rec]})
    with pytest.raises(InvalidRegionError, match=r"sample 0 turn 2, box 0.*3 coordinates"):
        pvit_data.make_pvit_instruct(str(stage), root=str(tmp_path))[0]


def test_packed_records_round_trip():
    from pvit_data.packed import PackedRecords

    recs = [{"image": "a.jpg", "conversations": _conv("q", "a")}, {"id": 3, "x": [1.5, None, "é"]}, {}]
    packed = PackedRecords(recs)
    assert len(packed) == 3 and [packed[i] for i in range(3)] == recs and packed[-1] == {}
    assert packed.nbytes() > 0
    with pytest.raises(IndexError):
        packed[3]
