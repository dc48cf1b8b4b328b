"""Architecture of the RegionCLIP backbone: an open_clip ModifiedResNet config, by name, preset or dict."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from pvit.errors import ComponentOptionError, did_you_mean

#: Presets that are not open_clip configs. "tiny" builds in milliseconds (docs/reproduce.md).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"layers": [1, 1, 1, 1], "width": 16, "image_size": 64, "output_dim": 64},
}

_DICT_KEYS = ("layers", "width", "image_size", "heads", "output_dim")


@dataclass(frozen=True)
class ResNetConfig:
    """Hyper-parameters of an open_clip ``ModifiedResNet`` (the CLIP ResNet visual tower).

    Attributes:
        layers: Bottleneck blocks in layer1..layer4.
        width: stem width; stage widths are 4*width .. 32*width channels.
        image_size: CLIP input resolution; sets the attnpool positional embedding to (image_size//32)**2 + 1 rows.
        heads: attention heads of the attnpool.
        output_dim: width of the attnpool output (the region feature width).
        name: where the config came from, for messages.
    """

    layers: tuple[int, int, int, int]
    width: int
    image_size: int
    heads: int
    output_dim: int
    name: str = "custom"

    @property
    def pos_emb_rows(self) -> int:
        """Rows of ``attnpool.positional_embedding``: one per cell of the final grid plus the mean token."""
        return (self.image_size // 32) ** 2 + 1

    @property
    def roi_size(self) -> int:
        """RoIAlign output side S that layer4 turns into exactly the attnpool grid: 2 * sqrt(rows - 1)."""
        return 2 * math.isqrt(self.pos_emb_rows - 1)


def _resnet_names() -> list[str]:
    import open_clip

    return [n for n in open_clip.list_models() if isinstance(open_clip.get_model_config(n)["vision_cfg"].get("layers"), (list, tuple))]


def _from_open_clip(name: str) -> ResNetConfig:
    """Read ``vision_cfg`` and ``embed_dim`` from open_clip's packaged model config JSON (no download)."""
    import open_clip

    # Only packaged names: open_clip.get_model_config would fetch "hf-hub:" names from the network.
    if name not in open_clip.list_models():
        names = sorted(PRESETS) + _resnet_names()
        hint = did_you_mean(name, names, " (did you mean {!r}?)")
        raise ComponentOptionError(
            f"regionclip option model={name!r} is not an open_clip model config name nor a preset{hint}; "
            f"valid: {', '.join(names)}, "
            f"or a dict with keys {', '.join(_DICT_KEYS)}"
        )
    cfg = open_clip.get_model_config(name)
    vision = cfg["vision_cfg"]
    if not isinstance(vision.get("layers"), (list, tuple)):
        raise ComponentOptionError(
            f"regionclip option model={name!r} is an open_clip ViT, not a ModifiedResNet; valid ResNets: "
            f"{', '.join(_resnet_names())}"
        )
    width = int(vision["width"])
    head_width = int(vision.get("head_width", 64))
    return ResNetConfig(
        layers=tuple(int(x) for x in vision["layers"]),
        width=width,
        image_size=int(vision["image_size"]),
        heads=width * 32 // head_width,  # as open_clip's _build_vision_tower
        output_dim=int(cfg["embed_dim"]),
        name=name,
    )


def _from_dict(d: Mapping[str, Any], name: str = "custom") -> ResNetConfig:
    unknown = sorted(set(d) - set(_DICT_KEYS))
    missing = [k for k in _DICT_KEYS if k != "heads" and k not in d]
    if unknown or missing:
        raise ComponentOptionError(
            f"regionclip option model as a dict: unknown keys {unknown}, missing keys {missing}; "
            f"accepted keys: {', '.join(_DICT_KEYS)} (heads optional, default width*32//64)"
        )
    layers = list(d["layers"])
    if len(layers) != 4 or not all(isinstance(x, int) and x >= 1 for x in layers):
        raise ComponentOptionError(f"regionclip option model.layers={layers!r}: need 4 positive ints, e.g. [1, 1, 1, 1]")
    width, image_size, output_dim = int(d["width"]), int(d["image_size"]), int(d["output_dim"])
    heads = int(d.get("heads") or width * 32 // 64)
    if width < 2 or width % 2:
        raise ComponentOptionError(f"regionclip option model.width={width}: need an even int >= 2")
    if image_size < 32:
        raise ComponentOptionError(f"regionclip option model.image_size={image_size}: need >= 32 (final stride is 32)")
    if heads < 1 or (width * 32) % heads:
        raise ComponentOptionError(
            f"regionclip option model.heads={heads}: must divide the attnpool width {width * 32}"
        )
    if output_dim < 1:
        raise ComponentOptionError(f"regionclip option model.output_dim={output_dim}: need a positive int")
    return ResNetConfig(tuple(layers), width, image_size, heads, output_dim, name=name)


def resolve_config(model: str | Mapping[str, Any]) -> ResNetConfig:
    """``model`` option -> ResNetConfig: a preset ("tiny"), an open_clip ResNet name ("RN50x4"), or a dict."""
    if isinstance(model, str):
        if model in PRESETS:
            return _from_dict(PRESETS[model], name=model)
        return _from_open_clip(model)
    if isinstance(model, Mapping):
        return _from_dict(model)
    raise ComponentOptionError(
        f"regionclip option model={model!r}: expected an open_clip model name such as 'RN50x4', "
        f"a preset ({', '.join(PRESETS)}), or a dict with keys {', '.join(_DICT_KEYS)}"
    )
