"""The run config: parsing, overrides, sections, validation messages, views."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from spectune.errors import SpectuneError
from spectune.tuning.config import (
    TRAIN_DEFAULTS,
    TuneConfig,
    apply_overrides,
    load_config,
    parse_value,
    yaml_dump,
    yaml_load,
)
from spectune.tuning.methods import METHODS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_are_valid_and_round_trip_through_yaml():
    config = TuneConfig()
    data = config.to_dict()
    assert data["method"] == "lora" and data["objective"] == "sft"
    assert data["lora"] == {
        "r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "init": "default", "init_batches": 8
    }  # fmt: skip
    assert data["train"] == TRAIN_DEFAULTS
    assert "frog" not in data and "quant" not in data  # only the sections lora reads
    again = TuneConfig.from_dict(yaml_load(yaml_dump(data), "dumped"))
    assert again.to_dict() == data
    frog = TuneConfig.from_dict({"method": "frog"}).to_dict()
    assert frog["frog"]["budget"] == 0.01 and "target_modules" not in frog["frog"]
    assert TuneConfig.from_dict(yaml_load(yaml_dump(frog), "dumped")).to_dict() == frog


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
    out = apply_overrides(raw, ["r=16", "train.learning_rate=1e-4", "lora.lora_alpha=64",
                                "target_modules=[q_proj,v_proj]", "data.system=Be brief."])  # fmt: skip
    assert raw == {"method": "lora", "train": {"max_steps": 5}}
    assert out["lora"] == {"r": 16, "lora_alpha": 64}  # r= reaches the lora section
    config = TuneConfig.from_dict(out)
    assert config.section("lora").r == 16 and config.section("lora").lora_alpha == 64
    assert config.get("lora.r") == 16 and config.get("nope.r") is None
    assert config.training_arguments()["learning_rate"] == 1e-4
    assert config.training_arguments()["max_steps"] == 5
    assert config.target_modules == ["q_proj", "v_proj"]
    assert config.data.system == "Be brief."
    frog = TuneConfig.from_dict(apply_overrides({"method": "frog"}, ["frog.budget=0.02"]))
    assert frog.section("frog").budget == 0.02


def test_flat_lora_keys_are_still_read_and_both_forms_refused(tmp_path):
    flat = TuneConfig.from_dict({"method": "dora", "r": 4, "lora_alpha": 12})
    assert flat.section("lora").r == 4 and flat.section("lora").lora_alpha == 12
    assert flat.to_dict()["lora"]["r"] == 4 and "r" not in flat.to_dict()
    # a flat file keeps overrides flat, so both forms never mix by accident
    assert apply_overrides({"r": 4}, ["lora_alpha=8"]) == {"r": 4, "lora_alpha": 8}
    with pytest.raises(SpectuneError, match=r"given both flat \(r\) and in the lora: section"):
        TuneConfig.from_dict({"r": 4, "lora": {"lora_alpha": 8}}, source="c.yaml")
    path = tmp_path / "c.yaml"
    path.write_text("method: dora\ntrain:\n  learning_rate: 5e-5\n  max_steps: 3\n")
    config = load_config(path, ["lora_alpha=32"])
    assert config.method == "dora" and config.section("lora").lora_alpha == 32
    assert config.training_arguments()["learning_rate"] == 5e-5


def test_a_section_given_to_another_method_is_an_error_naming_both():
    with pytest.raises(SpectuneError, match=r"the frog: section is read by method\(s\)/objective"
                       r"\(s\) frog, but this run's method is 'lora'"):  # fmt: skip
        TuneConfig.from_dict({"method": "lora", "frog": {"budget": 0.02}})
    with pytest.raises(SpectuneError, match=r"the quant: section is read by .*qlora, qdora.*"
                       r"method is 'dora'"):  # fmt: skip
        TuneConfig.from_dict({"method": "dora", "quant": {"quant_type": "fp4"}})
    with pytest.raises(SpectuneError, match=r"r: LoRA settings .* method 'frog' does not read"):
        TuneConfig.from_dict({"method": "frog", "r": 8})
    # a sweep's base config serves several methods: foreign sections are dropped there
    frog = TuneConfig.from_dict({"method": "frog", "r": 8, "quant": {}}, foreign_sections="drop")
    assert set(frog.sections) == {"frog"}
    # an empty section is no setting at all
    assert TuneConfig.from_dict({"method": "lora", "frog": {}}).sections.keys() == {"lora"}
    with pytest.raises(SpectuneError, match="read no frog: section"):
        TuneConfig().section("frog")


@pytest.mark.parametrize(
    "data,message",
    [
        ({"lora_alhpa": 8}, r"unknown config key\(s\) \['lora_alhpa'\] \(did you mean: 'lora_alhpa' -> 'lora_alpha'"),
        ({"lora": {"lora_alhpa": 8}}, r"lora: unknown setting key\(s\) \['lora_alhpa'\] \(did you mean: 'lora_alhpa' -> 'lora_alpha'"),
        ({"data": {"max_lenght": 8}}, r"data: unknown setting key\(s\) \['max_lenght'\]"),
        ({"method": "lora2"}, r"unknown method 'lora2' \(did you mean 'lora'\?\); registered methods: "
         + re.escape(", ".join(METHODS.names()))),
        ({"objective": "sfd"}, r"unknown objective 'sfd' \(did you mean 'sft'\?\); registered objectives: sft"),
        ({"r": 0}, r"lora.r must be >= 1, got 0"),
        ({"lora": {"r": 2.5}}, r"lora.r must be an integer"),
        ({"lora_alpha": 0}, r"lora.lora_alpha must be > 0"),
        ({"lora_dropout": 1.0}, r"lora.lora_dropout must be in \[0, 1\)"),
        ({"method": "frog", "frog": {"budget": 0}}, r"FrogConfig.budget must be in \(0, 1\]"),
        ({"method": "frog", "frog": {"budgit": 0.1}}, r"frog: unknown setting key\(s\) \['budgit'\]"),
        ({"method": "frog", "frog": {"target_modules": ["q_proj"]}}, r"frog.target_modules is a top-level key"),
        ({"method": "shira", "shira": {"r": 0}}, r"shira.r must be >= 1"),
        ({"method": "pissa", "pissa": {"svd_niter": 0}}, r"pissa.svd_niter must be >= 1"),
        ({"train": {"output_dir": "x"}}, r"train.output_dir is set by spectune"),
        ({"train": {"max_steps": 0}}, r"train.max_steps must be >= 1"),
        ({"train": {"learning_rate": -1}}, r"train.learning_rate must be > 0"),
        ({"train": {"per_device_train_batch_size": 0}}, r"train.per_device_train_batch_size must be >= 1"),
        ({"eval": {"ppl_stride": 300}}, r"eval.ppl_stride \(300\) must be below eval.ppl_window"),
        ({"eval": {"compare_base": "yes"}}, r"eval.compare_base must be true or false"),
        ({"data": {"eval_fraction": 0.9}}, r"data.eval_fraction must be in \(0, 0.5\]"),
        ({"method": "qlora", "quant": {"quant_type": "int8"}}, r"quant.quant_type must be one of 'nf4', 'fp4'"),
        ({"target_modules": "("}, r"not a valid regular expression"),
        ({"method": "frog", "frog": {"noise_scale": 0.1}, "train": {"gradient_checkpointing": True}},
         r"noise_scale > 0 cannot be combined with train.gradient_checkpointing"),
        ({"data": "tasks"}, r"data must be a mapping of settings"),
        ({"method": "lora", "lora": [1]}, r"lora must be a mapping of settings"),
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
    with pytest.raises(SpectuneError, match=r"override 'lora.r.x=1': lora.r is not a section"):
        load_config(None, ["r=8", "lora.r.x=1"])


def test_unknown_training_argument_is_named():
    from spectune.tuning.recipe import training_arguments

    config = TuneConfig.from_dict({"train": {"lerning_rate": 1e-3}})
    with pytest.raises(
        SpectuneError,
        match=r"train: unknown TrainingArguments key\(s\) \['lerning_rate'\] \(did you mean: 'lerning_rate' -> 'learning_rate'",
    ):
        training_arguments(config, Path("/tmp/x"), progress=False)  # fmt: skip


def test_relevant_drops_settings_the_method_does_not_use():
    def make(method, r):
        return TuneConfig.from_dict({"method": method, "r": r}, foreign_sections="drop")

    assert make("lora", 8).relevant() != make("lora", 16).relevant()
    assert make("frog", 8).relevant() == make("frog", 16).relevant()
    assert "quant" in TuneConfig.from_dict({"method": "qlora"}).relevant()
    assert "quant" not in make("lora", 8).relevant() and "frog" not in make("lora", 8).relevant()
    assert "target_modules" not in TuneConfig.from_dict({"method": "full"}).relevant()


def test_the_callers_config_is_never_changed():
    config = TuneConfig.from_dict({"method": "lora", "r": 4})
    before = config.to_dict()
    copy = config.replace(seed=3)
    assert copy.seed == 3 and config.to_dict() == before


def test_help_covers_every_key():
    keys = TuneConfig.help()
    assert {"method", "objective", "lora.r", "data.max_length", "eval.ppl_chars",
            "quant.quant_type", "frog.budget", "shira.r", "pissa.svd_niter"} <= set(keys)  # fmt: skip
    assert all(text for text in keys.values())


def test_shipped_configs_are_valid_and_say_how_to_run_them():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert len(files) >= 9
    for path in files:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# spectune "), path  # opens with the command that runs it
        if first.startswith("# spectune study"):  # a run config plus a study: block
            from spectune.studies.study import split_study_config
            from spectune.tuning.config import read_config_data

            split_study_config(read_config_data(path), str(path))
            continue
        if "sweep" in first or "demo" in first:
            config = load_config(path, foreign_sections="drop")
        else:
            config = load_config(path)  # a single run's config holds only its own sections
        what = first.lower()
        assert (
            config.method in what or config.objective in what or "sweep" in what or "demo" in what
        ), path
