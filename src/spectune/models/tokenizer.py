"""Tokenizers: loading one beside its model, and the ids every layer above needs from it.

- :func:`load_tokenizer`: a model folder's tokenizer, with a pad token set;
- :func:`pad_token_id`: padding;
- :class:`EndOfTurn`, :func:`end_of_turn`, :func:`end_of_turn_id`: where an assistant turn
  ends: one token (the tokenizer's EOS unless a template says otherwise) or a text spanning
  several tokens (:mod:`spectune.models.templates` sets it);
- :func:`label_answer`: an answer's token ids and labels, up to and with the end-of-turn marker;
- :data:`IGNORE_INDEX`: the label of a token the loss does not score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune.errors import SpectuneError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


#: Label value that the cross-entropy loss ignores (the PyTorch / Hugging Face convention).
IGNORE_INDEX = -100


#: the attribute of a tokenizer that holds its :class:`EndOfTurn` (set by
#: :func:`spectune.models.templates.apply_template`)
END_OF_TURN_ATTR = "spectune_end_of_turn"


@dataclass(frozen=True)
class EndOfTurn:
    """What closes an assistant turn.

    Attributes:
        marker: its text (``"<|im_end|>"``).
        ids: its token ids, tokenized alone (one id when it is one token).
        mode: ``"token"``: matched as the one id ``ids[0]``; ``"text"``: matched as text
            (in generated text, and in an answer before it is tokenized).
        added: ids added to the vocabulary for it (``data.end_of_turn=token`` on a vocabulary
            that lacked it): their embedding rows are new and must be trained.
    """

    marker: str
    ids: tuple[int, ...]
    mode: str = "token"
    added: tuple[int, ...] = ()

    @property
    def token_id(self) -> int | None:
        """The marker's id when it is matched as one token, else None."""
        return self.ids[0] if self.mode == "token" and len(self.ids) == 1 else None


def end_of_turn(tokenizer: PreTrainedTokenizerBase) -> EndOfTurn | None:
    """What closes an assistant turn for this tokenizer: the one a template set
    (:func:`spectune.models.templates.apply_template`), else its EOS token; None: neither."""
    found = getattr(tokenizer, END_OF_TURN_ATTR, None)
    if isinstance(found, EndOfTurn):
        return found
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return None
    return EndOfTurn(str(getattr(tokenizer, "eos_token", "") or ""), (int(eos),))


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The token that closes an assistant turn when it is one token (the tokenizer's EOS,
    ``<|im_end|>`` for SmolLM2), else None (a marker matched as text)."""
    eot = end_of_turn(tokenizer)
    return None if eot is None else eot.token_id


def label_answer(
    tokenizer: PreTrainedTokenizerBase, answer: str, *, eot_id: int | None = None
) -> tuple[list[int], list[int]]:
    """An answer's token ids and labels: every token up to and with the last end-of-turn
    marker keeps its id as label, whatever the template writes after it (a newline) is
    ignored (``IGNORE_INDEX``); without a marker in the answer every token is labelled.

    A one-token marker is found among the answer's ids; a text marker in the text, which is
    then tokenized in two pieces (up to and with the marker, the rest), so the labels end
    exactly where the marker's last token does.

    Args:
        tokenizer: the tokenizer (its :func:`end_of_turn`).
        answer: the text that follows the prompt (the response and what closes the turn).
        eot_id: the id of a one-token marker, instead of the tokenizer's.

    Returns:
        ``(ids, labels)`` of equal length.
    """
    eot = end_of_turn(tokenizer) if eot_id is None else EndOfTurn("", (eot_id,))
    if eot is not None and eot.token_id is None and eot.marker in answer:
        cut = answer.rindex(eot.marker) + len(eot.marker)
        head = list(tokenizer(answer[:cut], add_special_tokens=False)["input_ids"])
        tail = list(tokenizer(answer[cut:], add_special_tokens=False)["input_ids"])
        return head + tail, head + [IGNORE_INDEX] * len(tail)
    ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    n_labelled = len(ids)
    eot_id = None if eot is None else eot.token_id
    if eot_id is not None and eot_id in ids:
        n_labelled = len(ids) - ids[::-1].index(eot_id)
    return ids, ids[:n_labelled] + [IGNORE_INDEX] * (len(ids) - n_labelled)


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
