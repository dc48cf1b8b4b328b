"""The region-encoder contract check: attributes, region text, batching, forward shape and order, gradients."""

from __future__ import annotations

from pvit.interfaces import IMAGE_PATCH_TOKEN, IMAGE_TOKEN, REGION_PATCH_TOKEN, RegionInputs, Regions
from pvit.testing.support import (FULL_BOX, PLACEHOLDER_TOKENS, TAG_RE, TINY_BOX, TYPICAL_BOX, device_of, is_int,
                                  random_box, random_images, require)


def _check_region_attributes(enc) -> None:
    for name in ("tokens_per_region", "out_dim", "special_tokens", "image_layers", "uses_own_pixels"):
        require(hasattr(enc, name), enc, "declared attributes", f"attribute {name!r} is missing")
    k, d = enc.tokens_per_region, enc.out_dim
    require(is_int(k) and k >= 0, enc, "declared attributes", f"tokens_per_region must be an int >= 0, got {k!r}")
    require(is_int(d) and d >= 0, enc, "declared attributes", f"out_dim must be an int >= 0, got {d!r}")
    require(
        (k == 0) == (d == 0), enc, "declared attributes",
        f"tokens_per_region={k} and out_dim={d}: both are 0 (text-only encoder) or both positive",
    )
    st = enc.special_tokens
    require(
        isinstance(st, (list, tuple)) and all(isinstance(t, str) and t for t in st), enc, "declared attributes",
        f"special_tokens must be a list of non-empty str, got {type(st).__name__}",
    )
    require(len(set(st)) == len(st), enc, "declared attributes", "special_tokens has duplicates")
    il = enc.image_layers
    require(
        isinstance(il, (list, tuple)) and all(is_int(i) for i in il), enc, "declared attributes",
        f"image_layers must be a list of int, got {il!r}",
    )
    require(
        isinstance(enc.uses_own_pixels, bool), enc, "declared attributes",
        f"uses_own_pixels must be a bool, got {enc.uses_own_pixels!r}",
    )
    for name in ("region_text", "prepare", "collate", "forward"):
        require(callable(getattr(enc, name, None)), enc, "declared attributes", f"method {name}() is missing")


def _check_region_text(enc, rng) -> dict:
    k = enc.tokens_per_region
    allowed = set(enc.special_tokens) | (set(PLACEHOLDER_TOKENS) if k > 0 else set())
    texts = {}
    for box in (FULL_BOX, TINY_BOX, TYPICAL_BOX, random_box(rng)):
        text = enc.region_text(box)
        require(isinstance(text, str) and text, enc, "region_text", f"region_text({box}) returned {text!r}, not a str")
        require(text == enc.region_text(box), enc, "region_text", f"region_text({box}) is not deterministic")
        n = text.count(REGION_PATCH_TOKEN)
        require(
            n == k, enc, "region_text",
            f"region_text({box}) = {text!r} holds {n} {REGION_PATCH_TOKEN} but tokens_per_region is {k}",
        )
        for bad in (IMAGE_TOKEN, IMAGE_PATCH_TOKEN):
            require(bad not in text, enc, "region_text", f"region_text({box}) = {text!r} contains the image token {bad}")
        unknown = sorted({t for t in TAG_RE.findall(text) if t not in allowed})
        require(
            not unknown, enc, "region_text",
            f"region_text({box}) = {text!r} uses tokens {unknown} that are not in special_tokens"
            + (f" or the placeholders {list(PLACEHOLDER_TOKENS)}" if k > 0 else ""),
        )
        texts[box] = text
    if k == 0 and getattr(enc, "carries_box", True):
        require(
            len(set(texts.values())) == len(texts), enc, "region_text",
            "with tokens_per_region 0 the box is carried only by the text, but different boxes render the same "
            f"text: {texts}",
        )
    return texts


