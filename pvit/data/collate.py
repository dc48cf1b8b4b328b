"""The collator: region mentions -> encoder text, templates, labels on assistant tokens, padding, pixels."""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

import torch

from pvit.data.templates import Segment, Template
from pvit.errors import DataError
from pvit.interfaces import IMAGE_PATCH_TOKEN, IMAGE_TOKEN, REGION_PATCH_TOKEN, RegionInputs
from pvit.regions import RegionStats, rewrite_mentions

IGNORE_INDEX = -100
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class Collator:
    """Turns dataset samples into model batches.

    Args:
        tokenizer: the LLM's tokenizer (placeholder and region tokens already added).
        template: a [Template][pvit.data.templates.Template].
        image_transform: the image encoder's ``transform`` (PIL -> (3, H, W)), or None for a text-only model.
        num_image_tokens: N placeholders per image.
        region_encoder: the region encoder (its ``region_text``, ``prepare``, ``collate``,
            ``tokens_per_region``), or None.
        max_length: longest sequence; longer samples lose whole trailing turns, or are dropped.
        region_policy: ``error`` | ``clip`` | ``drop`` for invalid boxes.
        generate: build prompts for generation (left padding, last assistant turn held out as the answer).
    """

    def __init__(
        self,
        tokenizer: Any,
        template: Template,
        *,
        image_transform=None,
        num_image_tokens: int = 0,
        region_encoder=None,
        max_length: int = 2048,
        region_policy: str = "error",
        generate: bool = False,
    ):
        self.tok = tokenizer
        self.template = template
        self.image_transform = image_transform
        self.num_image_tokens = num_image_tokens
        self.region_encoder = region_encoder
        self.max_length = max_length
        self.region_policy = region_policy
        self.generate = generate
        self.stats: Counter = Counter()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id if template.name != "chat" else None
        vocab = tokenizer.get_vocab()
        self.placeholder_ids = {vocab[t] for t in (IMAGE_PATCH_TOKEN, REGION_PATCH_TOKEN) if t in vocab}
        self._cache: dict[str, list[int]] = {}
        self.region_stats = RegionStats()
        self._where = ""

    def _render(self, box) -> str:
        if self.region_encoder is None:
            raise DataError(
                f"{self._where}: the text has region mentions but the recipe has no region encoder "
                "(set model.region_encoder, e.g. 'none' to write regions as plain text)"
            )
        return self.region_encoder.region_text(box)

    # ------------------------------------------------------------------------------------------ one sample
    def _ids(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
            if len(self._cache) < 50_000:
                self._cache[text] = ids
        return ids

    def _turns(self, sample: dict, where: str) -> tuple[list[tuple[str, str]], list[list[tuple]]]:
        conv = list(sample.get("conversations") or [])
        while conv and _ROLES.get(conv[0].get("from")) != "user":
            conv.pop(0)
        if not conv:
            raise DataError(f"{where}: no human turn in 'conversations'")
        self._where = where
        turns, boxes = [], []
        for i, turn in enumerate(conv):
            role = _ROLES.get(turn.get("from"))
            if role is None:
                raise DataError(f"{where}: turn {i} has role {turn.get('from')!r}; expected human or gpt")
            if role != ("user" if i % 2 == 0 else "assistant"):
                raise DataError(f"{where}: turns must alternate human/gpt; turn {i} is {turn.get('from')!r}")
            text = str(turn.get("value", ""))
            text, turn_boxes = rewrite_mentions(text, self._render, policy=self.region_policy, where=where,
                                                stats=self.region_stats)
            turns.append((role, text))
            boxes.append([tuple(float(v) for v in b) for b in turn_boxes])
        return turns, boxes

    def encode(self, sample: dict) -> dict | None:
        """Tokenise one sample; None when it cannot be kept (too long), with the reason counted in ``stats``."""
        sid = str(sample.get("id", "?"))
        where = f"sample {sid}" + (f" of {sample['meta']['source']}" if isinstance(sample.get("meta"), dict)
                                   and sample["meta"].get("source") else "")
        turns, boxes = self._turns(sample, where)
        image = sample.get("image")
        has_image = image is not None
        image_text = IMAGE_PATCH_TOKEN * self.num_image_tokens
        if has_image:
            if self.image_transform is None:
                raise DataError(f"{where}: the sample has an image but the recipe has no image encoder")
            if not any(IMAGE_TOKEN in t for _, t in turns):
                turns[0] = (turns[0][0], f"{IMAGE_TOKEN}\n{turns[0][1]}")
        turns = [(r, t.replace(IMAGE_TOKEN, image_text if has_image else "")) for r, t in turns]
        if not has_image and any(IMAGE_TOKEN in t for _, t in sample_texts(sample)):
            raise DataError(f"{where}: the text has {IMAGE_TOKEN} but the sample has no image")
        if not has_image and any(boxes):
            raise DataError(f"{where}: the sample mentions regions but has no image")

        answer = None
        if self.generate:
            if turns[-1][0] == "assistant":
                answer = turns[-1][1].strip()
                turns, boxes = turns[:-1], boxes[:-1]
        segs = self.template.render(turns, add_generation_prompt=self.generate)

        # keep whole (user, assistant) pairs from the front while they fit
        pieces: list[tuple[list[int], list[int], int]] = []  # ids, labels, boxes in piece
        for k, seg in enumerate(segs):
            ids = list(self._ids(seg.text))
            if seg.eos and self.eos_id is not None:
                ids.append(self.eos_id)
            labels = [i if seg.target and i not in self.placeholder_ids else IGNORE_INDEX for i in ids]
            pieces.append((ids, labels, len(boxes[k]) if k < len(boxes) else 0))
        head = [self.bos_id] if self.bos_id is not None else []
        ids_all, labels_all, n_boxes = list(head), [IGNORE_INDEX] * len(head), 0
        kept_turns = 0
        step = 1 if self.generate else 2
        for start in range(0, len(pieces), step):
            group = pieces[start:start + step]
            add = sum(len(g[0]) for g in group)
            if len(ids_all) + add > self.max_length:
                break
            for g in group:
                ids_all += g[0]
                labels_all += g[1]
                n_boxes += g[2]
            kept_turns += len(group)
        if kept_turns < len(pieces):
            if kept_turns == 0 or self.generate:
                self.stats["dropped_too_long"] += 1
                warnings.warn(f"{where}: longer than max_length={self.max_length} tokens; sample dropped", stacklevel=2)
                return None
            self.stats["truncated"] += 1
        if not self.generate and all(v == IGNORE_INDEX for v in labels_all):
            self.stats["dropped_no_target"] += 1
            warnings.warn(f"{where}: no assistant tokens to train on; sample dropped", stacklevel=2)
            return None
        flat_boxes = [b for tb in boxes for b in tb][:n_boxes]
        out = {
            "id": sid,
            "input_ids": ids_all,
            "labels": labels_all,
            "boxes": torch.tensor(flat_boxes, dtype=torch.float32).reshape(-1, 4),  # (R_b, 4)
            "pixels": self.image_transform(image) if has_image else None,
            "region_prepared": (
                self.region_encoder.prepare(image)
                if has_image and self.region_encoder is not None and self.region_encoder.uses_own_pixels
                else None
            ),
            "answer": answer,
            "meta": sample.get("meta", {}),
        }
        self.stats["samples"] += 1
        self.stats["regions"] += len(flat_boxes)
        return out

    # ------------------------------------------------------------------------------------------ a batch
    def __call__(self, samples: list[dict]) -> dict:
        encoded = [e for e in (self.encode(s) for s in samples) if e is not None]
        if not encoded:
            raise DataError(
                f"every sample of a batch was dropped ({', '.join(str(s.get('id')) for s in samples)}); "
                f"raise model.max_length (now {self.max_length}) or check the data with 'pvit data check'"
            )
        return self.pad(encoded)

    def pad(self, encoded: list[dict]) -> dict:
        """Pad encoded samples to the longest (left for generation, right for training)."""
        B, T = len(encoded), max(len(e["input_ids"]) for e in encoded)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)  # (B, T)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((B, T), dtype=torch.long)  # (B, T)
        for b, e in enumerate(encoded):
            n = len(e["input_ids"])
            sl = slice(T - n, T) if self.generate else slice(0, n)
            input_ids[b, sl] = torch.tensor(e["input_ids"])
            labels[b, sl] = torch.tensor(e["labels"])
            attention_mask[b, sl] = 1
        with_image = [b for b, e in enumerate(encoded) if e["pixels"] is not None]
        pixels = torch.stack([encoded[b]["pixels"] for b in with_image]) if with_image else None  # (B_i, 3, H, W)
        region_inputs = RegionInputs()
        if self.region_encoder is not None and with_image and self.region_encoder.uses_own_pixels:
            region_inputs = self.region_encoder.collate([encoded[b]["region_prepared"] for b in with_image])
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "pixels": pixels,
            "image_sample": torch.tensor(with_image, dtype=torch.long),  # (B_i,)
            "boxes": [encoded[b]["boxes"] for b in with_image],  # B_i x (R_b, 4)
            "n_regions": torch.tensor([len(e["boxes"]) for e in encoded], dtype=torch.long),  # (B,)
            "region_inputs": region_inputs,
            "ids": [e["id"] for e in encoded],
            "answers": [e["answer"] for e in encoded],
            "meta": [e["meta"] for e in encoded],
        }


def sample_texts(sample: dict) -> list[tuple[str, str]]:
    """(role, text) of every turn of a raw sample."""
    return [(str(t.get("from")), str(t.get("value", ""))) for t in sample.get("conversations") or []]
