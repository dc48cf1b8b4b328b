"""``coco-regions``: one "what is the object in <region>?" question per COCO ground-truth box."""

from __future__ import annotations

import os

from pvit.errors import DataError
from pvit.regions import format_pvit, from_coco_xywh, validate_box

from pvit_data.common import SampleDataset, check_image_size, read_json, resolve_dir

DEFAULT_PROMPT = "<image>\nWhat is the object in {region}?"


class CocoRegionsDataset(SampleDataset):
    """Region classification on COCO ``instances_*.json``; see ``pvit_data.make_coco_regions`` for the options.

    The reference answer (last gpt turn) is the category name. Crowd annotations (``iscrowd: 1``, a box
    around a group of objects) are always skipped; so are boxes of less than ``min_box_area`` square pixels.
    ``stats`` counts what was kept and skipped.
    """

    name = "coco-regions"

    def __init__(
        self,
        annotations,
        image_folder,
        max_samples: int | None = None,
        min_box_area: float = 1.0,
        prompt: str = DEFAULT_PROMPT,
        root=None,
        region_policy: str = "error",
        image_policy: str = "error",
        max_skip_fraction: float = 0.01,
    ):
        super().__init__(region_policy=region_policy, image_policy=image_policy, max_skip_fraction=max_skip_fraction)
        if "{region}" not in prompt:
            raise DataError(f"coco-regions: prompt {prompt!r} has no '{{region}}' placeholder for the box")
        self.prompt = prompt
        self.file = resolve_dir(annotations, root)
        self.image_folder = resolve_dir(image_folder, root)
        if not self.image_folder.is_dir():
            raise DataError(f"coco-regions: image_folder {str(self.image_folder)!r} does not exist")
        data = read_json(self.file, "COCO annotation file")
        if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
            raise DataError(
                f"coco-regions: {str(self.file)!r} is not a COCO instances file (needs images, annotations, categories)"
            )
        self.categories = {c["id"]: c["name"] for c in data["categories"]}
        images = {im["id"]: (im["file_name"], int(im["width"]), int(im["height"])) for im in data["images"]}
        self.images_info = images
        self.items: list[tuple] = []  # (ann_id, image_id, category_id, canonical box)
        self.stats = {"annotations": len(data["annotations"]), "crowd": 0, "small": 0, "bad_box": 0, "kept": 0}
        for ann in data["annotations"]:
            if max_samples is not None and len(self.items) >= max_samples:
                break
            where = f"{self.file} annotation id {ann.get('id')}"
            if ann.get("iscrowd", 0):
                self.stats["crowd"] += 1
                continue
            bbox = ann.get("bbox")
            numeric = isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)
            if numeric and bbox[2] >= 0 and bbox[3] >= 0 and bbox[2] * bbox[3] < min_box_area:
                self.stats["small"] += 1  # tiny or zero-area; negative sizes are errors (validation below)
                continue
            if ann.get("image_id") not in images:
                raise DataError(f"{where}: image_id {ann.get('image_id')!r} is not in the file's images")
            if ann.get("category_id") not in self.categories:
                raise DataError(f"{where}: category_id {ann.get('category_id')!r} is not in the file's categories")
            _, iw, ih = images[ann["image_id"]]
            box = validate_box(
                from_coco_xywh(bbox, iw, ih) if numeric else bbox,
                policy=self.region_policy,
                where=f"{where} (bbox {bbox} in a {iw}x{ih} image)",
                index=0,
                stats=self.region_stats,
            )
            if box is None:
                self.stats["bad_box"] += 1
                continue
            self.items.append((ann["id"], ann["image_id"], ann["category_id"], box))
        self.stats["kept"] = len(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def sample_id(self, index: int) -> str:
        return f"coco-{self.items[index][0]}"

    def _sample(self, index: int) -> dict | None:
        ann_id, image_id, cat_id, box = self.items[index]
        sid = f"coco-{ann_id}"
        file_name, w, h = self.images_info[image_id]
        where = f"{self.file} annotation id {ann_id}"
        path = os.path.join(self.image_folder, file_name)
        image = self.load_image(path, sid, where)
        if image is None:
            return None
        check_image_size(image, (w, h), sid, where, path)
        name = self.categories[cat_id]
        return {
            "id": sid,
            "image": image,
            "conversations": [
                {"from": "human", "value": self.prompt.replace("{region}", format_pvit(box))},
                {"from": "gpt", "value": name},
            ],
            "meta": {
                "dataset": "coco-regions",
                "task": "recognition",
                "answer": name,
                "category": name,
                "category_id": cat_id,
                "image_id": image_id,
                "ann_id": ann_id,
                "file_name": file_name,
                "box": list(box),
            },
        }

    def category_names(self) -> list[str]:
        """Every category name of the file, in id order (the label set a classifier chooses from)."""
        return [self.categories[k] for k in sorted(self.categories)]

