"""LLaVA/PVIT image preprocessing: squash-resize (bicubic) to the encoder's size, then normalise."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch
    from PIL import Image

#: OpenAI CLIP normalisation (also used by LLaVA and PVIT).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def squash_transform(
    image: "Image.Image", size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> "torch.Tensor":
    """PIL image -> (3, H, W) float32, resized to ``size`` = (H, W) without keeping the aspect ratio.

    Matches LLaVA/PVIT's CLIP preprocessing (``Resize((224, 224), bicubic)``, no crop, no padding), so a box
    normalised to the original image maps to ``box * (W, H, W, H)`` pixels of the result.
    """
    import numpy as np
    import torch
    from PIL import Image

    h, w = size
    rgb = image.convert("RGB")
    if rgb.size != (w, h):
        rgb = rgb.resize((w, h), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy())  # (H, W, 3)
    x = x.permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s  # (3, H, W)


def check_mean_std(mean, std, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Validate per-channel ``mean``/``std`` options (3 floats each, std > 0); returns them as tuples."""
    from pvit.errors import ComponentOptionError

    out = []
    for name, val in (("mean", mean), ("std", std)):
        try:
            vals = tuple(float(v) for v in val)
        except TypeError:
            vals = ()
        if len(vals) != 3:
            raise ComponentOptionError(f"{where}: option {name!r} must be 3 numbers (R, G, B), got {val!r}")
        out.append(vals)
    if min(out[1]) <= 0:
        raise ComponentOptionError(f"{where}: option 'std' must be positive, got {std!r}")
    return out[0], out[1]
