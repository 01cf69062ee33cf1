"""Greedy generation: batched left-padded decoding against transformers' generate."""

from __future__ import annotations

import pytest
import torch

from spectune.data.examples import InstructionExample
from spectune.data.instructions import build_prompt
from spectune.errors import SpectuneError
from spectune.models.generate import greedy_generate
from tests.conftest import tiny_llama


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from spectune.models.loading import default_model_dir

    return AutoTokenizer.from_pretrained(default_model_dir())


@pytest.fixture(scope="module")
def tiny(tok):
    return tiny_llama(len(tok), hidden=32, seed=0)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


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