def _region_inputs(enc, images, image_encoder) -> RegionInputs:
    import torch

    prepared = [enc.prepare(im) for im in images]
    for i, p in enumerate(prepared):
        if enc.uses_own_pixels:
            require(
                isinstance(p, torch.Tensor) and p.dim() == 3 and p.shape[0] == 3 and p.is_floating_point(),
                enc, "prepare",
                f"uses_own_pixels is True, so prepare(image {i}) must return a float (3, H, W) tensor, got "
                f"{tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__}",
            )
        else:
            require(p is None, enc, "prepare", f"uses_own_pixels is False, so prepare() must return None, got {type(p).__name__}")
    inputs = enc.collate(prepared)
    require(isinstance(inputs, RegionInputs), enc, "collate", f"collate() returned {type(inputs).__name__}, not RegionInputs")
    if enc.uses_own_pixels:
        b = len(images)
        px, sizes = inputs.pixels, inputs.sizes
        require(
            isinstance(px, torch.Tensor) and px.dim() == 4 and px.shape[:2] == (b, 3), enc, "collate",
            f"pixels must be (B={b}, 3, H, W), got {None if px is None else tuple(px.shape)}",
        )
        require(
            isinstance(sizes, torch.Tensor) and tuple(sizes.shape) == (b, 2), enc, "collate",
            f"sizes must be (B={b}, 2), got {None if sizes is None else tuple(sizes.shape)}",
        )
        for i, p in enumerate(prepared):
            require(
                [int(s) for s in sizes[i]] == list(p.shape[1:]), enc, "collate",
                f"sizes[{i}] = {sizes[i].tolist()} but prepare gave (H, W) = {tuple(p.shape[1:])}",
            )
            require(
                px.shape[2] >= p.shape[1] and px.shape[3] >= p.shape[2], enc, "collate",
                f"padded batch {tuple(px.shape)} is smaller than image {i} {tuple(p.shape)}",
            )
    if enc.image_layers:
        if image_encoder is None:
            raise TypeError(
                f"{type(enc).__name__} declares image_layers={list(enc.image_layers)}, so check_region_encoder "
                "needs image_encoder=<an ImageEncoder> to fill RegionInputs.image_maps"
            )
        pixels = torch.stack([image_encoder.transform(im) for im in images])  # (B, 3, H, W)
        pixels = pixels.to(device_of(image_encoder))
        with torch.no_grad():
            _tokens, maps = image_encoder.forward_with_maps(pixels, list(enc.image_layers))
        if len(maps) != len(enc.image_layers):
            raise AssertionError(
                f"image encoder {type(image_encoder).__name__} returned {len(maps)} maps for "
                f"{len(enc.image_layers)} layers {list(enc.image_layers)}"
            )
        inputs.image_maps = list(maps)
        inputs.image_size = tuple(image_encoder.image_size)
    return inputs


def _check_output(enc, out, n_regions: int, contract: str) -> None:
    import torch

    k, d = enc.tokens_per_region, enc.out_dim
    require(isinstance(out, torch.Tensor), enc, contract, f"forward returned {type(out).__name__}, not a tensor")
    require(
        tuple(out.shape) == (n_regions, k, d), enc, contract,
        f"forward returned shape {tuple(out.shape)} for {n_regions} boxes, expected (R, K, out_dim) = "
        f"({n_regions}, {k}, {d})",
    )
    require(out.is_floating_point(), enc, contract, f"forward returned dtype {out.dtype}, expected a floating dtype")
    require(bool(torch.isfinite(out).all()), enc, contract, "forward returned non-finite values (NaN or inf)")


def _frozen_buffer_owners(enc) -> dict:
    """Buffers of submodules whose own parameters all exist and are all frozen (e.g. a frozen BatchNorm)."""
    snap = {}
    for mname, mod in enc.named_modules():
        params = list(mod.parameters(recurse=False))
        if params and not any(p.requires_grad for p in params):
            for bname, buf in mod.named_buffers(recurse=False):
                if buf is not None and buf.is_floating_point():
                    snap[f"{mname}.{bname}" if mname else bname] = buf.detach().clone()
    return snap


