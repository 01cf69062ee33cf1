"""Sampling in models.generate: the draws of Hugging Face's ``generate(do_sample=True)`` for the
same seed and settings (so LiPO's on-policy lists and augment's instructions kept their random
streams when they moved onto it), greedy at top-k 1, and bad settings refused."""

from __future__ import annotations

import pytest
import torch

from spectune.errors import SpectuneError
from spectune.models.generate import Sampling, greedy_batch, sample_batch
from tests.conftest import tiny_llama

PROMPTS = [[5, 17, 301, 42], [9, 8], [77, 12, 3, 250, 11, 6]]
PAD, EOS = 0, 2


def _hf_generate(model, sampling: Sampling, n: int, seed: int, max_new_tokens: int):
    """The same prompts through ``model.generate`` (left padding), new tokens up to EOS."""
    width = max(map(len, PROMPTS))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            max_new_tokens=max_new_tokens,
            num_return_sequences=n,
            pad_token_id=PAD,
            eos_token_id=EOS,
        )
    rows = out[:, width:].tolist()
    return [row[: row.index(EOS)] if EOS in row else row for row in rows]


@pytest.mark.parametrize(
    ("sampling", "n"),
    [
        (Sampling(), 3),
        (Sampling(temperature=0.7), 2),
        (Sampling(temperature=0.8, top_p=0.95), 1),
        (Sampling(temperature=1.3, top_k=20, top_p=0.9), 2),
    ],
)
def test_samples_are_hugging_faces_for_the_same_seed(sampling, n):
    model = tiny_llama(320).eval()
    for seed in (0, 1):
        ours = sample_batch(
            model,
            PROMPTS,
            sampling,
            max_new_tokens=12,
            pad_id=PAD,
            stop_ids={EOS},
            n_samples=n,
            seed=seed,
        )
        assert ours == _hf_generate(model, sampling, n, seed, 12)
        assert len(ours) == n * len(PROMPTS)


def test_top_k_1_is_greedy_and_a_seed_repeats():
    model = tiny_llama(320).train()
    top1 = sample_batch(
        model, PROMPTS, Sampling(top_k=1), max_new_tokens=8, pad_id=PAD, stop_ids={EOS}, seed=3
    )
    assert model.training  # mode restored
    greedy = greedy_batch(model.eval(), PROMPTS, max_new_tokens=8, pad_id=PAD, stop_ids={EOS})
    assert top1 == greedy
    once = sample_batch(
        model,
        PROMPTS,
        Sampling(),
        max_new_tokens=8,
        pad_id=PAD,
        stop_ids=set(),
        n_samples=2,
        seed=5,
    )
    again = sample_batch(
        model,
        PROMPTS,
        Sampling(),
        max_new_tokens=8,
        pad_id=PAD,
        stop_ids=set(),
        n_samples=2,
        seed=5,
    )
    assert once == again and all(len(row) == 8 for row in once)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in"),
    ],
)
def test_bad_sampling_settings_are_refused(kwargs, message):
    with pytest.raises(SpectuneError, match=message):
        Sampling(**kwargs)
