"""Every format in every source: written with datasets / pandas / pyarrow, read back through
spectune; auto-detection, the errors, multi-turn labels, pins of dataset inputs, a tune on a
``messages`` file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spectune.data.examples import InstructionExample
from spectune.data.formats import examples_jsonl, is_dataset_name, read_examples, record_format
from spectune.data.instructions import (
    build_prompt,
    load_instructions,
    tokenize_example,
    tokenize_examples,
)
from spectune.errors import SpectuneError
from spectune.models.tokenizer import IGNORE_INDEX

datasets = pytest.importorskip("datasets")
pd = pytest.importorskip("pandas")

SYSTEM = "Answer in one word."
CHAT = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]
CONVERSATION = InstructionExample(
    "2+2?", "4", category="math", history=(("user", "Hi"), ("assistant", "Hello")), system=SYSTEM
)
SINGLE = InstructionExample("Name a colour.", "Blue", category="open_qa")
_SHARE = {"system": "system", "user": "human", "assistant": "gpt"}

#: per format: its records, and the examples spectune must read from them
CASES = {
    "dolly": (
        [{"instruction": "Say 5.", "context": "", "response": "5", "category": "say"},
         {"instruction": "Summarize.", "context": "A cat sat.", "response": "Cat.",
          "category": "sum"}],
        [InstructionExample("Say 5.", "5", "", "say"),
         InstructionExample("Summarize.", "Cat.", "A cat sat.", "sum")],
    ),
    "alpaca": (
        [{"instruction": "Add.", "input": "2 and 3", "output": "5"},
         {"instruction": "Say hi.", "input": "", "output": "Hi"}],
        [InstructionExample("Add.", "5", "2 and 3"), InstructionExample("Say hi.", "Hi")],
    ),
    "messages": (
        [{"messages": CHAT, "category": "math"},
         {"messages": [{"role": "user", "content": "Name a colour."},
                       {"role": "assistant", "content": "Blue"}], "category": "open_qa"}],
        [CONVERSATION, SINGLE],
    ),
    "prompt_completion": (
        [{"prompt": "Say 5.", "completion": "5"}, {"prompt": "Say hi.", "completion": "Hi"}],
        [InstructionExample("Say 5.", "5"), InstructionExample("Say hi.", "Hi")],
    ),
    "conversational_prompt_completion": (
        [{"prompt": CHAT[:4], "completion": CHAT[4:], "category": "math"},
         {"prompt": [{"role": "user", "content": "Name a colour."}],
          "completion": [{"role": "assistant", "content": "Blue"}], "category": "open_qa"}],
        [CONVERSATION, SINGLE],
    ),
    "sharegpt": (
        [{"conversations": [{"from": _SHARE[m["role"]], "value": m["content"]} for m in CHAT],
          "category": "math"},
         {"conversations": [{"from": "human", "value": "Name a colour."},
                            {"from": "gpt", "value": "Blue"}], "category": "open_qa"}],
        [CONVERSATION, SINGLE],
    ),
}  # fmt: skip
NESTED = ("messages", "conversations", "prompt", "completion")


def _write(records: list[dict], kind: str, folder: Path) -> str:
    """The records written by datasets, pandas or pyarrow (never by spectune) as ``kind``;
    returns the data setting that names them."""
    ds = datasets.Dataset.from_list(records)
    if kind == "jsonl":
        ds.to_json(folder / "d.jsonl")  # JSON Lines
        return str(folder / "d.jsonl")
    if kind == "json":
        pd.DataFrame(records).to_json(folder / "d.json", orient="records")  # one JSON list
        return str(folder / "d.json")
    if kind == "csv":  # nested cells as JSON text (pandas would write Python reprs)
        frame = pd.DataFrame(records)
        for col in frame.columns:
            if col in NESTED and not isinstance(records[0][col], str):
                frame[col] = [json.dumps(v) for v in frame[col]]
        frame.to_csv(folder / "d.csv", index=False)
        return str(folder / "d.csv")
    if kind == "parquet":
        ds.to_parquet(folder / "d.parquet")
        return str(folder / "d.parquet")
    if kind == "arrow":  # the Arrow IPC file format, by pyarrow
        import pyarrow as pa

        table = pa.Table.from_pylist(records)
        with pa.ipc.new_file(folder / "d.arrow", table.schema) as writer:
            writer.write_table(table)
        return str(folder / "d.arrow")
    if kind == "save_to_disk":
        ds.save_to_disk(folder / "saved")
        return str(folder / "saved")
    if kind == "save_to_disk_arrow":  # the Arrow stream file inside a save_to_disk folder
        ds.save_to_disk(folder / "saved")
        return str(next((folder / "saved").glob("*.arrow")))
    assert kind == "dataset_dict_split"
    other = datasets.Dataset.from_list(records[:1])
    datasets.DatasetDict({"train": other, "test": ds}).save_to_disk(folder / "dd")
    return f"{folder / 'dd'}:test"


KINDS = ("jsonl", "json", "csv", "parquet", "arrow", "save_to_disk", "save_to_disk_arrow",
         "dataset_dict_split")  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(CASES))
def test_every_format_in_every_source_reads_back_the_same_examples(case, kind, tmp_path):
    records, expected = CASES[case]
    spec = _write(records, kind, tmp_path)
    fmt = "prompt_completion" if case.startswith("conversational") else case
    assert load_instructions(spec) == expected  # auto
    assert read_examples(spec, fmt) == expected
    assert record_format(records[0]) == fmt


def test_csv_cells_stay_text_and_errors_name_the_line(tmp_path):
    """A CSV answer "007" stays "007"; an empty cell is empty; a value spanning lines
    does not shift the line an error names."""
    path = tmp_path / "d.csv"
    pd.DataFrame(
        [{"instruction": "Pad 7.", "response": "007", "context": ""},
         {"instruction": "Two\nlines", "response": "NA", "context": "x"},
         {"instruction": "Empty.", "response": "", "context": ""}]
    ).to_csv(path, index=False)  # fmt: skip
    with pytest.raises(SpectuneError, match=rf"{path}, line 5: required field 'response' is empty"):
        load_instructions(path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    assert load_instructions(path) == [
        InstructionExample("Pad 7.", "007"),
        InstructionExample("Two\nlines", "NA", "x"),
    ]


def test_a_mixed_file_names_the_first_record_of_another_format(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [CASES["dolly"][0][0], CASES["dolly"][0][1], CASES["messages"][0][0]]
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n"
                    + json.dumps(rows[2]) + "\n")  # fmt: skip
    with pytest.raises(SpectuneError) as err:
        load_instructions(path)
    msg = str(err.value)
    assert f"dataset file {path}, line 4: required field 'instruction' is missing" in msg
    assert "this record is messages (messages (a list of {role, content}))" in msg
    assert "the first record (line 1) is dolly (instruction, response" in msg
    assert "a file holds records of one format" in msg
    # in a Parquet file the record is a row
    pd.DataFrame([*CASES["sharegpt"][0], *CASES["alpaca"][0]]).to_parquet(
        tmp_path / "mixed.parquet"
    )
    with pytest.raises(SpectuneError, match=r"mixed\.parquet, row 2 \(0-based\): required field "
                       r"'conversations' is missing.*this record is alpaca"):  # fmt: skip
        load_instructions(tmp_path / "mixed.parquet")


def test_a_record_that_fits_no_format_names_the_fields_expected(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('\n{"question": "2+2?", "answer": "4"}\n')
    with pytest.raises(SpectuneError) as err:
        load_instructions(path)
    msg = str(err.value)
    assert msg.startswith(f"dataset file {path}, line 2: the record fits no format (its "
                          "fields: question, answer); expected the fields of one of: dolly: "
                          "instruction, response")  # fmt: skip
    assert "sharegpt: conversations (a list of {from, value})" in msg


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "Hi"}]},
         r"the conversation has no assistant turn \(its roles: system, user\)"),
        ({"messages": [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "{}"}]},
         r"messages message 1 has the role 'tool', which spectune does not know; the "
         r"roles known in messages data are system, user, assistant"),
        ({"conversations": [{"from": "narrator", "value": "Once."},
                            {"from": "gpt", "value": "Yes"}]},
         r"conversations message 0 has the role 'narrator'.*roles known in sharegpt "
         r"data are system, human, gpt"),
        ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A"},
                       {"role": "user", "content": "And?"}]},
         r"ends with a user turn after its last assistant turn"),
        ({"messages": [{"role": "user", "content": "Hi"}, {"role": "system", "content": "s"},
                       {"role": "assistant", "content": "A"}]},
         r"message 1 is a system turn where an assistant turn belongs: a system message must "
         r"come first"),
        ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": 5}]},
         r"messages message 1 \(assistant\): 'content' must be a string, got int"),
        ({"prompt": "Hi", "completion": [{"role": "assistant", "content": "A"}]},
         r"prompt and completion must both be strings, or both lists"),
    ],
)  # fmt: skip
def test_bad_conversations_are_named(record, message, tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(SpectuneError, match=rf"{path}, line 1: (.* )?{message}"):
        load_instructions(path)


def test_explicit_format_and_unknown_format(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(CASES["messages"][0][0]) + "\n")
    with pytest.raises(SpectuneError, match=r"line 1: required field 'conversations' is missing"):
        load_instructions(path, format="sharegpt")
    with pytest.raises(SpectuneError, match="unknown dataset format 'chatml'; use one of auto, "):
        load_instructions(path, format="chatml")


def test_sources_that_do_not_exist(tmp_path, monkeypatch):
    with pytest.raises(SpectuneError, match=r"dataset file .*nope\.parquet does not exist"):
        load_instructions(tmp_path / "nope.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpectuneError, match=r"empty is not a file, nor a folder written by "
                       "save_to_disk or holding data files"):  # fmt: skip
        load_instructions(tmp_path / "empty")
    dd = tmp_path / "dd"
    ds = datasets.Dataset.from_list(CASES["dolly"][0])
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(dd)
    with pytest.raises(SpectuneError, match=rf"dataset folder {dd} has several splits \(train, "
                       rf"test\); name one: {dd}:SPLIT or {dd}/SPLIT"):  # fmt: skip
        load_instructions(dd)
    assert load_instructions(dd / "train") == CASES["dolly"][1]  # a split's own folder
    with pytest.raises(SpectuneError, match=r"has no split 'validation' \(train, test\)"):
        load_instructions(f"{dd}:validation")
    monkeypatch.chdir(tmp_path)
    assert is_dataset_name("HuggingFaceH4/ultrachat_200k:train_sft")
    assert is_dataset_name("squad:plain_text:train")
    assert not is_dataset_name("data/missing.jsonl") and not is_dataset_name("./squad")
    assert not is_dataset_name("dd:train")  # a local folder and its split


def test_a_data_files_folder_with_a_split(tmp_path):
    """``load_dataset(folder)`` infers splits from the file names."""
    folder = tmp_path / "repo"
    folder.mkdir()
    datasets.Dataset.from_list(CASES["alpaca"][0]).to_json(folder / "train.jsonl")
    datasets.Dataset.from_list(CASES["alpaca"][0][:1]).to_json(folder / "test.jsonl")
    assert load_instructions(f"{folder}:test") == CASES["alpaca"][1][:1]
    assert load_instructions(f"{folder}:train") == CASES["alpaca"][1]


def test_a_name_offline_and_not_cached_says_how_to_fetch_it(tmp_path):
    code = (
        "from spectune.data.instructions import load_instructions\n"
        "from spectune.errors import SpectuneError\n"
        "try:\n    load_instructions('nobody-here/no-such-data:train')\n"
        "except SpectuneError as exc:\n    print(exc)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": ":".join(sys.path)}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.stdout.strip() == (
        "'nobody-here/no-such-data:train' is not a file or folder here, and the dataset "
        "nobody-here/no-such-data is not in the datasets cache while the hub is offline "
        '(HF_HUB_OFFLINE=1): fetch it once online (python -c "import datasets; '
        "datasets.load_dataset('nobody-here/no-such-data')\"), or give a data file"
    ), done.stderr[-2000:]


def test_examples_jsonl_round_trip(tmp_path):
    examples = [*CASES["messages"][1], InstructionExample("Add.", "5", "2 and 3", "math")]
    text, fmt = examples_jsonl(examples)
    assert fmt == "messages"
    (tmp_path / "m.jsonl").write_text(text)
    back = load_instructions(tmp_path / "m.jsonl")
    # the context joins the user turn, as every prompt shows it
    assert back == [*examples[:2], InstructionExample("Add.\n\n2 and 3", "5", category="math")]
    text, fmt = examples_jsonl(CASES["dolly"][1])
    assert fmt == "dolly" and text.count("\n") == 2


# --------------------------------------------------------------------------- multi-turn labels


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_every_assistant_turn_or_only_the_last_is_labelled(smol_tokenizer):
    """Hand-checked on SmolLM2's ChatML template: the pieces written out by hand, masked or
    labelled, against spectune's tokenization under both settings."""
    tok = smol_tokenizer
    sys_turn = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
    pieces = [  # (text, labelled)
        (sys_turn + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", False),
        ("Hello<|im_end|>", True),
        ("\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n", False),
        ("4<|im_end|>", True),
        ("\n", False),
    ]
    whole = "".join(text for text, _ in pieces)
    assert tok.apply_chat_template(CHAT, tokenize=False) == whole
    expected_ids, all_labels, last_labels = [], [], []
    for k, (text, labelled) in enumerate(pieces):
        ids = _ids(tok, text)
        expected_ids += ids
        all_labels += ids if labelled else [IGNORE_INDEX] * len(ids)
        last_labels += ids if labelled and k == 3 else [IGNORE_INDEX] * len(ids)
    assert expected_ids == _ids(tok, whole)

    (feature,), stats = tokenize_examples([CONVERSATION], tok, max_length=256)
    assert feature["input_ids"] == expected_ids and feature["labels"] == all_labels
    assert tok.decode([t for t in feature["labels"] if t != IGNORE_INDEX]) == (
        "Hello<|im_end|>4<|im_end|>"
    )
    assert stats.n_label_tokens == len(_ids(tok, "Hello<|im_end|>4<|im_end|>")) == 4
    (feature,), stats = tokenize_examples(
        [CONVERSATION], tok, max_length=256, train_on="last_assistant"
    )
    assert feature["input_ids"] == expected_ids and feature["labels"] == last_labels
    assert stats.n_label_tokens == 2
    assert tokenize_example(tok, CONVERSATION) == (expected_ids, last_labels)
    # judging: the prompt is everything before the last assistant turn, the reference that turn
    assert build_prompt(tok, CONVERSATION) == tok.apply_chat_template(
        CHAT[:4], tokenize=False, add_generation_prompt=True
    )
    assert CONVERSATION.response == "4"
    # a single exchange is labelled the same under both settings
    one = [tokenize_examples([SINGLE], tok, train_on=t)[0] for t in ("all_assistant",
                                                                      "last_assistant")]  # fmt: skip
    assert one[0] == one[1]
    with pytest.raises(SpectuneError, match="unknown train_on 'every'"):
        tokenize_examples([SINGLE], tok, train_on="every")


def test_the_record_system_message_wins_over_data_system(smol_tokenizer):
    prompt = build_prompt(smol_tokenizer, CONVERSATION, system="Be verbose.")
    assert SYSTEM in prompt and "Be verbose." not in prompt
    plain = build_prompt(smol_tokenizer, SINGLE, system="Be verbose.")
    assert "<|im_start|>system\nBe verbose.<|im_end|>" in plain


def test_data_train_on_is_checked():
    from spectune.tuning.sections import DataConfig

    assert DataConfig().train_on == "all_assistant"
    assert DataConfig(format="sharegpt", train_on="last_assistant").format == "sharegpt"
    with pytest.raises(SpectuneError, match="data.train_on"):
        DataConfig(train_on="all")
    with pytest.raises(SpectuneError, match="data.format"):
        DataConfig(format="csv")
