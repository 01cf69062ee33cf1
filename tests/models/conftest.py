"""A base model's tokenizer for the template tests: GPT-2-style byte-level BPE built with the
``tokenizers`` library, EOS ``<|endoftext|>``, no chat template, and no ``<|im_start|>`` /
``<|im_end|>`` in its vocabulary (each is several tokens, as in the issue's base model)."""

from __future__ import annotations

from pathlib import Path

import pytest

#: what the BPE merges are learned from (deterministic)
_CORPUS = [
    "What is 84 + 60? The answer is 144.",
    "Add the numbers 12 and 30, then reply with the sum only.",
    "### Instruction: reverse the word cat. ### Response: tac",
    "user assistant system: you are a helpful and terse assistant",
    "Count the letters in the word banana. Capitalize the word apple.",
]


def base_tokenizer():
    """The tokenizer (a fresh object each call)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 20, trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    out.pad_token = out.eos_token
    return out


def save_base_model(folder: Path, **kwargs) -> Path:
    """A tiny random Llama with :func:`base_tokenizer`, saved as a model folder without a chat
    template (a base model)."""
    from tests.conftest import save_tiny_llama

    tokenizer = base_tokenizer()
    save_tiny_llama(folder, len(tokenizer), **kwargs)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory) -> Path:
    return save_base_model(tmp_path_factory.mktemp("base-llama"))
