"""Tiny option sets (64 px, patch 8, width 64, 2 blocks) that build each encoder offline in milliseconds."""

from __future__ import annotations

#: ``pvit.build("image_encoder", name, **TINY_OPTIONS[name])`` gives an 8x8 grid of 64-d tokens
#: (the calibration setup: docs/reproduce.md, "What the tiny run learns, and why").
TINY_OPTIONS: dict[str, dict] = {
    "hf-clip": {
        "config": {
            "image_size": 64,
            "patch_size": 8,
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        }
    },
    "openclip-vit": {"model": {"image_size": 64, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32}},
    "timm-vit": {
        "model": "vit_tiny_patch16_224",
        "options": {"img_size": 64, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2},
    },
}
