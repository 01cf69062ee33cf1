"""Every metric on the model kinds spectune judges: plain, peft and custom linear layers agree;
a 4-bit (QLoRA) model stays trainable after it is judged."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spectune.data.examples import InstructionExample
from spectune.judging.accuracy import exact_match
from spectune.judging.forgetting import perplexity
from spectune.judging.latency import generation_latency
from spectune.judging.loss import heldout_loss
from tests.judging.conftest import EXAMPLES, small_llama, token_ids


class CustomLinear(nn.Module):
    """A hand-written stand-in for nn.Linear (what FROG-style layers look like to us)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


def _with_custom_linears(model):
    model = copy.deepcopy(model)
    replaced = 0
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, CustomLinear(child))
                    replaced += 1
    assert replaced == 2 * 7
    return model


def _all_metrics(model, tok):
    examples = [InstructionExample("What is 2 + 3?", "5"), *EXAMPLES[1:]]
    return (
        exact_match(model, tok, examples, max_new_tokens=5).predictions,
        heldout_loss(model, tok, examples).loss,
        perplexity(model, tok, n_chars=500, window=32, stride=16).nll,
    )


def test_plain_peft_and_custom_linear_models_agree(tok, tiny):
    from peft import LoraConfig, get_peft_model

    plain = _all_metrics(tiny, tok)
    custom = _all_metrics(_with_custom_linears(tiny), tok)
    assert custom[0] == plain[0]
    assert custom[1] == pytest.approx(plain[1], rel=1e-5)
    assert custom[2] == pytest.approx(plain[2], rel=1e-5)

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    peft_model = get_peft_model(copy.deepcopy(tiny), config)
    fresh = _all_metrics(peft_model, tok)  # lora_B starts at zero: same function as the base
    assert fresh[0] == plain[0]
    assert fresh[1] == pytest.approx(plain[1], rel=1e-5)
    assert fresh[2] == pytest.approx(plain[2], rel=1e-5)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.train()
    moved = _all_metrics(peft_model, tok)
    assert peft_model.training  # restored
    assert abs(moved[1] - plain[1]) > 1e-3 and abs(moved[2] - plain[2]) > 1e-3


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tok):
    folder = tmp_path_factory.mktemp("tiny4bit")
    # bitsandbytes' CPU packing needs output widths of at least 64 (k/v: 2 heads x 32 here)
    small_llama(len(tok), seed=1, hidden=128).save_pretrained(folder)
    return folder


def _qlora(folder):
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=quant, device_map="cpu"
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))


def _lora_grads_missing(model, tok):
    model.train()
    model.zero_grad(set_to_none=True)
    ids = torch.tensor([token_ids(tok, "The cat sat on the mat and looked at the dog.")])
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert len(grads) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    return sum(g is None for g in grads)


def test_4bit_eval_then_train_keeps_adapter_gradients(tok, tiny_folder):
    from spectune.models.quant import has_4bit_weights, unpack_4bit_cpu_weights

    # the trap itself: a plain eval-mode no-grad forward repacks the weights
    model = _qlora(tiny_folder)
    assert has_4bit_weights(model)
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.tensor([token_ids(tok, "Hello there")]))
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7  # every linear of the 2 blocks (lm_head stays full precision)
    packed = sum(
        bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False)) for m in layers
    )
    if packed == 0:
        pytest.skip("this CPU / bitsandbytes does not repack 4-bit weights for inference")
    assert _lora_grads_missing(model, tok) == 8  # every adapter gradient silently None
    assert unpack_4bit_cpu_weights(model) == packed
    assert _lora_grads_missing(model, tok) == 0
    assert unpack_4bit_cpu_weights(model) == 0

    # our evaluation functions leave a 4-bit model trainable
    model = _qlora(tiny_folder)
    exact_match(model, tok, EXAMPLES[:2], max_new_tokens=3)
    heldout_loss(model, tok, EXAMPLES[:2])
    perplexity(model, tok, n_chars=300, window=32, stride=16)
    generation_latency(model, tok, ["Hi"], new_tokens=2, warmup=0)
    assert _lora_grads_missing(model, tok) == 0
    assert not has_4bit_weights(small_llama(len(tok)))
