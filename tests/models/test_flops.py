"""The training FLOP count against torch's own FlopCounterMode, and the GEMM rate."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from spectune.models.flops import FlopCounter, combined_rate, gemm_rates, linear_shapes
from tests.conftest import tiny_llama


def _step(model, ids, labels, mask):
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()


def _batch(vocab: int, b: int = 3, s: int = 11):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (b, s), generator=g)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[0, 8:] = 0  # a padded row: its positions are still computed
    labels = ids.clone()
    labels[mask == 0] = -100
    return ids, labels, mask


@pytest.mark.parametrize("how", ["lora", "full"])
def test_the_count_equals_torch_flop_counter_on_a_training_step(how):
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(97, hidden=32)
    model.config._attn_implementation = "eager"  # every product a counted matmul
    if how == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    model.train()
    ids, labels, mask = _batch(97)
    with FlopCounter(model) as mine, FlopCounterMode(display=False) as ref:
        _step(model, ids, labels, mask)
    assert mine.attention_modules == 2
    assert mine.flops.total == pytest.approx(ref.get_total_flops(), rel=1e-12)
    # by hand: the forward of the linears is 2 x rows x in x out over the shapes seen
    rows = 3 * 11
    d, m, kv = 32, 64, 16  # hidden, MLP, key/value width (2 of 4 heads of 8)
    block = d * d * 2 + d * kv * 2 + d * m * 3  # q, o; k, v; gate, up, down
    lora = 4 * ((d + d) * 2 + (d + kv) * 2 + (d + m) * 2 + (m + d)) if how == "lora" else 0
    head = d * 97
    assert mine.flops.linear_forward == 2 * rows * (2 * (block + lora) + head)
    assert mine.flops.attention_forward == 2 * 4 * 3 * 11 * 11 * 32
    # backward: frozen base weights get no weight gradient; full fine-tuning's do
    assert mine.flops.shapes[(d, 97)] == rows


def test_no_count_outside_training_mode_or_without_gradients():
    model = tiny_llama(97, hidden=32)
    ids, labels, mask = _batch(97)
    with FlopCounter(model) as c:
        model.eval()
        _step(model, ids, labels, mask)
        model.train()
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    assert c.flops.total == 0
    # the hooks are gone afterwards
    model.train()
    _step(model, ids, labels, mask)
    assert c.flops.total == 0


def test_gemm_rates_are_rates_and_the_mix_is_their_work_weighted_harmonic_mean():
    shapes = linear_shapes(tiny_llama(97, hidden=32))
    assert shapes == {(32, 32): 4, (32, 16): 4, (32, 64): 4, (64, 32): 2, (32, 97): 1}
    rates = gemm_rates([(256, 256), (256, 64), (256, 256)], 128, rounds=3, min_seconds=0.01)
    assert list(rates) == [(256, 256), (256, 64)]  # each shape timed once
    assert all(1e8 < r < 1e13 for r in rates.values())  # FLOP/s of any CPU
    # by hand: 10 rows of 2x3 (60 work units) at 1 and 5 rows of 6x4 (120) at 4 per second
    mix = combined_rate({(2, 3): 1.0, (6, 4): 4.0}, {(2, 3): 10, (6, 4): 5})
    assert mix == pytest.approx(180 / (60 / 1.0 + 120 / 4.0))
    assert combined_rate({(2, 3): 7.0}, {(2, 3): 1, (6, 4): 0}) == 7.0
    with pytest.raises(ValueError, match="at least one"):
        gemm_rates([], 8)
    with pytest.raises(ValueError, match=r"no measured rate for shape \(6, 4\)"):
        combined_rate({(2, 3): 1.0}, {(2, 3): 1, (6, 4): 2})


def test_machine_rate_times_only_the_shapes_its_cache_lacks(tmp_path, monkeypatch):
    import json

    import spectune.models.flops as flops

    timed: list = []

    def fake_rates(shapes, rows, dtype, **kw):
        timed.append((list(shapes), rows))
        return {k: 1e9 * (i + 1) for i, k in enumerate(shapes)}

    monkeypatch.setattr(flops, "gemm_rates", fake_rates)
    cache = tmp_path / "gemm.json"
    first = flops.machine_rate({(4, 8): 3}, 70, cache=cache)
    assert first == 1e9 and timed == [([(4, 8)], 96)]  # rows rounded up to a multiple of 32
    key = flops.machine_key(torch.float32, 96)
    assert json.loads(cache.read_text()) == {key: {"4x8": 1e9}}
    # a second shape: only it is timed; the mix is the work-weighted harmonic mean
    both = flops.machine_rate({(4, 8): 3, (8, 8): 1}, 90, cache=cache)
    assert timed[1] == ([(8, 8)], 96)
    assert both == pytest.approx((96 + 64) / (96 / 1e9 + 64 / 1e9))
    assert flops.machine_rate({(8, 8): 2}, 96, cache=cache) == pytest.approx(1e9)
    assert len(timed) == 2
    cache.write_text("{not json")  # a damaged cache is measured again, then rewritten
    assert flops.machine_rate({(4, 8): 1}, 96, cache=cache) == pytest.approx(1e9)
    assert len(timed) == 3
    assert json.loads(cache.read_text())[key] == {"4x8": 1e9}


@pytest.mark.parametrize("k", [3, 40])
def test_frogs_layer_counts_as_a_linear_layer_with_its_sparse_gradient(k):
    """FROG's layer: forward and input gradient as a linear layer of its shape, plus 2 n K
    for the K trained entries (sampled), or the dense product past the sparse limit."""
    from spectune.tuning.methods.frog.layer import SPARSE_GRAD_MAX_DENSITY, FrogLinear

    W = torch.randn(6, 8)
    layer = FrogLinear(W, None, torch.arange(k)).train()
    x = torch.randn(5, 8, requires_grad=True)  # 5 rows
    with FlopCounter(layer) as counter:
        layer(x).sum().backward()
    one = 2 * 5 * 8 * 6
    dense = k > SPARSE_GRAD_MAX_DENSITY * 48
    assert dense == (k == 40)
    f = counter.flops
    assert f.linear_forward == one and f.shapes == {(8, 6): 5}
    assert f.linear_backward == one + 2 * 5 * (48 if dense else k)
    assert layer.delta.grad is not None