def check_region_encoder(encoder, image_encoder=None, *, n_images: int = 2, seed: int = 0) -> dict:
    """Check that ``encoder`` honours the [RegionEncoder][pvit.interfaces.RegionEncoder] contract.

    Checks: the declared attributes and their types; ``region_text`` for a full-image, a sub-pixel, a
    typical and a random box (a str with exactly K ``<region_patch>``, only tokens from ``special_tokens``
    or the placeholders, distinct texts when K == 0); ``prepare`` + ``collate`` on ``n_images`` random
    images of different sizes (feature maps come from ``image_encoder.forward_with_maps`` when the
    encoder declares ``image_layers``); ``forward(inputs, regions)`` returns a finite float (R, K, out_dim)
    tensor for 2 and 3 boxes per image and for an image without boxes; permuting an image's boxes permutes
    the outputs; a backward pass gives frozen parameters no gradient, they stay frozen, and frozen
    submodules keep their buffers (no BatchNorm statistics updates).

    Args:
        encoder: the region encoder instance.
        image_encoder: an ImageEncoder, required when ``encoder.image_layers`` is non-empty.
        n_images: B, images in the test batch (>= 1).
        seed: seeds the images and boxes.

    Returns:
        dict: ``{"tokens_per_region", "out_dim", "regions", "output_shape", "trainable_params",
            "frozen_params", "backward", "region_text"}``.

    Raises:
        AssertionError: naming the contract that is broken.
        TypeError: when ``image_layers`` is non-empty and no ``image_encoder`` is given.
    """
    import numpy as np
    import torch

    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    rng = np.random.default_rng(seed)
    _check_region_attributes(encoder)
    texts = _check_region_text(encoder, rng)
    images = random_images(n_images, seed)
    device = device_of(encoder)
    inputs = _region_inputs(encoder, images, image_encoder).to(device)

    # boxes per image: 2, 3, 2, 3, ...; each image has the full box and a sub-pixel box
    per_image = []
    for b in range(n_images):
        boxes = [FULL_BOX, TINY_BOX] + [random_box(rng) for _ in range(b % 2)]
        per_image.append(torch.tensor(boxes, dtype=torch.float32))  # (R_b, 4)
    regions = Regions.from_per_image(per_image).to(device)  # R = sum R_b boxes
    n_regions = len(regions)

    modes = {m: m.training for m in encoder.modules()}
    was_training = encoder.training
    named = list(encoder.named_parameters())
    grads = {n: p.grad for n, p in named}
    frozen = [n for n, p in named if not p.requires_grad]  # as built, before any forward
    trainable = [n for n, p in named if p.requires_grad]
    try:
        encoder.eval()
        with torch.no_grad():
            out = encoder(inputs, regions)
            _check_output(encoder, out, n_regions, "forward shape")
            # mention order: reversing each image's boxes reverses its rows of the output
            perm = Regions.from_per_image([bx.flip(0) for bx in per_image]).to(device)
            out_perm = encoder(inputs, perm)
            _check_output(encoder, out_perm, n_regions, "forward shape")
            order, start = [], 0
            for bx in per_image:
                order.extend(range(start + len(bx) - 1, start - 1, -1))
                start += len(bx)
            expected = out[torch.tensor(order, dtype=torch.long, device=out.device)]
            require(
                torch.allclose(out_perm.float(), expected.float(), rtol=1e-4, atol=1e-4), encoder, "mention order",
                "reversing the boxes of each image did not reverse the corresponding output rows "
                f"(max difference {(out_perm.float() - expected.float()).abs().max().item() if out.numel() else 0:.3g})",
            )
            if n_images >= 2:  # an image with no regions in the batch
                some_empty = Regions.from_per_image(per_image[:-1] + [per_image[-1][:0]]).to(device)  # last: (0, 4)
                out_empty = encoder(inputs, some_empty)
                _check_output(encoder, out_empty, n_regions - len(per_image[-1]), "forward with an image without boxes")
                require(
                    torch.allclose(out_empty.float(), out[: out_empty.shape[0]].float(), rtol=1e-4, atol=1e-4),
                    encoder, "forward with an image without boxes",
                    "dropping the boxes of the last image changed the features of the other images' boxes",
                )

        # gradients: in the mode the encoder came in (train() as the core calls it, or eval)
        encoder.train(was_training)
        buffers = _frozen_buffer_owners(encoder)
        for _n, p in named:
            p.grad = None
        out = encoder(inputs, regions)
        _check_output(encoder, out, n_regions, "forward shape")
        did_backward = False
        if trainable and encoder.tokens_per_region > 0:
            require(
                out.requires_grad, encoder, "gradient flow",
                f"parameters {trainable[:3]} require grad but the output does not depend on them (detached?)",
            )
            out.float().sum().backward()
            did_backward = True
        params = dict(encoder.named_parameters())
        now_trainable = [n for n in frozen if params[n].requires_grad]
        require(not now_trainable, encoder, "frozen parameters stay frozen", f"forward unfroze {now_trainable[:5]}")
        with_grad = [n for n in frozen if params[n].grad is not None]
        require(not with_grad, encoder, "frozen parameters get no gradient", f"{with_grad[:5]} received a gradient")
        now_buffers = dict(encoder.named_buffers())
        changed = [n for n, v in buffers.items() if n in now_buffers and not torch.equal(now_buffers[n], v)]
        require(
            not changed, encoder, "frozen modules keep their buffers",
            f"forward in train mode changed buffers {changed[:5]} of modules whose parameters are frozen "
            "(freeze BatchNorm statistics, e.g. FrozenBatchNorm2d)",
        )
    finally:
        for m, mode in modes.items():
            m.training = mode
        for n, p in named:
            p.grad = grads.get(n)

    return {
        "tokens_per_region": encoder.tokens_per_region,
        "out_dim": encoder.out_dim,
        "regions": n_regions,
        "output_shape": tuple(out.shape),
        "trainable_params": sum(params[n].numel() for n in trainable),
        "frozen_params": sum(params[n].numel() for n in frozen),
        "backward": did_backward,
        "region_text": texts[TYPICAL_BOX],
    }
