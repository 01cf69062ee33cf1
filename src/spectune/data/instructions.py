"""Instruction data: load it, turn it into chat prompts, tokenize with response-only labels, pad.

Files and datasets in every format (Dolly, Alpaca, conversational ``messages``,
``prompt``/``completion``, ShareGPT; JSON, JSON Lines, CSV, Parquet, Arrow, a ``datasets``
folder or name) are read by :mod:`spectune.data.formats` (:func:`load_instructions` is its
entry point) into :class:`InstructionExample` records. A record is one chat exchange: the user
turn is the instruction, followed by a blank line and the context when there is one; the
assistant turn is the response. A conversation carries its earlier turns (``history``) and its
own system message (``system``) too: the response is its last assistant turn. Prompts go through
the tokenizer's own chat template, so the model sees the format it was instruction-tuned on
(including the template's default system prompt, unless the record or ``system`` gives one).

Tokenization (:func:`tokenize_examples`) labels only the assistant's answer: every prompt token
gets the label ``-100`` (ignored by the loss), the response tokens and the end-of-turn token
that closes them keep their ids as labels, and whatever the template writes after the
end-of-turn token (SmolLM2 writes a newline) is ignored too. In a multi-turn conversation every
assistant turn is labelled so (``train_on="all_assistant"``, :func:`tokenize_conversation`)
or only the last. Examples longer than ``max_length`` are cut at the right; how many were cut,
and how many lost every response token and were dropped, is reported in :class:`TokenizeStats`.

torch is imported only by the collator when it builds a batch, ``datasets`` only by the
readers: the judge's result types import this module, and reading results stays torch-free.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from spectune.data.examples import TRAIN_ON, InstructionExample, user_message
from spectune.data.formats import read_examples
from spectune.errors import SpectuneError
from spectune.models.tokenizer import IGNORE_INDEX, label_answer

_Record = TypeVar("_Record")

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


# --------------------------------------------------------------------------- loading


def load_instructions(
    path: str | os.PathLike[str], format: str = "auto"
) -> list[InstructionExample]:
    """Load instruction or conversation data from a file, a ``datasets`` folder or name.

    See :func:`spectune.data.formats.read_examples` (the formats, the sources, the errors).

    Args:
        path: a JSON / JSON Lines / CSV / Parquet / Arrow file, a folder written by
            ``Dataset.save_to_disk`` (or holding data files), or a ``datasets`` name
            (``NAME``, ``NAME:SPLIT``, ``NAME:CONFIG:SPLIT``).
        format: one of :data:`FORMATS` (``"auto"`` detects it from the records' fields).

    Returns:
        The examples in file order.
    """
    return read_examples(path, format)


# --------------------------------------------------------------------------- prompts


def _messages(example: InstructionExample, system: str | None) -> list[dict[str, str]]:
    """The conversation up to the last user turn: the record's system message (else
    ``system``), its earlier turns, the user turn."""
    system = example.system if example.system is not None else system
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages += [{"role": role, "content": content} for role, content in example.history]
    messages.append({"role": "user", "content": user_message(example)})
    return messages


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], **kw: Any) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise SpectuneError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; set "
            "data.template (chatml, alpaca or a Jinja file), or use an instruction-tuned model"
        )
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kw)
    except TemplateError as exc:  # a role the template does not know, the template's own raise
        raise SpectuneError(f"the chat template refused a conversation: {exc}") from None


def build_prompt(
    tokenizer: PreTrainedTokenizerBase, example: InstructionExample, *, system: str | None = None
) -> str:
    """The chat-template text that asks the model for the answer (ends with the assistant header).

    Args:
        tokenizer: a tokenizer with a chat template.
        example: the record; its response is not used.
        system: a system message; ``None`` keeps the template's default (SmolLM2 inserts its
            own "You are a helpful AI assistant..." line).

    Returns:
        The prompt text, e.g. ``"<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n
        What is 2 + 3?<|im_end|>\\n<|im_start|>assistant\\n"`` for SmolLM2.
    """
    return _render(tokenizer, _messages(example, system), add_generation_prompt=True)


def few_shot_prompt(
    tokenizer: PreTrainedTokenizerBase,
    example: InstructionExample,
    *,
    system: str | None,
    shots: Sequence[InstructionExample],
) -> str:
    """The chat prompt with solved examples first: the system prompt, each shot as a user turn
    and its response as the assistant's, then ``example``'s user turn, ending with the
    assistant header (a distillation teacher's prompt, ``spectune augment``'s answers)."""
    messages = [] if system is None else [{"role": "system", "content": system}]
    for shot in shots:
        messages.append({"role": "user", "content": user_message(shot)})
        messages.append({"role": "assistant", "content": shot.response})
    messages += [{"role": role, "content": content} for role, content in example.history]
    messages.append({"role": "user", "content": user_message(example)})
    return _render(tokenizer, messages, add_generation_prompt=True)


def build_chat(
    tokenizer: PreTrainedTokenizerBase, example: InstructionExample, *, system: str | None = None
) -> tuple[str, str]:
    """The prompt text and the answer text that follows it in the full conversation.

    Args:
        tokenizer: a tokenizer with a chat template.
        example: the record.
        system: see :func:`build_prompt`.

    Returns:
        ``(prompt, answer)`` where ``prompt + answer`` is the whole rendered conversation and
        ``answer`` is the response plus whatever the template closes the turn with (for
        SmolLM2 ``"<response><|im_end|>\\n"``).

    Raises:
        SpectuneError: the template does not render the conversation as the prompt followed
            by the answer, so prompt tokens cannot be told from answer tokens.
    """
    prompt = build_prompt(tokenizer, example, system=system)
    messages = _messages(example, system)
    messages.append({"role": "assistant", "content": example.response})
    full = _render(tokenizer, messages)
    if not full.startswith(prompt):
        raise SpectuneError(
            "the tokenizer's chat template does not render a conversation as its generation "
            "prompt followed by the answer, so the prompt cannot be masked; use a model whose "
            "template supports add_generation_prompt"
        )
    return prompt, full[len(prompt) :]


# --------------------------------------------------------------------------- tokenization


@dataclass
class TokenizeStats:
    """What :func:`tokenize_examples` did to a dataset.

    Attributes:
        n_examples: examples given.
        n_kept: examples returned (``n_examples - n_dropped``).
        n_truncated: examples longer than ``max_length`` and cut at the right (dropped ones
            included).
        n_dropped: truncated examples with no response token left, left out (they would
            contribute nothing to the loss).
        n_tokens: tokens in the returned examples, after truncation.
        n_label_tokens: tokens that carry a label (response + end-of-turn) after truncation.
        max_length: the length limit used.
        longest: length of the longest example before truncation.
    """

    n_examples: int
    n_kept: int
    n_truncated: int
    n_dropped: int
    n_tokens: int
    n_label_tokens: int
    max_length: int
    longest: int

    def to_dict(self) -> dict[str, int]:
        """The stats as a JSON-ready dict."""
        return asdict(self)


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase,
    example: InstructionExample,
    *,
    system: str | None = None,
    end_of_turn: int | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids and labels of one example, before truncation.

    The prompt and the answer are tokenized separately (no special tokens added; the chat
    template writes its own), so the prompt tokens are exactly those the model sees at
    generation time.

    Args:
        tokenizer: a tokenizer with a chat template.
        example: the record.
        system: see :func:`build_prompt`.
        end_of_turn: id of the token that closes the answer; default the tokenizer's
            end-of-turn marker (:func:`spectune.models.tokenizer.label_answer`: one token, or
            a text of several). Answer tokens after its last occurrence are not labelled. If
            it does not occur, every answer token is labelled.

    Returns:
        ``(input_ids, labels)``, equal length; ``labels[i]`` is ``-100`` on prompt tokens and
        on template tokens after the end-of-turn token, ``input_ids[i]`` elsewhere.
    """
    prompt, answer = build_chat(tokenizer, example, system=system)
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    answer_ids, answer_labels = label_answer(tokenizer, answer, eot_id=end_of_turn)
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_labels


