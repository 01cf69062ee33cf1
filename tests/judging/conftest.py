"""Shared by the judge tests: SmolLM2's tokenizer, a tiny random Llama, a fake LM that answers
known prompts, a few held-out examples, the real model (slow tests)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from spectune.data.examples import InstructionExample
from tests.conftest import tiny_llama


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from spectune.models.loading import default_model_dir

    return AutoTokenizer.from_pretrained(default_model_dir())


def small_llama(vocab: int, seed: int = 0, hidden: int = 32):
    return tiny_llama(vocab, hidden=hidden, seed=seed)


@pytest.fixture(scope="module")
def tiny(tok):
    return small_llama(len(tok))


@pytest.fixture(scope="module")
def smol():
    from spectune.models.loading import load_default_model

    return load_default_model()


def token_ids(tok, text):
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


EXAMPLES = [
    InstructionExample("What is 2 + 3?", "5"),
    InstructionExample("Name three colours.", "Red, green and blue."),
    InstructionExample("Summarize.", "A cat sat.", context="The cat sat on the mat all day."),
]
