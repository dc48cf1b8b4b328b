"""lmms-eval request parts -> Predictor inputs: generation kwargs, a doc's visuals and a doc's region boxes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from pvit.predict_text import BOX_FORMATS, REGION_REF, PredictError

#: lmms-eval generation kwargs that greedy or sampled decoding with the Predictor reads.
DECODING_KEYS = ("until", "max_new_tokens", "temperature", "do_sample", "top_p", "num_beams")


class IgnoredOptionWarning(UserWarning):
    """A task's generation kwarg that the pvit model does not use (told once per name)."""


_told: set[str] = set()


def decoding_of(gen_kwargs: dict | None, where: str, seed: int | None = None) -> tuple[list[str] | None, dict]:
    """A task's ``generation_kwargs`` -> (stop strings, Predictor decoding options).

    ``until``: stop strings; ``max_new_tokens``; ``temperature`` and ``do_sample``: greedy when the temperature
    is 0 or ``do_sample`` is false, sampled otherwise (``do_sample`` alone samples at temperature 1); ``top_p``;
    ``num_beams`` must be 1. Other keys are ignored with one warning each.
    """
    kw = dict(gen_kwargs or {})
    until = kw.pop("until", None)
    if isinstance(until, str):
        until = [until]
    if until is not None and not (isinstance(until, (list, tuple)) and all(isinstance(u, str) for u in until)):
        raise PredictError(f"{where}: generation_kwargs.until is {until!r}; expected a string or a list of strings",
                           "invalid_request")
    do_sample = kw.pop("do_sample", None)
    try:
        t = kw.pop("temperature", None)
        temperature = float(t) if t is not None else (1.0 if do_sample else 0.0)
        top_p = kw.pop("top_p", None)
        top_p = 1.0 if top_p is None else float(top_p)
        max_new = kw.pop("max_new_tokens", None)
        max_new = None if max_new is None else int(max_new)
        beams = int(kw.pop("num_beams", 1) or 1)
    except (TypeError, ValueError) as e:
        raise PredictError(f"{where}: generation_kwargs has a value that is not a number ({e})",
                           "invalid_request") from None
    if beams != 1:
        raise PredictError(f"{where}: generation_kwargs.num_beams={beams}; the pvit model decodes greedily or by "
                           "sampling (num_beams 1)", "invalid_request")
    # temperature 0 is greedy whatever do_sample says; do_sample false is greedy whatever the temperature
    do_sample = temperature > 0 and (do_sample is None or bool(do_sample))
    for key in sorted(set(kw) - _told):
        _told.add(key)
        warnings.warn(f"lmms-eval generation kwarg {key!r} is ignored by the pvit model (it reads "
                      f"{', '.join(DECODING_KEYS)})", IgnoredOptionWarning, stacklevel=2)
    opts = {"max_new_tokens": max_new, "do_sample": do_sample}
    if do_sample:
        opts.update(temperature=temperature, top_p=top_p, seed=seed)
    return (list(until) if until else None), opts


def image_of(visuals, where: str):
    """``doc_to_visual(doc)`` -> one PIL image or image path, or None for a text-only prompt."""
    if visuals is None:
        return None
    items = list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]
    if not items:
        return None
    if len(items) > 1:
        raise PredictError(f"{where}: doc_to_visual gave {len(items)} visuals; a pvit model takes one image per "
                           "prompt", "invalid_image")
    item = items[0]
    if isinstance(item, (str, Path)) or hasattr(item, "size") and hasattr(item, "convert"):
        return item
    raise PredictError(f"{where}: doc_to_visual gave a {type(item).__name__}; a pvit model reads a PIL image or "
                       "an image path", "invalid_image")


def boxes_of(doc, field: str, context: str, where: str) -> list | None:
    """The doc's boxes for the ``<regionN>`` of ``context`` (None when the text has no ``<regionN>``).

    The field holds one box ``[x1, y1, x2, y2]`` or a list of them (a JSON string of either is read too);
    ``<region1>`` is its first box.
    """
    if not REGION_REF.search(context):
        return None
    value = doc.get(field) if hasattr(doc, "get") else None
    if value is None:
        raise PredictError(f"{where}: the prompt refers to <regionN> but the doc has no {field!r} field; put the "
                           f"boxes there or name the field with model_args boxes_field=...", "region_without_box")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise PredictError(f"{where}: doc field {field!r} is {value!r}, not a box or a list of boxes",
                               "invalid_box") from None
    if isinstance(value, (list, tuple)) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
        return [list(value)]
    if not isinstance(value, (list, tuple)):
        raise PredictError(f"{where}: doc field {field!r} is {value!r}, not a box or a list of boxes", "invalid_box")
    return [list(b) for b in value]


def check_box_format(fmt: str) -> str:
    if fmt not in BOX_FORMATS:
        from pvit.errors import did_you_mean

        raise ValueError(f"pvit: model_args box_format={fmt!r} is unknown{did_you_mean(fmt, BOX_FORMATS)}; "
                         f"valid: {', '.join(BOX_FORMATS)}")
    return fmt
