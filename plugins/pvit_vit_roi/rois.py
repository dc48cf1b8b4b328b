"""Normalised boxes -> torchvision RoIs on a feature map, and the shared roi_align call."""

from __future__ import annotations

import torch
from torchvision.ops import roi_align


def rois_on_map(
    image_idx: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], map_size: tuple[int, int]
) -> torch.Tensor:
    """Normalised boxes (R, 4) -> RoIs (R, 5) = (image index, x1, y1, x2, y2) in feature-map cells.

    The image encoder squashes the image to ``image_size`` = (H, W), so ``box * (W, H, W, H)`` are pixels of its
    input; a map of ``map_size`` = (h, w) covers that input, so pixels scale by (w / W, h / H).
    """
    (H, W), (h, w) = image_size, map_size
    pixels = boxes * boxes.new_tensor([W, H, W, H])  # (R, 4)
    cells = pixels * boxes.new_tensor([w / W, h / H, w / W, h / H])  # (R, 4)
    return torch.cat([image_idx[:, None], cells], dim=1)  # (R, 5)


def pool(feature: torch.Tensor, rois: torch.Tensor, output_size: int, sampling_ratio: int) -> torch.Tensor:
    """roi_align in float32 with ``aligned=True`` (pixel i spans [i, i+1]): (B, C, h, w), (R, 5) -> (R, C, s, s)."""
    return roi_align(feature.float(), rois, (output_size, output_size), 1.0, sampling_ratio, aligned=True)
