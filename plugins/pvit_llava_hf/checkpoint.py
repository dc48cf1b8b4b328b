"""Reading a transformers ``LlavaForConditionalGeneration`` folder (llava-hf): its config, and each part's weights.

Weight names come in two layouts, both read here:

- the one ``save_pretrained`` writes (and the hub's llava-hf repositories hold): ``vision_tower.*`` (with or
  without ``vision_model.``), ``multi_modal_projector.*``, ``language_model.model.*``,
  ``language_model.lm_head.weight``;
- the in-memory names of transformers 5: ``model.vision_tower.*``, ``model.multi_modal_projector.*``,
  ``model.language_model.*``, ``lm_head.weight``.

The vision tower and the language model are loaded by transformers' own ``from_pretrained`` with a
``key_mapping`` onto a ``CLIPVisionModel`` / ``AutoModelForCausalLM`` (only the matching tensors are read);
the four projector tensors are read with safetensors (or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from pvit.errors import CheckpointError, ComponentOptionError, MissingWeightsError
from pvit.runtime import is_planning, offline

NAME = "llava-hf"
#: Vision towers pvit can take from a llava-hf checkpoint (``vision_config.model_type``).
VISION_TYPES = ("clip_vision_model",)
#: key_mapping for ``AutoModelForCausalLM.from_pretrained`` (base model prefix ``model``).
LLM_KEYS = {r"^language_model\.model\.": "model.", r"^language_model\.lm_head\.": "lm_head.",
            r"^model\.language_model\.": "model."}
#: key_mapping for ``CLIPVisionModel.from_pretrained`` (its own mapping handles ``vision_model.``).
VISION_KEYS = {r"^(?:model\.)?vision_tower\.": ""}
PROJECTOR_PREFIXES = ("multi_modal_projector.", "model.multi_modal_projector.")


def local_folder(path: str | None, where: str) -> str | None:
    """``path`` as a local folder: a directory, or a hub id found in (or, online, downloaded to) the HF cache.

    None when there is no such folder (a plan may then use the ``config`` option).
    """
    if path is None:
        return None
    path = os.path.expanduser(os.fspath(path))
    if os.path.isdir(path):
        return path
    looks_like_hub = path.count("/") == 1 and not path.startswith((".", "/", "~"))
    if not looks_like_hub:
        return None
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path, local_files_only=offline() or is_planning(),
                                 allow_patterns=["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt"])
    except Exception:  # noqa: BLE001 - not cached offline, no network, unknown repo: all mean "not here"
        return None


def read_config(path: str | None, config: dict | None, where: str):
    """(LlavaConfig, local folder or None) from ``path``'s ``config.json``, else from the ``config`` option.

    Raises MissingWeightsError when neither is available, CheckpointError for a folder that is not a LLaVA
    checkpoint, ComponentOptionError for settings pvit cannot honour.
    """
    from transformers import LlavaConfig

    folder = local_folder(path, where)
    if folder is not None:
        file = os.path.join(folder, "config.json")
        try:
            with open(file, encoding="utf-8") as fh:
                raw = json.load(fh)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{where}: {file} cannot be read as JSON ({e})") from None
        if raw.get("model_type") != "llava":
            raise CheckpointError(
                f"{where}: {folder} is a {raw.get('model_type')!r} checkpoint, not a LLaVA one (config.json "
                "model_type 'llava', as llava-hf/llava-1.5-7b-hf); for a plain language model use hf-causal-lm, "
                "for a CLIP vision model hf-clip"
            )
        cfg = LlavaConfig.from_pretrained(folder, local_files_only=True)
    elif config is not None:
        try:
            cfg = LlavaConfig(**{k: v for k, v in dict(config).items() if k != "model_type"})
        except (TypeError, ValueError) as e:
            raise ComponentOptionError(f"{where}: option 'config' is not a valid LlavaConfig: {e}") from None
    else:
        hub = " (HF_HUB_OFFLINE=1: only the local cache is searched)" if offline() else ""
        raise MissingWeightsError(
            f"{where}: {path!r} is not a local llava-hf folder{hub}; download it (e.g. llava-hf/llava-1.5-7b-hf), "
            "point 'path' at it, or give option 'config' (its config.json fields) to plan without it"
        )
    check_config(cfg, where)
    return cfg, folder


def check_config(cfg, where: str) -> None:
    """Refuse LLaVA settings pvit's components cannot reproduce exactly."""
    vt = getattr(cfg.vision_config, "model_type", None)
    if vt not in VISION_TYPES:
        raise ComponentOptionError(
            f"{where}: the checkpoint's vision tower is {vt!r}; pvit's llava-hf components take "
            f"{', '.join(VISION_TYPES)} towers (the llava-1.5 family)"
        )
    if cfg.vision_feature_select_strategy != "default":
        raise ComponentOptionError(
            f"{where}: vision_feature_select_strategy {cfg.vision_feature_select_strategy!r} keeps the CLS token, "
            "which pvit's image encoders never return (their tokens form the patch grid); supported: 'default'"
        )


def feature_layers(cfg) -> list[int]:
    """``vision_feature_layer`` as a list (one int, or the layers whose features LLaVA concatenates)."""
    layer = cfg.vision_feature_layer
    return [int(layer)] if isinstance(layer, int) else [int(v) for v in layer]


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' load report lists the other parts' tensors as unexpected: expected here, so not shown."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_part(cls: Any, folder: str, sub_config, key_mapping: dict, what: str, where: str, **kwargs):
    """``cls.from_pretrained(folder, config=sub_config, key_mapping=...)``; every weight of ``cls`` must be found."""
    try:
        with _quiet_transformers():
            model, info = cls.from_pretrained(folder, config=sub_config, key_mapping=key_mapping,
                                              output_loading_info=True, local_files_only=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{where}: could not load the {what} of {folder}: {e}") from None
    if getattr(model, "_weight_conversions", None) is not None:
        # transformers 5 remembers the renaming used to load and reverts it in save_pretrained; the part is saved
        # as the plain model it now is (an export's llm/ must load without the LLaVA key names)
        model._weight_conversions = None
    missing = sorted(info.get("missing_keys") or [])
    tied = getattr(sub_config, "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k.startswith("lm_head."))]
    if missing:
        raise CheckpointError(
            f"{where}: {folder} lacks {len(missing)} weight(s) of the {what} (e.g. {missing[:3]}); is it a complete "
            "llava-hf checkpoint (LlavaForConditionalGeneration.save_pretrained)?"
        )
    return model


def projector_tensors(folder: str, where: str) -> dict:
    """``{"linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"}`` (biases when present)."""
    from pvit_hf.weight_folder import WeightFolder

    weights = WeightFolder(folder, where)
    wanted = {key[len(prefix):]: key for key in weights.keys() for prefix in PROJECTOR_PREFIXES
              if key.startswith(prefix)}
    if "linear_1.weight" not in wanted or "linear_2.weight" not in wanted:
        raise CheckpointError(f"{where}: {folder} has no multi_modal_projector.linear_1/linear_2 weights")
    return {name: weights.get(key).clone() for name, key in wanted.items()}
