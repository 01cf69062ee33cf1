"""Instruction data: loading (Dolly / Alpaca), chat prompts, response-only labels, padding."""

from __future__ import annotations

import json

import pytest
import torch

from spectune.data.examples import InstructionExample, detect_format, user_message
from spectune.data.instructions import (
    InstructionCollator,
    build_chat,
    build_prompt,
    load_instructions,
    tokenize_example,
    tokenize_examples,
)
from spectune.errors import SpectuneError
from spectune.models.tokenizer import IGNORE_INDEX, pad_token_id


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from spectune.models.loading import default_model_dir

    return AutoTokenizer.from_pretrained(default_model_dir())


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- loading

DOLLY = [
    {"instruction": "Name a colour.", "context": "", "response": "Blue.", "category": "open_qa"},
    {
        "instruction": "Summarize.",
        "context": "The cat sat on the mat.",
        "response": "A cat sat.",
        "category": "summarization",
    },
]


def _write_jsonl(path, records, blank_after=None):
    lines = [json.dumps(r) for r in records]
    if blank_after is not None:
        lines.insert(blank_after, "   ")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_dolly_jsonl(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", DOLLY, blank_after=1)
    examples = load_instructions(path)
    assert examples == [
        InstructionExample("Name a colour.", "Blue.", "", "open_qa"),
        InstructionExample("Summarize.", "A cat sat.", "The cat sat on the mat.", "summarization"),
    ]
    assert [e.to_dolly() for e in examples] == DOLLY


def test_load_alpaca_json(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(
        json.dumps(
            [
                {"instruction": "Add.", "input": "2 and 3", "output": "5"},
                {"instruction": "Say hi.", "output": "Hi"},  # input may be absent
            ]
        ),
        encoding="utf-8",
    )
    assert load_instructions(path) == [
        InstructionExample("Add.", "5", "2 and 3", ""),
        InstructionExample("Say hi.", "Hi", "", ""),
    ]
    assert load_instructions(path, format="alpaca") == load_instructions(path)


def test_detect_format_by_extension_and_content(tmp_path):
    jsonl_named_json = _write_jsonl(tmp_path / "d.json", DOLLY)
    assert detect_format(jsonl_named_json) == "dolly"
    assert load_instructions(jsonl_named_json)[1].context == "The cat sat on the mat."
    txt = tmp_path / "a.txt"
    txt.write_text('\n [{"instruction": "x", "output": "y"}]', encoding="utf-8")
    assert detect_format(txt) == "alpaca"
    # .jsonl is Dolly whatever the content
    odd = tmp_path / "list.jsonl"
    odd.write_text('[{"instruction": "x", "output": "y"}]\n', encoding="utf-8")
    assert detect_format(odd) == "dolly"
    # issue 20, case 12: the hints name the config key a CLI user sets, not format='alpaca'
    with pytest.raises(SpectuneError, match=r"line 1.*set data.format: alpaca in the run config "
                       r"\(data.format=alpaca on the command line\), or name the file .json"):  # fmt: skip
        load_instructions(odd)
    assert load_instructions(odd, format="alpaca")[0].response == "y"
    junk = tmp_path / "junk.txt"
    junk.write_text("instruction,response\n", encoding="utf-8")
    with pytest.raises(SpectuneError, match="cannot tell its layout") as err:
        load_instructions(junk)
    assert "format='" not in str(err.value)
    obj = tmp_path / "obj.json"
    obj.write_text('{"instruction": "x", "response": "y"}\n', encoding="utf-8")
    with pytest.raises(SpectuneError, match=r"for JSON Lines set data.format: dolly"):
        load_instructions(obj, format="alpaca")


def test_bom_and_line_separator_inside_strings(tmp_path):
    path = tmp_path / "d.jsonl"
    record = {"instruction": "Split\u2028here", "response": "ok"}
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(record, ensure_ascii=False).encode() + b"\n")
    assert load_instructions(path) == [InstructionExample("Split\u2028here", "ok")]


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SpectuneError, match=r"nope\.jsonl does not exist"):
        load_instructions(tmp_path / "nope.jsonl")
    with pytest.raises(SpectuneError, match="is not a file"):
        load_instructions(tmp_path)


@pytest.mark.parametrize("content", ["", "\n  \n", "[]"])
def test_empty_dataset(tmp_path, content):
    path = tmp_path / ("e.json" if content == "[]" else "e.jsonl")
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SpectuneError, match="no examples"):
        load_instructions(path)


