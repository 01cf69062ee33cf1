"""FrogLinear: forward, sparse gradients, merge, guided noise, input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spectune.errors import SpectuneError
from spectune.tuning.methods.frog.layer import (
    SPARSE_GRAD_MAX_DENSITY,
    FrogLinear,
    _FrogLinearFunction,
)


def _layer(n=6, m=5, k=7, seed=0, bias=True, dtype=torch.float64, **kw):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(n, m, dtype=dtype, generator=gen)
    b = torch.randn(n, dtype=dtype, generator=gen) if bias else None
    idx = torch.randperm(n * m, generator=gen)[:k].sort().values
    vals = torch.randn(k, dtype=torch.float64, generator=gen)
    return FrogLinear(W.clone(), None if b is None else b.clone(), idx, vals, **kw), W, b, idx


def _dense_delta(idx, vals, shape):
    d = torch.zeros(shape[0] * shape[1], dtype=vals.dtype)
    d[idx] = vals
    return d.view(shape)


def test_forward_is_linear_with_w_plus_delta():
    layer, W, b, idx = _layer()
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    expected = F.linear(x, W + _dense_delta(idx, layer.delta.detach(), W.shape), b)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    assert layer.delta.requires_grad and not layer.weight.requires_grad
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["delta"]
    torch.testing.assert_close(
        layer.delta_weight(), _dense_delta(idx, layer.delta.detach(), W.shape)
    )


@pytest.mark.parametrize("k", [4, 25])  # density 4/30 (sampled product) and 25/30 (dense GEMM)
def test_gradients_match_plain_autograd(k):
    assert (k / 30 > SPARSE_GRAD_MAX_DENSITY) == (k == 25)
    layer, W, b, idx = _layer(k=k, bias=True)
    layer.bias.requires_grad_(True)
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 3, 6, dtype=torch.float64)
    ((layer(x) - target) ** 2).sum().backward()
    # reference: plain autograd through a dense weight
    delta = layer.delta.detach().clone().requires_grad_(True)
    bias = b.clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    weight = W.reshape(-1).index_add(0, idx, delta).view(W.shape)
    ((F.linear(x2, weight, bias) - target) ** 2).sum().backward()
    torch.testing.assert_close(layer.delta.grad, delta.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.bias.grad, bias.grad, rtol=1e-10, atol=1e-10)
    assert layer.weight.grad is None


def test_gradcheck_of_the_sparse_function():
    layer, W, b, idx = _layer(n=8, m=7, k=9, dtype=torch.float64)
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    delta = layer.delta.detach().clone().requires_grad_(True)
    bias = layer.bias.detach().clone().requires_grad_(True)

    def f(x, delta, bias):
        return _FrogLinearFunction.apply(x, delta, bias, layer, None)

    assert torch.autograd.gradcheck(f, (x, delta, bias))


def test_half_precision_weight_keeps_float32_delta():
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(6, 5, generator=gen).to(torch.bfloat16)
    layer = FrogLinear(W, None, torch.tensor([0, 7, 29]))
    assert layer.delta.dtype == torch.float32
    x = torch.randn(3, 5).to(torch.bfloat16)
    layer(x).float().sum().backward()
    expected = (torch.ones(3, 6).T @ x.float()).reshape(-1)[[0, 7, 29]]
    torch.testing.assert_close(layer.delta.grad, expected, rtol=1e-2, atol=1e-2)
    assert layer.merged_weight().dtype == torch.bfloat16


def test_one_optimizer_step_changes_only_selected_entries():
    layer, W, b, idx = _layer(n=12, m=10, k=9, dtype=torch.float32)
    opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=0.1)
    start = layer.merged_weight().clone()
    x = torch.randn(16, 10)
    layer(x).pow(2).mean().backward()
    opt.step()
    after = layer.merged_weight()
    changed = torch.nonzero((after != start).reshape(-1)).reshape(-1)
    assert torch.equal(changed, idx)  # every selected entry moved (Adam), nothing else did
    assert torch.equal(layer.base_weight(), W) and torch.equal(layer.bias, b)
    assert torch.equal(layer.weight, after)  # the stored weight holds W + D


def test_to_linear_equals_eval_forward_bitwise():
    layer, W, b, idx = _layer(dtype=torch.float32)
    linear = layer.to_linear()
    assert type(linear) is nn.Linear
    x = torch.randn(5, 5)
    layer.eval()
    assert torch.equal(linear(x), layer(x))
    assert linear.bias is layer.bias


def _noisy_layer(seed=0, decay=None, scale=0.5):
    gen = torch.Generator().manual_seed(5)
    W = torch.randn(20, 16, generator=gen)
    S = torch.rand(20, 16, generator=gen) + 0.5
    idx = torch.tensor([0, 17, 100, 319])
    layer = FrogLinear(
        W,
        None,
        idx,
        noise_scores=S,
        noise_scale=scale,
        noise_sigma=2.0,
        noise_decay_steps=decay,
        seed=seed,
        name="blk.0.q",
    )
    return layer, W, S, idx


def _effective(layer, x):
    """The weight a forward used, recovered from its output on the identity input."""
    return layer(x).T  # x = I (M, M) -> y = W_eff^T (M, N) -> W_eff (N, M)


def test_noise_on_in_train_off_in_eval_and_reproducible():
    layer, W, S, idx = _noisy_layer()
    eye = torch.eye(16)
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(_effective(layer, eye), W, rtol=0, atol=1e-6)
        layer.train()
        w1, w2 = _effective(layer, eye), _effective(layer, eye)
    assert layer.noise_step == 2
    assert not torch.allclose(w1, W) and not torch.allclose(w1, w2)  # fresh noise each pass
    # noise only on frozen entries, never stored in W
    assert torch.equal(w1.reshape(-1)[idx], W.reshape(-1)[idx])
    assert torch.equal(layer.weight, W)
    # E = beta * S * N(0, sigma^2): (w - W) / (beta * S) has std sigma = 2
    z = ((w1 - W) / (0.5 * S)).reshape(-1)
    mask = torch.ones(320, dtype=torch.bool)
    mask[idx] = False
    assert 1.7 < float(z[mask].std()) < 2.3 and abs(float(z[mask].mean())) < 0.3
    # same seed and step -> same noise, another seed -> other noise
    again, *_ = _noisy_layer(seed=0)
    other, *_ = _noisy_layer(seed=1)
    again.train()
    other.train()
    with torch.no_grad():
        assert torch.equal(_effective(again, eye), w1)
        assert not torch.equal(_effective(other, eye), w1)
        again.set_noise_step(1)
        assert torch.equal(_effective(again, eye), w2)  # resuming at step 1 gives step 1's


def test_noise_linear_decay():
    layer, W, S, _ = _noisy_layer(decay=4)
    assert [layer.noise_factor(t) for t in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    layer.train()
    eye = torch.eye(16)
    with torch.no_grad():
        e0 = _effective(layer, eye) - W
        layer.set_noise_step(2)
        e2 = _effective(layer, eye) - W
        layer.set_noise_step(4)
        e4 = _effective(layer, eye) - W
    ref, *_ = _noisy_layer()  # no decay: step 2's raw noise
    ref.train()
    ref.set_noise_step(2)
    with torch.no_grad():
        raw2 = _effective(ref, eye) - W
    torch.testing.assert_close(e2, 0.5 * raw2, rtol=1e-5, atol=1e-6)
    assert e0.abs().max() > 0 and torch.equal(e4, torch.zeros_like(e4))


def test_noise_gradient_uses_the_noisy_weight():
    layer, W, S, idx = _noisy_layer()
    layer.train()
    x = torch.randn(3, 16, requires_grad=True)
    noise = layer.noise(0)
    layer(x).sum().backward()
    expected_x = torch.ones(3, 20) @ (W + noise + layer.delta_weight())
    torch.testing.assert_close(x.grad, expected_x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "indices, match",
    [
        (torch.tensor([3, 3]), "strictly increasing"),
        (torch.tensor([5, 2]), "strictly increasing"),
        (torch.tensor([0, 30]), "outside"),
        (torch.tensor([-1, 2]), "outside"),
        (torch.tensor([0.0, 1.0]), "integer"),
    ],
)
def test_bad_indices(indices, match):
    with pytest.raises(SpectuneError, match=match):
        FrogLinear(torch.randn(6, 5), None, indices, name="model.q_proj")


def test_other_bad_input():
    with pytest.raises(SpectuneError, match="noise_scores"):
        FrogLinear(torch.randn(6, 5), None, torch.tensor([1]), noise_scale=0.1)
    with pytest.raises(SpectuneError, match="delta values"):
        FrogLinear(torch.randn(6, 5), None, torch.tensor([1, 2]), torch.zeros(3))
    with pytest.raises(SpectuneError, match="bias"):
        FrogLinear(torch.randn(6, 5), torch.zeros(5), torch.tensor([1]))
    with pytest.raises(SpectuneError, match="noise_scores has shape"):
        FrogLinear(
            torch.randn(6, 5),
            None,
            torch.tensor([1]),
            noise_scores=torch.ones(5, 6),
            noise_scale=1.0,
        )


def test_failed_construction_leaves_the_weight_untouched():
    W = torch.randn(6, 5)
    before = W.clone()
    with pytest.raises(SpectuneError, match="noise_scores"):
        FrogLinear(W, None, torch.tensor([1, 2]), torch.ones(2), noise_scale=0.1)
    assert torch.equal(W, before)
    layer = FrogLinear(W, None, torch.tensor([1, 2]), torch.ones(2))
    assert layer.weight.data_ptr() == W.data_ptr()  # shared, not copied
    assert torch.equal(W.reshape(-1)[[1, 2]], before.reshape(-1)[[1, 2]] + 1)
