"""RegionCLIP input pipeline as PVIT runs it: shortest-edge resize with PIL, CLIP normalisation, zero padding."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from pvit.interfaces import RegionInputs

#: CLIP pixel statistics (RegionCLIP PIXEL_MEAN / PIXEL_STD with div_pixel=True).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_shape(h: int, w: int, min_size: int = 800, max_size: int = 1333) -> tuple[int, int]:
    """Output (new_h, new_w) of detectron2 ``ResizeShortestEdge(min_size, max_size)`` for an h x w image.

    The short side goes to ``min_size`` unless the long side would then exceed ``max_size``, in which case the
    long side goes to ``max_size``; both are rounded with ``int(x + 0.5)`` (e.g. 480x640 -> 800x1067).
    A side is kept >= 1 (beyond 2666:1 detectron2 would round it to 0 and fail).
    """
    scale = min_size / min(h, w)
    if h < w:
        new_h, new_w = float(min_size), scale * w
    else:
        new_h, new_w = scale * h, float(min_size)
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def prepare_image(image: Image.Image, min_size: int = 800, max_size: int = 1333) -> torch.Tensor:
    """PIL image -> (3, h, w) float32, resized with PIL bilinear on uint8 RGB, then /255 and CLIP mean/std."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"regionclip prepare expects a PIL image, got {type(image).__name__}")
    if image.mode != "RGB":
        image = image.convert("RGB")
    new_h, new_w = resize_shape(image.height, image.width, min_size, max_size)
    resized = image.resize((new_w, new_h), Image.BILINEAR)
    arr = np.array(resized, dtype=np.uint8)  # (h, w, 3)
    x = torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0  # (3, h, w)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std  # (3, h, w)


def collate_images(prepared: list) -> RegionInputs:
    """Batch ``prepare_image`` results: zero-pad right/bottom (after normalisation) to the largest h and w.

    ``None`` entries (samples without an image) become all-zero slots of size (0, 0); they may carry no boxes.
    Returns RegionInputs with ``pixels`` (B, 3, H_max, W_max) and ``sizes`` (B, 2) = unpadded (h, w).
    """
    sizes = [(0, 0) if p is None else (int(p.shape[-2]), int(p.shape[-1])) for p in prepared]
    for i, p in enumerate(prepared):
        if p is not None and (p.dim() != 3 or p.shape[0] != 3):
            raise ValueError(f"regionclip collate: item {i} has shape {tuple(p.shape)}, expected (3, h, w)")
    if prepared and all(p is not None for p in prepared) and len(set(sizes)) == 1:  # nothing to pad
        return RegionInputs(pixels=torch.stack(prepared), sizes=torch.tensor(sizes, dtype=torch.long).view(-1, 2))
    h_max = max((s[0] for s in sizes), default=0)
    w_max = max((s[1] for s in sizes), default=0)
    ref = next((p for p in prepared if p is not None), None)
    dtype = ref.dtype if ref is not None else torch.float32
    pixels = torch.zeros(len(prepared), 3, h_max, w_max, dtype=dtype)  # (B, 3, H, W)
    for i, p in enumerate(prepared):
        if p is not None:
            pixels[i, :, : p.shape[1], : p.shape[2]] = p
    return RegionInputs(pixels=pixels, sizes=torch.tensor(sizes, dtype=torch.long).view(-1, 2))  # sizes (B, 2)
