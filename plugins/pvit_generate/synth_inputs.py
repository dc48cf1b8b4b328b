"""Generation inputs made from synth-regions scenes, so every strategy runs without downloads: contexts for the
LLM strategies, and GQA / VCR files in their real formats for the converters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from pvit.atomic import atomic_write_text

from pvit_generate.sources import Context, Region, file_version, gqa_source, vcr_source


def _dataset(size, split, seed, image_size, words_per_image):
    from pvit_synth.dataset import SynthRegions

    task = "all-region" if words_per_image else ["recognition", "attribute", "relationship", "same-category"]
    return SynthRegions(split=split, size=size, task=task, image_size=image_size, seed=seed,
                        words_per_image=words_per_image)


def _relation(a, b) -> str:
    (ax, ay), (bx, by) = a.center, b.center
    if abs(ax - bx) >= abs(ay - by):
        return "to the left of" if ax < bx else "to the right of"
    return "above" if ay < by else "below"


def _render_all(ds, folder: Path) -> list[str]:
    """Render every scene's image into ``folder`` (kept when already there); returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(len(ds)):
        name = f"synth-{ds.split}-s{ds.seed}-{i:07d}.png"
        if not (folder / name).is_file():
            ds[i]["image"].save(folder / name)
        names.append(name)
    return names


class SynthScenes:
    """synth-regions scenes as contexts: caption, shapes and words with boxes, attributes and pair relations."""

    def __init__(self, output_dir, size: int = 32, split: str = "train", seed: int = 0, image_size: int = 64,
                 words_per_image: int = 1):
        from pvit_synth.tasks import caption

        self.name, self.image_folder = "synth", Path(output_dir) / "images"
        self.version = f"synth-regions split={split} seed={seed} size={size} image_size={image_size}"
        ds = _dataset(size, split, seed, image_size, words_per_image)
        names = _render_all(ds, self.image_folder)
        self.items: list[Context] = []
        for i, name in enumerate(names):
            scene = ds.scene(i)
            regions = [Region(tuple(round(v, 6) for v in it.norm_box(image_size)),
                              "word" if it.kind == "word" else it.kind,
                              [] if it.kind == "word" else [it.color, it.size], it.word)
                       for it in scene.items]
            rels = [(a, _relation(scene.items[a], scene.items[b]), b)
                    for a in range(len(scene.items)) for b in range(a + 1, len(scene.items))]
            self.items.append(Context(f"synth-{split}-{i}", name, [caption(scene)], regions, rels))

    def contexts(self) -> Iterator[Context]:
        yield from self.items


def _words_of(ds, i: int):
    from pvit_synth.tasks import describe

    return [(describe(it), it) for it in ds.scene(i).items]


def synth_gqa(output_dir, size: int = 32, split: str = "train", seed: int = 0, image_size: int = 64,
              max_samples: int | None = None):
    """Write GQA-format ``questions.json`` + ``scene_graphs.json`` for synth scenes, then read them back with
    the GQA converter (annotations point each question's words at scene-graph objects)."""
    ds = _dataset(size, split, seed, image_size, 0)
    inputs, images = Path(output_dir) / "inputs" / "gqa", Path(output_dir) / "images"
    names = _render_all(ds, images)
    questions, graphs = {}, {}
    for i, name in enumerate(names):
        image_id = name.rsplit(".", 1)[0]
        items = ds.scene(i).items
        objects = {str(k): {"name": it.kind, "x": it.box[0], "y": it.box[1], "w": it.box[2] - it.box[0],
                            "h": it.box[3] - it.box[1], "attributes": [it.color] if it.color else []}
                   for k, it in enumerate(items)}
        graphs[image_id] = {"width": image_size, "height": image_size, "objects": objects}
        for k, it in enumerate(items):
            if it.kind == "word" or k + 1 >= len(items):
                continue
            other = items[k + 1]
            q = f"Is the {it.kind} {_relation(it, other)} the {other.kind}?"
            n_first = 3 + len(_relation(it, other).split())
            questions[f"{i}{k:02d}"] = {
                "imageId": image_id, "question": q, "answer": "yes",
                "fullAnswer": f"Yes, the {it.color} {it.kind} is {_relation(it, other)} the {other.kind}.",
                "annotations": {"question": {"2": str(k), f"{n_first + 1}": str(k + 1)}},
            }
    atomic_write_text(inputs / "questions.json", json.dumps(questions))
    atomic_write_text(inputs / "scene_graphs.json", json.dumps(graphs))
    return gqa_source(inputs / "questions.json", inputs / "scene_graphs.json", images, max_samples, ".png")


def synth_vcr(output_dir, size: int = 32, split: str = "train", seed: int = 0, image_size: int = 64,
              max_samples: int | None = None):
    """Write a VCR-format jsonl (+ one metadata JSON per image) for synth scenes and read it with the VCR converter."""
    ds = _dataset(size, split, seed, image_size, 0)
    images = Path(output_dir) / "images"
    names = _render_all(ds, images)
    lines = []
    for i, name in enumerate(names):
        items = [it for it in ds.scene(i).items if it.kind != "word"]
        if len(items) < 2:
            continue
        meta_fn = name.rsplit(".", 1)[0] + ".json"
        boxes = [[*it.box, 1.0] for it in items]
        atomic_write_text(images / meta_fn, json.dumps({"boxes": boxes, "width": image_size, "height": image_size,
                                                        "names": [it.kind for it in items]}))
        a, b = items[0], items[1]
        rel = _relation(a, b)
        lines.append({
            "annot_id": f"synth-{i}", "img_fn": name, "metadata_fn": meta_fn, "objects": [it.kind for it in items],
            "question": ["Where", "is", [0], "?"],
            "answer_choices": [[[0], "is", *rel.split(), [1], "."], ["It", "is", "not", "here", "."]],
            "answer_label": 0,
            "rationale_choices": [["Its", "centre", "is", *rel.split(), "the", "centre", "of", [1], "."]],
            "rationale_label": 0,
        })
    path = Path(output_dir) / "inputs" / "vcr" / "train.jsonl"
    atomic_write_text(path, "".join(json.dumps(x) + "\n" for x in lines))
    return vcr_source(path, images, max_samples)


__all__ = ["SynthScenes", "synth_gqa", "synth_vcr", "file_version"]
