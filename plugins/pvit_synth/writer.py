"""Writes a synth-regions split to disk in PVIT's directory format (mapping.yaml + JSON arrays + images)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pvit.atomic import atomic_write_text
from pvit.errors import DataError


def write_pvit(dataset, path, *, key: str | None = None, source: str = "synth", image_dir: str = "images",
               image_format: str = "png", relative_to=None) -> Path:
    """Write every sample of ``dataset`` under stage folder ``path`` and return ``path``.

    Layout (docs/regions.md, "PVIT's data format")::

        path/mapping.yaml          image_paths: {source: <image folder>}, mapping: {key: source}, count: {key: n}
        path/<key>.json            one JSON array of {"id", "image", "conversations", "meta"}
        path/<image_dir>/<id>.png  one image per sample

    ``key`` defaults to ``synth_regions_<split>``. An existing ``mapping.yaml`` is extended, so several
    splits or task mixes can share one stage folder (a key written twice is replaced). The image folder is
    written as an absolute path, or relative to ``relative_to`` (PVIT resolves it against the working
    directory, so pass the directory training will run from). ``meta`` is ignored by PVIT's loader.
    """
    import yaml

    stage = Path(path)
    images = stage / image_dir
    images.mkdir(parents=True, exist_ok=True)
    key = key or f"synth_regions_{dataset.split}"
    ext = image_format.lower().lstrip(".")
    records = []
    for i in range(len(dataset)):
        sample = dataset[i]
        name = f"{sample['id']}.{ext}"
        sample["image"].save(images / name)
        records.append({"id": sample["id"], "image": name, "conversations": sample["conversations"],
                        "meta": sample["meta"]})
    atomic_write_text(stage / f"{key}.json", json.dumps(records))

    mapping_file = stage / "mapping.yaml"
    mapping: dict = {}
    if mapping_file.exists():
        mapping = yaml.safe_load(mapping_file.read_text(encoding="utf-8")) or {}
        if not isinstance(mapping, dict):
            raise DataError(
                f"{mapping_file}: expected a mapping with image_paths/mapping keys, got {type(mapping).__name__}"
            )
    folder = str(images.resolve())
    if relative_to is not None:
        folder = os.path.relpath(folder, Path(relative_to).resolve())
    old = (mapping.get("image_paths") or {}).get(source)
    if old is not None and old != folder:
        raise DataError(
            f"{mapping_file}: source {source!r} already points at {old!r}, not {folder!r}; "
            "write with another source name or into another folder"
        )
    mapping.setdefault("image_paths", {})[source] = folder
    mapping.setdefault("mapping", {})[key] = source
    mapping.setdefault("count", {})[key] = len(records)
    atomic_write_text(mapping_file, yaml.safe_dump(mapping, sort_keys=False))
    return stage
