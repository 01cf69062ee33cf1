"""peft's forgetting measure: general-text cross-entropy against a hand-written torch
computation (peft's own formula), the documents, the sign in Forgetting, bad counts."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F

from spectune.errors import SpectuneError
from spectune.judging.forgetting import general_ce, general_documents


def test_general_documents_are_the_first_topics_by_name():
    from pydoc_data.topics import topics

    docs = general_documents(5)
    assert docs == [topics[k] for k in sorted(topics)[:5]]
    with pytest.raises(SpectuneError, match="n_samples"):
        general_documents(0)
    with pytest.raises(SpectuneError, match="n_samples"):
        general_documents(len(topics) + 1)


def test_general_ce_equals_torch_cross_entropy_by_hand(tok, tiny):
    docs = general_documents(6)
    losses = []
    with torch.no_grad():
        for text in docs:  # each document alone, cut, next-token loss of every position
            ids = torch.tensor(tok(text)["input_ids"][:40])
            logits = tiny(input_ids=ids[None]).logits[0]
            losses.append(F.cross_entropy(logits[:-1].double(), ids[1:], reduction="none"))
    pooled = torch.cat(losses)
    result = general_ce(tiny, tok, n_samples=6, max_tokens=40, batch_size=4)
    assert result.n_samples == 6 and result.n_tokens == pooled.numel()
    assert result.cross_entropy == pytest.approx(float(pooled.mean()), rel=1e-5)
    assert result.samples_sha256 == hashlib.sha256("\0".join(docs).encode()).hexdigest()
    # batching does not change the number (equal-length documents run together, unpadded)
    alone = general_ce(tiny, tok, n_samples=6, max_tokens=40, batch_size=1)
    assert alone.cross_entropy == pytest.approx(result.cross_entropy, rel=1e-6)


def test_short_documents_are_scored_whole(tok, tiny):
    texts = ["The quick brown fox jumps over the lazy dog.", "Hello world, again and again."]
    result = general_ce(tiny, tok, texts=texts, max_tokens=500)
    n = sum(len(tok(t)["input_ids"]) - 1 for t in texts)
    assert result.n_tokens == n and result.source == "documents given by the caller"
    with pytest.raises(SpectuneError, match="max_tokens"):
        general_ce(tiny, tok, texts=texts, max_tokens=1)


def test_forgetting_ce_is_after_minus_before_as_in_peft():
    from spectune.judging.accuracy import AccuracyResult
    from spectune.judging.forgetting import CrossEntropyResult, PerplexityResult
    from spectune.judging.loss import LossResult
    from spectune.results.metrics import Forgetting, Judging

    def judging(ce: float | None) -> Judging:
        return Judging(
            accuracy=AccuracyResult(0.5, 2, 1, {}),
            heldout_loss=LossResult(**{f: 1 for f in LossResult.__dataclass_fields__}),
            perplexity=PerplexityResult(10.0, 2.3, 100, 99, 400, 64, 32, "x", "y"),
            general_ce=None if ce is None else CrossEntropyResult(ce, 3, 90, 32, "x", "y"),
        )

    f = Forgetting.compare(judging(2.0), judging(2.5))
    assert (f.general_ce_before, f.general_ce_after) == (2.0, 2.5)
    assert f.forgetting_ce == pytest.approx(0.5)  # worse after training: positive
    assert Forgetting.compare(None, judging(2.5)).forgetting_ce is None
    assert Forgetting.compare(judging(None), judging(None)).general_ce_after is None
    back = Judging.from_dict(judging(2.0).to_dict())
    assert back.general_ce == CrossEntropyResult(2.0, 3, 90, 32, "x", "y")
    older = {k: v for k, v in judging(2.0).to_dict().items() if k not in ("general_ce", "harness")}
    assert Judging.from_dict(older).general_ce is None  # files written before it load
    assert Forgetting(**{"perplexity_before": 1.0, "perplexity_after": 2.0,
                         "perplexity_change": 1.0, "perplexity_ratio": 2.0}).forgetting_ce is None  # fmt: skip
