"""The image-encoder contract check: declared sizes, transform, forward and forward_with_maps."""

from __future__ import annotations

from typing import Sequence

from pvit.testing.support import device_of, is_int, random_images, require


def check_image_encoder(encoder, *, layers: Sequence[int] = (-1, -2), n_images: int = 2, seed: int = 0) -> dict:
    """Check that ``encoder`` honours the [ImageEncoder][pvit.interfaces.ImageEncoder] contract.

    Checks: ``out_dim``, ``num_tokens``, ``grid_size`` (gh * gw == num_tokens), ``image_size``;
    ``transform`` gives a float (3, H, W) == image_size for images of different sizes; ``forward`` gives a
    finite (B, num_tokens, out_dim); ``forward_with_maps(pixels, layers)`` gives the same tokens plus one
    finite (B, C, gh, gw) map per layer.

    Returns:
        ``{"out_dim", "num_tokens", "grid_size", "image_size", "map_channels"}``.
    """
    import torch

    enc = encoder
    for name in ("out_dim", "num_tokens", "grid_size", "image_size"):
        require(hasattr(enc, name), enc, "declared attributes", f"attribute {name!r} is missing")
    require(is_int(enc.out_dim) and enc.out_dim > 0, enc, "declared attributes", f"out_dim must be an int > 0, got {enc.out_dim!r}")
    require(is_int(enc.num_tokens) and enc.num_tokens > 0, enc, "declared attributes", f"num_tokens must be an int > 0, got {enc.num_tokens!r}")
    gs, isz = tuple(enc.grid_size), tuple(enc.image_size)
    require(len(gs) == 2 and all(is_int(v) and v > 0 for v in gs), enc, "declared attributes", f"grid_size must be (gh, gw), got {gs}")
    require(len(isz) == 2 and all(is_int(v) and v > 0 for v in isz), enc, "declared attributes", f"image_size must be (H, W), got {isz}")
    require(
        gs[0] * gs[1] == enc.num_tokens, enc, "declared attributes",
        f"grid_size {gs} has {gs[0] * gs[1]} cells but num_tokens is {enc.num_tokens}",
    )
    images = random_images(n_images, seed)
    pix = []
    for i, im in enumerate(images):
        t = enc.transform(im)
        require(
            isinstance(t, torch.Tensor) and t.is_floating_point() and tuple(t.shape) == (3, *isz), enc, "transform",
            f"transform(image {i} of size {im.size}) gave "
            f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}, expected float (3, {isz[0]}, {isz[1]})",
        )
        pix.append(t)
    pixels = torch.stack(pix).to(device_of(enc))  # (B, 3, H, W)
    b = len(images)
    modes = {m: m.training for m in enc.modules()}
    try:
        enc.eval()
        with torch.no_grad():
            tokens = enc(pixels)
            expected = (b, enc.num_tokens, enc.out_dim)
            require(
                isinstance(tokens, torch.Tensor) and tuple(tokens.shape) == expected, enc, "forward shape",
                f"forward gave {tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__}, "
                f"expected (B, num_tokens, out_dim) = {expected}",
            )
            require(tokens.is_floating_point() and bool(torch.isfinite(tokens).all()), enc, "forward shape", "non-finite or non-float features")
            result = enc.forward_with_maps(pixels, list(layers))
            require(
                isinstance(result, tuple) and len(result) == 2, enc, "forward_with_maps",
                "forward_with_maps must return (tokens, [maps])",
            )
            tok2, maps = result
            require(
                tuple(tok2.shape) == expected and torch.allclose(tok2, tokens, rtol=1e-4, atol=1e-4), enc, "forward_with_maps",
                "its tokens differ from forward(pixels)",
            )
            require(len(maps) == len(layers), enc, "forward_with_maps", f"{len(maps)} maps for layers {list(layers)}")
            channels = []
            for layer, m in zip(layers, maps):
                require(
                    isinstance(m, torch.Tensor) and m.dim() == 4 and m.shape[0] == b and tuple(m.shape[2:]) == gs,
                    enc, "forward_with_maps",
                    f"map of layer {layer} has shape {tuple(m.shape)}, expected (B={b}, C, {gs[0]}, {gs[1]})",
                )
                require(bool(torch.isfinite(m).all()), enc, "forward_with_maps", f"map of layer {layer} is not finite")
                channels.append(int(m.shape[1]))
    finally:
        for m, mode in modes.items():
            m.training = mode
    return {
        "out_dim": enc.out_dim,
        "num_tokens": enc.num_tokens,
        "grid_size": gs,
        "image_size": isz,
        "map_channels": channels,
    }
