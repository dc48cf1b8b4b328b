"""`timm-vit`: a timm ``VisionTransformer`` (``timm.create_model(name, pretrained=False, ...)``) as image encoder."""

from __future__ import annotations

import sys
from collections.abc import Mapping

import torch

from pvit.errors import ComponentOptionError, did_you_mean
from pvit.runtime import is_planning

from .base import ViTImageEncoder, seeded
from .transform import check_mean_std
from .weights import load_into, load_state_dict_file, parse_dtype

NAME = "timm-vit"


def _create(name: str, options: dict):
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(name, str) or not timm.is_model(name):
        hint = did_you_mean(name, timm.list_models("*vit*") + timm.list_models("deit*"), " (did you mean {!r}?)")
        raise ComponentOptionError(f"{NAME}: {name!r} is not a timm model name{hint}; see timm.list_models('vit_*')")
    kwargs = {"num_classes": 0, **options}
    for key in ("pretrained", "pretrained_cfg_overlay", "checkpoint_path"):
        if key in kwargs:
            raise ComponentOptionError(
                f"{NAME}: options.{key} is not allowed (pvit never downloads weights); use the 'checkpoint' option"
            )
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise ComponentOptionError(f"{NAME}: timm.create_model({name!r}, **{options!r}) failed: {e}") from None
    if not isinstance(model, VisionTransformer):
        raise ComponentOptionError(
            f"{NAME}: {name!r} builds a {type(model).__name__}, not a timm VisionTransformer "
            "(vit_*, deit_*, ...); other families are not supported"
        )
    return model


def _filter_checkpoint(sd: dict, model) -> dict:
    """Apply the model family's own ``checkpoint_filter_fn`` (e.g. position-embedding resizing) when it has one."""
    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    return fn(sd, model) if fn is not None else sd


class TimmViTEncoder(ViTImageEncoder):
    """timm ``VisionTransformer``; hidden state 0 is the output of ``norm_pre``, k the output of ``blocks[k-1]``.

    The final ``norm`` is never applied; CLS, register and distillation tokens (``num_prefix_tokens``) are dropped.
    See [make_timm_vit][pvit_vision.make_timm_vit].
    """

    name = NAME

    def __init__(
        self,
        model: str,
        options: dict | None = None,
        checkpoint: str | None = None,
        select_layer: int = -2,
        frozen: bool = True,
        dtype: str = "float32",
        mean=None,
        std=None,
        seed: int | None = 0,
    ) -> None:
        torch_dtype = parse_dtype(dtype, NAME)
        if options is not None and not isinstance(options, Mapping):
            raise ComponentOptionError(f"{NAME}: option 'options' must be a mapping of timm.create_model kwargs")
        with seeded(seed):
            net = _create(model, dict(options or {}))
        if checkpoint is not None and not is_planning():
            sd = _filter_checkpoint(load_state_dict_file(checkpoint, NAME), net)
            if net.num_classes == 0:  # the classifier head is not built; ignore its weights
                sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
            load_into(net, sd, checkpoint, NAME)
        net = net.to(torch_dtype)
        cfg = getattr(net, "pretrained_cfg", None) or {}
        own_mean, own_std = cfg.get("mean", (0.5, 0.5, 0.5)), cfg.get("std", (0.5, 0.5, 0.5))
        mean, std = check_mean_std(own_mean if mean is None else mean, own_std if std is None else std, NAME)
        self.model_name = model
        super().__init__(
            backbone=net,
            out_dim=net.embed_dim,
            grid_size=tuple(net.patch_embed.grid_size),
            image_size=tuple(net.patch_embed.img_size),
            num_layers=len(net.blocks),
            num_prefix_tokens=net.num_prefix_tokens,
            select_layer=select_layer,
            mean=mean,
            std=std,
            frozen=frozen,
        )

    def _hidden_states(self, pixels: torch.Tensor, indices: list[int]) -> dict[int, torch.Tensor]:
        m = self.backbone
        x = m.patch_embed(pixels)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        x = m.norm_pre(x)  # (B, P + N, D)
        states = {0: x}
        for i, block in enumerate(m.blocks[: max(indices)], start=1):
            x = block(x)
            if i in indices:
                states[i] = x  # (B, P + N, D)
        return {i: states[i] for i in indices}
