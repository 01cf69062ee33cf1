"""The run config: parsing, overrides, validation messages, views."""

from __future__ import annotations

from pathlib import Path

import pytest

from spectune.errors import SpectuneError
from spectune.finetune.config import (
    TRAIN_DEFAULTS,
    TuneConfig,
    apply_overrides,
    load_config,
    parse_value,
    yaml_dump,
    yaml_load,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_are_valid_and_round_trip_through_yaml():
    config = TuneConfig()
    data = config.to_dict()
    assert data["method"] == "lora" and data["r"] == 8 and data["train"] == TRAIN_DEFAULTS
    assert data["frog"]["budget"] == 0.01 and "target_modules" not in data["frog"]
    again = TuneConfig.from_dict(yaml_load(yaml_dump(data), "dumped"))
    assert again.to_dict() == data


@pytest.mark.parametrize(
    "text,value",
    [("16", 16), ("1e-4", 1e-4), ("2.0e-4", 2e-4), ("-1", -1), ("0.1", 0.1), ("true", True),
     ("null", None), ("[q_proj, v_proj]", ["q_proj", "v_proj"]), ("lora", "lora"),
     ("all-linear", "all-linear")],
)  # fmt: skip
def test_values_parse_as_yaml_with_exponent_floats(text, value):
    assert parse_value(text) == value
    assert type(parse_value(text)) is type(value)


def test_overrides_reach_nested_sections_without_touching_the_input():
    raw = {"method": "lora", "train": {"max_steps": 5}}
    out = apply_overrides(raw, ["r=16", "train.learning_rate=1e-4", "frog.budget=0.02",
                                "target_modules=[q_proj,v_proj]", "data.system=Be brief."])  # fmt: skip
    assert raw == {"method": "lora", "train": {"max_steps": 5}}
    config = TuneConfig.from_dict(out)
    assert config.r == 16
    assert config.training_arguments()["learning_rate"] == 1e-4
    assert config.training_arguments()["max_steps"] == 5
    assert config.frog_config().budget == 0.02
    assert config.target_modules == ["q_proj", "v_proj"]
    assert config.data.system == "Be brief."


def test_yaml_file_with_exponent_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: dora\ntrain:\n  learning_rate: 5e-5\n  max_steps: 3\n")
    config = load_config(path, ["lora_alpha=32"])
    assert config.method == "dora" and config.lora_alpha == 32
    assert config.training_arguments()["learning_rate"] == 5e-5


@pytest.mark.parametrize(
    "data,message",
    [
        ({"lora_alhpa": 8}, r"unknown config key\(s\) \['lora_alhpa'\] \(did you mean: 'lora_alhpa' -> 'lora_alpha'"),
        ({"data": {"max_lenght": 8}}, r"data: unknown setting key\(s\) \['max_lenght'\]"),
        ({"method": "lora2"}, r"method must be one of 'lora', 'rslora', 'dora', 'qlora', 'qdora', 'frog', 'full'"),
        ({"r": 0}, r"r must be >= 1, got 0"),
        ({"r": 2.5}, r"r must be an integer"),
        ({"lora_alpha": 0}, r"lora_alpha must be > 0"),
        ({"lora_dropout": 1.0}, r"lora_dropout must be in \[0, 1\)"),
        ({"frog": {"budget": 0}}, r"FrogConfig.budget must be in \(0, 1\]"),
        ({"frog": {"budgit": 0.1}}, r"unknown FROG config key\(s\) \['budgit'\]"),
        ({"frog": {"target_modules": ["q_proj"]}}, r"frog.target_modules is set at the top level"),
        ({"train": {"output_dir": "x"}}, r"train.output_dir is set by spectune"),
        ({"train": {"max_steps": 0}}, r"train.max_steps must be >= 1"),
        ({"train": {"learning_rate": -1}}, r"train.learning_rate must be > 0"),
        ({"train": {"per_device_train_batch_size": 0}}, r"train.per_device_train_batch_size must be >= 1"),
        ({"eval": {"ppl_stride": 300}}, r"eval.ppl_stride \(300\) must be below eval.ppl_window"),
        ({"data": {"eval_fraction": 0.9}}, r"data.eval_fraction must be in \(0, 0.5\]"),
        ({"quant": {"quant_type": "int8"}}, r"quant.quant_type must be one of 'nf4', 'fp4'"),
        ({"target_modules": "("}, r"not a valid regular expression"),
        ({"method": "frog", "frog": {"noise_scale": 0.1}, "train": {"gradient_checkpointing": True}},
         r"noise_scale > 0 cannot be combined with train.gradient_checkpointing"),
        ({"data": "tasks"}, r"data must be a mapping of settings"),
    ],
)  # fmt: skip
def test_bad_values_name_the_key(data, message):
    with pytest.raises(SpectuneError, match=message):
        TuneConfig.from_dict(data, source="c.yaml")


def test_bad_files(tmp_path):
    with pytest.raises(SpectuneError, match=r"config file .*nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: lora\ntrain: [unclosed\n")
    with pytest.raises(SpectuneError, match=r"bad.yaml, line \d+: invalid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(SpectuneError, match="must hold a mapping of settings, got list"):
        load_config(listy)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert load_config(empty).to_dict() == TuneConfig().to_dict()
    with pytest.raises(SpectuneError, match=r"override 'r16' is not key=value"):
        load_config(None, ["r16"])
    with pytest.raises(SpectuneError, match=r"override 'r.x=1': r is not a section"):
        load_config(None, ["r=8", "r.x=1"])


def test_unknown_training_argument_is_named():
    from spectune.finetune.recipe import training_arguments

    config = TuneConfig.from_dict({"train": {"lerning_rate": 1e-3}})
    with pytest.raises(
        SpectuneError,
        match=r"train: unknown TrainingArguments key\(s\) \['lerning_rate'\] \(did you mean: 'lerning_rate' -> 'learning_rate'",
    ):
        training_arguments(config, Path("/tmp/x"), progress=False)  # fmt: skip


def test_relevant_drops_settings_the_method_does_not_use():
    lora8 = TuneConfig.from_dict({"method": "lora", "r": 8})
    lora16 = TuneConfig.from_dict({"method": "lora", "r": 16})
    frog8 = TuneConfig.from_dict({"method": "frog", "r": 8})
    frog16 = TuneConfig.from_dict({"method": "frog", "r": 16})
    assert lora8.relevant() != lora16.relevant()
    assert frog8.relevant() == frog16.relevant()
    assert "quant" in TuneConfig.from_dict({"method": "qlora"}).relevant()
    assert "quant" not in lora8.relevant() and "frog" not in lora8.relevant()
    assert "target_modules" not in TuneConfig.from_dict({"method": "full"}).relevant()


def test_help_covers_every_key():
    keys = TuneConfig.help()
    assert {"r", "method", "data.max_length", "eval.ppl_chars", "quant.quant_type"} <= set(keys)
    assert all(text for text in keys.values())


def test_shipped_configs_are_valid_and_say_how_to_run_them():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert len(files) >= 6
    for path in files:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# spectune "), path  # opens with the command that runs it
        config = load_config(path)
        assert config.method in first or "sweep" in first or "demo" in first, path