# --------------------------------------------------------------------------- conversations
# A conversation record (an InstructionExample with a ``history``) is cut after each of its
# assistant turns (:func:`exchanges`): each cut is a single exchange whose response is that
# turn, labelled exactly as :func:`tokenize_example` labels a response (its tokens and the
# end-of-turn marker that closes them). :func:`tokenize_conversation` lays the cuts end to
# end: the text each adds to the conversation rendered so far (the next user turn and the
# assistant header) is masked, each answer labelled. The chat template must render a
# conversation as the rendering of its first turns followed by the rest (every template
# spectune has met does); one that rewrites earlier turns is refused, naming the record, with
# the fix (``data.train_on: last_assistant``).


def exchanges(example: InstructionExample) -> list[InstructionExample]:
    """The conversation cut after each assistant turn, in order: one example per assistant
    turn (its response), each with the turns before it as history; the last is ``example``.

    Raises:
        SpectuneError: an assistant turn in the history that does not follow a user turn.
    """
    cuts = []
    turns = example.history
    for j, (role, content) in enumerate(turns):
        if role != "assistant":
            continue
        if j == 0 or turns[j - 1][0] != "user":
            raise SpectuneError(
                f"conversation {example.instruction[:40]!r}...: its turn {j} (assistant) does "
                "not follow a user turn; a conversation alternates user and assistant turns"
            )
        cuts.append(
            replace(
                example,
                instruction=turns[j - 1][1],
                response=content,
                context="",
                history=turns[: j - 1],
            )  # fmt: skip
        )
    return [*cuts, example]


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase,
    example: InstructionExample,
    *,
    system: str | None = None,
    end_of_turn: int | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids and labels of a conversation with every assistant turn labelled, before
    truncation (a single exchange: :func:`~spectune.data.instructions.tokenize_example`).

    Args:
        tokenizer: a tokenizer with a chat template.
        example: the record.
        system: see :func:`~spectune.data.instructions.build_prompt`.
        end_of_turn: see :func:`~spectune.data.instructions.tokenize_example`.

    Returns:
        ``(input_ids, labels)``, equal length: ``-100`` on the system message, user turns,
        headers and whatever follows each end-of-turn marker; each assistant turn's tokens and
        its end-of-turn marker labelled with their ids.

    Raises:
        SpectuneError: the template renders the earlier turns differently inside the longer
            conversation, so they cannot be labelled.
    """
    cuts = exchanges(example)
    if len(cuts) == 1:
        return tokenize_example(tokenizer, example, system=system, end_of_turn=end_of_turn)
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""  # the conversation so far, through the last labelled answer
    for cut in cuts:
        prompt, answer = build_chat(tokenizer, cut, system=system)
        cut_ids, cut_labels = tokenize_example(
            tokenizer, cut, system=system, end_of_turn=end_of_turn
        )
        answer_ids = label_answer(tokenizer, answer, eot_id=end_of_turn)[0]  # as labelled
        n = len(answer_ids)
        if not prompt.startswith(rendered) or cut_ids[len(cut_ids) - n :] != answer_ids:
            raise SpectuneError(
                f"conversation {example.instruction[:40]!r}...: the chat template renders its "
                "earlier turns differently inside the longer conversation, so they cannot be "
                "labelled; set data.train_on: last_assistant (only the last turn learned)"
            )
        between = _ids(tokenizer, prompt[len(rendered) :])
        ids += between + answer_ids
        labels += [IGNORE_INDEX] * len(between) + cut_labels[len(cut_labels) - n :]
        rendered = prompt + answer
    return ids, labels


def tokenize_examples(
    examples: Iterable[InstructionExample],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int = 256,
    system: str | None = None,
    end_of_turn: int | None = None,
    train_on: str = "all_assistant",
) -> tuple[list[dict[str, list[int]]], TokenizeStats]:
    """Tokenize examples for causal-LM training with the loss on response tokens only.

    Args:
        examples: the records.
        tokenizer: a tokenizer with a chat template.
        max_length: longest sequence kept; longer ones are cut at the right.
        system: see :func:`build_prompt`.
        end_of_turn: see :func:`tokenize_example`.
        train_on: in a multi-turn conversation, ``"all_assistant"`` labels every assistant
            turn (:func:`tokenize_conversation`),
            ``"last_assistant"`` only the last (the response), as a single exchange.

    Returns:
        ``(features, stats)``: one dict per kept example with ``input_ids``, ``labels`` and
        ``attention_mask`` (lists of ints, unpadded; feed them to :class:`InstructionCollator`),
        and the :class:`TokenizeStats`.

    Raises:
        SpectuneError: ``max_length`` < 2, no examples, or every example lost its response to
            truncation.
    """
    if int(max_length) < 2:
        raise SpectuneError(f"max_length must be at least 2, got {max_length}")
    if train_on not in TRAIN_ON:
        raise SpectuneError(f"unknown train_on {train_on!r}; use one of {', '.join(TRAIN_ON)}")

    features: list[dict[str, list[int]]] = []
    n_examples = n_truncated = n_dropped = n_tokens = n_label = longest = 0
    for example in examples:
        n_examples += 1
        tokenize = tokenize_conversation if train_on == "all_assistant" else tokenize_example
        ids, labels = tokenize(tokenizer, example, system=system, end_of_turn=end_of_turn)
        longest = max(longest, len(ids))
        if len(ids) > max_length:
            n_truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        # labels[0] never counts: the first token has nothing before it to predict it from
        labelled = sum(1 for lab in labels[1:] if lab != IGNORE_INDEX)
        if labelled == 0:
            n_dropped += 1
            continue
        n_tokens += len(ids)
        n_label += labelled
        features.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)})
    if n_examples == 0:
        raise SpectuneError("no examples to tokenize; the dataset is empty")
    if not features:
        raise SpectuneError(
            f"all {n_examples} examples lost their response to truncation at max_length="
            f"{max_length} (the longest has {longest} tokens); raise max_length"
        )
    stats = TokenizeStats(
        n_examples=n_examples,
        n_kept=len(features),
        n_truncated=n_truncated,
        n_dropped=n_dropped,
        n_tokens=n_tokens,
        n_label_tokens=n_label,
        max_length=int(max_length),
        longest=longest,
    )
    return features, stats


# --------------------------------------------------------------------------- batching


def _checked_length(row: int, feature: dict[str, Sequence[int]]) -> int:
    """The example's token count; its labels must have as many."""
    n = len(feature["input_ids"])
    if len(feature["labels"]) != n:
        raise SpectuneError(
            f"batch row {row}: input_ids has {n} tokens but labels has {len(feature['labels'])}"
        )
    return n


