"""`openclip-vit`: an open_clip ``VisionTransformer`` (built from a packaged config or a dict) as image encoder."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from pvit.errors import ComponentOptionError, did_you_mean
from pvit.runtime import is_planning

from .base import ViTImageEncoder, seeded
from .transform import CLIP_MEAN, CLIP_STD, check_mean_std
from .weights import load_into, load_state_dict_file, parse_dtype

NAME = "openclip-vit"


def _vision_cfg(model) -> tuple[dict, bool, int]:
    """``model`` option -> (vision_cfg fields, quick_gelu, embed_dim)."""
    import open_clip
    from open_clip.model import CLIPVisionCfg

    if isinstance(model, str):
        names = open_clip.list_models()
        if model not in names:
            hint = did_you_mean(model, names, " (did you mean {!r}?)")
            raise ComponentOptionError(
                f"{NAME}: model {model!r} is not an open_clip config name{hint}; see open_clip.list_models(), "
                "or give a dict of vision-config fields (image_size, patch_size, width, layers, head_width, ...)"
            )
        cfg = open_clip.get_model_config(model)
        vision = dict(cfg["vision_cfg"])
        quick_gelu = bool(cfg.get("quick_gelu", False))
        embed_dim = int(cfg.get("embed_dim", 512))
    elif isinstance(model, Mapping):
        vision = dict(model)
        quick_gelu = bool(vision.pop("quick_gelu", False))
        embed_dim = int(vision.pop("embed_dim", vision.get("width", 512)))
        fields = {f.name for f in dataclasses.fields(CLIPVisionCfg)}
        unknown = sorted(k for k in vision if k not in fields)
        if unknown:
            raise ComponentOptionError(
                f"{NAME}: model dict has fields open_clip's CLIPVisionCfg does not know: {unknown}; "
                f"known: {', '.join(sorted(fields | {'quick_gelu', 'embed_dim'}))}"
            )
    else:
        raise ComponentOptionError(f"{NAME}: option 'model' must be an open_clip config name or a dict, got {model!r}")
    if vision.get("timm_model_name") or isinstance(vision.get("layers", 12), (list, tuple)):
        raise ComponentOptionError(
            f"{NAME}: model {model!r} is not an open_clip VisionTransformer (it is a timm tower or a ResNet); "
            "use a ViT config such as 'ViT-L-14-quickgelu' or the timm-vit encoder"
        )
    return vision, quick_gelu, embed_dim


class OpenCLIPViTEncoder(ViTImageEncoder):
    """open_clip ``VisionTransformer``; hidden state 0 is the output of ``ln_pre``, k the output of block k.

    ``ln_post`` and ``proj`` are never applied to patch tokens. See [make_openclip_vit][pvit_vision.make_openclip_vit].
    """

    name = NAME

    def __init__(
        self,
        model,
        pretrained: str | None = None,
        select_layer: int = -2,
        frozen: bool = True,
        dtype: str = "float32",
        mean=None,
        std=None,
        seed: int | None = 0,
    ) -> None:
        from open_clip.model import _build_vision_tower

        torch_dtype = parse_dtype(dtype, NAME)
        vision, quick_gelu, embed_dim = _vision_cfg(model)
        try:
            with seeded(seed):
                visual = _build_vision_tower(embed_dim, vision, quick_gelu=quick_gelu)
        except (TypeError, ValueError, AssertionError) as e:
            raise ComponentOptionError(f"{NAME}: cannot build model {model!r}: {e}") from None
        if pretrained is not None and not is_planning():
            sd = load_state_dict_file(pretrained, NAME)
            if any(k.startswith("visual.") for k in sd):  # a full CLIP checkpoint: keep the image tower
                sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
            load_into(visual, sd, pretrained, NAME)
        visual = visual.to(torch_dtype)
        mean, std = check_mean_std(CLIP_MEAN if mean is None else mean, CLIP_STD if std is None else std, NAME)
        self.model_name = model if isinstance(model, str) else "custom"
        super().__init__(
            backbone=visual,
            out_dim=visual.transformer.width,
            grid_size=tuple(visual.grid_size),
            image_size=tuple(visual.image_size),
            num_layers=len(visual.transformer.resblocks),
            num_prefix_tokens=1,
            select_layer=select_layer,
            mean=mean,
            std=std,
            frozen=frozen,
        )

    def _hidden_states(self, pixels: torch.Tensor, indices: list[int]) -> dict[int, torch.Tensor]:
        v = self.backbone
        x = v._embeds(pixels)  # (B, 1 + N, D): conv1, CLS, positions, patch dropout, ln_pre
        states = {0: x}
        batch_first = getattr(v.transformer, "batch_first", True)
        h = x if batch_first else x.transpose(0, 1)
        for i, block in enumerate(v.transformer.resblocks[: max(indices)], start=1):
            h = block(h)
            if i in indices:
                states[i] = h if batch_first else h.transpose(0, 1)  # (B, 1 + N, D)
        return {i: states[i] for i in indices}
