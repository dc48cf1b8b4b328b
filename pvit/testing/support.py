"""Shared pieces of the contract checks: test images and boxes, and how a broken contract is reported."""

from __future__ import annotations

import re
from typing import Any

from pvit.interfaces import REGION_END, REGION_PATCH_TOKEN, REGION_START

#: Tokens the core adds itself, which a feature encoder's ``region_text`` may use without listing them.
PLACEHOLDER_TOKENS = (REGION_START, REGION_END, REGION_PATCH_TOKEN)
#: Boxes every region encoder must render and encode: the full image, a sub-pixel box, a typical one.
FULL_BOX = (0.0, 0.0, 1.0, 1.0)
TINY_BOX = (0.3, 0.4, 0.303, 0.404)
TYPICAL_BOX = (0.204, 0.469, 0.81, 0.96)
SIZES = ((64, 48), (40, 72), (56, 56), (33, 20))  # (w, h) of the random test images
TAG_RE = re.compile(r"<[^<>\s]+>")


def broken(component: Any, contract: str, detail: str) -> AssertionError:
    return AssertionError(f"{type(component).__name__} breaks the contract '{contract}': {detail}")


def require(ok: bool, component: Any, contract: str, detail: str) -> None:
    if not ok:
        raise broken(component, contract, detail)


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def random_images(n: int = 2, seed: int = 0) -> list:
    """``n`` random PIL RGB images of different sizes (64x48, 40x72, 56x56, 33x20, cycled)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)  # (H, W, 3)
        images.append(Image.fromarray(arr, "RGB"))
    return images


def random_box(rng) -> tuple:
    x1, y1 = rng.uniform(0.0, 0.7, size=2)
    w, h = rng.uniform(0.05, 0.3, size=2)
    return (float(x1), float(y1), float(x1 + w), float(y1 + h))


def device_of(module) -> Any:
    import torch

    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")
