"""Generation inputs: per-image contexts (caption, boxes by category, attributes, relations) from COCO, Visual
Genome or synth-regions scenes, and the converter sources (GQA, VCR, Shikra jsonl)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from pvit.errors import ComponentOptionError, DataError, did_you_mean
from pvit.regions import from_coco_xywh, validate_box


@dataclass
class Region:
    """One input box (normalised xyxy) with its category, attributes, and text written in it (OCR)."""

    box: tuple[float, float, float, float]
    label: str
    attributes: list[str] = field(default_factory=list)
    text: str | None = None
    phrase: str | None = None


@dataclass
class Context:
    """What an LLM request is made from: one image's captions, regions and relations ``(i, predicate, j)``."""

    id: str
    image: str
    captions: list[str]
    regions: list[Region]
    relations: list[tuple[int, str, int]] = field(default_factory=list)


def file_version(*paths) -> str:
    """``sha256:<first 16 hex>`` of the files' bytes (the source version written to the manifest)."""
    h = hashlib.sha256()
    for p in paths:
        if p is not None:
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return "sha256:" + h.hexdigest()[:16]


def _box(xywh, w, h, where) -> tuple | None:
    return validate_box(from_coco_xywh(xywh, w, h), policy="drop", where=where)


class CocoSource:
    """COCO ``instances_*.json`` (+ optional ``captions_*.json``): boxes grouped by category and captions."""

    def __init__(self, instances, image_folder, captions=None, max_images: int | None = None,
                 min_box_area: float = 1.0, **_wired):
        self.image_folder, self.name = Path(image_folder), "coco"
        self.version = file_version(instances, captions)
        data = json.loads(Path(instances).read_text(encoding="utf-8"))
        cats = {c["id"]: c["name"] for c in data.get("categories", [])}
        images = {im["id"]: im for im in data.get("images", [])}
        self.regions: dict[int, list[Region]] = {}
        for a in data.get("annotations", []):
            im = images.get(a["image_id"])
            if im is None or a.get("iscrowd") or a["bbox"][2] * a["bbox"][3] < min_box_area:
                continue
            box = _box(a["bbox"], im["width"], im["height"], f"{instances} annotation {a.get('id')}")
            if box is not None:
                self.regions.setdefault(im["id"], []).append(Region(box, cats.get(a["category_id"], "object")))
        self.captions: dict[int, list[str]] = {}
        if captions is not None:
            for a in json.loads(Path(captions).read_text(encoding="utf-8")).get("annotations", []):
                self.captions.setdefault(a["image_id"], []).append(a["caption"].strip())
        ids = sorted(i for i in self.regions if i in images)
        self.images = [images[i] for i in ids[:max_images]]

    def contexts(self) -> Iterator[Context]:
        for im in self.images:
            yield Context(f"coco-{im['id']}", im["file_name"], self.captions.get(im["id"], []), self.regions[im["id"]])


class VisualGenomeSource:
    """Visual Genome: ``objects``/``attributes.json`` (objects with names and attributes), optional
    ``relationships.json`` and ``region_descriptions.json``; ``image_data.json`` gives sizes and file names."""

    def __init__(self, attributes, image_data, image_folder, relationships=None, region_descriptions=None,
                 max_images: int | None = None, max_regions: int = 20, **_wired):
        self.image_folder, self.name = Path(image_folder), "vg"
        self.version = file_version(attributes, image_data, relationships, region_descriptions)
        meta = {m["image_id"]: m for m in json.loads(Path(image_data).read_text(encoding="utf-8"))}
        self.items: list[Context] = []
        rels = {r["image_id"]: r["relationships"] for r in self._load(relationships)}
        descs = {r["id"]: r["regions"] for r in self._load(region_descriptions)}
        for entry in json.loads(Path(attributes).read_text(encoding="utf-8"))[:max_images]:
            m = meta.get(entry["image_id"])
            if m is None:
                continue
            w, h, index, regions = m["width"], m["height"], {}, []
            for o in entry.get("attributes", entry.get("objects", []))[:max_regions]:
                box = _box((o["x"], o["y"], o["w"], o["h"]), w, h, f"VG image {entry['image_id']}")
                if box is not None:
                    index[o["object_id"]] = len(regions)
                    regions.append(Region(box, (o.get("names") or ["object"])[0], list(o.get("attributes") or [])))
            relations = [(index[r["subject"]["object_id"]], r["predicate"].lower(), index[r["object"]["object_id"]])
                         for r in rels.get(entry["image_id"], [])
                         if r["subject"]["object_id"] in index and r["object"]["object_id"] in index]
            for d in descs.get(entry["image_id"], [])[:max_regions]:
                box = _box((d["x"], d["y"], d["width"], d["height"]), w, h, f"VG region {d.get('region_id')}")
                if box is not None:
                    regions.append(Region(box, "region", phrase=d["phrase"].strip()))
            if regions:
                name = m.get("url", "").rsplit("/", 1)[-1] or f"{entry['image_id']}.jpg"
                self.items.append(Context(f"vg-{entry['image_id']}", name, [], regions, relations))

    @staticmethod
    def _load(path) -> list:
        return [] if path is None else json.loads(Path(path).read_text(encoding="utf-8"))

    def contexts(self) -> Iterator[Context]:
        yield from self.items


