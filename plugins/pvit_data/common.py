"""What every pvit_data dataset shares: the map-style base class, file reading and conversation checks."""

from __future__ import annotations

import json
import operator
import os
from pathlib import Path
from typing import Any

from pvit.errors import DataError
from pvit.images import ImagePolicy
from pvit.interfaces import IMAGE_TOKEN
from pvit.regions import POLICIES, RegionStats

ROLES = ("human", "gpt")
#: At most this many following samples are tried in place of one whose image is skipped.
MAX_SUBSTITUTIONS = 64


class SampleDataset:
    """Map-style dataset of samples ``{"id", "image", "conversations", "meta"}``.

    Subclasses implement ``__len__``, ``sample_id(i)`` and ``_sample(i)``, which returns None when the
    image policy skipped the sample's image; ``__getitem__`` then returns the next usable sample, with
    ``meta["substituted_for"]`` naming the skipped id (the skip is also listed in ``report()``).
    Images are opened in ``__getitem__`` only, never held by the dataset.
    """

    name = "dataset"

    def __init__(self, *, region_policy: str = "error", image_policy: str = "error", max_skip_fraction: float = 0.01):
        if region_policy not in POLICIES:
            raise DataError(f"{self.name}: region_policy {region_policy!r} is not one of: {', '.join(POLICIES)}")
        self.region_policy = region_policy
        self.images = ImagePolicy(image_policy, max_skip_fraction)
        self.region_stats = RegionStats()
        self.epoch = 0

    def __len__(self) -> int:
        raise NotImplementedError

    def sample_id(self, index: int) -> str:
        """The id of sample ``index`` without loading it."""
        raise NotImplementedError

    def _sample(self, index: int) -> dict | None:
        raise NotImplementedError

    def __getitem__(self, index) -> dict:
        n = len(self)
        index = operator.index(index)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"{self.name}: index {index} is out of range for {n} samples")
        if self.images.total is None:
            self.images.total = n
        for k in range(min(n, MAX_SUBSTITUTIONS)):
            sample = self._sample((index + k) % n)
            if sample is not None:
                if k:
                    sample["meta"]["substituted_for"] = self.sample_id(index)
                return sample
        raise DataError(
            f"{self.name}: the images of sample {self.sample_id(index)!r} and the {min(n, MAX_SUBSTITUTIONS) - 1} "
            f"samples after it were all skipped; {self.images.report()['reasons']}"
        )

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds per-epoch randomness (box jitter). Call before each epoch's loader."""
        self.epoch = int(epoch)

    def load_image(self, path, sample_id: str, where: str):
        """The RGB image at ``path`` under the dataset's image policy, or None when it is skipped."""
        return self.images.load(path, sample_id=sample_id, where=where)

    def report(self) -> dict:
        """Counts of skipped images and clipped/dropped boxes seen by this process so far."""
        return {"dataset": self.name, "images": self.images.report(), "regions": self.region_stats.as_dict()}


def read_json(path, what: str) -> Any:
    """``json.load`` of ``path``; a missing or malformed file raises DataError naming it and ``what`` it is."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{what} {str(path)!r} not found") from None
    except IsADirectoryError:
        raise DataError(f"{what} {str(path)!r} is a directory, expected a JSON file") from None
    except json.JSONDecodeError as e:
        raise DataError(
            f"{what} {str(path)!r} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {str(path)!r} is not UTF-8 text: {e}") from None


def read_jsonl(path, what: str) -> list[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSON-lines file; errors name file and line."""
    path = Path(path)
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{what} {str(path)!r} line {lineno} is not valid JSON: {e.msg}") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{what} {str(path)!r} line {lineno} is a {type(obj).__name__}, expected an object")
                out.append((lineno, obj))
    except FileNotFoundError:
        raise DataError(f"{what} {str(path)!r} not found") from None
    return out


def resolve_dir(directory, root=None) -> Path:
    """``directory`` as a path: absolute ones unchanged, relative ones against ``root`` (default: the CWD)."""
    d = Path(os.path.expanduser(str(directory)))
    if d.is_absolute():
        return d
    return Path(root or os.getcwd()) / d


def check_conversations(turns, where: str) -> tuple[list[dict], int]:
    """Validated copy of a LLaVA-style conversation ``[{"from": "human"|"gpt", "value": str}, ...]``, and the
    number of leading turns dropped (0 or 1: the index in the file of the first turn kept).

    A leading non-human turn is dropped (as PVIT does); the rest must alternate human, gpt, human, ...
    Raises DataError naming ``where`` (file and sample) and the turn.
    """
    if not isinstance(turns, list):
        raise DataError(f"{where}: 'conversations' is a {type(turns).__name__}, expected a list of turns")
    out = []
    for j, t in enumerate(turns):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise DataError(f"{where}: turn {j} is {t!r}, expected {{'from': 'human'|'gpt', 'value': str}}")
        if t["from"] not in ROLES:
            raise DataError(f"{where}: turn {j} is from {t['from']!r}; valid speakers are {', '.join(ROLES)}")
        if not isinstance(t["value"], str):
            raise DataError(f"{where}: turn {j} has a {type(t['value']).__name__} value, expected text")
        out.append({"from": t["from"], "value": t["value"]})
    offset = 0
    if out and out[0]["from"] != "human":
        out, offset = out[1:], 1
    if not out:
        raise DataError(f"{where}: the conversation has no human turn")
    for j, t in enumerate(out):
        expected = ROLES[j % 2]
        if t["from"] != expected:
            raise DataError(
                f"{where}: turn {j + offset} is from {t['from']!r} where a {expected!r} turn was expected; turns "
                "must alternate human, gpt, human, ... (a leading non-human turn is dropped)"
            )
    return out, offset


def check_image_size(image, expected: tuple[int, int], sample_id: str, where: str, path) -> None:
    """DataError when a loaded image's (W, H) differs from the size its annotations were made for."""
    if image is not None and tuple(image.size) != tuple(expected):
        raise DataError(
            f"{where}: image {str(path)!r} of sample {sample_id!r} is {image.size[0]}x{image.size[1]} but its "
            f"annotations give {expected[0]}x{expected[1]}; the boxes would be wrong (is image_folder the right split?)"
        )


def has_image_token(turns: list[dict]) -> bool:
    return any(IMAGE_TOKEN in t["value"] for t in turns)
