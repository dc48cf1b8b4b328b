"""The collator: region mentions -> encoder text, templates, labels on assistant tokens, padding, pixels.

What it promises (docs/reliability.md items 17-22):

- Invalid boxes raise [InvalidRegionError][pvit.errors.InvalidRegionError] naming the dataset file, the sample,
  the box index and its value under the default policy ``error``; ``clip`` / ``drop`` repair or skip them and
  count what they did in ``region_stats``.
- Region mentions and boxes must agree in number: a sample's explicit ``boxes`` against its mentions, each
  ``region_text`` against the encoder's ``tokens_per_region``, and the placeholder tokens of the final sequence
  against the boxes and the image. A disagreement is a DataError naming the sample and both counts here, never
  a shape mismatch inside the model's forward.
- A sample longer than ``max_length`` keeps whole (question, reply) pairs from the front, and may end inside
  a reply at a point outside every region and image span; one that cannot keep any reply token is dropped.
  Both are counted in ``stats`` and warned about. No kept sample is without trained-on tokens.
- Images given as paths load with [load_image][pvit.images.load_image]; text-only samples pass through."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from typing import Any

import torch

from pvit.boxes import RegionStats
from pvit.errors import DataError
from pvit.images import load_image
from pvit.interfaces import IGNORE_INDEX, IMAGE_PATCH_TOKEN, IMAGE_TOKEN, REGION_PATCH_TOKEN, RegionInputs, Regions
from pvit.mentions import ANY_MENTION, check_box_count, render_region, rewrite_turns
from pvit.templates import Template, stop_token_ids
from pvit.truncate import I0, I1, MARKS, TruncationMixin

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def _own_replies(texts: list[str], roles: list[str], boxes: list[list]) -> list[str | None]:
    """Per box, in mention order: the reply to its turn when that turn mentions it alone, else None (the targets
    of the region-contrastive objective, [pvit.objectives][])."""
    out: list[str | None] = []
    for i, turn_boxes in enumerate(boxes):
        answered = len(turn_boxes) == 1 and i + 1 < len(texts) and roles[i + 1] == "assistant"
        out += [(texts[i + 1].strip() or None) if answered else None] * len(turn_boxes)
    return out


class Collator(TruncationMixin):
    """Turns dataset samples into model batches.

    Args:
        tokenizer: the LLM's tokenizer (placeholder and region tokens already added).
        template: a [Template][pvit.templates.Template].
        image_transform: the image encoder's ``transform`` (PIL -> (3, H, W)), or None for a text-only model.
        num_image_tokens: N placeholders per image.
        region_encoder: the region encoder (its ``region_text``, ``prepare``, ``collate``,
            ``tokens_per_region``), or None.
        max_length: longest sequence in tokens (see the module docstring for what happens beyond it).
        region_policy: ``error`` | ``clip`` | ``drop`` for invalid boxes.
        generate: build prompts for generation (left padding, last assistant turn held out as the answer).

    Samples are ``{"id", "image" (PIL image, a path, or None), "conversations": [{"from", "value"}], "meta"}``
    and may carry ``"boxes"``: canonical xyxy boxes, one per ``<Region>...</Region>`` mention in mention
    order, used instead of the boxes written in the mentions.

    Attributes:
        stats: Counter of ``samples``, ``with_image``, ``text_only``, ``regions``, ``truncated``,
            ``dropped_too_long``, ``dropped_no_target`` (per process: each loader worker counts its own).
        region_stats: boxes seen, clipped and dropped under the region policy.
        stop_token_ids: token ids that end a reply (EOS and the template's end-of-turn tokens).
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
        self.num_image_tokens = int(num_image_tokens)
        self.region_encoder = region_encoder
        self.tokens_per_region = int(getattr(region_encoder, "tokens_per_region", 0) or 0)
        self.max_length = int(max_length)
        self.region_policy = region_policy
        self.generate = generate
        self.stats: Counter = Counter()
        self.region_stats = RegionStats()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id if template.name != "chat" else None
        vocab = tokenizer.get_vocab()
        self.image_patch_id = vocab.get(IMAGE_PATCH_TOKEN)
        self.region_patch_id = vocab.get(REGION_PATCH_TOKEN)
        self.placeholder_ids = {i for i in (self.image_patch_id, self.region_patch_id) if i is not None}
        self.stop_token_ids: list[int] = stop_token_ids(tokenizer, template)
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def for_model(cls, model, template: Template, max_length: int, region_policy: str = "error",
                  generate: bool = False) -> "Collator":
        """The collator that matches a PVITModel's components (tokenizer, image transform, region encoder)."""
        return cls(
            model.llm.tokenizer,
            template,
            image_transform=model.image_encoder.transform if model.image_encoder is not None else None,
            num_image_tokens=model.num_image_tokens,
            region_encoder=model.region_encoder,
            max_length=max_length,
            region_policy=region_policy,
            generate=generate,
        )

    def _rewrite(self, texts: list[str], explicit, where: str) -> tuple[list[str], list[list[tuple]]]:
        """Region mentions of every turn -> marked encoder text; returns (texts, boxes per turn)."""
        def render(box):
            return render_region(self.region_encoder, self.tokens_per_region, box, where)

        return rewrite_turns(texts, explicit, where, render=render, policy=self.region_policy, stats=self.region_stats)

    # ------------------------------------------------------------------------------------------ one sample
    def _ids(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
            if len(self._cache) < 50_000:
                self._cache[text] = ids
        return ids

    @staticmethod
    def where(sample: dict) -> str:
        """``sample <id> of <dataset file>`` (or of its source), for messages."""
        meta = sample.get("meta") if isinstance(sample.get("meta"), dict) else {}
        src = meta.get("file") or meta.get("source") or meta.get("dataset")
        return f"sample {sample.get('id', '?')}" + (f" of {src}" if src else "")

    def _conversation(self, sample: dict, where: str) -> list[tuple[str, str]]:
        conv = list(sample.get("conversations") or [])
        while conv and isinstance(conv[0], dict) and _ROLES.get(conv[0].get("from")) != "user":
            conv.pop(0)
        if not conv:
            raise DataError(f"{where}: no human turn in 'conversations'")
        turns = []
        for i, turn in enumerate(conv):
            role = _ROLES.get(turn.get("from")) if isinstance(turn, dict) else None
            if role is None:
                raise DataError(f"{where}: turn {i} is {turn!r}; expected {{'from': 'human'|'gpt', 'value': text}}")
            if role != ("user" if i % 2 == 0 else "assistant"):
                raise DataError(f"{where}: turns must alternate human/gpt; turn {i} is {turn.get('from')!r}")
            turns.append((role, MARKS.sub("", str(turn.get("value", "")))))
        return turns

    def _image(self, sample: dict, where: str):
        image = sample.get("image")
        if image is None:
            return None
        if isinstance(image, (str, os.PathLike)):
            meta = sample.get("meta") if isinstance(sample.get("meta"), dict) else {}
            return load_image(image, sample_id=str(sample.get("id", "?")), where=meta.get("file"))
        size = getattr(image, "size", None)
        if not size or min(size) <= 0:
            raise DataError(f"{where}: the image is {image!r}, expected a non-empty PIL image or a path")
        return image

    def encode(self, sample: dict) -> dict | None:
        """Tokenise one sample; None when it cannot be kept (too long, nothing to train on), counted in ``stats``.

        Returns ``{"id", "input_ids", "labels", "boxes" (R_b, 4), "pixels" (3, H, W) or None,
        "region_prepared", "region_targets" (R_b: each box's own reply or None), "answer", "prompt", "meta"}``.
        """
        sid = str(sample.get("id", "?"))
        where = self.where(sample)
        turns = self._conversation(sample, where)
        image = self._image(sample, where)
        has_image = image is not None
        if has_image and self.image_transform is None:
            raise DataError(f"{where}: the sample has an image but the recipe has no image encoder")
        n_image_marks = sum(t.count(IMAGE_TOKEN) for _, t in turns)
        if not has_image and n_image_marks:
            raise DataError(f"{where}: the text has {IMAGE_TOKEN} but the sample has no image")
        if n_image_marks > 1:
            raise DataError(f"{where}: the text has {n_image_marks} {IMAGE_TOKEN} placeholders for one image")
        if has_image and not n_image_marks:
            turns[0] = (turns[0][0], f"{IMAGE_TOKEN}\n{turns[0][1]}")

        answer, prompt, explicit = None, None, sample.get("boxes")
        if self.generate:
            if turns[-1][0] == "assistant":
                answer = turns[-1][1].strip()
                if explicit is not None:  # the answer's boxes are held out with it
                    explicit = check_box_count([t for _, t in turns], explicit, where)
                    explicit = explicit[:len(explicit) - len(ANY_MENTION.findall(turns[-1][1]))]
                turns = turns[:-1]
            prompt = turns[-1][1]
        roles = [r for r, _ in turns]
        plain = sample.get("region_text", "parse") == "plain"  # box text is words here, not regions
        texts, boxes = ([t for _, t in turns], [[] for _ in turns]) if plain else self._rewrite(
            [t for _, t in turns], explicit, where)
        if not has_image and any(boxes):
            raise DataError(f"{where}: the sample mentions regions but has no image")
        image_text = I0 + IMAGE_PATCH_TOKEN * self.num_image_tokens + I1 if has_image else ""
        texts = [t.replace(IMAGE_TOKEN, image_text) for t in texts]
        rendered = self.template.render(list(zip(roles, texts)), add_generation_prompt=self.generate)

        kept = self._fit(rendered, boxes, where)
        if kept is None:
            return None
        ids, labels, n_boxes = kept
        if not self.generate and all(v == IGNORE_INDEX for v in labels):
            self.stats["dropped_no_target"] += 1
            warnings.warn(f"{where}: no assistant tokens to train on; sample dropped", stacklevel=2)
            return None
        flat_boxes = [b for tb in boxes for b in tb][:n_boxes]
        targets = _own_replies(texts, roles, boxes)[:n_boxes]
        self._check_placeholders(ids, len(flat_boxes), has_image, where)
        self.stats["samples"] += 1
        self.stats["with_image" if has_image else "text_only"] += 1
        self.stats["regions"] += len(flat_boxes)
        return {
            "id": sid,
            "input_ids": ids,
            "labels": labels,
            "boxes": torch.tensor(flat_boxes, dtype=torch.float32).reshape(-1, 4),  # (R_b, 4)
            "pixels": self.image_transform(image) if has_image else None,  # (3, H, W)
            "region_prepared": (  # only for a sample with boxes: a caption batch prepares no region pixels
                self.region_encoder.prepare(image)
                if flat_boxes and has_image and self.region_encoder is not None and self.region_encoder.uses_own_pixels
                else None
            ),
            "region_targets": targets,
            "answer": answer,
            "prompt": prompt,
            "meta": sample.get("meta", {}),
        }

    def _check_placeholders(self, ids: list[int], n_boxes: int, has_image: bool, where: str) -> None:
        """Placeholder tokens of the final sequence against the boxes and the image (item 18)."""
        checks = [(self.region_patch_id, n_boxes * self.tokens_per_region, "region", f"{n_boxes} region(s) x "
                   f"{self.tokens_per_region} tokens per region")]
        if self.num_image_tokens:
            want = self.num_image_tokens if has_image else 0
            checks.append((self.image_patch_id, want, "image", f"{int(has_image)} image(s) x {self.num_image_tokens}"))
        for tid, want, what, why in checks:
            got = ids.count(tid) if tid is not None else 0
            if got != want:
                raise DataError(
                    f"{where}: {got} {what} placeholder tokens in the tokenised text but {want} {what} feature "
                    f"vectors ({why}); does the sample's text contain a literal placeholder token, or does the "
                    "tokenizer split it?"
                )

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
        """Pad encoded samples to the longest in the batch (left for generation, right for training).

        Returns ``input_ids``, ``attention_mask``, ``labels`` (B, T); ``pixels`` (B_i, 3, H, W) of the B_i
        samples with an image, or None; ``image_sample`` (B_i,) their batch rows; ``regions``: the batch's
        [Regions][pvit.interfaces.Regions] (R boxes, in image order then mention order); ``region_targets``
        (R: each box's own reply text, or None; see [pvit.objectives][]); ``region_inputs``;
        and per sample ``ids``, ``answers``, ``prompts``, ``meta``.
        """
        T = max(len(e["input_ids"]) for e in encoded)
        rows_ids, rows_labels, rows_mask = [], [], []
        for e in encoded:
            pad = T - len(e["input_ids"])
            if self.generate:  # left padding: every prompt ends where generation starts
                rows_ids.append([self.pad_id] * pad + e["input_ids"])
                rows_labels.append([IGNORE_INDEX] * pad + e["labels"])
                rows_mask.append([0] * pad + [1] * len(e["input_ids"]))
            else:
                rows_ids.append(e["input_ids"] + [self.pad_id] * pad)
                rows_labels.append(e["labels"] + [IGNORE_INDEX] * pad)
                rows_mask.append([1] * len(e["input_ids"]) + [0] * pad)
        input_ids = torch.tensor(rows_ids, dtype=torch.long)  # (B, T)
        labels = torch.tensor(rows_labels, dtype=torch.long)  # (B, T)
        attention_mask = torch.tensor(rows_mask, dtype=torch.long)  # (B, T)
        with_image = [b for b, e in enumerate(encoded) if e["pixels"] is not None]
        pixels = torch.stack([encoded[b]["pixels"] for b in with_image]) if with_image else None  # (B_i, 3, H, W)
        region_inputs = RegionInputs()
        prepared = [encoded[b]["region_prepared"] for b in with_image]
        if self.region_encoder is not None and self.region_encoder.uses_own_pixels and any(
                p is not None for p in prepared):  # None: an image without boxes (the encoder skips it)
            region_inputs = self.region_encoder.collate(prepared)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "pixels": pixels,
            "image_sample": torch.tensor(with_image, dtype=torch.long),  # (B_i,)
            "regions": Regions.from_per_image([encoded[b]["boxes"] for b in with_image], with_image),  # R regions
            "region_targets": [t for b in with_image for t in encoded[b]["region_targets"]],  # R
            "region_inputs": region_inputs,
            "ids": [e["id"] for e in encoded],
            "answers": [e["answer"] for e in encoded],
            "prompts": [e.get("prompt") for e in encoded],
            "meta": [e["meta"] for e in encoded],
        }

