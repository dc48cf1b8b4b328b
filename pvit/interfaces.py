"""Component interfaces: the shapes and attributes the core relies on (Protocols plus small base classes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # keep `import pvit` light: torch is imported by the modules that need it
    import torch
    from PIL import Image

from pvit.interfaces_data import Dataset, Generator, Sample, Turn  # noqa: F401 - re-exported
from pvit.interfaces_optional import OPTIONAL_ATTRIBUTES, OptionalAttribute, optional_attributes  # noqa: F401

#: Text placeholder a dataset writes where the image goes; expanded to ``num_tokens`` image slots.
IMAGE_TOKEN = "<image>"
#: Token whose embeddings are overwritten by projected image features (one per image-encoder token).
IMAGE_PATCH_TOKEN = "<im_patch>"
#: Token whose embeddings are overwritten by projected region features (``tokens_per_region`` per mention).
REGION_PATCH_TOKEN = "<region_patch>"
#: Tags around a region mention, as in PVIT.
REGION_START = "<Region>"
REGION_END = "</Region>"
#: Label of a token the loss ignores (prompt, padding, placeholders); PyTorch's cross-entropy default.
IGNORE_INDEX = -100


@runtime_checkable
class ImageEncoder(Protocol):
    """Encodes images into patch features.

    Attributes:
        out_dim: D_v, width of each output token.
        num_tokens: N, tokens per image (CLS dropped).
        grid_size: (gh, gw), the patch grid, with ``gh * gw == num_tokens``.
        image_size: (H, W) that ``transform`` produces.

    Optional (see ``OPTIONAL_ATTRIBUTES["image_encoder"]``): ``frozen`` (bool, default False: True makes the
    engine refuse to train the slot), ``num_layers`` (int, L transformer blocks: L + 1 hidden states; absent,
    vit-roi cannot check layer indices), ``parameter_groups()``.
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
    """What a region encoder's ``forward`` receives besides the [Regions][pvit.interfaces.Regions].

    Attributes:
        pixels: the encoder's own preprocessed batch (B_i, 3, H, W), zero-padded, or None.
        sizes: (B_i, 2) the unpadded (H, W) of each image in ``pixels``, or None.
        image_maps: feature maps of the image encoder, one (B_i, C, gh, gw) per entry of the encoder's
            ``image_layers``, or an empty list.
        image_size: (H, W) of the image encoder's input, for encoders that pool ``image_maps``.
        features: the encoder's own ``image_features(pixels)`` (B_i, ...), already computed (the frozen-feature
            cache), or None; rows of images without boxes may be zeros.
    """

    pixels: "torch.Tensor | None" = None
    sizes: "torch.Tensor | None" = None
    image_maps: list = field(default_factory=list)
    image_size: tuple[int, int] | None = None
    features: "torch.Tensor | None" = None

    def to(self, device) -> "RegionInputs":
        return RegionInputs(
            pixels=None if self.pixels is None else self.pixels.to(device),
            sizes=None if self.sizes is None else self.sizes.to(device),
            image_maps=[m.to(device) for m in self.image_maps],
            image_size=self.image_size,
            features=None if self.features is None else self.features.to(device),
        )


