"""``fine-eval``: PVIT's FineEval instructions (``instructions.jsonl`` + ``images/``); no reference answers.

Layout of the released file (PVIT-official/PVIT @686bca2, ``fine_eval/instructions.jsonl``, 130 lines, 50
images): one line per question, ``{"image", "instruction", "instruction_no_region"}``; the questions about one
image are consecutive lines and later ones refer back to earlier ones ("What risks might they encounter?"),
so a run of consecutive lines with the same image is one multi-turn conversation. PVIT's own script
(``pvit/run_fine_eval.py``) nevertheless sends every line alone (``"<image>\\n" + instruction``, marked
"TODO: only one conversation here"), and the released outputs (``pvit.jsonl`` etc., 130 lines each) were made
that way. ``mode: single`` (the default) reproduces that and fits the evaluation protocol (one generation per
sample), with the conversation kept in ``meta`` (``conversation_id``, ``turn``, ``history``); ``mode:
conversation`` yields one multi-turn sample per image run, for a runner that generates turn by turn.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from pvit.errors import DataError
from pvit.interfaces import IMAGE_TOKEN
from pvit.regions import format_pvit, rewrite_mentions

from pvit_data.common import SampleDataset, read_jsonl, resolve_dir

MODES = ("conversation", "single")


class FineEvalDataset(SampleDataset):
    """FineEval; see ``pvit_data.make_fine_eval`` for the options.

    Every gpt turn is empty (FineEval was judged by people; there is no reference): ``meta["has_reference"]``
    is False and ``meta["reference"]`` None. In ``single`` mode a sample is one line, ``<image>\n`` + its
    instruction; in ``conversation`` mode a sample holds all turns of one image run, human turns interleaved
    with empty gpt turns, to be generated in order.
    """

    name = "fine-eval"

    def __init__(
        self,
        path,
        image_folder=None,
        mode: str = "single",
        use_regions: bool = True,
        root=None,
        region_policy: str = "error",
        image_policy: str = "error",
        max_skip_fraction: float = 0.01,
    ):
        super().__init__(region_policy=region_policy, image_policy=image_policy, max_skip_fraction=max_skip_fraction)
        if mode not in MODES:
            raise DataError(f"fine-eval: mode {mode!r} is not one of {', '.join(MODES)}")
        self.file = resolve_dir(path, root)
        if self.file.is_dir():
            self.file = self.file / "instructions.jsonl"
        self.image_folder = resolve_dir(image_folder, root) if image_folder is not None else self.file.parent / "images"
        if not self.image_folder.is_dir():
            raise DataError(f"fine-eval: image folder {str(self.image_folder)!r} does not exist; set image_folder")
        self.mode, self.use_regions = mode, bool(use_regions)
        key = "instruction" if self.use_regions else "instruction_no_region"
        lines = []
        for lineno, obj in read_jsonl(self.file, "FineEval instructions file"):
            for k in ("image", key):
                if not isinstance(obj.get(k), str):
                    raise DataError(f"{self.file} line {lineno}: needs a text field {k!r}")
            lines.append((lineno, obj))
        if not lines:
            raise DataError(f"fine-eval: {str(self.file)!r} has no instructions")
        groups: list[list[tuple[int, dict]]] = []  # runs of consecutive lines with the same image
        for item in lines:
            if groups and groups[-1][-1][1]["image"] == item[1]["image"]:
                groups[-1].append(item)
            else:
                groups.append([item])
        stems = [Path(g[0][1]["image"]).stem for g in groups]
        dup = {s for s, n in Counter(stems).items() if n > 1}
        conv_ids = [f"fine-eval/{s}@{g[0][0]}" if s in dup else f"fine-eval/{s}" for g, s in zip(groups, stems)]
        if mode == "conversation":
            self.groups, self._ids, self._conv_ids = groups, conv_ids, conv_ids
            self._turns = [0] * len(groups)
            self._history = [()] * len(groups)
        else:  # one sample per line: "<conversation id>#<turn>", earlier instructions in meta["history"]
            self.groups = [[item] for g in groups for item in g]
            self._ids = [f"{cid}#{t}" for g, cid in zip(groups, conv_ids) for t in range(len(g))]
            self._conv_ids = [cid for g, cid in zip(groups, conv_ids) for _ in g]
            self._turns = [t for g in groups for t in range(len(g))]
            self._history = [tuple(o[key] for _, o in g[:t]) for g in groups for t in range(len(g))]

    def __len__(self) -> int:
        return len(self.groups)

    def sample_id(self, index: int) -> str:
        return self._ids[index]

    def _sample(self, index: int) -> dict | None:
        group = self.groups[index]
        sid = self._ids[index]
        image_file = group[0][1]["image"]
        where = f"{self.file} line {group[0][0]}"
        path = os.path.join(self.image_folder, image_file)
        image = self.load_image(path, sid, where)
        if image is None:
            return None
        key = "instruction" if self.use_regions else "instruction_no_region"
        conversations = []
        for j, (lineno, obj) in enumerate(group):
            at = f"{self.file} line {lineno}"
            text, _ = rewrite_mentions(
                obj[key], format_pvit, policy=self.region_policy, where=at, stats=self.region_stats
            )
            if j == 0 and IMAGE_TOKEN not in text:
                text = f"{IMAGE_TOKEN}\n{text}"
            conversations.append({"from": "human", "value": text})
            conversations.append({"from": "gpt", "value": ""})
        return {
            "id": sid,
            "image": image,
            "conversations": conversations,
            "meta": {
                "dataset": "fine-eval",
                "task": "fine-eval",
                "has_reference": False,
                "reference": None,
                "image": image_file,
                "instruction": group[-1][1][key],
                "conversation_id": self._conv_ids[index],
                "turn": self._turns[index],
                "history": list(self._history[index]),
                "lines": [ln for ln, _ in group],
                "turns": len(group),
                "instructions": [obj.get("instruction") for _, obj in group],
                "instructions_no_region": [obj.get("instruction_no_region") for _, obj in group],
                "use_regions": self.use_regions,
            },
        }
