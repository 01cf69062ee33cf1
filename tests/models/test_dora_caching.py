"""DoRA's weight norms kept in eval mode (:func:`spectune.models.forward.dora_caching`): the
same outputs bit for bit, the caches filled while inside and empty afterwards."""

from __future__ import annotations

import torch

from spectune.models.forward import eval_mode
from tests.conftest import tiny_llama


def _dora(vocab: int = 97):
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(vocab)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], use_dora=True)
    model = get_peft_model(model, config)
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # a trained adapter: B != 0, so the norm is not the base's
            p.data = torch.randn(p.shape, generator=g) * 0.3
    return model


def _layers(model):
    return [m for m in model.modules() if type(m).__name__ == "DoraLinearLayer"]


def test_eval_mode_keeps_doras_weight_norms_and_the_outputs_are_the_same_bit_for_bit():
    model = _dora()
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        plain = model(input_ids=ids).logits  # peft's default: the norm formed in every forward
    assert all(not m._dora_cache for m in _layers(model))
    model.train()
    with eval_mode(model):
        first = model(input_ids=ids).logits
        second = model(input_ids=ids).logits
        assert all(m._dora_cache for m in _layers(model))  # kept while inside
    assert model.training  # the mode before is restored
    assert torch.equal(first, plain) and torch.equal(second, plain)
    assert all(not m._dora_cache for m in _layers(model))  # emptied on the way out
    assert len(_layers(model)) == 4  # q_proj and down_proj in 2 blocks


def test_training_after_eval_mode_forms_the_norm_from_the_new_weights():
    model = _dora()
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    with eval_mode(model):
        before = model(input_ids=ids).logits
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(2.0)  # "a training step"
    with eval_mode(model):
        after = model(input_ids=ids).logits
    model.eval()
    with torch.no_grad():
        fresh = model(input_ids=ids).logits
    assert not torch.equal(before, after)
    assert torch.equal(after, fresh)  # nothing stale was read
