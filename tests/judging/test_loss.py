"""Held-out loss: the token-mean NLL of the reference answers, against a sum by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from spectune.data.instructions import tokenize_example
from spectune.judging.loss import heldout_loss
from spectune.models.tokenizer import IGNORE_INDEX
from tests.judging.conftest import EXAMPLES


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
