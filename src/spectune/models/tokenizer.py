"""Tokenizers: loading one beside its model, and the ids every layer above needs from it.

- :func:`load_tokenizer`: a model folder's tokenizer, with a pad token set;
- :func:`pad_token_id`, :func:`end_of_turn_id`: padding, and where an assistant turn ends;
- :data:`IGNORE_INDEX`: the label of a token the loss does not score.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune.errors import SpectuneError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


#: Label value that the cross-entropy loss ignores (the PyTorch / Hugging Face convention).
IGNORE_INDEX = -100


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The token that closes an assistant turn: the tokenizer's EOS (``<|im_end|>`` for SmolLM2)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    return int(eos) if eos is not None else None


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id to pad with: the tokenizer's pad token, else its EOS token.

    Pads are masked out of attention and loss, so their id only has to be a valid token.

    Raises:
        SpectuneError: the tokenizer has neither.
    """
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise SpectuneError(
        "the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token first"
    )


def load_tokenizer(model_dir: Path) -> Any:
    """The model's tokenizer, with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
