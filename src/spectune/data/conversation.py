"""Multi-turn conversations: every assistant turn a target (``data.train_on: all_assistant``).

A conversation record (:class:`~spectune.data.instructions.InstructionExample` with a
``history``) is cut after each of its assistant turns (:func:`exchanges`): each cut is a
single exchange whose response is that turn, labelled exactly as
:func:`~spectune.data.instructions.tokenize_example` labels a response (its tokens and the
end-of-turn marker that closes them). :func:`tokenize_conversation` lays the cuts end to end:
the text each adds to the conversation rendered so far (the next user turn and the assistant
header) is masked, each answer labelled. The chat template must render a conversation as the
rendering of its first turns followed by the rest (every template spectune has met does); one
that rewrites earlier turns is refused, naming the record, with the fix
(``data.train_on: last_assistant``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from spectune.data.instructions import InstructionExample, build_chat, tokenize_example
from spectune.errors import SpectuneError
from spectune.models.tokenizer import IGNORE_INDEX, label_answer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


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


__all__ = ["exchanges", "tokenize_conversation"]
