"""Tests for the built-in projectors (linear, mlp2x-gelu) and their input normalisation."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pvit
from pvit.errors import ComponentOptionError
from pvit.testing import check_projector

NAMES = ("linear", "mlp2x-gelu")
NORMS = ("none", "layer", "batch")


def _build(name, in_dim=16, out_dim=24, **options):
    return pvit.build("projector", name, in_dim=in_dim, out_dim=out_dim, **options)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("norm", NORMS)
def test_contract_and_shapes(name, norm):
    proj = _build(name, input_norm=norm)
    assert check_projector(proj, 16, 24)["trainable_params"] > 0
    proj.train()
    for shape in ((5, 1, 16), (2, 7, 16)):  # regions (R, K, D) and image tokens (B, N, D)
        assert proj(torch.randn(shape)).shape == (*shape[:-1], 24)
    with pytest.raises(ValueError, match=r"\(\.\.\., 16\)"):
        proj(torch.randn(3, 15))


def test_layer_structure():
    lin = _build("linear")
    assert isinstance(lin.body, nn.Linear) and isinstance(lin.norm, nn.Identity)
    mlp = _build("mlp2x-gelu", input_norm="layer")
    kinds = [type(m) for m in mlp.body]
    assert kinds == [nn.Linear, nn.GELU, nn.Linear]
    assert (mlp.body[0].in_features, mlp.body[0].out_features, mlp.body[2].out_features) == (16, 24, 24)  # LLaVA-1.5
    assert isinstance(mlp.norm, nn.LayerNorm)
    assert _build("mlp2x-gelu", hidden_dim=8).body[0].out_features == 8
    assert _build("linear", bias=False).body.bias is None


def test_batch_norm_over_all_leading_dims():
    proj = _build("linear", input_norm="batch").train()
    g = torch.Generator().manual_seed(0)
    offset = 7.0 + torch.randn(16, generator=g)  # a large per-dimension offset shared by every row
    x = offset + 0.04 * torch.randn(3, 5, 16, generator=g)  # tiny spread (docs/reproduce.md, tiny run, item 1)
    y = proj.norm(x)
    flat = y.reshape(-1, 16)
    assert torch.allclose(flat.mean(0), torch.zeros(16), atol=1e-4)
    assert torch.allclose(flat.var(0, unbiased=False), torch.ones(16), atol=2e-2)  # eps 1e-5 vs var 1.6e-3
    ref = nn.BatchNorm1d(16).train()
    assert torch.allclose(ref(x.reshape(-1, 16)).reshape(3, 5, 16), y, atol=1e-6)
    assert torch.allclose(proj.norm.running_mean, ref.running_mean)
    # LayerNorm normalises each row on its own: rows stay nearly identical (the spread across rows stays tiny)
    ln = _build("linear", input_norm="layer").norm
    assert ln(x).reshape(-1, 16).std(0).max() < 0.2


def test_batch_norm_single_row_in_training_uses_running_stats():
    proj = _build("mlp2x-gelu", input_norm="batch").train()
    proj.norm.running_mean.fill_(2.0)
    proj.norm.running_var.fill_(4.0)
    x = torch.full((1, 1, 16), 4.0)
    y = proj.norm(x)  # no crash: (2 - ...) uses running statistics
    assert torch.allclose(y, torch.full((1, 1, 16), 1.0), atol=1e-3)
    assert torch.equal(proj.norm.running_mean, torch.full((16,), 2.0))  # not updated
    assert proj(torch.randn(1, 16)).shape == (1, 24)
    assert proj(torch.randn(0, 1, 16)).shape == (0, 1, 24)
    proj(torch.randn(1, 16)).sum().backward()  # still differentiable


def test_eval_uses_running_stats():
    proj = _build("linear", input_norm="batch")
    for _ in range(50):
        proj.train()(torch.randn(64, 16) * 3 + 1)
    proj.eval()
    a = proj(torch.randn(4, 16))
    x = torch.randn(1, 16)
    batch = torch.cat([x, torch.randn(7, 16) * 100])
    assert torch.allclose(proj(x), proj(batch)[:1], atol=1e-5)  # per-row in eval
    assert a.shape == (4, 24)


@settings(max_examples=25, deadline=None)
@given(
    scale=st.floats(0.05, 10.0),
    offset=st.floats(-50.0, 50.0),
    seed=st.integers(0, 2**16),
)
def test_batch_norm_ignores_per_dimension_affine_shift(scale, offset, seed):
    """In training mode the batch-normalised input is invariant to a*x + c per dimension (a > 0; eps ~ 0 here)."""
    from pvit_projectors.norm import TokenBatchNorm

    torch.manual_seed(seed)
    norm = TokenBatchNorm(16, eps=1e-12).double().train()
    x = torch.randn(4, 8, 16, dtype=torch.float64)
    c = torch.full((16,), offset, dtype=torch.float64) + torch.randn(16, dtype=torch.float64)
    a = scale * (1 + torch.rand(16, dtype=torch.float64))
    assert torch.allclose(norm(x), norm(a * x + c), atol=1e-6)


def test_dtype_cast_and_errors():
    proj = _build("mlp2x-gelu", input_norm="batch")
    assert proj(torch.randn(3, 2, 16, dtype=torch.bfloat16)).dtype == torch.float32
    with pytest.raises(ComponentOptionError, match="none, layer, batch"):
        _build("linear", input_norm="group")
    with pytest.raises(ComponentOptionError, match="in_dim"):
        _build("linear", in_dim=0)
    problems = pvit.plugins.check_options("projector", "linear", {"in_dim": 4})
    assert problems and "wired" in problems[0]
