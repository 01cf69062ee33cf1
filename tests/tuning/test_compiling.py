"""``train.torch_compile``: the decoder compiled for training only, its time apart, what is
refused, and a compile failure named."""

from __future__ import annotations

import pytest
import torch

from spectune.errors import SpectuneError
from spectune.tuning import compiling as mod
from spectune.tuning.compiling import Compiled, check_compile_possible, compiling
from spectune.tuning.config import TuneConfig
from tests.conftest import tiny_llama, tiny_run_config


def test_the_compile_time_is_the_first_steps_excess_over_the_median_step():
    c = Compiled(enabled=True)
    c.finish([40.0, 1.0, 1.2, 0.9, 1.1])
    assert c.seconds == pytest.approx(40.0 - 1.05)
    assert "about 39 s" in c.notes[0] and "median step of 1.05 s" in c.notes[0]
    c = Compiled(enabled=True, graph_breaks=3, eager_fallbacks=1)
    c.finish([5.0])  # one step: no median to compare with
    assert c.seconds is None and "3 graph breaks, 1 frames left eager" in c.notes[0]
    off = Compiled()
    off.finish([9.0, 1.0])
    assert off.seconds is None and off.notes == []


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"torch_compile": "yes"}, "train.torch_compile must be true or false"),
        ({"torch_compile": True, "torch_compile_mode": "max-autotune"},
         "train.torch_compile_mode: spectune compiles the decoder itself"),
        ({"torch_compile_backend": "aot_eager"}, "remove train.torch_compile_backend"),
    ],
)  # fmt: skip
def test_bad_settings_are_named(tiny_model_dir, train, message):
    data = tiny_run_config(tiny_model_dir)
    data["train"].update(train)
    with pytest.raises(SpectuneError, match=message):
        TuneConfig.from_dict(data)


def test_refused_without_a_cpp_compiler_or_a_decoder(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(mod.shutil, "which", lambda name: None)
    with pytest.raises(
        SpectuneError, match="needs a C\\+\\+ compiler .* set train.torch_compile=false"
    ):
        check_compile_possible("cpu")
    monkeypatch.undo()
    with pytest.raises(SpectuneError, match="no decoder spectune can compile"):
        with compiling(torch.nn.Linear(3, 3), True, "cpu"):
            pass


def test_a_compiler_failure_is_an_error_naming_the_setting_and_the_decoder_is_eager_after():
    model = tiny_llama(50)
    decoder = model.get_decoder()

    class BackendCompilerFailed(RuntimeError):  # stands in for torch._dynamo's own
        pass

    BackendCompilerFailed.__module__ = "torch._dynamo.exc"
    with pytest.raises(SpectuneError, match="train.torch_compile: torch.compile failed on this "
                       "model and method \\(BackendCompilerFailed: no\\); set"):  # fmt: skip
        with compiling(model, True, "cpu"):
            assert decoder._compiled_call_impl is not None
            raise BackendCompilerFailed("no")
    assert decoder._compiled_call_impl is None
    with pytest.raises(ValueError, match="other"):  # anything else passes through as it is
        with compiling(model, True, "cpu"):
            raise ValueError("other")
    with compiling(model, False, "cpu") as state:  # off: nothing compiled
        assert decoder._compiled_call_impl is None
    assert state.enabled is False


@pytest.mark.slow
def test_a_compiled_run_trains_like_an_eager_one_and_reports_its_compile_time(
    tiny_model_dir, tmp_path
):
    from spectune.tuning.recipe import tune

    losses = {}
    for on in (False, True):
        data = tiny_run_config(tiny_model_dir)
        data["train"].update({"torch_compile": on, "max_steps": 3})
        data["eval"].update({"spectra": False, "latency_prompts": 0})
        m = tune(TuneConfig.from_dict(data), out=tmp_path / str(on), progress=False).metrics
        losses[on] = m.training.final_loss
        if on:
            assert m.cost.compile_seconds is not None and m.cost.compile_seconds > 1.0
            assert any("compiling took about" in n for n in m.notes)
        else:
            assert m.cost.compile_seconds is None
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)  # the same steps, other kernels
