"""Fixtures for the FROG tests: a tiny random Llama (fast) and the embedded model (slow)."""

from __future__ import annotations

import pytest
import torch


def make_tiny_llama(seed: int = 0, hidden: int = 32, layers: int = 2, tie: bool = False):
    """A random LlamaForCausalLM: hidden 32, MLP 64, 4 heads (2 KV heads), vocab 97."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    model = LlamaForCausalLM(config)
    return model.eval()


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture
def tokens():
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 97, (2, 12), generator=gen)


@pytest.fixture
def make_llama():
    """The factory itself, for tests that need several models or other sizes."""
    return make_tiny_llama