def test_empty_file_auto_detect(tmp_path):
    path = tmp_path / "e.json"
    path.write_text("  ", encoding="utf-8")
    with pytest.raises(SpectuneError, match="is empty"):
        load_instructions(path)


def test_malformed_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps(DOLLY[0]) + "\n\n" + '{"instruction": "x", "response": }\n', encoding="utf-8"
    )
    with pytest.raises(SpectuneError, match=r"bad\.jsonl, line 3: malformed JSON") as err:
        load_instructions(path)
    assert "column" in str(err.value)


def test_malformed_alpaca_line_number(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": ]\n')
    with pytest.raises(SpectuneError, match=r"bad\.json, line 3: malformed JSON"):
        load_instructions(path)


def test_missing_required_field_names_field_and_line(tmp_path):
    records = [DOLLY[0], {"instruction": "q", "context": "", "category": ""}]
    path = _write_jsonl(tmp_path / "d.jsonl", records)
    with pytest.raises(SpectuneError, match=r"line 2: required field 'response' is missing"):
        load_instructions(path)
    path = _write_jsonl(tmp_path / "d.jsonl", [{"instruction": "  ", "response": "r"}])
    with pytest.raises(SpectuneError, match=r"line 1: required field 'instruction' is empty"):
        load_instructions(path)
    path = _write_jsonl(tmp_path / "d.jsonl", [{"instruction": "q", "response": 5}])
    with pytest.raises(SpectuneError, match=r"line 1: field 'response' must be a string, got int"):
        load_instructions(path)
    path = _write_jsonl(tmp_path / "d.jsonl", [DOLLY[0], ["not", "an", "object"]])
    with pytest.raises(SpectuneError, match=r"line 2: a JSON list, not an object"):
        load_instructions(path)


def test_missing_alpaca_field_names_record_index(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(
        json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "response": "d"}])
    )
    with pytest.raises(SpectuneError, match=r"record 1 \(0-based\): required field 'output'"):
        load_instructions(path)
    path.write_text(json.dumps({"instruction": "a", "output": "b"}))
    with pytest.raises(SpectuneError, match="must be a JSON list"):
        load_instructions(path, format="alpaca")


def test_non_utf8_names_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(DOLLY[0]).encode()
    bad = '{"instruction": "caf\u00e9", "response": "x"}'.encode("latin-1")
    path.write_bytes(good + b"\n" + good + b"\n" + bad + b"\n")
    with pytest.raises(SpectuneError, match=r"latin1\.jsonl, line 3: byte \d+ is not valid UTF-8"):
        load_instructions(path)