class ConverterSource:
    """A converter as a source: ``records()`` yields ``("ok", record)`` or ``("rejected", info)``."""

    def __init__(self, name: str, image_folder, version: str, records: Callable[[], Iterator]):
        self.name, self.image_folder, self.version, self._records = name, Path(image_folder), version, records

    def records(self) -> Iterator[tuple[str, dict]]:
        yield from self._records()


def gqa_source(questions, scene_graphs, image_folder, max_samples: int | None = None, image_ext: str = ".jpg",
               **_wired):
    from pvit_generate.converters import convert_gqa

    return ConverterSource("gqa", image_folder, file_version(questions, scene_graphs),
                           lambda: convert_gqa(questions, scene_graphs, max_samples, image_ext))


def vcr_source(annotations, image_folder, max_samples: int | None = None, why_prompt: str | None = None, **_wired):
    from pvit_generate.converters import WHY_PROMPT, convert_vcr

    return ConverterSource("vcr", image_folder, file_version(annotations),
                           lambda: convert_vcr(annotations, image_folder, max_samples, why_prompt or WHY_PROMPT))


def shikra_source(path, image_folder, max_samples: int | None = None, prompt: str | None = None, **_wired):
    from pvit_generate.converters import SHIKRA_PROMPT, read_shikra

    return ConverterSource("shikra", image_folder, file_version(path),
                           lambda: read_shikra(path, image_folder, max_samples, prompt or SHIKRA_PROMPT))


def _synth(name: str) -> Callable[..., Any]:
    def make(**options):
        from pvit_generate import synth_inputs

        return getattr(synth_inputs, name)(**options)
    return make


#: Source name -> factory(**options, output_dir=<the job's output folder>).
SOURCES: dict[str, Callable[..., Any]] = {
    "coco": CocoSource,
    "visual-genome": VisualGenomeSource,
    "gqa": gqa_source,
    "vcr": vcr_source,
    "shikra-jsonl": shikra_source,
    "synth-scenes": _synth("SynthScenes"),
    "synth-gqa": _synth("synth_gqa"),
    "synth-vcr": _synth("synth_vcr"),
}


def build_source(spec: dict, where: str, output_dir: Path, root: Path):
    """A source from its recipe entry ``{name, options}``; relative paths in options start from ``root``."""
    name, options = spec["name"], dict(spec.get("options") or {})
    if name not in SOURCES:
        raise ComponentOptionError(f"{where}: unknown source {name!r}{did_you_mean(name, SOURCES)}; "
                                   f"valid: {', '.join(SOURCES)}")
    for k, v in options.items():
        if isinstance(v, str) and k in {"instances", "captions", "image_folder", "attributes", "image_data",
                                        "relationships", "region_descriptions", "questions", "scene_graphs",
                                        "annotations", "path"}:
            options[k] = str((root / v).resolve()) if not Path(v).is_absolute() else v
    try:
        return SOURCES[name](**options, output_dir=output_dir)
    except TypeError as e:
        raise ComponentOptionError(f"{where}: source {name!r}: {e}") from None
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise DataError(f"{where}: source {name!r} could not read its input: {type(e).__name__}: {e}") from None
