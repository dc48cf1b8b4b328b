"""Built-in image encoders: `hf-clip`, `openclip-vit`, `timm-vit` (ViT patch tokens, LLaVA/PVIT style)."""

from __future__ import annotations

import pvit
from pvit.options import HubPath, LocalPath, TaggedPath


def make_hf_clip(
    path: HubPath | None = None,
    config: dict | None = None,
    select_layer: int = -2,
    frozen: bool = True,
    dtype: str = "float32",
    mean: list | None = None,
    std: list | None = None,
    seed: int | None = 0,
):
    """Hugging Face ``CLIPVisionModel`` (PVIT/LLaVA: ``openai/clip-vit-large-patch14``, 224 px, 256 x 1024-d tokens).

    Options:
        path: local directory or hub id of a CLIP (or CLIP vision) checkpoint; hub ids resolve only from the
            local cache when ``HF_HUB_OFFLINE=1``.
        config: ``CLIPVisionConfig`` fields for a random-init model, e.g. ``{image_size: 64, patch_size: 8,
            hidden_size: 64, intermediate_size: 256, num_hidden_layers: 2, num_attention_heads: 2}``. With
            ``path`` it only describes the architecture, for ``--dry-run`` plans made without the weights.
        select_layer: hidden-state index returned by ``forward`` (HF semantics; -2 = LLaVA's penultimate block).
        frozen: no grads, always eval mode, forward under ``torch.no_grad()`` (PVIT freezes the ViT).
        dtype: float32 | bfloat16 | float16.
        mean, std: normalisation; default the checkpoint's ``preprocessor_config.json`` or CLIP's values.
        seed: seed of the random init (``config`` only), so a frozen random encoder is the same in every run.

    Returns an image encoder: ``forward((B, 3, H, W)) -> (B, N, D)`` with the CLS token dropped.
    """
    from .hf_clip import HFCLIPEncoder

    return HFCLIPEncoder(path=path, config=config, select_layer=select_layer, frozen=frozen, dtype=dtype,
                         mean=mean, std=std, seed=seed)


def make_openclip_vit(
    model: str | dict,
    pretrained: TaggedPath | None = None,
    select_layer: int = -2,
    frozen: bool = True,
    dtype: str = "float32",
    mean: list | None = None,
    std: list | None = None,
    seed: int | None = 0,
):
    """open_clip ``VisionTransformer``, random init unless ``pretrained`` names a local file.

    Options:
        model: an open_clip config name (``ViT-L-14-quickgelu`` = OpenAI CLIP ViT-L/14; read from open_clip's
            packaged JSON, nothing downloaded) or a dict of ``CLIPVisionCfg`` fields (plus ``quick_gelu``),
            e.g. ``{image_size: 64, patch_size: 8, width: 64, layers: 2, head_width: 32}``.
        pretrained: local ``.safetensors`` / ``.bin`` / ``.pt`` state dict of the full CLIP model (``visual.*``
            keys are taken) or of the image tower alone; loaded without executing code.
        select_layer: hidden-state index returned by ``forward`` (HF semantics: 0 = after ``ln_pre``, -1 = last block).
        frozen, dtype, seed: as for ``hf-clip``.
        mean, std: normalisation, default CLIP's.
    """
    from .openclip_vit import OpenCLIPViTEncoder

    return OpenCLIPViTEncoder(model=model, pretrained=pretrained, select_layer=select_layer, frozen=frozen,
                              dtype=dtype, mean=mean, std=std, seed=seed)


def make_timm_vit(
    model: str,
    options: dict | None = None,
    checkpoint: LocalPath | None = None,
    select_layer: int = -2,
    frozen: bool = True,
    dtype: str = "float32",
    mean: list | None = None,
    std: list | None = None,
    seed: int | None = 0,
):
    """timm ``VisionTransformer``: ``timm.create_model(name, pretrained=False, num_classes=0, **options)``.

    Options:
        model: a timm ViT name, e.g. ``vit_tiny_patch16_224``, ``vit_large_patch14_clip_224``.
        options: keyword overrides for ``create_model``, e.g. ``{img_size: 64, patch_size: 8, embed_dim: 64,
            depth: 2, num_heads: 2}``.
        checkpoint: local state-dict file (the model family's ``checkpoint_filter_fn`` is applied).
        select_layer: hidden-state index (0 = after ``norm_pre``, k = block k, -1 = last); the final ``norm``
            is never applied; CLS/register tokens are dropped.
        frozen, dtype, seed: as for ``hf-clip``.
        mean, std: normalisation, default the model's ``pretrained_cfg`` values.
    """
    from .timm_vit import TimmViTEncoder

    return TimmViTEncoder(model=model, options=options, checkpoint=checkpoint, select_layer=select_layer,
                          frozen=frozen, dtype=dtype, mean=mean, std=std, seed=seed)


@pvit.hookimpl
def pvit_register_image_encoders(register):
    register("hf-clip", make_hf_clip)
    register("openclip-vit", make_openclip_vit)
    register("timm-vit", make_timm_vit)
