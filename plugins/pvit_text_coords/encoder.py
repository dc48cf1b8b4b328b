"""TextCoordsEncoder: a region encoder that carries the box only as text (K = 0 feature tokens)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pvit import regions
from pvit.errors import did_you_mean
from pvit.interfaces import REGION_END, REGION_START, RegionInputs, Regions

STYLES = ("pvit", "shikra")


class TextCoordsEncoder(nn.Module):
    """The coordinate-as-text baseline (PVIT's ``mm_use_prompt_token`` / Shikra's plain boxes).

    A region mention becomes text; there are no region features, so ``tokens_per_region`` and ``out_dim``
    are 0 and ``forward`` returns an empty ``(R, 0, 0)`` tensor that the core's splice skips.

    - ``style="pvit"``: ``<Region><L204><L469><L810><L960></Region>``. ``special_tokens`` lists the two tags
      and ``<L0>``..``<L999>``; the LLM plugin adds them as atomic tokens and (as PVIT does) initialises
      their new input/output embedding rows to the mean of the existing rows. This encoder does not touch
      embeddings.
    - ``style="shikra"``: ``[0.204,0.469,0.810,0.960]`` as plain text (no special tokens). Coordinates are
      in the canonical frame (fractions of the original image), not Shikra's expand2square frame: pvit's
      image transform squashes rather than pads, so the original frame is the one the model sees.

    ``decode`` parses generated text back into canonical boxes with the same module ([pvit.regions][]).
    """

    tokens_per_region = 0
    out_dim = 0

    def __init__(self, style: str = "pvit"):
        super().__init__()
        if style not in STYLES:
            hint = did_you_mean(style, STYLES, " (did you mean {!r}?)")
            raise ValueError(f"text-coords: unknown style {style!r}{hint}; valid styles: {', '.join(STYLES)}")
        self.style = style
        self.special_tokens: list[str] = [REGION_START, REGION_END] + regions.LOC_TOKENS if style == "pvit" else []
        self.image_layers: list[int] = []
        self.uses_own_pixels = False

    def extra_repr(self) -> str:
        return f"style={self.style!r}"

    def region_text(self, box: Sequence[float]) -> str:
        """Canonical box (xyxy in [0, 1]) -> its mention text; raises InvalidRegionError for a bad box."""
        return regions.format_pvit(box) if self.style == "pvit" else regions.format_shikra(box)

    def prepare(self, image) -> None:
        """No pixels of its own: returns None."""
        return None

    def collate(self, prepared: list) -> RegionInputs:
        """Nothing to batch: an empty RegionInputs."""
        return RegionInputs()

    def forward(self, inputs: RegionInputs, regions: Regions) -> torch.Tensor:
        """The batch's Regions -> an empty (R, 0, 0) tensor on the boxes' device."""
        boxes = regions.boxes  # (R, 4)
        dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
        return torch.zeros(len(regions), 0, 0, device=boxes.device, dtype=dtype)  # (R, 0, 0)

    def decode(self, text: str, *, policy: str = "drop", stats: regions.RegionStats | None = None) -> list[tuple]:
        """Boxes written in ``text`` in this encoder's style, in order (canonical xyxy in [0, 1]).

        Meant for generated text, so malformed boxes are dropped by default (counted in ``stats``); pass
        ``policy="error"`` to raise instead. Shikra multi-box groups ``[b1;b2]`` give one box each.
        """
        find = regions.find_mentions if self.style == "pvit" else regions.find_shikra
        return [m.box for m in find(text, policy=policy, stats=stats)]


class NoRegionEncoder(TextCoordsEncoder):
    """``none``: a region mention becomes fixed words; the model gets no box information (LLaVA baseline)."""

    carries_box = False

    def __init__(self, text: str = "the region"):
        super().__init__(style="shikra")
        self.text = text

    def extra_repr(self) -> str:
        return f"text={self.text!r}"

    def region_text(self, box: Sequence[float]) -> str:
        """The fixed words, whatever the box."""
        return self.text

    def decode(self, text: str, **kwargs) -> list:
        """No boxes can be read back: always empty."""
        return []
