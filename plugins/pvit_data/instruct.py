"""``pvit-instruct``: PVIT's released training data (a stage folder with mapping.yaml, or one JSON file)."""

from __future__ import annotations

import bisect
import math
import os
import random
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from pvit.errors import DataError
from pvit.regions import format_pvit, rewrite_mentions

from pvit_data.common import SampleDataset, check_conversations, has_image_token, read_json, resolve_dir
from pvit_data.jitter import check_jitter, jitter_box, sample_rng
from pvit_data.packed import PackedRecords

BBOX_VALUES = ("input", "output", "neither", "both")


@dataclass
class Source:
    """One JSON array of records (packed, see ``pvit_data.packed``) with the folder its ``image`` paths start from."""

    key: str
    file: Path
    image_dir: Path | None
    records: PackedRecords
    indices: array = field(default_factory=lambda: array("q"))  # record index of each sample, after sampling


def _read_mapping(folder: Path) -> dict:
    import yaml

    file = folder / "mapping.yaml"
    try:
        with open(file, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise DataError(
            f"pvit-instruct: {str(folder)!r} is a folder without mapping.yaml; give a stage folder "
            "(mapping.yaml + one JSON array per key) or a single JSON file with image_folder"
        ) from None
    except yaml.YAMLError as e:
        raise DataError(f"pvit-instruct: {str(file)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("mapping"), dict):
        raise DataError(f"pvit-instruct: {str(file)!r} needs a 'mapping: {{json_key: source}}' section")
    if not isinstance(data.get("image_paths", {}), dict):
        raise DataError(f"pvit-instruct: {str(file)!r}: 'image_paths' must map source names to folders")
    return data


def _selected_keys(mapping: dict, file: Path) -> list[str]:
    """Keys PVIT loads: all of ``mapping``, or when ``bbox:`` is present only those marked ``input``."""
    keys = [str(k) for k in mapping["mapping"]]
    bbox = mapping.get("bbox")
    if bbox is None:
        return keys
    if not isinstance(bbox, dict):
        raise DataError(f"pvit-instruct: {str(file)!r}: 'bbox' must map json keys to one of {', '.join(BBOX_VALUES)}")
    out = []
    for k in keys:
        if k not in bbox:
            raise DataError(
                f"pvit-instruct: {str(file)!r}: key {k!r} is in 'mapping' but not in 'bbox'; with a bbox section "
                f"every key needs one of {', '.join(BBOX_VALUES)} (only 'input' keys are loaded)"
            )
        if bbox[k] not in BBOX_VALUES:
            raise DataError(f"pvit-instruct: {str(file)!r}: bbox[{k!r}]={bbox[k]!r}; valid: {', '.join(BBOX_VALUES)}")
        if bbox[k] == "input":
            out.append(k)
    return out


def _load_records(file: Path) -> list:
    records = read_json(file, "pvit-instruct data file")
    if not isinstance(records, list):
        raise DataError(
            f"pvit-instruct: {str(file)!r} holds a {type(records).__name__}, expected a JSON array of records"
        )
    return records


def _sampled_indices(n: int, ratio: float, rng: random.Random) -> array:
    """``floor(ratio)`` full passes over range(n) plus a seeded subsample of ``round(frac * n)`` (sorted)."""
    full = math.floor(ratio)
    extra = round((ratio - full) * n)
    out = array("q")
    for _ in range(full):
        out.extend(range(n))
    out.extend(sorted(rng.sample(range(n), extra)))
    return out


class PvitInstructDataset(SampleDataset):
    """PVIT's instruction data, read unchanged; see ``pvit_data.make_pvit_instruct`` for the options."""

    name = "pvit-instruct"

    def __init__(
        self,
        path,
        image_folder=None,
        image_roots: dict | None = None,
        root=None,
        sample_ratio: dict | None = None,
        box_jitter: float = 0.0,
        seed: int = 0,
        region_policy: str = "error",
        image_policy: str = "error",
        max_skip_fraction: float = 0.01,
    ):
        super().__init__(region_policy=region_policy, image_policy=image_policy, max_skip_fraction=max_skip_fraction)
        self.path = resolve_dir(path, root)
        self.box_jitter = check_jitter(box_jitter)
        self.seed = int(seed)
        if self.path.is_dir():
            if image_folder is not None:
                raise DataError(
                    f"pvit-instruct: image_folder is for single-file mode; {str(self.path)!r} is a stage folder whose "
                    "mapping.yaml names the image folders (override them with image_roots: {source: folder})"
                )
            self.sources = self._stage_sources(image_roots or {}, root)
        elif self.path.exists():
            if image_roots:
                raise DataError(
                    f"pvit-instruct: image_roots is for stage folders; for the single file {str(self.path)!r} "
                    "use image_folder"
                )
            self.sources = [self._file_source(image_folder, root)]
        else:
            raise DataError(f"pvit-instruct: path {str(self.path)!r} not found (give a stage folder or a JSON file)")
        self._apply_ratios(sample_ratio or {})
        self._offsets = []
        total = 0
        for s in self.sources:
            self._offsets.append(total)
            total += len(s.indices)
        self._len = total

    # ------------------------------------------------------------------------------------------ loading

    def _stage_sources(self, image_roots: dict, root) -> list[Source]:
        mapping = _read_mapping(self.path)
        mfile = self.path / "mapping.yaml"
        dirs = {str(k): v for k, v in (mapping.get("image_paths") or {}).items()}
        unknown = sorted(set(map(str, image_roots)) - set(dirs))
        if unknown:
            raise DataError(
                f"pvit-instruct: image_roots names unknown source(s) {unknown}; sources in {str(mfile)!r}: "
                f"{', '.join(sorted(dirs)) or 'none'}"
            )
        dirs.update({str(k): v for k, v in image_roots.items()})
        sources = []
        for key in _selected_keys(mapping, mfile):
            src_name = str(mapping["mapping"][key])
            if src_name not in dirs:
                raise DataError(
                    f"pvit-instruct: {str(mfile)!r}: key {key!r} maps to source {src_name!r}, which has no folder in "
                    f"image_paths (sources: {', '.join(sorted(dirs)) or 'none'}); add it there or in image_roots"
                )
            image_dir = resolve_dir(dirs[src_name], root)
            if not image_dir.is_dir():
                raise DataError(
                    f"pvit-instruct: image folder {str(image_dir)!r} of source {src_name!r} (key {key!r}, "
                    f"{str(mfile)!r}) does not exist; set image_roots: {{{src_name}: <folder>}} or root: <folder the "
                    "relative paths start from> in the recipe"
                )
            file = self.path / f"{key}.json"
            sources.append(Source(key, file, image_dir, PackedRecords(_load_records(file))))
        if not sources:
            raise DataError(f"pvit-instruct: {str(mfile)!r} selects no data keys (check 'mapping' and 'bbox')")
        return sources

    def _file_source(self, image_folder, root) -> Source:
        records = _load_records(self.path)
        image_dir = None
        if image_folder is not None:
            image_dir = resolve_dir(image_folder, root)
            if not image_dir.is_dir():
                raise DataError(f"pvit-instruct: image_folder {str(image_dir)!r} does not exist")
        elif any(isinstance(r, dict) and r.get("image") is not None for r in records):
            raise DataError(f"pvit-instruct: {str(self.path)!r} has records with images; set image_folder")
        return Source(self.path.stem, self.path, image_dir, PackedRecords(records))

    def _apply_ratios(self, sample_ratio: dict) -> None:
        keys = [s.key for s in self.sources]
        unknown = sorted(set(map(str, sample_ratio)) - set(keys))
        if unknown:
            raise DataError(
                f"pvit-instruct: sample_ratio names unknown key(s) {unknown}; loaded keys: {', '.join(keys)}"
            )
        for s in self.sources:
            ratio = sample_ratio.get(s.key, 1.0)
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 0:
                raise DataError(f"pvit-instruct: sample_ratio[{s.key!r}]={ratio!r}; expected a number >= 0")
            if ratio == 1.0:
                s.indices = array("q", range(len(s.records)))
            else:
                rng = random.Random(f"pvit-ratio:{self.seed}:{s.key}")
                s.indices = _sampled_indices(len(s.records), float(ratio), rng)

    # ------------------------------------------------------------------------------------------ access

    def __len__(self) -> int:
        return self._len

    def counts(self) -> dict[str, int]:
        """Samples per data key after sample_ratio."""
        return {s.key: len(s.indices) for s in self.sources}

    def _locate(self, index: int) -> tuple[Source, int]:
        k = bisect.bisect_right(self._offsets, index) - 1
        src = self.sources[k]
        return src, src.indices[index - self._offsets[k]]

    def sample_id(self, index: int) -> str:
        src, rec = self._locate(index)
        return f"{src.key}/{rec}"

    def _sample(self, index: int) -> dict | None:
        src, rec_idx = self._locate(index)
        sid = f"{src.key}/{rec_idx}"
        where = f"{src.file} sample {rec_idx}"
        rec = src.records[rec_idx]
        if not isinstance(rec, dict) or "conversations" not in rec:
            raise DataError(
                f"{where}: a record needs 'conversations' (and 'image' unless text-only); got {str(rec)[:200]}"
            )
        turns, offset = check_conversations(rec["conversations"], where)
        image_file = rec.get("image")
        image, image_path = None, None
        if image_file is not None:
            if not isinstance(image_file, str) or src.image_dir is None:
                raise DataError(f"{where}: 'image' is {image_file!r}, expected a path relative to the image folder")
            image_path = os.path.join(src.image_dir, image_file)
            image = self.load_image(image_path, sid, where)
            if image is None:
                return None
        elif has_image_token(turns):
            raise DataError(f"{where}: the text has an <image> placeholder but the record has no 'image'")
        rng = sample_rng(self.seed, self.epoch, index) if self.box_jitter > 0 else None

        def render(box):
            return format_pvit(jitter_box(box, self.box_jitter, rng) if rng is not None else box)

        conversations = []
        n_regions = 0
        for j, t in enumerate(turns):
            at = f"{where} turn {j + offset}"
            text, boxes = rewrite_mentions(
                t["value"], render, policy=self.region_policy, where=at, stats=self.region_stats
            )
            n_regions += len(boxes)
            conversations.append({"from": t["from"], "value": text})
        if image is None and n_regions:
            raise DataError(f"{where}: the text has {n_regions} region mention(s) but the record has no 'image'")
        meta = {"source": src.key, "file": str(src.file), "index": rec_idx, "image_path": image_path}
        if "id" in rec:
            meta["record_id"] = rec["id"]
        return {"id": sid, "image": image, "conversations": conversations, "meta": meta}

    def validate(self) -> dict:
        """Check every record's conversation and boxes (images are not opened); returns sample counts.

        Raises the error the first bad record would raise in training.
        """
        for src in self.sources:
            for rec_idx in sorted(set(src.indices)):
                where = f"{src.file} sample {rec_idx}"
                rec = src.records[rec_idx]
                if not isinstance(rec, dict) or "conversations" not in rec:
                    raise DataError(f"{where}: a record needs 'conversations'")
                turns, offset = check_conversations(rec["conversations"], where)
                for j, t in enumerate(turns):
                    at = f"{where} turn {j + offset}"
                    rewrite_mentions(t["value"], format_pvit, policy=self.region_policy, where=at)
        return self.counts()
