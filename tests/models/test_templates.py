"""Chat templates for base models (``data.template``) and end-of-turn markers that are not one
token (``data.end_of_turn``): rendering, labels, generation that stops at the marker however
the tokens split it, the answer cut before it, and the judge's warning on unterminated
answers. The tokenizer is a GPT-2-style BPE whose vocabulary lacks ``<|im_end|>``
(:mod:`tests.models.conftest`)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from spectune.data.examples import InstructionExample
from spectune.data.instructions import build_prompt, tokenize_example
from spectune.errors import SpectuneError
from spectune.judging.accuracy import exact_match
from spectune.judging.cache import cache_key
from spectune.models.generate import (
    Sampling,
    StopCriteria,
    generate_answers,
    greedy_batch,
    greedy_generate,
    sample_batch,
    stop_criteria,
)
from spectune.models.loading import check_model
from spectune.models.templates import (
    ALPACA,
    CHATML,
    apply_template,
    check_template,
    fit_embeddings,
    template_key,
)
from spectune.models.tokenizer import IGNORE_INDEX, end_of_turn
from tests.conftest import tiny_llama
from tests.models.conftest import base_tokenizer

QUESTION = InstructionExample("Which is the largest number: 84, 60?", "84")


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------- rendering, labels


def test_chatml_on_a_vocabulary_without_the_marker_renders_and_labels_its_tokens():
    tok = base_tokenizer()
    assert tok.chat_template is None and len(_ids(tok, "<|im_end|>")) == 9
    notes = apply_template(tok, "chatml", "auto")
    eot = end_of_turn(tok)
    assert (eot.marker, eot.mode, eot.added) == ("<|im_end|>", "text", ())
    assert eot.ids == tuple(_ids(tok, "<|im_end|>")) and "9 tokens" in notes[0]
    prompt = build_prompt(tok, QUESTION, system="Be terse.")
    assert prompt == (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\n"
        "Which is the largest number: 84, 60?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids, labels = tokenize_example(tok, QUESTION, system="Be terse.")
    n_prompt = len(_ids(tok, prompt))
    head = _ids(tok, "84<|im_end|>")  # the answer up to and with the marker: labelled
    assert ids == _ids(tok, prompt) + head + _ids(tok, "\n")
    assert labels == [IGNORE_INDEX] * n_prompt + head + [IGNORE_INDEX]
    # hand-checked: 1 token for "84", the marker's 9 pieces, the template's newline ignored
    assert len(head) == 10 and tok.decode(head) == "84<|im_end|>"
    assert tok.decode(labels[n_prompt : n_prompt + 10]) == "84<|im_end|>"


def test_token_mode_adds_the_marker_as_one_special_token():
    tok = base_tokenizer()
    size = len(tok)
    notes = apply_template(tok, "chatml", "token")
    eot = end_of_turn(tok)
    assert (eot.mode, eot.ids, eot.added) == ("token", (size,), (size,))
    assert len(tok) == size + 1 and "added as token 389" in notes[0]
    ids, labels = tokenize_example(tok, QUESTION)
    n_prompt = len(_ids(tok, build_prompt(tok, QUESTION)))
    assert labels[n_prompt:] == [_ids(tok, "84")[0], size, IGNORE_INDEX]
    assert ids[n_prompt:] == [_ids(tok, "84")[0], size, _ids(tok, "\n")[0]]
    # a second application (the run reloads its tokenizer) finds it one token: nothing added
    apply_template(tok, "chatml", "auto")
    assert end_of_turn(tok).added == () and len(tok) == size + 1


def test_alpaca_closes_answers_with_eos_and_puts_the_system_first():
    tok = base_tokenizer()
    assert apply_template(tok, "alpaca", "auto") == []
    eot = end_of_turn(tok)
    assert (eot.marker, eot.ids, eot.mode) == ("<|endoftext|>", (tok.eos_token_id,), "token")
    prompt = build_prompt(tok, QUESTION, system="Answer with a number.")
    assert prompt == (
        "Answer with a number.\n\n### Instruction:\nWhich is the largest number: 84, 60?"
        "\n\n### Response:\n"
    )
    ids, labels = tokenize_example(tok, QUESTION)
    n_prompt = len(_ids(tok, build_prompt(tok, QUESTION)))
    tail = [IGNORE_INDEX] * len(_ids(tok, "\n\n"))  # the blank line after the answer
    assert labels[n_prompt:] == [*_ids(tok, "84"), tok.eos_token_id, *tail] and len(tail) == 2


def test_a_template_replacing_the_tokenizers_own_says_so(smol_tokenizer):
    import copy

    tok = copy.deepcopy(smol_tokenizer)
    assert apply_template(tok, "tokenizer") == []  # SmolLM2: its own, <|im_end|> one token
    assert end_of_turn(tok).ids == (tok.eos_token_id,)
    notes = apply_template(tok, "alpaca")
    assert notes == ["data.template=alpaca replaces the tokenizer's own chat template"]
    assert tok.chat_template == ALPACA


def test_tokenizer_template_on_a_base_model_names_data_template(base_model_dir):
    with pytest.raises(SpectuneError, match=r"has no chat template.*set data\.template"):
        check_model(base_model_dir)
    tok = check_model(base_model_dir, "chatml")  # allowed: the setting supplies one
    with pytest.raises(SpectuneError, match=r"no chat template; set data\.template to chatml"):
        apply_template(tok, "tokenizer")
    assert apply_template(tok, "chatml") and tok.chat_template == CHATML


def test_a_role_the_template_does_not_know_is_one_clear_error():
    from spectune.data.instructions import _render

    tok = base_tokenizer()
    apply_template(tok, "chatml")
    with pytest.raises(
        SpectuneError, match=r"knows the roles system, user and assistant, not tool"
    ):
        _render(tok, [{"role": "tool", "content": "42"}])


# --------------------------------------------------------------------------- Jinja files


def test_a_jinja_file_is_checked_when_the_config_is_read(tmp_path):
    from spectune.tuning.sections import DataConfig

    good = tmp_path / "turns.jinja"
    good.write_text(
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% if m['role'] == "
        "'assistant' %} <END>{% endif %}\n{% endfor %}{% if add_generation_prompt %}"
        "[assistant] {% endif %}"
    )
    assert DataConfig(template=str(good)).template == str(good)
    tok = base_tokenizer()
    apply_template(tok, str(good))
    assert end_of_turn(tok).marker == "<END>" and end_of_turn(tok).mode == "text"
    cases = {
        "missing.jinja": r"missing\.jinja does not exist",
        "broken.jinja": r"fails to render a conversation \(TemplateSyntaxError",
        "raises.jinja": r"fails to render.*no roles here",
        "noheader.jinja": r"not render a conversation as its generation prompt",
        "nomarker.jinja": r"writes nothing after an answer",
    }
    texts = {
        "broken.jinja": "{% for m in messages %}{{ m['content'] }",
        "raises.jinja": "{{ raise_exception('no roles here') }}",
        "noheader.jinja": "{% for m in messages %}{{ m['content'] }}|{% endfor %}"
        "{% if add_generation_prompt %}A: {% endif %}",
        "nomarker.jinja": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
    }
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    for name, message in cases.items():
        with pytest.raises(SpectuneError, match=message) as err:
            DataConfig(template=str(tmp_path / name))
        assert str(err.value).startswith("data.template")
        assert "\n" not in str(err.value)
    with pytest.raises(SpectuneError, match=r"data\.end_of_turn must be one of"):
        DataConfig(template="chatml", end_of_turn="both")
    check_template("alpaca")


# --------------------------------------------------------------------------- stopping


class ScriptedLM(nn.Module):
    """A causal LM whose greedy continuation of every prompt is ``script`` (then the script's
    last token again), whatever the prompt: the logits of a step put all weight on the token
    at the row's position after ``prompt_len`` real tokens. It returns no cache, so the
    decoding loop feeds it the whole sequence at each step."""

    def __init__(self, script: list[int], vocab: int, prompt_len: int) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.script, self.vocab, self.prompt_len = script, vocab, prompt_len

    def forward(self, input_ids, attention_mask, **kwargs):
        step = int(attention_mask[0].sum()) - self.prompt_len  # rows are alike
        token = self.script[min(step, len(self.script) - 1)]
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.vocab)
        logits[:, -1, token] = 1.0
        return type("Out", (), {"logits": logits, "past_key_values": None})()


def _scripted(tok, text: str, prompt: str) -> ScriptedLM:
    return ScriptedLM(_ids(tok, text), len(tok), len(_ids(tok, prompt)))


def test_generation_stops_at_a_marker_of_nine_tokens_and_the_answer_is_cut_before_it():
    tok = base_tokenizer()
    apply_template(tok, "chatml", "auto")
    prompt = build_prompt(tok, QUESTION)
    model = _scripted(tok, "84<|im_end|>\n60<|im_end|>\n", prompt)
    answers = generate_answers(model, tok, [prompt, prompt], max_new_tokens=24)
    assert answers.texts == ["84", "84"] and answers.ended == [True, True]
    # the loop stopped at the marker's last token: 1 + 9 tokens generated, not 24
    rows = greedy_batch(model, [_ids(tok, prompt)], max_new_tokens=24, pad_id=0,
                        stop=stop_criteria(tok))  # fmt: skip
    assert rows == [_ids(tok, "84")]
    sampled = sample_batch(model, [_ids(tok, prompt)], Sampling(temperature=1e-3),
                           max_new_tokens=24, pad_id=0, stop=stop_criteria(tok), seed=0)  # fmt: skip
    assert sampled == [_ids(tok, "84")]
    result = exact_match(model, tok, [QUESTION], max_new_tokens=24)
    assert (result.accuracy, result.n_unterminated, result.warning) == (1.0, 0, None)


def test_the_issues_failure_without_the_template_marker_is_what_it_was():
    """Stopping at EOS alone (what generation did): the answer runs on past the marker and
    exact match calls it wrong; the judge now says why."""
    tok = base_tokenizer()
    tok.chat_template = CHATML  # ChatML added by hand, the marker unknown to generation
    prompt = build_prompt(tok, QUESTION)
    model = _scripted(tok, "84<|im_end|>\n60<", prompt)
    n = len(_ids(tok, "84<|im_end|>\n60<"))
    assert greedy_generate(model, tok, [prompt], max_new_tokens=n) == ["84<|im_end|>\n60<"]
    result = exact_match(model, tok, [QUESTION], max_new_tokens=n)
    assert result.accuracy == 0.0 and result.n_unterminated == 1
    apply_template(tok, "tokenizer")  # the marker read from the template: fixed
    assert exact_match(model, tok, [QUESTION], max_new_tokens=n).accuracy == 1.0


def test_a_marker_that_starts_inside_a_token_is_cut_exactly():
    """Tokens that split the marker at any place, one of them holding the answer's last
    character and the marker's first: the text check still stops, the answer is exact."""
    pieces = ["8", "4<", "|im", "_e", "nd|", ">\n6", "0", "x"]
    stop = StopCriteria({99}, [], "<|im_end|>", lambda ids: "".join(pieces[i] for i in ids))
    row = list(range(len(pieces)))
    assert stop.end(row) == (1, 6)  # from the token "4<" to the token that completes it
    assert stop.tokens_before(row) == [0]
    assert stop.answer(row, lambda ids: "".join(pieces[i] for i in ids)) == "84"
    tail = torch.tensor([row[:6], [0, 0, 0, 0, 1, 2]])  # the last window of two rows
    assert stop(tail).tolist() == [True, False]
    assert stop(torch.tensor([row[:5]])).tolist() == [False]
    assert StopCriteria({7}).end([1, 7, 3]) == (1, 2)
    assert StopCriteria((), [[3, 4]]).end([1, 3, 4, 5]) == (1, 3)
    assert StopCriteria({7}).end([1, 2]) is None


