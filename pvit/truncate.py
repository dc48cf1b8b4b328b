"""Fitting a rendered conversation into ``max_length`` tokens without cutting a region or image span.

A sample longer than ``max_length`` keeps whole (question, reply) pairs from the front, and may end inside a
reply at a point outside every region and image span; one that cannot keep any reply token is dropped. Both
are counted in the collator's ``stats`` and warned about (docs/reliability.md item 19).
"""

from __future__ import annotations

import re
import warnings

from pvit.interfaces import IGNORE_INDEX

#: Marks around the text of a region (\x02 \x03) or image (\x04 \x05) span until tokenisation, so truncation
#: can tell where spans are; removed before any tokenizer sees the text.
R0, R1, I0, I1 = "\x02", "\x03", "\x04", "\x05"
MARKS = re.compile("[\x02-\x05]")


def unmark(text: str) -> tuple[str, list[tuple[int, int, bool]]]:
    """Text without span marks, and the spans ``(start, end, is_region)`` in character offsets of it."""
    if not MARKS.search(text):
        return text, []
    out, spans, pos, opened = [], [], 0, None
    for piece in re.split("([\x02-\x05])", text):
        if piece in (R0, I0):
            opened = pos
        elif piece in (R1, I1):
            spans.append((opened, pos, piece == R1))
        elif piece:
            out.append(piece)
            pos += len(piece)
    return "".join(out), spans


class TruncationMixin:
    """``_fit`` and ``_partial`` of the [Collator][pvit.collate.Collator].

    Reads the collator's ``tok``, ``_ids(text)``, ``max_length``, ``generate``, ``bos_id``, ``eos_id``,
    ``placeholder_ids`` and counts into its ``stats``.
    """

    def _fit(self, rendered, boxes, where):
        """Token ids and labels of the turns that fit in ``max_length``; None when nothing can be kept."""
        pieces = []  # per turn: (ids, labels, n boxes, [(segment ids, spans, target)] for partial cuts)
        for k, segs in enumerate(rendered):
            ids, labels, parts = [], [], []
            for seg in segs:
                text, spans = unmark(seg.text)
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