def test_unknown_format(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", DOLLY)
    with pytest.raises(SpectuneError, match="unknown dataset format 'csv'"):
        load_instructions(path, format="csv")


# --------------------------------------------------------------------------- prompts and labels


def test_user_message_joins_context():
    assert user_message(InstructionExample("Do it.", "r")) == "Do it."
    assert user_message(InstructionExample("Do it.", "r", context="Text.")) == "Do it.\n\nText."
    assert user_message(InstructionExample("Do it.", "r", context="  ")) == "Do it."


def test_prompt_is_chat_template(tok):
    ex = InstructionExample("Summarize.", "A cat sat.", context="The cat sat.")
    prompt, answer = build_chat(tok, ex)
    assert prompt == build_prompt(tok, ex)
    assert prompt.endswith(
        "<|im_start|>user\nSummarize.\n\nThe cat sat.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant")
    assert answer == "A cat sat.<|im_end|>\n"
    custom, _ = build_chat(tok, ex, system="Be brief.")
    assert custom.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")


def test_labels_mask_prompt_token_by_token(tok):
    ex = InstructionExample("What is the capital of France?", "Paris is the capital.")
    ids, labels = tokenize_example(tok, ex)
    prompt_ids = _ids(tok, build_prompt(tok, ex))
    response_ids = _ids(tok, "Paris is the capital.")
    eot, newline = tok.convert_tokens_to_ids("<|im_end|>"), _ids(tok, "\n")
    assert eot == tok.eos_token_id
    assert ids == prompt_ids + response_ids + [eot] + newline
    expected = [IGNORE_INDEX] * len(prompt_ids) + response_ids + [eot] + [IGNORE_INDEX]
    assert labels == expected
    # every labelled position holds its own input id; the decoded labelled span is the answer
    for i, lab in enumerate(labels):
        assert lab == IGNORE_INDEX or lab == ids[i]
    kept = [i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    assert tok.decode(kept) == "Paris is the capital.<|im_end|>"
    # the prompt ends with the assistant header ("ass" "istant" split in two tokens)
    assert tok.decode(ids[len(prompt_ids) - 4 : len(prompt_ids)]) == "<|im_start|>assistant\n"


def test_end_of_turn_override_labels_whole_answer(tok):
    ex = InstructionExample("Hi", "Hello")
    ids, labels = tokenize_example(tok, ex, end_of_turn=-1)  # a token that never occurs
    n_prompt = len(_ids(tok, build_prompt(tok, ex)))
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]


def test_truncation_counts(tok):
    short = InstructionExample("Say yes.", "Yes.")
    long_answer = InstructionExample("Say many words.", " ".join(["word"] * 40))
    long_prompt = InstructionExample(" ".join(["please"] * 80), "Ok.")
    lengths = {
        name: len(tokenize_example(tok, ex)[0])
        for name, ex in [("short", short), ("answer", long_answer), ("prompt", long_prompt)]
    }
    n_prompt_long = len(_ids(tok, build_prompt(tok, long_prompt)))
    max_length = lengths["short"] + 5
    assert lengths["answer"] > max_length and n_prompt_long > max_length
    features, stats = tokenize_examples(
        [short, long_answer, long_prompt, short], tok, max_length=max_length
    )
    assert stats.n_examples == 4
    assert stats.n_truncated == 2
    assert stats.n_dropped == 1  # the long prompt leaves no response token
    assert stats.n_kept == len(features) == 3
    assert stats.longest == lengths["prompt"]
    assert [len(f["input_ids"]) for f in features] == [
        lengths["short"],
        max_length,
        lengths["short"],
    ]
    assert stats.n_tokens == 2 * lengths["short"] + max_length
    # the truncated answer keeps its first tokens as labels, up to max_length
    n_prompt_answer = len(_ids(tok, build_prompt(tok, long_answer)))
    assert sum(lab != IGNORE_INDEX for lab in features[1]["labels"]) == max_length - n_prompt_answer
    assert stats.n_label_tokens == sum(
        sum(lab != IGNORE_INDEX for lab in f["labels"]) for f in features
    )
    assert stats.to_dict()["n_truncated"] == 2
    with pytest.raises(SpectuneError, match="all 1 examples lost their response"):
        tokenize_examples([long_prompt], tok, max_length=max_length)
    with pytest.raises(SpectuneError, match="empty"):
        tokenize_examples([], tok)
    with pytest.raises(SpectuneError, match="max_length must be at least 2"):
        tokenize_examples([short], tok, max_length=1)


def test_template_without_chat_template_is_an_error(tok):
    import copy

    bare = copy.deepcopy(tok)
    bare.chat_template = None
    with pytest.raises(SpectuneError, match="has no chat template"):
        build_prompt(bare, InstructionExample("a", "b"))


# --------------------------------------------------------------------------- collator


def test_collator_pads_right(tok):
    examples = [InstructionExample("Hi", "Hello there"), InstructionExample("Add 2 and 3.", "5")]
    features, _ = tokenize_examples(examples, tok)
    pad = pad_token_id(tok)
    batch = InstructionCollator(pad)(features)
    n0, n1 = (len(f["input_ids"]) for f in features)
    length = max(n0, n1)
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    for key in batch:
        assert batch[key].shape == (2, length) and batch[key].dtype == torch.long
    for row, n in enumerate((n0, n1)):
        assert batch["input_ids"][row, :n].tolist() == features[row]["input_ids"]
        assert batch["labels"][row, :n].tolist() == features[row]["labels"]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (length - n)
        assert batch["input_ids"][row, n:].tolist() == [pad] * (length - n)
        assert batch["labels"][row, n:].tolist() == [IGNORE_INDEX] * (length - n)
    padded = InstructionCollator(pad, pad_to_multiple_of=16)(features)
    assert padded["input_ids"].shape[1] == (length + 15) // 16 * 16
    assert padded["attention_mask"].sum().item() == n0 + n1


def test_collator_bad_input():
    collate = InstructionCollator(0)
    with pytest.raises(SpectuneError, match="empty batch"):
        collate([])
    with pytest.raises(SpectuneError, match="row 0"):
        collate([{"input_ids": [1, 2], "labels": [1]}])
    with pytest.raises(SpectuneError, match="pad_to_multiple_of"):
        InstructionCollator(0, pad_to_multiple_of=0)


def test_pad_token_fallback():
    class T:
        pad_token_id = None
        eos_token_id = 7

    assert pad_token_id(T()) == 7
    T.eos_token_id = None
    with pytest.raises(SpectuneError, match="neither a pad nor an EOS"):
        pad_token_id(T())
