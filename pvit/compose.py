"""Composing a PVITModel from a recipe: one ``build`` per component, projector widths wired from the encoders
and the LLM."""

from __future__ import annotations

from typing import Any

from pvit.model import PVITModel
from pvit.registry import build


def build_model(cfg: Any) -> PVITModel:
    """The PVITModel a recipe describes; ``cfg`` is a whole recipe or just its ``model`` section."""
    m = cfg.model if "llm" not in cfg and "model" in cfg else cfg
    llm = build("llm", m.llm, where="model.llm")
    image_encoder = None
    if m.image_encoder is not None:
        image_encoder = build("image_encoder", m.image_encoder, where="model.image_encoder")
    region_encoder = None
    if m.region_encoder is not None:
        extra = {"image_encoder": image_encoder} if image_encoder is not None else {}
        region_encoder = build("region_encoder", m.region_encoder, where="model.region_encoder", **extra)
    projector = None
    if image_encoder is not None:
        projector = build("projector", m.projector, where="model.projector", in_dim=image_encoder.out_dim,
                          out_dim=llm.hidden_size)
    region_projector = None
    if region_encoder is not None and region_encoder.tokens_per_region > 0:
        region_projector = build("projector", m.region_projector, where="model.region_projector",
                                 in_dim=region_encoder.out_dim, out_dim=llm.hidden_size)
    return PVITModel(llm, image_encoder, region_encoder, projector, region_projector, bbox_embed=m.bbox_embed)


def build_as_run(cfg: Any) -> PVITModel:
    """``build_model`` under the RNG state a run builds with (``seed``, restored afterwards), so components with
    random weights that no stage export holds (frozen random encoders) come out as in the trained run."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_model(cfg)