def test_the_judge_warns_when_most_answers_reach_the_limit_unterminated(capsys):
    tok = base_tokenizer()
    apply_template(tok, "chatml", "text")
    prompt = build_prompt(tok, QUESTION)
    model = _scripted(tok, "84 and then some more words", prompt)
    result = exact_match(model, tok, [QUESTION] * 3, max_new_tokens=4)
    assert (result.n_unterminated, result.fraction_unterminated) == (3, 1.0)
    err = capsys.readouterr().err
    assert err.startswith("warning: 3 of 3 answers (100%) reached eval.max_new_tokens=4 "
                          "without the end-of-turn marker '<|im_end|>'")  # fmt: skip
    assert "a verdict of 0% on a model whose held-out loss fell is a bug" in result.warning
    assert json.loads(json.dumps(result.to_dict()))["n_unterminated"] == 3
    quiet = exact_match(model, tok, [QUESTION], max_new_tokens=4, warn=False)
    assert quiet.warning is not None and capsys.readouterr().err == ""


# --------------------------------------------------------------------------- token mode, keys


def test_fit_embeddings_grows_the_vocabulary_with_mean_rows():
    tok = base_tokenizer()
    model = tiny_llama(len(tok))
    mean = model.get_input_embeddings().weight[: len(tok)].mean(dim=0)
    apply_template(tok, "chatml", "token")
    assert fit_embeddings(model, tok) == (len(tok) - 1,)
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == len(tok) == 390
    torch.testing.assert_close(weight[-1], mean)
    assert model.get_output_embeddings().weight is weight  # still tied


