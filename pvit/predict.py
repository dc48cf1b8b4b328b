"""The one inference path: ``Predictor`` turns (image, prompt, boxes) into a ``Reply`` (text, answer boxes)."""

from __future__ import annotations

import functools
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pvit.device import autocast
from pvit.errors import CheckpointError
from pvit.interfaces import REGION_START
from pvit.predict_stream import Stream
from pvit.predict_text import PredictError, cut_at_stop, normalise_box, reply_boxes, resolve_regions

__all__ = ["Predictor", "Reply", "PredictError", "Stream", "run_batch"]

#: How a prompt's box text is read: ``parse`` (regions) or ``plain`` (words only).
REGION_TEXT = ("parse", "plain")


@dataclass
class Reply:
    """A generated answer: ``text`` and the boxes it wrote as pixel xyxy of the input image (``boxes``)."""

    text: str
    boxes: list = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


def run_batch(model, collator, encoded: list[dict], *, max_new_tokens: int, precision: str = "fp32",
              do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
              **generate_extra) -> list[str]:
    """Generate for collator-encoded prompts as one left-padded batch (what evaluation and the Predictor use)."""
    from pvit.model import batch_to

    device = next(model.llm.parameters()).device
    batch = batch_to(collator.pad(encoded), device)
    with autocast(precision, device):  # the precision the last stage trained in
        return model.generate(batch, max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p,
                              stop_token_ids=collator.stop_token_ids, seed=seed, **generate_extra)


def _stage_exports(run: Path, cfg) -> list[Path]:
    from pvit.rundir import RunDir

    rd = RunDir(run)
    return [rd.export(i, st.name) for i, st in enumerate(cfg.stages)]


