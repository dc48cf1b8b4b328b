"""pvit plugin: the ``regionclip`` region encoder (PVIT's RegionCLIP RoI features, detectron2-free)."""

from __future__ import annotations

from typing import Any, Mapping

import pvit
from pvit.options import LocalPath


def regionclip(
    model: str | Mapping[str, Any] = "RN50x4",
    checkpoint: LocalPath | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    output_size: int | None = None,
    frozen: bool = True,
    seed: int | None = None,
    trust_checkpoint: bool = False,
):
    """Build the RegionCLIP region encoder: (R, 1, out_dim) features for R boxes.

    Options:
        model: open_clip ResNet config name ("RN50x4", as PVIT), the preset "tiny" (layers [1,1,1,1], width 16,
            image_size 64, output_dim 64), or a dict ``{layers: [4 ints], width, image_size, output_dim,
            heads (optional)}``.
        checkpoint: RegionCLIP ``.pth`` (only ``backbone.*`` keys load) or our ``.safetensors`` export of the
            visual state dict; None = random init.
        min_size, max_size: ResizeShortestEdge of the encoder's own preprocessing (800, 1333 as PVIT).
        output_size: RoIAlign output side; None derives ``2*sqrt(pos_emb_rows - 1)`` (18 for RN50x4). Any other
            value is an error: the attnpool positional embedding is never interpolated.
        frozen: keep weights fixed, eval mode and no_grad (PVIT); False lets conv/attnpool weights train
            (BatchNorm stays frozen either way, as in RegionCLIP).
        seed: seed for the random init (reproducible weights without touching the global RNG).
        trust_checkpoint: allow ``torch.load(weights_only=False)`` for a ``.pth`` holding non-tensor pickles.
            Only for files you trust: unpickling can run code.
    """
    from pvit.errors import ComponentOptionError
    from pvit_regionclip.config import resolve_config

    cfg = resolve_config(model)
    if output_size is not None and int(output_size) != cfg.roi_size:
        raise ComponentOptionError(
            f"regionclip option output_size={output_size} does not fit model {cfg.name!r}: its attnpool has "
            f"{cfg.pos_emb_rows} positional rows ({cfg.roi_size // 2}x{cfg.roi_size // 2} + 1), so RoIAlign must give "
            f"{cfg.roi_size}x{cfg.roi_size} (layer4 halves it); set output_size: {cfg.roi_size} or leave it null. "
            "The positional embedding is never interpolated."
        )
    if int(min_size) < 1 or int(max_size) < int(min_size):
        raise ComponentOptionError(
            f"regionclip options min_size={min_size}, max_size={max_size}: need 1 <= min_size <= max_size"
        )
    from pvit_regionclip.encoder import RegionCLIPEncoder, build_visual

    from pvit.runtime import is_planning

    visual = build_visual(cfg, seed=seed)
    if checkpoint is not None and not is_planning():  # a plan (--dry-run) reads no weights
        from pvit_regionclip.checkpoint import load_visual_weights

        load_visual_weights(visual, checkpoint, trust_checkpoint=trust_checkpoint, model_name=cfg.name)
    return RegionCLIPEncoder(visual, cfg, min_size=min_size, max_size=max_size, frozen=frozen)


@pvit.hookimpl
def pvit_register_region_encoders(register):
    register("regionclip", regionclip)
