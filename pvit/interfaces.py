"""Component interfaces: the shapes and attributes the core relies on (Protocols plus small base classes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # keep `import pvit` light: torch is imported by the modules that need it
    import torch
    from PIL import Image

#: Text placeholder a dataset writes where the image goes; expanded to ``num_tokens`` image slots.
IMAGE_TOKEN = "<image>"
#: Token whose embeddings are overwritten by projected image features (one per image-encoder token).
IMAGE_PATCH_TOKEN = "<im_patch>"
#: Token whose embeddings are overwritten by projected region features (``tokens_per_region`` per mention).
REGION_PATCH_TOKEN = "<region_patch>"
#: Tags around a region mention, as in PVIT.
REGION_START = "<Region>"
REGION_END = "</Region>"


@runtime_checkable
class ImageEncoder(Protocol):
    """Encodes images into patch features.

    Attributes:
        out_dim: D_v, width of each output token.
        num_tokens: N, tokens per image (CLS dropped).
        grid_size: (gh, gw), the patch grid, with ``gh * gw == num_tokens``.
        image_size: (H, W) that ``transform`` produces.
    """

    out_dim: int
    num_tokens: int
    grid_size: tuple[int, int]
    image_size: tuple[int, int]

    def transform(self, image: "Image.Image") -> "torch.Tensor":
        """PIL RGB image -> (3, H, W) float tensor, normalised."""

    def forward(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """(B, 3, H, W) -> (B, N, D_v) patch features of the selected layer."""

    def forward_with_maps(
        self, pixels: "torch.Tensor", layers: Sequence[int]
    ) -> tuple["torch.Tensor", list["torch.Tensor"]]:
        """Patch features plus feature maps of other layers in one backbone pass.

        Returns ``(tokens (B, N, D_v), [maps (B, C, gh, gw) for each of layers])``. Layer indices follow
        Hugging Face ``hidden_states``: 0 is the embedding output, k the output of block k, negative counts
        from the end (``-1`` is the last block).
        """


@dataclass
class RegionInputs:
    """What a region encoder's ``forward`` receives besides the boxes.

    Attributes:
        pixels: the encoder's own preprocessed batch (B, 3, H, W), zero-padded, or None.
        sizes: (B, 2) the unpadded (H, W) of each image in ``pixels``, or None.
        image_maps: feature maps of the image encoder, one (B, C, gh, gw) per entry of the encoder's
            ``image_layers``, or an empty list.
        image_size: (H, W) of the image encoder's input, for encoders that pool ``image_maps``.
    """

    pixels: "torch.Tensor | None" = None
    sizes: "torch.Tensor | None" = None
    image_maps: list = field(default_factory=list)
    image_size: tuple[int, int] | None = None

    def to(self, device) -> "RegionInputs":
        return RegionInputs(
            pixels=None if self.pixels is None else self.pixels.to(device),
            sizes=None if self.sizes is None else self.sizes.to(device),
            image_maps=[m.to(device) for m in self.image_maps],
            image_size=self.image_size,
        )


@runtime_checkable
class RegionEncoder(Protocol):
    """Encodes boxes of an image into ``tokens_per_region`` features each.

    Attributes:
        tokens_per_region: K (RegionCLIP 1, ViT-RoI 1, text-coords 0).
        out_dim: D_r (0 when K is 0).
        special_tokens: tokens ``region_text`` uses that the tokenizer must treat as atomic
            (text-coords: ``<L0>``..``<L999>`` and the region tags).
        image_layers: image-encoder layers whose maps ``forward`` needs in ``RegionInputs.image_maps``
            (empty for an encoder with its own backbone).
        uses_own_pixels: True when ``prepare`` returns pixels of the encoder's own preprocessing.
    """

    tokens_per_region: int
    out_dim: int
    special_tokens: list[str]
    image_layers: list[int]
    uses_own_pixels: bool

    def region_text(self, box: Sequence[float]) -> str:
        """Text that replaces one region mention for canonical box ``box`` (xyxy in [0, 1]).

        Feature encoders return ``<Region>`` + ``<region_patch>`` * K + ``</Region>``.
        """

    def prepare(self, image: "Image.Image") -> "torch.Tensor | None":
        """Per-sample preprocessing for the encoder's own backbone: (3, H_i, W_i), or None."""

    def collate(self, prepared: list) -> RegionInputs:
        """Batch the results of ``prepare`` (zero-padding to the largest)."""

    def forward(self, inputs: RegionInputs, boxes: list["torch.Tensor"]) -> "torch.Tensor":
        """Boxes per image, each (R_b, 4) xyxy in [0, 1] of the original image -> (R, K, D_r), R = sum R_b,
        in image order then mention order."""


@runtime_checkable
class LanguageModel(Protocol):
    """A causal LM with its tokenizer.

    Attributes:
        model: the Hugging Face ``PreTrainedModel``.
        tokenizer: the Hugging Face tokenizer.
        hidden_size: D_llm.
    """

    model: Any
    tokenizer: Any
    hidden_size: int

    def add_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Add special tokens (atomic), resize embeddings, initialise new rows to the mean of the old ones.

        Returns the ids of the tokens actually added (already-present tokens are skipped).
        """

    def embed(self, input_ids: "torch.Tensor") -> "torch.Tensor":
        """(B, T) -> (B, T, D_llm) input embeddings."""

    def forward(self, inputs_embeds: "torch.Tensor", attention_mask: "torch.Tensor", labels=None) -> Any:
        """Run the LM on embeddings; returns the Hugging Face output (``.loss``, ``.logits``)."""


@runtime_checkable
class Evaluator(Protocol):
    """Scores a model's generations on a dataset.

    Attributes:
        name: the evaluator's registered name.
        data: ``{"name": dataset name, "options": {...}}``: the dataset the core generates on. The prompt of
            a sample is its conversation up to the last human turn; the reference is the last assistant turn.
        max_new_tokens: generation budget per sample.
    """

    name: str
    data: dict
    max_new_tokens: int

    def score(self, records: list[dict]) -> dict:
        """``records``: dicts with ``id``, ``prompt``, ``prediction``, ``answer`` and the sample's ``meta``.

        Returns ``{"metrics": {name: float}, "records": [per-sample dicts with a "correct" field where
        meaningful], "protocol": {"template", "coordinate_format", "matcher", ...}}``.
        """
