"""`hf-clip`: a Hugging Face ``CLIPVisionModel`` as a LLaVA/PVIT image encoder."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch

from pvit.errors import CheckpointError, ComponentOptionError, MissingWeightsError
from pvit.runtime import is_planning, offline

from .base import ViTImageEncoder, seeded
from .transform import CLIP_MEAN, CLIP_STD, check_mean_std
from .weights import parse_dtype

NAME = "hf-clip"


def _vision_config(config: dict):
    from transformers import CLIPVisionConfig

    if not isinstance(config, Mapping):
        raise ComponentOptionError(f"{NAME}: option 'config' must be a mapping of CLIPVisionConfig fields, got {config!r}")
    known = set(CLIPVisionConfig().to_dict())
    unknown = sorted(k for k in config if k not in known)
    if unknown:
        raise ComponentOptionError(
            f"{NAME}: config has fields CLIPVisionConfig does not know: {unknown}; e.g. hidden_size, "
            "intermediate_size, num_hidden_layers, num_attention_heads, image_size, patch_size, hidden_act"
        )
    return CLIPVisionConfig(**dict(config))


def _preprocessor_mean_std(path: str) -> tuple[tuple, tuple]:
    """image_mean / image_std of a local ``preprocessor_config.json``, else the CLIP values."""
    f = os.path.join(path, "preprocessor_config.json")
    if os.path.isfile(f):
        with open(f, encoding="utf-8") as fh:
            pre = json.load(fh)
        if "image_mean" in pre and "image_std" in pre:
            return tuple(pre["image_mean"]), tuple(pre["image_std"])
    return CLIP_MEAN, CLIP_STD


class HFCLIPEncoder(ViTImageEncoder):
    """``transformers.CLIPVisionModel`` (``hidden_states[select_layer][:, 1:]``, as LLaVA/PVIT).

    Hidden state 0 is the embedding output after ``pre_layrnorm``; ``post_layernorm`` is never applied
    to patch tokens. See [make_hf_clip][pvit_vision.make_hf_clip] for the options.
    """

    name = NAME

    def __init__(
        self,
        path: str | None = None,
        config: dict | None = None,
        select_layer: int = -2,
        frozen: bool = True,
        dtype: str = "float32",
        mean=None,
        std=None,
        seed: int | None = 0,
    ) -> None:
        from transformers import CLIPVisionConfig, CLIPVisionModel

        if path is None and config is None:
            raise ComponentOptionError(
                f"{NAME}: give 'path' (local dir or hub id, e.g. openai/clip-vit-large-patch14) "
                "or 'config' (CLIPVisionConfig fields for a random-init model)"
            )
        torch_dtype = parse_dtype(dtype, NAME)
        own_mean, own_std = CLIP_MEAN, CLIP_STD
        if path is not None:
            path = os.fspath(path)
            local = os.path.isdir(path)
            if local:
                own_mean, own_std = _preprocessor_mean_std(path)
            if is_planning():
                try:
                    cfg = CLIPVisionConfig.from_pretrained(path, local_files_only=True)
                except OSError as e:
                    if config is None:
                        raise MissingWeightsError(f"{NAME}: cannot read the config of {path!r} offline: {e}") from None
                    cfg = _vision_config(config)  # the architecture, for a plan made without the weights
                model = CLIPVisionModel(cfg).to(torch_dtype)
            else:
                if not local and offline():
                    hint = "(HF_HUB_OFFLINE=1: only the local cache is searched)"
                else:
                    hint = ""
                try:
                    model = CLIPVisionModel.from_pretrained(path, dtype=torch_dtype, local_files_only=offline() or local)
                except OSError as e:
                    cls = MissingWeightsError if not local else CheckpointError
                    raise cls(f"{NAME}: could not load {path!r} {hint}: {e}") from None
        else:
            cfg = _vision_config(config)
            with seeded(seed):
                model = CLIPVisionModel(cfg).to(torch_dtype)
        cfg = model.config
        image = int(cfg.image_size)
        grid = image // int(cfg.patch_size)
        mean, std = check_mean_std(own_mean if mean is None else mean, own_std if std is None else std, NAME)
        self.path = path
        super().__init__(
            backbone=model,
            out_dim=cfg.hidden_size,
            grid_size=(grid, grid),
            image_size=(image, image),
            num_layers=cfg.num_hidden_layers,
            num_prefix_tokens=1,
            select_layer=select_layer,
            mean=mean,
            std=std,
            frozen=frozen,
        )

    def _hidden_states(self, pixels: torch.Tensor, indices: list[int]) -> dict[int, torch.Tensor]:
        out = self.backbone(pixel_values=pixels, output_hidden_states=True)
        hs = out.hidden_states  # L + 1 tensors (B, 1 + N, D)
        return {i: hs[i] for i in indices}
