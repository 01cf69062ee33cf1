"""Runs on data in the new formats and sources: a tune on a ``messages`` JSON Lines file, and
the pins ``--resume`` checks for a ``save_to_disk`` folder and a ``datasets`` name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spectune.tuning.config import TuneConfig, yaml_dump
from tests.conftest import tiny_run_config

datasets = pytest.importorskip("datasets")


def _conversations(n: int) -> list[dict]:
    """``messages`` records: a system message, a greeting turn, then "Say i." -> "i"."""
    return [
        {
            "messages": [
                {"role": "system", "content": "Answer with the number only."},
                {"role": "user", "content": "Ready?"},
                {"role": "assistant", "content": "Yes"},
                {"role": "user", "content": f"Say {i}."},
                {"role": "assistant", "content": str(i)},
            ],
            "category": "say",
        }
        for i in range(n)
    ]


def test_tune_on_a_messages_file(tiny_model_dir, smol_tokenizer, tmp_path, capsys):
    """``spectune tune`` on a ``messages`` file written by datasets: every assistant turn
    labelled, the held-out references the last turns, judged on prompts with the history."""
    from spectune.cli.main import main

    path = tmp_path / "chat.jsonl"
    datasets.Dataset.from_list(_conversations(24)).to_json(path)
    data = tiny_run_config(tiny_model_dir, data__train=str(path), data__eval_fraction=0.25,
                           data__max_length=96)  # fmt: skip
    data["eval"].update(latency_prompts=0, spectra=False, intruders=False, compare_base=False)
    config = tmp_path / "run.yaml"
    config.write_text(yaml_dump(data))
    out = tmp_path / "run"
    assert main(["tune", str(config), "--out", str(out), "--no-progress"]) == 0, (
        capsys.readouterr().err
    )
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6  # ceil(0.25 * 24)
    for row in rows:
        assert row["reference"] == row["instruction"].split()[1].rstrip(".")  # the last turn
        assert row["category"] == "say"
    metrics = json.loads((out / "metrics.json").read_text())
    text = json.dumps(metrics)
    assert '"n_train": 18' in text and '"n_eval": 6' in text
    # every assistant turn labelled: "Yes<|im_end|>" and "<i><|im_end|>" in each training example
    held = {int(r["instruction"].split()[1].rstrip(".")) for r in rows}
    n_ids = lambda text: len(smol_tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    expected = sum(
        n_ids("Yes<|im_end|>") + n_ids(f"{i}<|im_end|>") for i in range(24) if i not in held
    )
    assert _find(metrics, "n_label_tokens") == expected
    assert json.loads((out / "inputs.json").read_text())["inputs"]["data.train"]["path"] == str(
        path.resolve()
    )


def _find(data: object, key: str) -> object:
    if isinstance(data, dict):
        if key in data:
            return data[key]
        for value in data.values():
            found = _find(value, key)
            if found is not None:
                return found
    return None


def test_pins_of_a_saved_dataset_folder_cover_its_splits(tmp_path):
    from spectune.tuning import pins

    folder = tmp_path / "dd"
    ds = datasets.Dataset.from_list(_conversations(4))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(folder)
    before = pins.fingerprint(f"{folder}:test", Path(f"{folder}:test"))
    assert before["kind"] == "folder"
    assert {"dataset_dict.json", "test/state.json", "train/dataset_info.json"} <= set(
        before["files"]
    )
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(tmp_path / "dd2")
    for name in ("data-00000-of-00001.arrow", "state.json"):
        (folder / "test" / name).write_bytes((tmp_path / "dd2" / "test" / name).read_bytes())
    after = pins.fingerprint(f"{folder}:test", Path(f"{folder}:test"))
    assert "test/data-00000-of-00001.arrow changed" in pins._what_changed(before, after)


def test_a_datasets_name_is_pinned_as_given(tiny_model_dir, tmp_path, monkeypatch):
    """A name is pinned as given (the resumed run loads the same name), by its datasets
    fingerprint and rows; another revision in the cache stops the resume."""
    from spectune.tuning import pins
    from spectune.tuning.objectives import get_objective

    loaded = {"ds": datasets.Dataset.from_list(_conversations(5))}
    monkeypatch.setattr(pins, "load_named", lambda spec: (loaded["ds"], f"dataset {spec}"))
    name = "someone/chat-data:train"
    monkeypatch.chdir(tmp_path)
    config = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, data__train=name))
    record = pins.pin(config, get_objective("sft"), tiny_model_dir)
    pinned = record["inputs"]["data.train"]
    assert pinned["path"] == name
    assert pinned["fingerprint"] == {
        "kind": "dataset",
        "rows": 5,
        "fingerprint": loaded["ds"]._fingerprint,
    }
    assert pins.pinned_config(config, record).data.train == name
    pins.check_unchanged(tmp_path, record)  # same data: the resume goes on
    pins.check_outside(tmp_path / "out", record)
    loaded["ds"] = datasets.Dataset.from_list(_conversations(6))
    with pytest.raises(Exception, match=r"data.train someone/chat-data:train changed .*its rows "
                       r"changed \(5 -> 6\)"):  # fmt: skip
        pins.check_unchanged(tmp_path, record)


def test_start_up_does_not_import_datasets():
    code = (
        "import sys\n"
        "import spectune\n"
        "from spectune.data import examples, formats, instructions\n"
        "from spectune.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('DATASETS', 'datasets' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "DATASETS False" in out.stdout
