"""Scoring a reply: how likely a Predictor's model finds a given continuation, and whether it would write it.

What log-likelihood evaluations (multiple choice, lmms-eval's ``loglikelihood`` requests) need. The prompt is
built exactly as for generation ([Predictor.sample][pvit.predict.Predictor.sample]: image, ``<regionN>`` boxes,
PVIT and Shikra box text), the continuation is the assistant's reply in the model's template, and the sequence
goes through the model's normal forward (image and region features spliced in), as in training.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from pvit.interfaces import IGNORE_INDEX
from pvit.predict_text import PredictError


@dataclass
class Score:
    """The model's view of one continuation.

    ``logprob``: the sum of the log-probabilities of the continuation's tokens given the prompt (and the
    continuation's earlier tokens); ``greedy``: every one of those tokens is the most likely one at its position,
    so greedy decoding would write the continuation; ``tokens``: how many tokens were scored. The end-of-turn
    token after the reply is not part of the continuation.
    """

    logprob: float
    greedy: bool
    tokens: int


def score_samples(predictor, samples: list[dict], continuations: list[str]) -> list[Score]:
    """Score each continuation as the assistant's reply to its request sample, in one forward pass.

    ``samples`` come from [Predictor.sample][pvit.predict.Predictor.sample]. A continuation's leading whitespace
    is dropped: the template puts the separator between prompt and reply (a task's ``" B"`` is the reply ``B``).
    Raises PredictError for an empty continuation or a prompt and continuation over the context length.
    """
    from pvit.errors import PvitError
    from pvit.model import batch_to
    from pvit.device import autocast

    coll = predictor.score_collator
    encoded, targets = [], []
    for i, (sample, cont) in enumerate(zip(samples, continuations)):
        reply = str(cont).lstrip()
        if not reply:
            raise PredictError(f"continuation {i} is empty; there is nothing to score", "invalid_request")
        scored = dict(sample, conversations=[*sample["conversations"], {"from": "gpt", "value": reply}])
        try:
            with warnings.catch_warnings():  # too long is this call's error, not a warning
                warnings.simplefilter("ignore", UserWarning)
                enc = coll.encode(scored)
        except PvitError as e:
            raise PredictError(str(e), "invalid_request") from None
        # a complete reply ends with its end-of-turn token; a truncated one does not
        if enc is None or enc["labels"][-1] not in coll.stop_token_ids:
            raise PredictError(f"continuation {i}: the prompt and the continuation are longer than the model's "
                               f"context length ({coll.max_length} tokens)", "context_length_exceeded")
        positions = [t for t, v in enumerate(enc["labels"]) if v != IGNORE_INDEX][:-1]  # the end token left out
        encoded.append(enc)
        targets.append(positions)
    model = predictor.model
    device = next(model.llm.parameters()).device
    batch = batch_to(coll.pad(encoded), device)
    batch.pop("labels")  # logits only: no loss
    with predictor.lock, torch.inference_mode(), autocast(predictor.precision, device):
        logits = model(batch).logits  # (B, T, V)
    out = []
    for b, positions in enumerate(targets):
        pos = torch.tensor(positions, dtype=torch.long, device=device)  # (n,)
        ids = batch["input_ids"][b, pos]  # (n,)
        logp = torch.log_softmax(logits[b, pos - 1].float(), dim=-1)  # (n, V): position t-1 predicts token t
        picked = logp.gather(-1, ids[:, None]).squeeze(-1)  # (n,)
        greedy = bool((logp.argmax(-1) == ids).all())
        out.append(Score(float(picked.sum()), greedy, len(positions)))
    return out
