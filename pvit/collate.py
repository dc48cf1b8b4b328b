"""The collator: region mentions -> encoder text, templates, labels on assistant tokens, padding, pixels.

What it promises (RELIABILITY.md items 17-22):

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
- An image given as a path is loaded with [load_image][pvit.images.load_image] (errors name path and sample).
- Text-only samples (no image, no region) pass through, also in batches with image samples.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from typing import Any

import torch

from pvit.templates import Template
from pvit.errors import DataError
from pvit.images import load_image
from pvit.interfaces import IMAGE_PATCH_TOKEN, IMAGE_TOKEN, REGION_END, REGION_PATCH_TOKEN, REGION_START, RegionInputs
from pvit.regions import DROPPED_REGION_TEXT, RegionStats, rewrite_mentions, validate_box

IGNORE_INDEX = -100
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
#: Marks around the text of a region (\x02 \x03) or image (\x04 \x05) span until tokenisation, so truncation
#: can tell where spans are; removed before any tokenizer sees the text.
_R0, _R1, _I0, _I1 = "\x02", "\x03", "\x04", "\x05"
_MARKS = re.compile("[\x02-\x05]")
_ANY_MENTION = re.compile(re.escape(REGION_START) + r".*?" + re.escape(REGION_END), re.S)


def _unmark(text: str) -> tuple[str, list[tuple[int, int, bool]]]:
    """Text without span marks, and the spans ``(start, end, is_region)`` in character offsets of it."""
    if not _MARKS.search(text):
        return text, []
    out, spans, pos, opened = [], [], 0, None
    for piece in re.split("([\x02-\x05])", text):
        if piece in (_R0, _I0):
            opened = pos
        elif piece in (_R1, _I1):
            spans.append((opened, pos, piece == _R1))
        elif piece:
            out.append(piece)
            pos += len(piece)
    return "".join(out), spans


class Collator:
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
        stops = [self.eos_id] + [vocab.get(t) for t in getattr(template, "end_tokens", ())]
        self.stop_token_ids: list[int] = list(dict.fromkeys(i for i in stops if i is not None))
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

    # ------------------------------------------------------------------------------------------ regions
    def _render(self, box, where: str) -> str:
        """One region mention's text, marked as a span; its placeholder count is checked against K."""
        if self.region_encoder is None:
            raise DataError(
                f"{where}: the text has region mentions but the recipe has no region encoder "
                "(set model.region_encoder, e.g. 'none' to write regions as plain text)"
            )
        text = self.region_encoder.region_text(box)
        n = text.count(REGION_PATCH_TOKEN)
        if n != self.tokens_per_region:
            raise DataError(
                f"{where}: region encoder {type(self.region_encoder).__name__} renders a region as {text!r} with "
                f"{n} {REGION_PATCH_TOKEN} placeholders but declares tokens_per_region={self.tokens_per_region}; "
                "text and region features would disagree (fix the encoder's region_text or tokens_per_region)"
            )
        return _R0 + text + _R1

    def _rewrite(self, texts: list[str], explicit, where: str) -> tuple[list[str], list[list[tuple]]]:
        """Region mentions of every turn -> marked encoder text; returns (texts, boxes per turn)."""
        if explicit is None:
            out, boxes = [], []
            for j, text in enumerate(texts):
                new, bx = rewrite_mentions(text, lambda b: self._render(b, where), policy=self.region_policy,
                                           where=f"{where} turn {j}", stats=self.region_stats)
                out.append(new)
                boxes.append([tuple(float(v) for v in b) for b in bx])
            return out, boxes
        explicit = _check_box_count(texts, explicit, where)
        out, boxes, k = [], [], 0
        for text in texts:
            turn_boxes, pieces, last = [], [], 0
            for m in _ANY_MENTION.finditer(text):
                box = validate_box(explicit[k], policy=self.region_policy, where=f"{where} boxes", index=k,
                                   stats=self.region_stats)
                pieces += [text[last:m.start()], DROPPED_REGION_TEXT if box is None else self._render(box, where)]
                if box is not None:
                    turn_boxes.append(tuple(float(v) for v in box))
                last, k = m.end(), k + 1
            pieces.append(text[last:])
            rest = _ANY_MENTION.sub("", text)
            if REGION_START in rest or REGION_END in rest:
                raise DataError(f"{where}: a {REGION_START} or {REGION_END} tag without its partner in {text!r}")
            out.append("".join(pieces))
            boxes.append(turn_boxes)
        return out, boxes

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
            turns.append((role, _MARKS.sub("", str(turn.get("value", "")))))
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
        "region_prepared", "answer", "prompt", "meta"}``.
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
                    explicit = _check_box_count([t for _, t in turns], explicit, where)
                    explicit = explicit[:len(explicit) - len(_ANY_MENTION.findall(turns[-1][1]))]
                turns = turns[:-1]
            prompt = turns[-1][1]
        roles = [r for r, _ in turns]
        texts, boxes = self._rewrite([t for _, t in turns], explicit, where)
        if not has_image and any(boxes):
            raise DataError(f"{where}: the sample mentions regions but has no image")
        image_text = _I0 + IMAGE_PATCH_TOKEN * self.num_image_tokens + _I1 if has_image else ""
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
            "region_prepared": (
                self.region_encoder.prepare(image)
                if has_image and self.region_encoder is not None and self.region_encoder.uses_own_pixels
                else None
            ),
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

    def _fit(self, rendered, boxes, where):
        """Token ids and labels of the turns that fit in ``max_length``; None when nothing can be kept."""
        pieces = []  # per turn: (ids, labels, n boxes, [(segment ids, spans, target)] for partial cuts)
        for k, segs in enumerate(rendered):
            ids, labels, parts = [], [], []
            for seg in segs:
                text, spans = _unmark(seg.text)
                sids = list(self._ids(text))
                parts.append((text, spans, seg, len(ids), len(sids)))
                if seg.eos and self.eos_id is not None:
                    sids.append(self.eos_id)
                ids += sids
                labels += [i if seg.target and i not in self.placeholder_ids else IGNORE_INDEX for i in sids]
            pieces.append((ids, labels, len(boxes[k]), parts))
        head = [self.bos_id] if self.bos_id is not None else []
        ids_all, labels_all, n_boxes = list(head), [IGNORE_INDEX] * len(head), 0
        step = len(pieces) if self.generate else 2
        kept = 0
        for start in range(0, len(pieces), step):
            group = pieces[start:start + step]
            if len(ids_all) + sum(len(g[0]) for g in group) <= self.max_length:
                for g in group:
                    ids_all += g[0]
                    labels_all += g[1]
                    n_boxes += g[2]
                kept += len(group)
                continue
            if not self.generate and len(group) == 2:
                cut = self._partial(group, self.max_length - len(ids_all))
                if cut is not None:
                    ids_all += cut[0]
                    labels_all += cut[1]
                    n_boxes += cut[2]
                    kept += 1
            break
        if kept == 0 or (self.generate and kept < len(pieces)):
            self.stats["dropped_too_long"] += 1
            warnings.warn(f"{where}: longer than max_length={self.max_length} tokens and cannot be cut at a turn or "
                          "span boundary; sample dropped", stacklevel=3)
            return None
        if kept < len(pieces):
            self.stats["truncated"] += 1
            warnings.warn(f"{where}: longer than max_length={self.max_length} tokens; truncated at a turn or span "
                          "boundary", stacklevel=3)
        return ids_all, labels_all, n_boxes

    def _partial(self, pair, room: int):
        """A question plus the start of its reply, cut outside every span, in ``room`` tokens (or None)."""
        (q_ids, q_labels, q_boxes, _), (_, _, _, parts) = pair
        room -= len(q_ids)
        if room < 1 or not parts:
            return None
        text, spans, seg, _, n = parts[0]  # the reply's text is its first segment
        if not seg.target:
            return None
        t = min(room, n)
        if spans:
            try:
                enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
            except (NotImplementedError, ValueError, TypeError):  # a slow tokenizer has no offsets
                return None
            offsets = enc["offset_mapping"]
            if list(enc["input_ids"]) != list(self._ids(text)):
                return None
            while t > 0 and any(s < offsets[t - 1][1] < e for s, e, _ in spans):  # cut inside a span
                t -= 1
            cut_char = offsets[t - 1][1] if t > 0 else 0
            kept_boxes = sum(1 for s, e, region in spans if region and e <= cut_char)
        else:
            kept_boxes = 0
        if t < 1:
            return None
        ids = list(self._ids(text))[:t]
        labels = [i if i not in self.placeholder_ids else IGNORE_INDEX for i in ids]
        if all(v == IGNORE_INDEX for v in labels):
            return None
        return q_ids + ids, q_labels + labels, q_boxes + kept_boxes

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
        samples with an image, or None; ``image_sample`` (B_i,) their batch rows; ``boxes``: B_i x (R_b, 4);
        ``n_regions`` (B,); ``region_inputs``; and per sample ``ids``, ``answers``, ``prompts``, ``meta``.
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
            "prompts": [e.get("prompt") for e in encoded],
            "meta": [e["meta"] for e in encoded],
        }


def _check_box_count(texts: list[str], explicit, where: str) -> list:
    """A sample's explicit ``boxes`` as a list, after checking there is one per region mention (item 18)."""
    explicit = list(explicit)
    found = sum(len(_ANY_MENTION.findall(t)) for t in texts)
    if found != len(explicit):
        raise DataError(
            f"{where}: {found} region mention(s) in the text but {len(explicit)} box(es) in the sample's "
            "'boxes'; each <Region>...</Region> mention needs exactly one box, in mention order"
        )
    return explicit
