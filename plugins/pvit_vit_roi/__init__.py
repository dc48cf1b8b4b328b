"""Built-in region encoder `vit-roi`: RoI features pooled from the image encoder's hidden states (GPT4RoI-style)."""

from __future__ import annotations

import pvit


def make_vit_roi(
    image_encoder=None,
    variant: str = "light",
    layers: list | None = None,
    output_size: int | None = None,
    sampling_ratio: int | None = None,
    out_dim: int | None = None,
    fuse_rounds: int = 5,
):
    """One token per region, RoIAligned from the image encoder's hidden states (no second backbone).

    ``image_encoder`` is wired by pvit (the built image encoder; only its width, grid, input size and depth
    are read). Boxes are normalised xyxy of the original image; the image encoder squashes the image, so
    ``box * (W, H, W, H)`` are pixels of its input.

    Options:
        variant: ``light`` (default; pvit's own head, NOT GPT4RoI's module: RoIAlign every box on each listed
            layer, concatenate the levels' channels, flatten, optional MLP) or ``gpt4roi`` (GPT4RoI's
            multi-level module: coordinate channels, per-level 1x1 convs, channel-shuffle fuse rounds,
            RoIAlign per level, 3x3 convs summed, ReLU, flatten, Linear, plus a box position embedding;
            docs/regions.md, "GPT4RoI region features"; about 0.3B parameters at ViT-L width).
        layers: hidden-state indices (Hugging Face semantics: 0 embeddings, k block k, negative from the end).
            Default: light ``[-2]`` (LLaVA's feature layer); gpt4roi GPT4RoI's rule
            ``hidden_states[-2::-3][::-1][-4:]`` on the encoder's depth (= [14, 17, 20, 23] for CLIP ViT-L/14).
        output_size: RoIAlign bins per side. Default light 2 (2x2 bins keep a coarse layout; the feature is
            ``len(layers) * C * 4`` wide: 256 for the tiny 64-d encoder, 4096 for ViT-L), gpt4roi 14 (GPT4RoI).
        sampling_ratio: RoIAlign samples per bin side; default light 0 (adaptive: ceil(bin size), so every
            covered patch contributes), gpt4roi 2 (GPT4RoI / mmcv). RoIAlign always uses aligned=True.
        out_dim: width of the region token. light: None (default) = no parameters, the flattened pooled
            features; an int adds a Linear-GELU-Linear MLP to that width. gpt4roi: default the encoder width
            (GPT4RoI's 1024; its updims to the LLM is pvit's region projector).
        fuse_rounds: gpt4roi fuse rounds (GPT4RoI: 5).
    """
    from pvit.errors import ComponentOptionError

    from .encoder import ViTRoIEncoder

    if image_encoder is None:
        raise ComponentOptionError(
            "vit-roi pools the image encoder's hidden states: build it through pvit with an image encoder "
            "(pvit wires the 'image_encoder' option), e.g. pvit.build('region_encoder', 'vit-roi', image_encoder=enc)"
        )
    missing = [a for a in ("out_dim", "grid_size", "image_size") if not hasattr(image_encoder, a)]
    if missing:
        raise ComponentOptionError(f"vit-roi: the image encoder {type(image_encoder).__name__} lacks {missing}")
    return ViTRoIEncoder(
        in_channels=image_encoder.out_dim,
        grid_size=image_encoder.grid_size,
        image_size=image_encoder.image_size,
        num_layers=getattr(image_encoder, "num_layers", None),
        variant=variant,
        layers=layers,
        output_size=output_size,
        sampling_ratio=sampling_ratio,
        out_dim=out_dim,
        fuse_rounds=fuse_rounds,
    )


@pvit.hookimpl
def pvit_register_region_encoders(register):
    register("vit-roi", make_vit_roi)
