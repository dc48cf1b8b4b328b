"""Generation inputs from COCO and Visual Genome files written in those datasets' published layouts."""

from __future__ import annotations

import json

import pytest

from pvit_generate.sources import CocoSource, VisualGenomeSource


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_coco_instances_and_captions_give_boxes_by_category_and_captions(tmp_path):
    instances = _write(tmp_path / "instances_val2017.json", {
        "info": {"year": 2017}, "licenses": [],
        "images": [{"id": 397133, "file_name": "000000397133.jpg", "width": 640, "height": 427},
                   {"id": 37777, "file_name": "000000037777.jpg", "width": 352, "height": 230}],
        "annotations": [
            {"id": 1, "image_id": 397133, "category_id": 1, "bbox": [64.0, 42.7, 320.0, 213.5], "area": 6e4,
             "iscrowd": 0, "segmentation": [[1, 2, 3, 4]]},
            {"id": 2, "image_id": 397133, "category_id": 18, "bbox": [0.0, 0.0, 64.0, 42.7], "area": 2700.0,
             "iscrowd": 0, "segmentation": []},
            {"id": 3, "image_id": 397133, "category_id": 1, "bbox": [10, 10, 100, 100], "area": 1e4,
             "iscrowd": 1, "segmentation": {"counts": [], "size": [427, 640]}},  # crowd regions are left out
            {"id": 4, "image_id": 37777, "category_id": 18, "bbox": [35.2, 23.0, 0.5, 0.5], "area": 0.25,
             "iscrowd": 0, "segmentation": []},  # below min_box_area: the image has no usable box
        ],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 18, "name": "dog", "supercategory": "animal"}],
    })
    captions = _write(tmp_path / "captions_val2017.json", {
        "images": [], "annotations": [{"id": 9, "image_id": 397133, "caption": " A man with a dog. "},
                                      {"id": 10, "image_id": 397133, "caption": "Someone walks a dog."}]})
    src = CocoSource(instances, tmp_path / "val2017", captions=captions)
    contexts = list(src.contexts())
    assert [c.id for c in contexts] == ["coco-397133"]
    ctx = contexts[0]
    assert ctx.image == "000000397133.jpg" and ctx.captions == ["A man with a dog.", "Someone walks a dog."]
    assert [r.label for r in ctx.regions] == ["person", "dog"]
    assert ctx.regions[0].box == pytest.approx((0.1, 0.1, 0.6, 0.6))
    assert ctx.regions[1].box == pytest.approx((0.0, 0.0, 0.1, 0.1))
    assert src.version.startswith("sha256:") and len(src.version) == len("sha256:") + 16


def test_visual_genome_objects_attributes_relations_and_region_phrases(tmp_path):
    image_data = _write(tmp_path / "image_data.json", [
        {"image_id": 1, "width": 800, "height": 600, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg",
         "coco_id": None, "flickr_id": None}])
    attributes = _write(tmp_path / "attributes.json", [{"image_id": 1, "attributes": [
        {"object_id": 10, "x": 80, "y": 60, "w": 400, "h": 300, "names": ["clock"], "synsets": ["clock.n.01"],
         "attributes": ["white", "round"]},
        {"object_id": 11, "x": 480, "y": 60, "w": 80, "h": 60, "names": ["sign"], "synsets": ["sign.n.02"]},
        {"object_id": 12, "x": 0, "y": 0, "w": 0, "h": 10, "names": ["speck"], "synsets": []},  # degenerate: dropped
    ]}])
    relationships = _write(tmp_path / "relationships.json", [{"image_id": 1, "relationships": [
        {"relationship_id": 5, "predicate": "LEFT OF", "synsets": [],
         "subject": {"object_id": 10, "x": 80, "y": 60, "w": 400, "h": 300, "name": "clock"},
         "object": {"object_id": 11, "x": 480, "y": 60, "w": 80, "h": 60, "name": "sign"}},
        {"relationship_id": 6, "predicate": "on", "synsets": [],
         "subject": {"object_id": 12, "x": 0, "y": 0, "w": 0, "h": 10, "name": "speck"},
         "object": {"object_id": 11, "x": 480, "y": 60, "w": 80, "h": 60, "name": "sign"}},  # refers to a dropped box
    ]}])
    descriptions = _write(tmp_path / "region_descriptions.json", [{"id": 1, "regions": [
        {"region_id": 7, "image_id": 1, "phrase": " a white clock on the wall ", "x": 40, "y": 30, "width": 480,
         "height": 360}]}])
    src = VisualGenomeSource(attributes, image_data, tmp_path / "VG_100K", relationships=relationships,
                             region_descriptions=descriptions)
    (ctx,) = list(src.contexts())
    assert ctx.id == "vg-1" and ctx.image == "1.jpg" and ctx.captions == []
    assert [(r.label, r.attributes, r.phrase) for r in ctx.regions] == [
        ("clock", ["white", "round"], None), ("sign", [], None), ("region", [], "a white clock on the wall")]
    assert ctx.regions[0].box == pytest.approx((0.1, 0.1, 0.6, 0.6))
    assert ctx.regions[2].box == pytest.approx((0.05, 0.05, 0.65, 0.65))
    assert ctx.relations == [(0, "left of", 1)]