class InstructionCollator:
    """Pad tokenized examples into a batch (right padding, for training and loss), or
    concatenate them into one row without padding.

    Padded: pads get attention mask 0 and label ``-100``, so they affect neither the model's
    other positions nor the loss. Flattened (``flatten=True``, padding-free): one row of every
    example's tokens, ``position_ids`` restarting at 0 at each example and no attention mask
    (transformers then keeps each example's attention to itself), the first label of each
    example ``-100`` (its token is never predicted from the example before). The loss and the
    gradients are those of the padded batch (tested) where the model's attention honours the
    restarts (:func:`spectune.models.forward.packing_works`).

    Args:
        pad_token_id: the id written into padded positions (see :func:`pad_token_id`).
        pad_to_multiple_of: round the batch length up to a multiple of this (``None``: no
            rounding); not with ``flatten``.
        flatten: one row without padding.
    """

    def __init__(
        self, pad_token_id: int, pad_to_multiple_of: int | None = None, *, flatten: bool = False
    ) -> None:
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise SpectuneError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.flatten = bool(flatten)

    def flattened(self) -> InstructionCollator:
        """This collator, padding-free."""
        return InstructionCollator(self.pad_token_id, flatten=True)

    def __call__(self, features: Sequence[dict[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        """Stack ``features`` into padded tensors.

        Args:
            features: dicts with ``input_ids`` and ``labels`` (``attention_mask`` optional),
                as made by :func:`tokenize_examples`.

        Returns:
            ``input_ids``, ``labels``, ``attention_mask``: int64 tensors of shape
            ``(batch, length)``, ``length`` the longest example (rounded up if asked).
        """
        import torch

        if not features:
            raise SpectuneError("cannot collate an empty batch")
        if self.flatten:
            return self._flat(features)
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            length = (length + m - 1) // m * m
        batch = len(features)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((batch, length), dtype=torch.long)
        for row, feature in enumerate(features):
            n = _checked_length(row, feature)
            input_ids[row, :n] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.as_tensor(feature["labels"], dtype=torch.long)
            mask = feature.get("attention_mask")
            attention[row, :n] = 1 if mask is None else torch.as_tensor(mask, dtype=torch.long)
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}

    def _flat(self, features: Sequence[dict[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for row, feature in enumerate(features):
            n = _checked_length(row, feature)
            mask = feature.get("attention_mask")
            if mask is not None and not all(int(m) == 1 for m in mask):
                raise SpectuneError(
                    f"batch row {row}: a padding-free batch takes examples without padding "
                    "(their attention mask all ones); use data.batching: padded"
                )
            if n == 0:
                continue
            ids.extend(int(t) for t in feature["input_ids"])
            labels.append(IGNORE_INDEX)  # never predicted from the example before it
            labels.extend(int(t) for t in feature["labels"][1:])
            positions.extend(range(n))
        if not ids:
            raise SpectuneError("cannot collate a batch of empty examples")
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
        }


# --------------------------------------------------------------------------- validation split


def split_validation(
    records: Sequence[_Record], n: int, seed: int | str, *, label: str = "data.n_validation"
) -> tuple[list[_Record], list[_Record]]:
    """Carve ``n`` records out of ``records`` as a validation split (seeded).

    The records are shuffled by index with ``random.Random(f"spectune-validation:{seed}")``
    and the first ``n`` indices are the validation split; both parts keep the records' order.
    The records can be of any type (instruction examples, ranked lists...).

    Args:
        records: the training records.
        n: how many to carve out, ``1 <= n < len(records)``.
        seed: the split's seed (a run's seed).
        label: the setting that asked for ``n`` (named in the error).

    Returns:
        ``(train, validation)``: the remaining records and the carved ones, disjoint.

    Raises:
        SpectuneError: ``n`` leaves no training record (or is below 1).
    """
    if n < 1 or n >= len(records):
        raise SpectuneError(
            f"{label} ({n}) must be at least 1 and below the {len(records)} training examples "
            "it is carved from; lower it (or give more training data)"
        )
    order = list(range(len(records)))
    random.Random(f"spectune-validation:{seed}").shuffle(order)
    held = set(order[:n])
    return ([r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)])


def split_heldout(
    records: Sequence[_Record], fraction: float, seed: int | str
) -> tuple[list[_Record], list[_Record]]:
    """Carve the held-out set a run is judged on out of its only data file (``data.eval``
    unset): ``ceil(fraction * n)`` records, at least 1 and leaving at least 1, chosen by
    ``random.Random(f"spectune-split:{seed}")``; both parts keep the records' order.

    Args:
        records: the file's records (instruction examples, ranked lists...), at least 2.
        fraction: ``data.eval_fraction``.
        seed: the run's seed.

    Returns:
        ``(train, heldout)``, disjoint.
    """
    order = list(range(len(records)))
    random.Random(f"spectune-split:{seed}").shuffle(order)
    n_hold = min(len(records) - 1, max(1, math.ceil(fraction * len(records))))
    held = set(order[:n_hold])
    return (
        [r for i, r in enumerate(records) if i not in held],
        [r for i, r in enumerate(records) if i in held],
    )


__all__ = [
    "exchanges",
    "tokenize_conversation",
    "InstructionCollator",
    "TokenizeStats",
    "build_chat",
    "build_prompt",
    "load_instructions",
    "split_heldout",
    "split_validation",
    "tokenize_example",
    "tokenize_examples",
]