@dataclass
class Regions:
    """The regions of a batch, built once by the collator and shape-checked here; encoders need not re-check.

    Attributes:
        boxes: (R, 4) float canonical xyxy in [0, 1] of the original image, in image order then mention order.
        image_index: (R,) long, the row in ``pixels`` (and ``RegionInputs``) of each region's image.
        sample_index: (R,) long, the batch row of each region's sample.
        counts: (B_i,) long, regions per image (some may be 0); stays on the CPU, since it sizes splits.
    """

    boxes: "torch.Tensor"
    image_index: "torch.Tensor"
    sample_index: "torch.Tensor"
    counts: "torch.Tensor"

    def __post_init__(self) -> None:
        r = self.boxes.shape[0] if self.boxes.dim() == 2 else "R"
        for name, want in {"boxes": (r, 4), "image_index": (r,), "sample_index": (r,)}.items():
            got = tuple(getattr(self, name).shape)
            if got != want or r == "R":
                raise ValueError(f"Regions: {name} has shape {got}; valid: {want}, with boxes (R, 4), "
                                 "image_index and sample_index (R,), counts (B_i,)")
        if self.counts.dim() != 1 or int(self.counts.sum()) != r:
            raise ValueError(f"Regions: counts {self.counts.tolist()} sum to {int(self.counts.sum())}, but there "
                             f"are {r} boxes; valid: a (B_i,) tensor of regions per image that sums to R")

    @classmethod
    def from_per_image(cls, boxes: Sequence["torch.Tensor"], image_sample: Sequence[int] | None = None) -> "Regions":
        """Regions from one (R_b, 4) tensor per image and each image's batch row (default: row = image)."""
        import torch

        rows = list(range(len(boxes))) if image_sample is None else [int(b) for b in image_sample]
        if len(rows) != len(boxes):
            raise ValueError(f"Regions: {len(boxes)} box tensors for {len(rows)} images; give one per image")
        for b, bx in enumerate(boxes):
            if bx.dim() != 2 or bx.shape[1] != 4:
                raise ValueError(f"Regions: boxes of image {b} have shape {tuple(bx.shape)}; valid: (R_b, 4) xyxy")
        if not boxes:
            return cls.empty()
        counts = torch.tensor([bx.shape[0] for bx in boxes], dtype=torch.long)  # (B_i,)
        image_index = torch.repeat_interleave(torch.arange(len(boxes)), counts)  # (R,)
        sample_index = torch.tensor(rows, dtype=torch.long)[image_index]  # (R,)
        return cls(torch.cat(list(boxes)), image_index, sample_index, counts)  # boxes (R, 4)

    @classmethod
    def empty(cls, n_images: int = 0) -> "Regions":
        """No regions, for ``n_images`` images (counts all 0)."""
        import torch

        long = torch.zeros(0, dtype=torch.long)  # (0,)
        return cls(torch.zeros(0, 4), long, long.clone(), torch.zeros(n_images, dtype=torch.long))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device) -> "Regions":
        """The same regions with ``boxes`` and the indices on ``device`` (``counts`` stays on the CPU)."""
        return Regions(self.boxes.to(device), self.image_index.to(device), self.sample_index.to(device), self.counts)

    def per_image(self) -> list["torch.Tensor"]:
        """One (R_b, 4) view of ``boxes`` per image, in image order (the list form some encoders loop over)."""
        return list(self.boxes.split(self.counts.tolist()))

    def per_sample(self, n_samples: int) -> "torch.Tensor":
        """(B,) long regions per batch row, on the CPU."""
        import torch

        return torch.bincount(self.sample_index.cpu(), minlength=n_samples)  # (B,)


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

    Optional (see ``OPTIONAL_ATTRIBUTES["region_encoder"]``): ``frozen`` (bool, default False),
    ``carries_box`` (bool, default True: False tells the contract check that boxes do not reach the text),
    ``parameter_groups()``.
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
        """Batch the results of ``prepare`` (zero-padding to the largest); an entry is None for an image that
        carries no boxes (it is never pooled from)."""

    def forward(self, inputs: RegionInputs, regions: Regions) -> "torch.Tensor":
        """The batch's [Regions][pvit.interfaces.Regions] -> (R, K, D_r), one row per region in the order of
        ``regions.boxes`` (image order, then mention order).

        ``regions.boxes`` is (R, 4) xyxy in [0, 1] of the original image; ``regions.image_index`` names each
        region's row in ``inputs``; ``regions.per_image()`` gives the boxes as one (R_b, 4) tensor per image.
        Shapes were checked when the Regions was built (plugin API 2; API 1 passed that per-image list).
        """


@runtime_checkable
class LanguageModel(Protocol):
    """A causal LM with its tokenizer.

    Attributes:
        model: the Hugging Face ``PreTrainedModel``.
        tokenizer: the Hugging Face tokenizer.
        hidden_size: D_llm.

    Optional: ``parameter_groups()`` (see ``OPTIONAL_ATTRIBUTES["llm"]``).
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

    Optional (see ``OPTIONAL_ATTRIBUTES["evaluator"]``): ``generation`` (dict of decoding options, default
    ``{}``), the same options as attributes (``do_sample``, ``temperature``, ``top_p``, ``seed``,
    ``batch_size``), and ``write(records, path)``, which writes ``protocol["output_file"]`` in the evaluator's
    own format.
    """

    name: str
    data: dict
    max_new_tokens: int

    def score(self, records: list[dict]) -> dict:
        """``records``: dicts with ``id``, ``prompt``, ``prediction``, ``answer`` and the sample's ``meta``.

        Returns ``{"metrics": {name: float}, "records": [per-sample dicts with a "correct" field where
        meaningful], "protocol": {"template", "coordinate_format", "matcher", ...}}``.
        """


@runtime_checkable
class Projector(Protocol):
    """Maps features to the LLM's width: (..., in_dim) -> (..., out_dim); built with ``in_dim``/``out_dim``
    wired by pvit.

    Optional (see ``OPTIONAL_ATTRIBUTES["projector"]``): ``in_dim``, ``out_dim`` (int; checked by
    [pvit.testing][] when present) and ``parameter_groups()``.
    """

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        """(..., in_dim) -> (..., out_dim)."""


#: The Protocol each component kind conforms to.
PROTOCOLS = {"image_encoder": ImageEncoder, "region_encoder": RegionEncoder, "projector": Projector,
             "llm": LanguageModel, "dataset": Dataset, "evaluator": Evaluator, "generator": Generator}
