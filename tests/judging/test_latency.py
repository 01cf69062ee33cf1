"""Latency: a fixed number of tokens generated, the time per decoded token, the real model (slow)."""

from __future__ import annotations

import json

import pytest
import torch

from spectune.data.examples import InstructionExample
from spectune.data.instructions import build_prompt
from spectune.errors import SpectuneError
from spectune.judging.latency import LATENCY_PROMPTS, generation_latency
from tests.judging.conftest import OracleLM, token_ids


def test_latency_generates_fixed_token_count(tok):
    # the oracle answers EOS straight away: the latency run must not stop there
    prompts = ["Say something.", "Say more."]
    answers = {
        tuple(token_ids(tok, build_prompt(tok, InstructionExample(p, "")))): [] for p in prompts
    }
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


@pytest.mark.slow
@pytest.mark.real_weights
def test_real_model_latency(smol):
    model, tok = smol
    result = generation_latency(model, tok, LATENCY_PROMPTS[:3], new_tokens=8, warmup=1)
    assert 1.0 < result.ms_per_token < 5000.0
    assert result.ms_first_token > 0 and result.n_prompts == 3
