"""The projector contract check: (..., in_dim) -> (..., out_dim), finite, gradients where trainable."""

from __future__ import annotations

from pvit.testing.support import device_of, require


def check_projector(projector, in_dim: int, out_dim: int, *, seed: int = 0) -> dict:
    """Check that ``projector`` maps (..., in_dim) -> (..., out_dim) with finite values and that every
    trainable parameter receives a gradient (frozen ones none).

    Returns:
        ``{"in_dim", "out_dim", "trainable_params", "frozen_params"}``.
    """
    import torch

    for attr, want in (("in_dim", in_dim), ("out_dim", out_dim)):
        if hasattr(projector, attr):
            got = getattr(projector, attr)
            require(got == want, projector, "declared attributes", f"{attr} is {got}, built for {want}")
    device = device_of(projector)
    g = torch.Generator().manual_seed(seed)
    named = list(projector.named_parameters())
    grads = {n: p.grad for n, p in named}
    try:
        for shape in ((2, 3, in_dim), (5, in_dim)):
            x = torch.randn(*shape, generator=g).to(device)  # (..., in_dim)
            for _n, p in named:
                p.grad = None
            y = projector(x)
            want = (*shape[:-1], out_dim)
            require(
                isinstance(y, torch.Tensor) and tuple(y.shape) == want, projector, "forward shape",
                f"input {shape} gave {tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}, expected {want}",
            )
            require(y.is_floating_point() and bool(torch.isfinite(y).all()), projector, "forward shape", "non-finite or non-float output")
            if any(p.requires_grad for _n, p in named):
                y.float().sum().backward()
                missing = [n for n, p in named if p.requires_grad and p.grad is None]
                require(not missing, projector, "gradient flow", f"trainable parameters {missing[:5]} got no gradient")
                leaked = [n for n, p in named if not p.requires_grad and p.grad is not None]
                require(not leaked, projector, "frozen parameters get no gradient", f"{leaked[:5]} received a gradient")
    finally:
        for n, p in named:
            p.grad = grads.get(n)
    return {
        "in_dim": in_dim,
        "out_dim": out_dim,
        "trainable_params": sum(p.numel() for _n, p in named if p.requires_grad),
        "frozen_params": sum(p.numel() for _n, p in named if not p.requires_grad),
    }
