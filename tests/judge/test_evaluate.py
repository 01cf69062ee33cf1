"""Evaluation: greedy exact match, held-out loss, perplexity, latency on tiny and fake models."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spectune.data.instructions import InstructionExample, build_prompt, tokenize_example
from spectune.errors import SpectuneError
from spectune.judge.evaluate import (
    LATENCY_PROMPTS,
    _windows,
    exact_match,
    general_text,
    generation_latency,
    heldout_loss,
    perplexity,
)
from spectune.models.generate import greedy_generate
from spectune.models.tokenizer import IGNORE_INDEX
from tests.conftest import tiny_llama


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from spectune.models.loading import default_model_dir

    return AutoTokenizer.from_pretrained(default_model_dir())


def _tiny_llama(vocab: int, seed: int = 0, hidden: int = 32):
    return tiny_llama(vocab, hidden=hidden, seed=seed)


@pytest.fixture(scope="module")
def tiny(tok):
    return _tiny_llama(len(tok))


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


class OracleLM(nn.Module):
    """A fake causal LM that answers known prompts with known token sequences.

    It returns one-hot logits for the next answer token (or EOS once the answer is written)
    and no KV cache, so the generation loop feeds it the whole sequence each step.
    """

    def __init__(self, answers: dict[tuple[int, ...], list[int]], vocab: int, eos: int):
        super().__init__()
        self.answers, self.vocab, self.eos = answers, vocab, eos
        self.dummy = nn.Parameter(torch.zeros(1))
        self.calls = 0

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        use_cache=None,
    ):
        assert past_key_values is None  # we never return a cache
        self.calls += 1
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.vocab)
        for row in range(input_ids.shape[0]):
            seq = input_ids[row][attention_mask[row].bool()].tolist()  # strip left padding
            # position ids must count from the first real token
            assert position_ids[row, -len(seq) :].tolist() == list(range(len(seq)))
            for prompt, answer in self.answers.items():
                if tuple(seq[: len(prompt)]) == prompt:
                    done = len(seq) - len(prompt)
                    nxt = answer[done] if done < len(answer) else self.eos
                    break
            else:
                raise AssertionError("unknown prompt")
            logits[row, -1, nxt] = 1.0
        return SimpleNamespace(logits=logits, past_key_values=None)


# --------------------------------------------------------------------------- generation


def test_greedy_matches_hf_generate_unpadded(tok, tiny):
    """Batched left-padded greedy decoding equals transformers' generate on each prompt alone."""
    instructions = ["Hi", "What is the capital of France? Tell me more please.", "Add 2 and 3."]
    prompts = [build_prompt(tok, InstructionExample(i, "")) for i in instructions]
    ours = greedy_generate(tiny, tok, prompts, max_new_tokens=6, batch_size=3)
    for prompt, answer in zip(prompts, ours, strict=True):
        ids = torch.tensor([_ids(tok, prompt)])
        ref = tiny.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=6,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.eos_token_id,
        )[0, ids.shape[1] :].tolist()
        if tok.eos_token_id in ref:
            ref = ref[: ref.index(tok.eos_token_id)]
        assert answer == tok.decode(ref, skip_special_tokens=True).strip()
    # batch size does not change the answers
    assert greedy_generate(tiny, tok, prompts, max_new_tokens=6, batch_size=1) == ours


def test_greedy_bad_arguments(tok, tiny):
    with pytest.raises(SpectuneError, match="max_new_tokens"):
        greedy_generate(tiny, tok, ["x"], max_new_tokens=0)
    with pytest.raises(SpectuneError, match="batch_size"):
        greedy_generate(tiny, tok, ["x"], batch_size=0)


# --------------------------------------------------------------------------- exact match


def test_exact_match_known_answers(tok):
    examples = [
        InstructionExample("What is 2 + 3?", "5", category="add"),
        InstructionExample("What is 10 + 7?", "17", category="add"),
        InstructionExample("Reverse: cat, dog", "dog, cat", category="reverse"),
        InstructionExample("Reverse: sun, moon, star", "star, moon, sun", category="reverse"),
        InstructionExample("Capital of France?", "Paris", category="geo"),
    ]
    said = [
        "5",
        "18",
        "Dog, cat.",
        "star moon sun",
        "  paris  ",
    ]  # right, wrong, right, wrong, right
    answers = {
        tuple(_ids(tok, build_prompt(tok, ex))): _ids(tok, s)
        for ex, s in zip(examples, said, strict=True)
    }
    model = OracleLM(answers, len(tok), tok.eos_token_id)
    model.train()
    result = exact_match(model, tok, examples, max_new_tokens=8, batch_size=2)
    assert model.training  # mode restored
    assert result.predictions == ["5", "18", "Dog, cat.", "star moon sun", "paris"]
    assert result.n == 5 and result.n_correct == 3
    assert result.accuracy == pytest.approx(0.6)
    assert result.by_category == {
        "add": {"n": 2, "n_correct": 1, "accuracy": 0.5},
        "geo": {"n": 1, "n_correct": 1, "accuracy": 1.0},
        "reverse": {"n": 2, "n_correct": 1, "accuracy": 0.5},
    }
    # generation stopped at EOS: longest answer + 1 step per batch, not max_new_tokens
    longest = max(len(_ids(tok, s)) for s in said)
    assert model.calls <= 3 * (longest + 1)
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["n_correct"] == 3 and "predictions" not in result.to_dict(predictions=False)
    with pytest.raises(SpectuneError, match="eval set is empty"):
        exact_match(model, tok, [])