class Predictor:
    """A trained pvit model ready to answer: ``predict``, ``predict_batch`` and ``stream``.

    Build it with [from_run][pvit.predict.Predictor.from_run] or
    [from_pretrained][pvit.predict.Predictor.from_pretrained]. Regions are referred to in prompts as
    ``<region1>``, ``<region2>``... matched to ``boxes`` (``box_format`` ``"pixels"`` of the given image, or
    ``"normalized"`` to [0, 1]); PVIT ``<Region><L..>x4</Region>`` and Shikra ``[x1,y1,x2,y2]`` text work too.
    """

    def __init__(self, model, template, *, max_length: int, region_policy: str = "error", precision: str = "fp32",
                 name: str = "pvit", max_new_tokens: int = 128):
        from pvit.collate import Collator

        self.model = model.eval()
        self.template = template
        self.collator = Collator.for_model(model, template, max_length, region_policy, generate=True)
        self.precision = precision
        self.name = name
        self.max_new_tokens = int(max_new_tokens)
        self.lock = threading.Lock()  # one generation at a time on the model
        self.recipe = None  # the recipe config the model was built from (set by from_run / from_pretrained)

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | None = None) -> "Predictor":
        """Rebuild a finished run's model (``resolved.yaml``) and load every stage's export in order."""
        from pvit.recipe import load_recipe

        run = Path(run_dir)
        if not (run / "resolved.yaml").is_file():
            raise CheckpointError(f"{run}: not a pvit run folder (no resolved.yaml); pass a run folder or an export")
        cfg = load_recipe(run / "resolved.yaml").cfg
        return cls._build(cfg, _stage_exports(run, cfg), device, run.name)

    @classmethod
    def from_pretrained(cls, export_dir: str | Path, device: str | None = None) -> "Predictor":
        """Rebuild a stage export's model from its ``recipe.yaml``; loads the earlier stages' exports beside it.

        A self-contained folder written by ``pvit export`` (it has ``pvit.json``) needs nothing beside it."""
        from pvit.recipe import load_recipe

        export = Path(export_dir)
        if (export / "pvit.json").is_file():
            from pvit.export import read_pretrained

            cfg, name = read_pretrained(export)
            return cls._build(cfg, [export], device, name)
        if not (export / "recipe.yaml").is_file() or not (export / "weights.safetensors").is_file():
            raise CheckpointError(f"{export}: not a pvit export (needs weights.safetensors and recipe.yaml)")
        cfg = load_recipe(export / "recipe.yaml").cfg
        stage_dir = export.resolve().parent
        names = [f"{i + 1}-{st.name}" for i, st in enumerate(cfg.stages)]
        if stage_dir.name in names:
            k = names.index(stage_dir.name)
            exports = _stage_exports(stage_dir.parent.parent, cfg)[: k + 1]
        else:
            exports = [export]
        return cls._build(cfg, exports, device, stage_dir.parent.parent.name)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "Predictor":
        """A run folder or an export folder."""
        p = Path(path)
        if not p.exists():
            raise CheckpointError(f"{p} does not exist; pass a run folder or a stage export folder")
        return cls.from_run(p, device) if (p / "resolved.yaml").is_file() else cls.from_pretrained(p, device)

    @classmethod
    def _build(cls, cfg, exports: list[Path], device: str | None, name: str) -> "Predictor":
        from pvit.checkpoints import load_export
        from pvit.compose import build_as_run
        from pvit.device import resolve_device
        from pvit.preflight import check_components
        from pvit.templates import get_template

        missing = [str(e) for e in exports if not (e / "weights.safetensors").is_file()]
        if missing:
            raise CheckpointError(f"stage export(s) missing: {', '.join(missing)}; every stage's export is needed "
                                  "in order (each holds only the slots its stage trained)")
        check_components(cfg)
        model = build_as_run(cfg).to(resolve_device(device or cfg.engine.device))
        for e in exports:
            load_export(model, e)
        max_new = max([int(getattr(e, "max_new_tokens", 0) or 0) for e in (cfg.eval or [])] + [128])
        pred = cls(model, get_template(cfg.model.template, model.llm.tokenizer), max_length=cfg.model.max_length,
                   region_policy=cfg.model.region_policy,
                   precision=cfg.stages[-1].optim.precision if cfg.stages else "fp32", name=name,
                   max_new_tokens=max_new)
        pred.recipe = cfg  # what ``pvit export`` writes out again
        return pred

    # ------------------------------------------------------------------------------------------ requests
    def sample(self, image, prompt: str | list, boxes: Sequence | None = None, box_format: str = "pixels",
               max_regions: int | None = None, region_text: str = "parse") -> dict:
        """A collator sample for one request; ``prompt`` is text or ``[{"role", "content"}, ...]`` ending on user.

        ``region_text="plain"`` reads the prompt as plain text: ``<regionN>``, Shikra and PVIT box text are not
        regions but words (for prompts that merely talk about boxes, such as data-generation prompts).
        Raises PredictError for an unreadable image, a box outside the image, or unmatched ``<regionN>``.
        """
        from pvit.images import load_image

        if isinstance(image, (str, Path)):
            try:
                image = load_image(image, sample_id="request")
            except Exception as e:  # noqa: BLE001 - every unreadable file is the caller's problem
                raise PredictError(f"image {image}: cannot be read ({e})", "invalid_image") from None
        size = getattr(image, "size", None) if image is not None else (1, 1)
        if not size or min(size) <= 0:
            raise PredictError(f"image {image!r} is not a non-empty PIL image or a path", "invalid_image")
        turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if not turns or turns[-1].get("role") != "user":
            raise PredictError("the conversation must end with a user message", "invalid_request")
        if region_text not in REGION_TEXT:
            raise PredictError(f"region_text {region_text!r} is unknown; valid: {', '.join(REGION_TEXT)}",
                               "invalid_request")
        texts = [str(t.get("content", "")) for t in turns]
        if region_text == "plain":
            if boxes:
                raise PredictError(f"{len(boxes)} box(es) given with region_text 'plain' (the text is read without "
                                   "regions); drop the boxes or use region_text 'parse'", "box_without_mention")
        else:
            norm = [normalise_box(b, box_format, size, f"boxes[{i}]") for i, b in enumerate(boxes or [])]
            if norm and image is None:
                raise PredictError("boxes were given without an image", "invalid_box")
            texts = resolve_regions(texts, norm, max_regions=max_regions)
            if image is None and any(REGION_START in t for t in texts):
                raise PredictError("the prompt has region text (<regionN>, <Region>...</Region> or [x1,y1,x2,y2]) but "
                                   "no image; send an image, or set region_text 'plain' to read box text as words",
                                   "region_without_image")
        conv = [{"from": "human" if t.get("role") == "user" else "gpt", "value": x} for t, x in zip(turns, texts)]
        return {"id": "request", "image": image, "conversations": conv, "size": size, "region_text": region_text}

    def encode(self, sample: dict) -> dict:
        """Tokenise a request sample; PredictError when the prompt is over the context length."""
        from pvit.errors import PvitError

        try:
            with warnings.catch_warnings():  # a prompt that does not fit is this call's error, not a warning
                warnings.simplefilter("ignore", UserWarning)
                enc = self.collator.encode(sample)
        except PvitError as e:
            raise PredictError(str(e), "invalid_request") from None
        if enc is None:
            raise PredictError(f"the prompt is longer than the model's context length ({self.collator.max_length} "
                               "tokens)", "context_length_exceeded")
        return enc

    def _options(self, max_new_tokens=None, do_sample=False, temperature=1.0, top_p=1.0, seed=None) -> dict:
        return dict(max_new_tokens=int(max_new_tokens or self.max_new_tokens), do_sample=bool(do_sample),
                    temperature=float(temperature), top_p=float(top_p), seed=seed)

    def _reply(self, text: str, sample: dict, enc: dict, stop, max_new: int) -> Reply:
        text, stopped = cut_at_stop(text, stop)
        n = len(self.collator.tok(text, add_special_tokens=False)["input_ids"])
        plain = sample.get("region_text") == "plain"
        return Reply(text, [] if plain else reply_boxes(text, self.model.region_encoder, sample["size"]),
                     "stop" if stopped or n < max_new else "length", len(enc["input_ids"]), n)

    def _request_sample(self, r: dict) -> dict:
        return r if "conversations" in r else self.sample(r.get("image"), r["prompt"], r.get("boxes"),
                                                          r.get("box_format", "pixels"),
                                                          region_text=r.get("region_text", "parse"))

    def predict_batch(self, requests: list[dict], *, stop: Sequence[str] | None = None, **decoding) -> list[Reply]:
        """Answer several requests in one batch: each a dict of ``image``, ``prompt``, ``boxes``, ``box_format``
        and optionally ``region_text`` (see [sample][pvit.predict.Predictor.sample])."""
        samples = [self._request_sample(r) for r in requests]
        encoded = [self.encode(s) for s in samples]
        opts = self._options(**decoding)
        with self.lock:
            texts = run_batch(self.model, self.collator, encoded, precision=self.precision, **opts)
        return [self._reply(t, s, e, stop, opts["max_new_tokens"]) for t, s, e in zip(texts, samples, encoded)]

    def predict(self, image, prompt, boxes=None, *, box_format: str = "pixels", region_text: str = "parse",
                stop=None, **decoding) -> Reply:
        """Answer one prompt about ``image``; decoding: ``max_new_tokens``, ``do_sample``, ``temperature``,
        ``top_p``, ``seed``; ``stop``: strings that end the answer; ``region_text`` as in ``sample``."""
        return self.predict_batch([{"image": image, "prompt": prompt, "boxes": boxes, "box_format": box_format,
                                    "region_text": region_text}], stop=stop, **decoding)[0]

    def stream(self, image, prompt, boxes=None, *, box_format: str = "pixels", region_text: str = "parse",
               stop=None, **decoding) -> "Stream":
        """Like ``predict`` but returns a [Stream][pvit.predict.Stream]: iterate it for text pieces as they come."""
        sample = self.sample(image, prompt, boxes, box_format, region_text=region_text)
        return Stream(self, sample, self.encode(sample), stop, self._options(**decoding))

    # ------------------------------------------------------------------------------------------ scoring
    @functools.cached_property
    def score_collator(self):
        """The generation collator's settings, encoding prompt and reply together (as in training)."""
        from pvit.collate import Collator

        return Collator.for_model(self.model, self.template, self.collator.max_length, self.collator.region_policy)

    def score_batch(self, requests: list[dict]) -> list:
        """[Score][pvit.predict_score.Score] each request's ``continuation`` as the reply to its prompt (the other
        keys as in ``predict_batch``): the sum of its log-probabilities and whether greedy decoding writes it."""
        from pvit.predict_score import score_samples

        samples = [self._request_sample(r) for r in requests]
        return score_samples(self, samples, [r["continuation"] for r in requests])

    def score(self, image, prompt, continuation: str, boxes=None, *, box_format: str = "pixels"):
        """Score one ``continuation`` as the reply to ``prompt`` about ``image`` (see ``score_batch``)."""
        return self.score_batch([{"image": image, "prompt": prompt, "continuation": continuation, "boxes": boxes,
                                  "box_format": box_format}])[0]
