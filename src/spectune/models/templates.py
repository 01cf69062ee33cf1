"""Chat templates for models that have none, and the end-of-turn marker that closes an answer.

A base model's tokenizer often has no chat template; ``data.template`` gives it one, once,
where the run loads its tokenizer (:func:`apply_template`), so every prompt is then rendered
by ``tokenizer.apply_chat_template`` as for an instruction-tuned model:

- ``tokenizer``: the tokenizer's own (none: an error naming ``data.template``);
- ``chatml``: ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message (:data:`CHATML`);
- ``alpaca``: plain ``### Instruction:`` / ``### Response:`` paragraphs, the system message
  (if any) as a first paragraph of its own, each answer closed by the EOS token
  (:data:`ALPACA`);
- a path to a Jinja file: a chat template of the user's, checked when the config is read
  (:func:`check_template`).

The **end-of-turn marker** is what the template writes right after an answer (``<|im_end|>``,
the EOS token...), found by rendering a conversation (:func:`closing_marker`). When it is one
token of the vocabulary, labels end at that token and generation stops at it. When it is
several (``<|im_end|>`` in a vocabulary that lacks it), ``data.end_of_turn`` decides:
``token`` adds it to the vocabulary as a special token (the model's embedding rows grow,
:func:`fit_embeddings`, and the new rows are trained with the adapter), ``text`` matches it as
text (labels cover its tokens, generation stops when the decoded text holds it and the answer
is cut before it), ``auto`` is ``token`` when it is one token already and ``text`` otherwise.
What was chosen is attached to the tokenizer as an
:class:`~spectune.models.tokenizer.EndOfTurn`, read by labelling
(:func:`~spectune.models.tokenizer.label_answer`) and generation
(:func:`spectune.models.generate.stop_criteria`).

transformers (and torch, in :func:`fit_embeddings`) are imported inside the functions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune.errors import SpectuneError
from spectune.models.tokenizer import END_OF_TURN_ATTR, EndOfTurn, end_of_turn

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

#: ChatML: every message between ``<|im_start|>role`` and ``<|im_end|>``; no default system
#: message; an unknown role is an error naming it.
CHATML = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ('system', 'user', 'assistant') -%}"
    "{{- raise_exception('data.template=chatml knows the roles system, user and assistant, "
    "not ' ~ message['role'] ~ '; rename that role in the data or give a Jinja file "
    "that knows it') -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' ~ message['role'] ~ '\\n' ~ message['content'] ~ '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

#: Alpaca-style plain prompt and response: the system message as a paragraph of its own,
#: ``### Instruction:`` before a user turn, ``### Response:`` before an answer, each answer
#: closed by the EOS token (``### End`` for a tokenizer without one).
ALPACA = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- message['content'] ~ '\\n\\n' -}}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- '### Instruction:\\n' ~ message['content'] ~ '\\n\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '### Response:\\n' ~ message['content'] ~ (eos_token if eos_token else '\\n### End')"
    " ~ '\\n\\n' -}}"
    "{%- else -%}"
    "{{- raise_exception('data.template=alpaca knows the roles system, user and assistant, "
    "not ' ~ message['role'] ~ '; rename that role in the data or give a Jinja file "
    "that knows it') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '### Response:\\n' -}}{%- endif -%}"
)

#: the templates spectune writes itself, by ``data.template`` name
BUILTIN = {"chatml": CHATML, "alpaca": ALPACA}
#: ``data.template`` names (anything else is a path to a Jinja file)
TEMPLATE_NAMES = ("tokenizer", *BUILTIN)
#: ``data.end_of_turn`` settings
END_OF_TURN_MODES = ("auto", "token", "text")

#: the answer of the conversation rendered to find the marker that follows an answer
_SENTINEL = "SPECTUNEANSWER"
_SAMPLE_USER = "What is 2 + 3?"

_Render = Callable[[list[dict[str, str]], bool], str]


def _fix(setting: str) -> str:
    return (
        f"data.template={setting}"
        if setting in TEMPLATE_NAMES
        else f"data.template (the Jinja file {setting})"
    )


def template_text(setting: str) -> str | None:
    """The Jinja text of ``data.template``: a built-in's, a file's; None for ``tokenizer``.

    Raises:
        SpectuneError: a file that is missing, not a file, or not UTF-8 text.
    """
    if setting == "tokenizer":
        return None
    if setting in BUILTIN:
        return BUILTIN[setting]
    path = Path(setting).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise SpectuneError(
            f"data.template: {setting} {what}; give 'tokenizer', 'chatml', 'alpaca' or the path "
            "of a Jinja chat template file"
        )
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpectuneError(
            f"data.template: {setting} cannot be read as UTF-8 text ({exc})"
        ) from None


def _jinja_render(text: str) -> _Render:
    """Render with transformers' own template environment (placeholder special tokens)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    def render(messages: list[dict[str, str]], generation_prompt: bool) -> str:
        rendered, _ = render_jinja_template(
            conversations=[messages],
            chat_template=text,
            add_generation_prompt=generation_prompt,
            bos_token="<s>",
            eos_token="</s>",
        )
        return rendered[0]

    return render


