"""Streaming one answer: ``Stream`` yields text pieces as the model generates them, and can be cancelled."""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Iterator

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from pvit.predict_text import cut_at_stop

if TYPE_CHECKING:
    from pvit.predict import Predictor, Reply

__all__ = ["Stream"]


class _TokenQueue(BaseStreamer):
    """Hands each generated step's token ids to a queue (the prompt, when generate sends it first, is skipped)."""

    def __init__(self, q: queue.Queue):
        self.q, self.first = q, True

    def put(self, value):
        if self.first and value.dim() > 1 and value.shape[-1] > 1:  # the prompt (not sent from embeddings)
            self.first = False
            return
        self.first = False
        self.q.put([int(v) for v in value.reshape(-1).tolist()])

    def end(self):
        pass


class _Cancel(StoppingCriteria):
    """Stops every row once ``event`` is set (a client that went away)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class Stream:
    """Text pieces of one answer as they are generated; ``reply`` once exhausted; ``close()`` stops generation."""

    def __init__(self, predictor: Predictor, sample: dict, enc: dict, stop, opts: dict):
        self.p, self.sample, self.enc, self.stop, self.opts = predictor, sample, enc, stop, opts
        self.cancelled = threading.Event()
        self.reply: Reply | None = None
        self._q: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from transformers import StoppingCriteriaList

        from pvit.predict import run_batch

        try:
            with self.p.lock:  # one generation at a time on the shared model
                run_batch(self.p.model, self.p.collator, [self.enc], precision=self.p.precision,
                          streamer=_TokenQueue(self._q),
                          stopping_criteria=StoppingCriteriaList([_Cancel(self.cancelled)]), **self.opts)
        except Exception as e:  # noqa: BLE001 - handed to the consumer's thread
            self._q.put(e)
        self._q.put(None)

    def __iter__(self) -> Iterator[str]:
        tok, coll, ids, sent = self.p.collator.tok, self.p.collator, [], ""
        stops = set(coll.stop_token_ids)
        drop = stops | coll.placeholder_ids | {tok.bos_token_id, tok.pad_token_id}
        done = False
        try:
            while (item := self._q.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                if done:
                    continue
                for t in item:
                    if t in stops:
                        done = True
                        break
                    if t not in drop:
                        ids.append(t)
                text, stopped = cut_at_stop(tok.decode(ids, skip_special_tokens=False).strip(), self.stop)
                if text.startswith(sent) and len(text) > len(sent):
                    yield text[len(sent):]
                    sent = text
                if stopped:
                    done = True
                    self.cancelled.set()
        finally:
            self.cancelled.set()
        self.reply = self.p._reply(sent, self.sample, self.enc, self.stop, self.opts["max_new_tokens"])

    def close(self) -> None:
        """Stop generating (a client that went away frees the model)."""
        self.cancelled.set()
