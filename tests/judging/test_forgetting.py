"""Forgetting: the general text, strided perplexity against a naive sum, the real model (slow)."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from spectune.errors import SpectuneError
from spectune.judging.forgetting import _windows, general_text, perplexity
from spectune.judging.loss import heldout_loss
from tests.judging.conftest import token_ids


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
    ids = token_ids(tok, text)
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
    ids = token_ids(tok, text)
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
    assert result.text_sha256 == hashlib.sha256(general_text(600).encode()).hexdigest()
    # the window is capped at the model's context (256 here)
    assert perplexity(tiny, tok, n_chars=600, window=10_000, stride=128).window == 256
    with pytest.raises(SpectuneError, match="stride"):
        perplexity(tiny, tok, text="hello world", window=8, stride=8)
    with pytest.raises(SpectuneError, match="window"):
        perplexity(tiny, tok, text="hello world", window=1, stride=1)
    with pytest.raises(SpectuneError, match="fewer than two tokens"):
        perplexity(tiny, tok, text="a", window=8, stride=4)


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