def _tokenizer_render(tokenizer: PreTrainedTokenizerBase) -> _Render:
    def render(messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    return render


def closing_marker(render: _Render, where: str) -> str:
    """The end-of-turn marker of a template: what it writes right after an answer (a user
    turn and an answer rendered), whitespace stripped, its first line. (A system message is
    not rendered here: some templates refuse one, which matters only to runs that set it.)

    Args:
        render: ``render(messages, add_generation_prompt) -> text``.
        where: how errors name the template (``data.template=chatml``...).

    Raises:
        SpectuneError: the template fails to render, drops the answer, writes nothing after
            it, or does not render a conversation as its generation prompt followed by the
            answer (so a prompt could not be masked).
    """
    user = {"role": "user", "content": _SAMPLE_USER}
    answer = {"role": "assistant", "content": _SENTINEL}
    try:
        prompt, full = render([user], True), render([user, answer], False)
    except Exception as exc:  # jinja2 TemplateError, TypeError, a template's own raise
        raise SpectuneError(
            f"{where}: the chat template fails to render a conversation "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
        ) from None
    if _SENTINEL not in full:
        raise SpectuneError(f"{where}: the chat template drops the assistant's answer")
    if not full.startswith(prompt):
        raise SpectuneError(
            f"{where}: the chat template does not render a conversation as its generation "
            "prompt (add_generation_prompt) followed by the answer, so the prompt cannot be "
            "masked; write the assistant header in the add_generation_prompt branch"
        )
    after = full[full.rindex(_SENTINEL) + len(_SENTINEL) :].strip()
    marker = after.split("\n", 1)[0].strip()
    if not marker:
        raise SpectuneError(
            f"{where}: the chat template writes nothing after an answer, so nothing marks the "
            "end of a turn and generation would never stop; close each assistant message with "
            "a marker (e.g. {{ eos_token }})"
        )
    return marker


def check_template(setting: str) -> None:
    """Check ``data.template`` when the config is read: a known name, or a Jinja file that
    exists, renders a sample conversation with ``add_generation_prompt``, renders prompt +
    answer as an extension of the prompt and closes the answer with a marker.

    Raises:
        SpectuneError: naming the file and what is wrong.
    """
    if not isinstance(setting, str) or not setting:
        raise SpectuneError(
            f"data.template must be 'tokenizer', 'chatml', 'alpaca' or a Jinja file, got "
            f"{setting!r}"
        )
    text = template_text(setting)
    if text is not None and setting not in BUILTIN:
        closing_marker(_jinja_render(text), _fix(setting))


def apply_template(
    tokenizer: PreTrainedTokenizerBase, template: str = "tokenizer", mode: str = "auto"
) -> list[str]:
    """Give the tokenizer the run's chat template and end-of-turn marker (once, where the run
    loads its tokenizer); the rest of rendering goes through ``apply_chat_template``.

    Args:
        tokenizer: the run's tokenizer (changed in place).
        template: ``data.template``.
        mode: ``data.end_of_turn``: ``auto``, ``token`` or ``text``.

    Returns:
        Notes for the run (a template replaced, a token added, a marker matched as text).

    Raises:
        SpectuneError: ``tokenizer`` with a tokenizer that has no template; a template that
            fails (see :func:`closing_marker`).
    """
    notes: list[str] = []
    text = template_text(template)
    name = getattr(tokenizer, "name_or_path", "") or "the model's tokenizer"
    if text is None:
        if not getattr(tokenizer, "chat_template", None):
            raise SpectuneError(
                f"{name}: the tokenizer has no chat template; set data.template to chatml, "
                "alpaca or a Jinja file (data.template=chatml on the command line)"
            )
    else:
        own = getattr(tokenizer, "chat_template", None)
        if own and own != text:
            notes.append(f"{_fix(template)} replaces the tokenizer's own chat template")
        tokenizer.chat_template = text
    marker = closing_marker(_tokenizer_render(tokenizer), _fix(template))
    ids = tuple(tokenizer(marker, add_special_tokens=False)["input_ids"])
    one = len(ids) == 1
    chosen = ("token" if one else "text") if mode == "auto" else mode
    added: tuple[int, ...] = ()
    if chosen == "token" and not one:
        from transformers import AddedToken

        tokenizer.add_tokens(
            [AddedToken(marker, special=True, normalized=False)], special_tokens=True
        )
        new_id = int(tokenizer.convert_tokens_to_ids(marker))
        notes.append(
            f"data.end_of_turn=token: {marker!r} ({len(ids)} tokens in this vocabulary) added "
            f"as token {new_id}; its embedding rows are new and trained with the adapter"
        )
        ids, added = (new_id,), (new_id,)
    elif not one:
        notes.append(
            f"the end-of-turn marker {marker!r} is {len(ids)} tokens in this vocabulary: "
            "matched as text (data.end_of_turn=text): labels cover its tokens, generation stops "
            "when the text holds it"
        )
    setattr(tokenizer, END_OF_TURN_ATTR, EndOfTurn(marker, ids, chosen, added))
    return notes


def template_key(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """What of the tokenizer's template the judged numbers depend on (for cache keys): the
    template's hash, the end-of-turn marker and how it is matched, the vocabulary size."""
    text = getattr(tokenizer, "chat_template", None) or ""
    if not isinstance(text, str):  # a dict of named templates
        text = repr(sorted(dict(text).items()))
    eot = end_of_turn(tokenizer)
    return {
        "template": hashlib.sha256(text.encode()).hexdigest()[:16],
        "end_of_turn": None if eot is None else [eot.marker, eot.mode, list(eot.added)],
        "vocab": len(tokenizer),
    }


def fit_embeddings(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """Make the model's vocabulary hold the tokens :func:`apply_template` added: embeddings
    resized (when the tokenizer outgrew them) and each added row set to the mean of the rows
    before it, input and (untied) output alike, so the start is deterministic.

    Returns:
        The added ids (to train), ``()`` when nothing was added.
    """
    import torch

    eot = end_of_turn(tokenizer)
    added = () if eot is None else eot.added
    if not added:
        return ()
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    first = min(added)
    with torch.no_grad():
        layers = [model.get_input_embeddings(), model.get_output_embeddings()]
        seen: set[int] = set()
        for layer in layers:
            weight = getattr(layer, "weight", None)
            if weight is None or id(weight) in seen:  # tied: one tensor
                continue
            seen.add(id(weight))
            mean = weight[:first].float().mean(dim=0).to(weight.dtype)
            for i in added:
                weight[i] = mean
    return added


__all__ = [
    "ALPACA",
    "BUILTIN",
    "CHATML",
    "END_OF_TURN_MODES",
    "TEMPLATE_NAMES",
    "apply_template",
    "check_template",
    "closing_marker",
    "fit_embeddings",
    "template_key",
    "template_text",
]
