"""FrogConfig: defaults, validation messages, JSON round trip."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from spectune.errors import SpectuneError
from spectune.tuning.methods.frog import FrogConfig


def test_defaults_start_at_the_pretrained_model_without_noise():
    c = FrogConfig()
    assert (c.budget, c.selection, c.target_modules) == (0.01, "per_matrix", "all-linear")
    assert (c.init_scale, c.noise_scale, c.svd, c.seed) == (0.0, 0.0, "exact", 0)


def test_every_field_has_help():
    helps = FrogConfig.help()
    assert set(helps) == {f.name for f in fields(FrogConfig)}
    assert all(len(text) > 30 for text in helps.values())
    assert "(default: 0.01)" in helps["budget"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"budget": 0}, r"budget must be in \(0, 1\]"),
        ({"budget": -0.1}, r"budget must be in \(0, 1\]"),
        ({"budget": 1.01}, r"budget must be in \(0, 1\]"),
        ({"budget": float("nan")}, "budget must be finite"),
        ({"budget": "1%"}, "budget must be a number"),
        ({"budget": True}, "budget must be a number"),
        ({"selection": "layer"}, "selection must be one of 'per_matrix', 'global'"),
        ({"target_modules": []}, "target_modules must be a non-empty list"),
        ({"target_modules": ""}, "target_modules is empty"),
        ({"target_modules": "q_proj("}, "not a valid regular expression"),
        ({"target_modules": ["q_proj", 3]}, "non-empty strings"),
        ({"exclude_modules": []}, "exclude_modules must be a non-empty list"),
        ({"svd": "fast"}, "svd must be one of"),
        ({"svd_rank": 0}, "svd_rank must be >= 1"),
        ({"svd_rank": 2.5}, "svd_rank must be an integer"),
        ({"svd_niter": -1}, "svd_niter must be >= 0"),
        ({"importance": "spectral"}, "importance must be one of"),
        ({"importance": "alpha", "selection": "global"}, "only applies to selection='per_matrix'"),
        ({"alpha_range": (6.0, 2.0)}, "alpha_range must satisfy"),
        ({"alpha_range": "2-6"}, "alpha_range must be two numbers"),
        ({"init_scale": -1.0}, "init_scale must be >= 0"),
        ({"noise_scale": -0.1}, "noise_scale must be >= 0"),
        ({"noise_sigma": 0.0}, "noise_sigma must be > 0"),
        ({"noise_decay_steps": 0}, "noise_decay_steps must be >= 1"),
        ({"score_dtype": "int8"}, "score_dtype must be one of"),
        ({"seed": -1}, "seed must be >= 0"),
    ],
)
def test_bad_values_name_the_field(kwargs, match):
    with pytest.raises(SpectuneError, match=match) as info:
        FrogConfig(**kwargs)
    assert f"FrogConfig.{next(iter(kwargs))}" in str(info.value)


def test_normalization():
    assert FrogConfig(target_modules="ALL-LINEAR").target_modules == "all-linear"
    assert FrogConfig(exclude_modules="lm_head").exclude_modules == ["lm_head"]
    assert FrogConfig(budget=1).budget == 1.0 and isinstance(FrogConfig(budget=1).budget, float)


def test_json_round_trip_and_unknown_keys():
    c = FrogConfig(
        budget=0.05,
        selection="global",
        target_modules=["q_proj", "v_proj"],
        svd="randomized",
        svd_rank=64,
        noise_scale=0.1,
        noise_decay_steps=100,
        score_dtype="bfloat16",
        seed=7,
    )
    data = json.loads(json.dumps(c.to_dict()))
    assert FrogConfig.from_dict(data) == c
    data["budgit"] = 0.1
    with pytest.raises(SpectuneError, match=r"x.json: unknown FROG config key\(s\) \['budgit'\]"):
        FrogConfig.from_dict(data, source="x.json")
    with pytest.raises(SpectuneError, match="JSON object"):
        FrogConfig.from_dict([1, 2])