def test_exact_match_truncates_at_max_new_tokens(tok):
    ex = InstructionExample("Count.", "one two three four five six")
    answers = {tuple(_ids(tok, build_prompt(tok, ex))): _ids(tok, ex.response)}
    model = OracleLM(answers, len(tok), tok.eos_token_id)
    n = len(_ids(tok, ex.response))
    assert exact_match(model, tok, [ex], max_new_tokens=n).accuracy == 1.0
    short = exact_match(model, tok, [ex], max_new_tokens=n - 1)
    assert short.accuracy == 0.0
    assert short.predictions == [tok.decode(_ids(tok, ex.response)[: n - 1]).strip()]


# --------------------------------------------------------------------------- held-out loss


EXAMPLES = [
    InstructionExample("What is 2 + 3?", "5"),
    InstructionExample("Name three colours.", "Red, green and blue."),
    InstructionExample("Summarize.", "A cat sat.", context="The cat sat on the mat all day."),
]


def _loss_by_hand(model, tok, examples):
    total, count = 0.0, 0
    for ex in examples:
        ids, labels = tokenize_example(tok, ex)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        logp = torch.log_softmax(logits.double(), dim=-1)
        for t in range(1, len(ids)):
            if labels[t] != IGNORE_INDEX:
                total -= float(logp[t - 1, labels[t]])
                count += 1
    return total / count, count


def test_heldout_loss_is_token_mean_nll(tok, tiny):
    expected, count = _loss_by_hand(tiny, tok, EXAMPLES)
    result = heldout_loss(tiny, tok, EXAMPLES, batch_size=2)  # padded batches
    assert result.n_tokens == count
    assert result.n_examples == 3 and result.n_truncated == 0
    assert result.loss == pytest.approx(expected, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(expected), rel=1e-5)
    # response tokens of "5": the digit and <|im_end|> -> 2 tokens
    assert heldout_loss(tiny, tok, EXAMPLES[:1]).n_tokens == 2
    assert json.loads(json.dumps(result.to_dict()))["n_tokens"] == count


# --------------------------------------------------------------------------- perplexity


def test_general_text_is_fixed_slice():
    from pydoc_data.topics import topics

    keys = sorted(topics)
    text = general_text(5000)
    assert len(text) == 5000
    assert text.startswith(topics[keys[0]][:100])
    assert text == ("\n\n".join(topics[k] for k in keys))[:5000]
    assert general_text(100) == text[:100]
    with pytest.raises(SpectuneError, match="n_chars"):
        general_text(0)


@pytest.mark.parametrize(
    "n,window,stride", [(10, 4, 2), (37, 8, 7), (37, 8, 3), (5, 16, 8), (40, 8, 1)]
)
def test_windows_score_every_token_once(n, window, stride):
    scored = []
    for begin, end, first in _windows(n, window, stride):
        assert end - begin == min(window, n) and begin < first <= end
        if first > 1:
            assert first - begin >= window - stride and end - first <= stride
        scored.extend(range(first, end))
    assert scored == list(range(1, n))


def test_perplexity_single_window_by_hand(tok, tiny):
    text = general_text(400)
    ids = _ids(tok, text)
    assert len(ids) < 200
    with torch.no_grad():
        logits = tiny(input_ids=torch.tensor([ids])).logits[0].double()
    nll = -torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(ids[1:])[:, None]).mean()
    result = perplexity(tiny, tok, text=text, window=256, stride=128)
    assert result.n_tokens == len(ids) and result.n_scored == len(ids) - 1
    assert result.nll == pytest.approx(float(nll), rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(float(nll)), rel=1e-5)
    assert result.n_chars == 400 and result.source == "text given by the caller"


def test_perplexity_strided_matches_naive(tok, tiny):
    text = general_text(200)
    ids = _ids(tok, text)
    window, stride = 16, 6
    naive_total = 0.0
    for begin, end, first in _windows(len(ids), window, stride):
        for t in range(first, end):  # one forward per scored token, context ids[begin:t]
            with torch.no_grad():
                logits = tiny(input_ids=torch.tensor([ids[begin:t]])).logits[0, -1].double()
            naive_total -= float(torch.log_softmax(logits, -1)[ids[t]])
    expected = naive_total / (len(ids) - 1)
    result = perplexity(tiny, tok, text=text, window=window, stride=stride, batch_size=3)
    assert result.nll == pytest.approx(expected, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(expected), rel=1e-5)
    assert (result.window, result.stride, result.n_scored) == (16, 6, len(ids) - 1)