def test_the_judge_cache_keys_on_the_template():
    from pathlib import Path

    keys = set()
    for template, mode in (("chatml", "text"), ("chatml", "token"), ("alpaca", "auto")):
        tok = base_tokenizer()
        apply_template(tok, template, mode)
        keys.add(cache_key(Path("."), [QUESTION], {}, dtype="float32", attn_implementation="sdpa",
                           template=template_key(tok)))  # fmt: skip
    assert len(keys) == 3


def test_every_assistant_turn_of_a_conversation_is_labelled_up_to_its_text_marker():
    from spectune.data.instructions import tokenize_conversation

    tok = base_tokenizer()
    apply_template(tok, "chatml", "text")
    talk = InstructionExample("And the smallest?", "60",
                              history=(("user", "Which is the largest: 84, 60?"),
                                       ("assistant", "84")))  # fmt: skip
    ids, labels = tokenize_conversation(tok, talk)
    labelled = [i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    assert labelled == _ids(tok, "84<|im_end|>") + _ids(tok, "60<|im_end|>")
    assert tok.decode(ids) == (
        "<|im_start|>user\nWhich is the largest: 84, 60?<|im_end|>\n<|im_start|>assistant\n"
        "84<|im_end|>\n<|im_start|>user\nAnd the smallest?<|im_end|>\n<|im_start|>assistant\n"
        "60<|im_end|>\n"
    )
