"""The ``pvit`` model of lmms-eval: every request is answered or scored by a [pvit.Predictor][pvit.predict.Predictor].

``lmms-eval --model pvit --model_args pretrained=RUN_OR_EXPORT[,device=cpu,boxes_field=boxes,box_format=pixels]``.
A task's ``doc_to_text`` is the user prompt (the model's own template is applied around it) and
``doc_to_visual`` gives at most one image. Regions: ``<region1>``... in the text take their boxes from the doc
field ``boxes_field``; PVIT ``<Region>`` and Shikra ``[x1,y1,x2,y2]`` box text in the prompt are regions as
they are. One process: lmms-eval's multi-GPU launch (accelerate with several processes) is not supported.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from itertools import groupby

from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from tqdm import tqdm

from pvit.predict import Predictor, PredictError
from pvit_lmms_eval.requests import boxes_of, check_box_format, decoding_of, image_of


def _where(task, doc_id) -> str:
    return f"task {task} doc {doc_id}"


def _located(e: PredictError, where: str) -> PredictError:
    return e if str(e).startswith(where) else PredictError(f"{where}: {e}", e.code)


@dataclass
class _Job:
    """One lmms-eval request: its place, its arguments, where it comes from, its stop strings and decoding."""

    index: int
    args: tuple
    where: str
    stop: list | None = None
    opts: dict = field(default_factory=dict)

    def key(self) -> str:
        return repr((self.stop, sorted(self.opts.items())))


class PVIT(lmms):
    """A trained pvit model (a run folder or a stage export) evaluated by lmms-eval.

    Args:
        pretrained: a run folder or a stage export folder ([Predictor.load][pvit.predict.Predictor.load]).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``; default: the recipe's ``engine.device``.
        batch_size: requests generated or scored together (one ``predict_batch`` / ``score_batch`` call).
        boxes_field: the doc field with the boxes of ``<region1>``, ``<region2>``...
        box_format: ``pixels`` (of the doc's image) or ``normalized`` ([0, 1]).
        max_rounds: the most rounds of a ``generate_until_multi_round`` request.
        seed: seeds sampled decoding (tasks with ``temperature`` > 0).
    """

    is_simple = True

    def __init__(self, pretrained: str = "", device: str | None = None, batch_size: int | str = 1,
                 boxes_field: str = "boxes", box_format: str = "pixels", max_rounds: int | str = 10,
                 seed: int | str | None = None, max_batch_size=None, **unknown) -> None:
        super().__init__()
        valid = "pretrained, device, batch_size, boxes_field, box_format, max_rounds, seed"
        if unknown:
            raise ValueError(f"pvit: unknown model_args {', '.join(sorted(unknown))}; valid: {valid}")
        if not pretrained:
            raise ValueError("pvit: model_args pretrained=... is required (a run folder or a stage export folder)")
        try:
            self.batch_size = int(batch_size)
            self.max_rounds = int(max_rounds)
            self.seed = None if seed in (None, "") else int(seed)
        except (TypeError, ValueError):
            raise ValueError(f"pvit: batch_size, max_rounds and seed must be whole numbers, got {batch_size!r}, "
                             f"{max_rounds!r}, {seed!r} (batch_size 'auto' is not supported)") from None
        if self.batch_size < 1 or self.max_rounds < 1:
            raise ValueError("pvit: batch_size and max_rounds must be >= 1")
        self.boxes_field = str(boxes_field)
        self.box_format = check_box_format(str(box_format))
        self.predictor = Predictor.load(pretrained, device=device)

    # ------------------------------------------------------------------------------------------ helpers
    def _sample(self, context: str, visuals, doc, where: str) -> dict:
        """One request -> a Predictor sample (image, regions), errors naming the task and doc."""
        try:
            boxes = boxes_of(doc, self.boxes_field, context, where)
            return self.predictor.sample(image_of(visuals, where), context, boxes, self.box_format)
        except PredictError as e:
            raise _located(e, where) from None

    def _jobs(self, requests: list[Instance], decoding: bool) -> list[_Job]:
        jobs = []
        for i, req in enumerate(requests):
            job = _Job(i, req.args, f"request {i}" if len(req.args) == 2 else _where(req.args[-2], req.args[-3]))
            if decoding:
                job.stop, job.opts = decoding_of(req.args[1], job.where, self.seed)
            jobs.append(job)
        return jobs

    def _batches(self, jobs: list[_Job]):
        """Jobs with the same decoding options, ``batch_size`` at a time (docs and images are read per batch)."""
        for _, group in groupby(sorted(jobs, key=_Job.key), key=_Job.key):
            group = list(group)
            for i in range(0, len(group), self.batch_size):
                yield group[i:i + self.batch_size]

    def _predict(self, samples: list[dict], wheres: list[str], stop, opts: dict):
        try:
            return self.predictor.predict_batch(samples, stop=stop, **opts)
        except PredictError:
            for s, w in zip(samples, wheres):  # which request: encode each to find it
                try:
                    self.predictor.encode(s)
                except PredictError as e:
                    raise _located(e, w) from None
            raise

    # ------------------------------------------------------------------------------------------ requests
    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """Answer each ``(context, generation_kwargs, doc_to_visual, doc_id, task, split)`` request."""
        out: list = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="pvit generate")
        for chunk in self._batches(self._jobs(requests, decoding=True)):
            samples = []
            for job in chunk:
                context, _, doc_to_visual, doc_id, task, split = job.args
                doc = self.task_dict[task][split][doc_id]
                samples.append(self._sample(context, doc_to_visual(doc), doc, job.where))
            replies = self._predict(samples, [j.where for j in chunk], chunk[0].stop, chunk[0].opts)
            for job, reply in zip(chunk, replies):
                out[job.index] = GenerationResult(reply.text, TokenCounts(reply.prompt_tokens, reply.completion_tokens))
                self.cache_hook.add_partial("generate_until", job.args[:2], reply.text)
            bar.update(len(chunk))
        bar.close()
        return out

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """``(sum of the continuation's log-probabilities, greedy decoding writes it)`` per request (as the
        ``text`` of a GenerationResult: see the comment below).

        Requests are ``(context, continuation or doc_to_target, doc_to_visual, doc_id, task, split)``, or
        ``(context, continuation)`` for an unconditional score (no image).
        """
        out: list = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="pvit score")
        for chunk in self._batches(self._jobs(requests, decoding=False)):
            asked = []
            for job in chunk:
                if len(job.args) == 2:
                    (context, target), doc, visuals = job.args, {}, None
                else:
                    context, target, doc_to_visual, doc_id, task, split = job.args
                    doc = self.task_dict[task][split][doc_id]
                    visuals = doc_to_visual(doc)
                continuation = target if isinstance(target, str) else str(target(doc))
                asked.append(dict(self._sample(context, visuals, doc, job.where), continuation=continuation))
            try:
                scores = self.predictor.score_batch(asked)
            except PredictError as e:
                raise _located(e, ", ".join(j.where for j in chunk)) from None
            for job, a, s in zip(chunk, asked, scores):
                self.cache_hook.add_partial("loglikelihood", (job.args[0], a["continuation"]), (s.logprob, s.greedy))
                # lmms-eval 0.7's evaluator turns any output other than a str, a GenerationResult or a
                # (str, meta) pair into its str(), so a bare (logprob, greedy) pair would reach the task as the
                # text "(-3.2, False)"; a GenerationResult hands its ``text`` over unchanged
                out[job.index] = GenerationResult((s.logprob, s.greedy))
            bar.update(len(chunk))
        bar.close()
        return out

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Answer rounds until the task's ``doc_to_text`` says stop; one list of answers per request.

        Round 0 is the request's context and visuals. After each round ``doc_to_text(doc, previous_output=
        answers, round_idx=r, previous_round_info=info)`` returns ``(visuals, context, stop, answers, info)`` for
        the next one; each round is a fresh prompt (the task puts in it whatever of the earlier answers it wants).
        """
        out: list = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="pvit multi-round")
        for chunk in self._batches(self._jobs(requests, decoding=True)):
            active = []  # per request still going: [job, doc, context, visuals, answers, info]
            for job in chunk:
                context, _, doc_to_visual, _, doc_id, task, split = job.args
                doc = self.task_dict[task][split][doc_id]
                active.append([job, doc, context, doc_to_visual(doc), [], None])
            for rnd in range(self.max_rounds):
                samples = [self._sample(ctx, vis, doc, job.where) for job, doc, ctx, vis, _, _ in active]
                replies = self._predict(samples, [a[0].where for a in active], chunk[0].stop, chunk[0].opts)
                following = []
                for a, reply in zip(active, replies):
                    job, doc, _, _, answers, info = a
                    answers.append(reply.text)
                    vis, ctx, done, kept, info = job.args[3](doc, previous_output=list(answers),
                                                             round_idx=rnd + 1, previous_round_info=info)
                    out[job.index] = answers = list(kept) if kept is not None else answers
                    if not done:
                        following.append([job, doc, ctx, vis, answers, info])
                active = following
                if not active:
                    break
            if active:
                warnings.warn(f"{', '.join(a[0].where for a in active)}: stopped after max_rounds={self.max_rounds} "
                              "rounds; the task had not said stop (raise model_args max_rounds)", stacklevel=2)
            bar.update(len(chunk))
        bar.close()
        return out