def test_perplexity_default_text_and_errors(tok, tiny):
    result = perplexity(tiny, tok, n_chars=600, window=64, stride=32)
    assert result.n_chars == 600
    assert result.source.startswith("pydoc_data.topics (sorted keys, first 600 chars")
    import hashlib

    assert result.text_sha256 == hashlib.sha256(general_text(600).encode()).hexdigest()
    # the window is capped at the model's context (256 here)
    assert perplexity(tiny, tok, n_chars=600, window=10_000, stride=128).window == 256
    with pytest.raises(SpectuneError, match="stride"):
        perplexity(tiny, tok, text="hello world", window=8, stride=8)
    with pytest.raises(SpectuneError, match="window"):
        perplexity(tiny, tok, text="hello world", window=1, stride=1)
    with pytest.raises(SpectuneError, match="fewer than two tokens"):
        perplexity(tiny, tok, text="a", window=8, stride=4)


# --------------------------------------------------------------------------- model kinds


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


# --------------------------------------------------------------------------- latency


def test_latency_generates_fixed_token_count(tok):
    # the oracle answers EOS straight away: the latency run must not stop there
    prompts = ["Say something.", "Say more."]
    answers = {tuple(_ids(tok, build_prompt(tok, InstructionExample(p, "")))): [] for p in prompts}
    model = OracleLM(answers, len(tok), tok.eos_token_id)
    result = generation_latency(model, tok, prompts, new_tokens=5, warmup=2)
    assert model.calls == (2 + len(prompts)) * 5
    assert result.n_prompts == 2 and result.new_tokens == 5 and result.warmup == 2
    assert result.ms_per_token > 0 and result.ms_first_token > 0
    assert result.ms_per_token_overall > 0
    assert result.threads == torch.get_num_threads()
    assert set(json.loads(json.dumps(result.to_dict()))) >= {"ms_per_token", "ms_first_token"}


def test_latency_on_tiny_llama(tok, tiny):
    result = generation_latency(tiny, tok, new_tokens=4, warmup=1)
    assert result.n_prompts == len(LATENCY_PROMPTS)
    assert result.ms_per_token > 0 and result.ms_first_token > 0


def test_latency_measures_the_time_per_decoded_token(tok, tiny, monkeypatch):
    """Every forward made 25 ms slower: the per-token figure rises by those 25 ms (the
    decode steps after the first token), not by the prompt or warm-up time."""
    import time as _time

    fast = generation_latency(tiny, tok, new_tokens=4, warmup=1)
    forward = tiny.forward

    def slow(*args, **kwargs):
        _time.sleep(0.025)
        return forward(*args, **kwargs)

    monkeypatch.setattr(tiny, "forward", slow)
    slowed = generation_latency(tiny, tok, new_tokens=4, warmup=1)
    added = slowed.ms_per_token - fast.ms_per_token
    assert 24 < added < 60, (fast.ms_per_token, slowed.ms_per_token)
    assert slowed.ms_first_token - fast.ms_first_token > 24  # the first token's step too
    with pytest.raises(SpectuneError, match="new_tokens"):
        generation_latency(tiny, tok, new_tokens=1)
    with pytest.raises(SpectuneError, match="at least one prompt"):
        generation_latency(tiny, tok, [])


# --------------------------------------------------------------------------- 4-bit (QLoRA) trap


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tok):
    folder = tmp_path_factory.mktemp("tiny4bit")
    # bitsandbytes' CPU packing needs output widths of at least 64 (k/v: 2 heads x 32 here)
    _tiny_llama(len(tok), seed=1, hidden=128).save_pretrained(folder)
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
    ids = torch.tensor([_ids(tok, "The cat sat on the mat and looked at the dog.")])
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
        model(input_ids=torch.tensor([_ids(tok, "Hello there")]))
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
    assert not has_4bit_weights(_tiny_llama(len(tok)))


# --------------------------------------------------------------------------- real model (slow)


@pytest.fixture(scope="module")
def smol():
    from spectune.models.loading import load_default_model

    return load_default_model()


@pytest.mark.slow
@pytest.mark.real_weights
def test_real_model_perplexity_and_loss(smol):
    """SmolLM2-135M-Instruct on the default text: measured 14.56 over 1,832 tokens (Py 3.11)."""
    from spectune.data.tasks import generate_task_set

    model, tok = smol
    result = perplexity(model, tok)
    assert 1500 < result.n_tokens < 2300 and result.n_scored == result.n_tokens - 1
    assert 10.0 < result.perplexity < 20.0
    assert result.perplexity == pytest.approx(math.exp(result.nll))
    # held-out loss of the base model on the task set: measured 3.46 on 200 examples
    _, heldout = generate_task_set(0, 40, seed=0)
    loss = heldout_loss(model, tok, heldout, batch_size=20)
    assert 2.5 < loss.loss < 4.5


@pytest.mark.slow
@pytest.mark.real_weights
def test_real_model_latency(smol):
    model, tok = smol
    result = generation_latency(model, tok, LATENCY_PROMPTS[:3], new_tokens=8, warmup=1)
    assert 1.0 < result.ms_per_token < 5000.0
    assert result.ms_first_token > 0 and result.n_prompts == 3
