"""model_dtype and attn_implementation: what the base loads in and with which attention kernel,
the judging cache keyed on the dtype, gradient checkpointing's gradients, bad values."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from spectune.errors import SpectuneError
from spectune.judging import cache as judge_cache
from spectune.models.tokenizer import load_tokenizer
from spectune.tuning import checks, judging, recipe
from spectune.tuning.config import TuneConfig
from spectune.tuning.methods import get_method
from spectune.tuning.methods.base import BuildContext, resolve_model_dtype
from tests.conftest import tiny_run_config


def _built(model_dir, tmp_path, method="lora", **changes):
    config = TuneConfig.from_dict(tiny_run_config(model_dir, method, **changes))
    ctx = BuildContext(config, model_dir, tmp_path, progress=False)
    torch.manual_seed(0)
    return recipe.build_model(get_method(method), ctx)


def _dtypes(model, trainable: bool) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters() if p.requires_grad == trainable}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("method", ["lora", "dora", "frog", "shira"])
def test_base_loads_in_model_dtype_adapters_stay_float32(tiny_model_dir, tmp_path, method, dtype):
    built = _built(tiny_model_dir, tmp_path, method, model_dtype=dtype)
    assert _dtypes(built.model, trainable=False) == {getattr(torch, dtype)}
    assert _dtypes(built.model, trainable=True) == {torch.float32}  # peft autocasts adapters
    noted = [n for n in built.notes if "base weights loaded in" in n]
    assert (noted == []) if dtype == "float32" else (f"loaded in {dtype}" in noted[0])


def test_full_fine_tuning_in_bf16_trains_bf16_and_says_so(tiny_model_dir, tmp_path):
    built = _built(tiny_model_dir, tmp_path, "full", model_dtype="bfloat16")
    assert _dtypes(built.model, trainable=True) == {torch.bfloat16}
    assert any("no float32 master copy" in n for n in built.notes)
    assert not _built(tiny_model_dir, tmp_path, "full").notes


@pytest.mark.parametrize(
    "native,fast,dtype,why",
    [
        (True, True, "bfloat16", "AMX"),
        (True, False, "float32", "AVX512-BF16 but no AMX"),
        (False, False, "float32", "emulated bf16 is about 10x slower"),
    ],
)
def test_auto_follows_the_hardware_and_says_what_it_picked(native, fast, dtype, why, monkeypatch):
    from spectune.models import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "native_bf16", lambda: native)
    monkeypatch.setattr(hardware, "fast_bf16", lambda: fast)
    got, notes = resolve_model_dtype("auto")
    assert got == dtype and len(notes) == 1
    assert f"loaded in {dtype} (model_dtype=auto" in notes[0] and why in notes[0]


def test_fast_bf16_on_a_cpu_needs_amx_beside_avx512_bf16(monkeypatch):
    from spectune.models import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "_kernels_held_below_avx512", lambda: False)
    for avx, amx in [(True, True), (True, False), (False, True), (False, False)]:
        monkeypatch.setattr(hardware, "_has_avx512bf16", lambda v=avx: v)
        monkeypatch.setattr(hardware, "_has_amx_bf16", lambda v=amx: v)
        assert hardware.fast_bf16() is (avx and amx)
        assert hardware.native_bf16() is avx


@pytest.mark.parametrize(("capability", "onednn", "held"), [
    ("AVX512", None, False), ("AVX512", "AVX512_CORE_AMX", False), ("AVX512", "ALL", False),
    ("AVX2", None, True), ("AVX512", "AVX2", True), ("AVX512", "avx512_core", True),
    ("DEFAULT", None, True),
])  # fmt: skip
def test_bf16_does_not_count_where_torch_runs_below_avx512(capability, onednn, held,
                                                           monkeypatch):  # fmt: skip
    """``ATEN_CPU_CAPABILITY=avx2`` or ``ONEDNN_MAX_CPU_ISA`` below AVX512-BF16 (``make
    test-numerics``) emulate bf16 on an AMX CPU: model_dtype=auto and QLoRA's compute dtype
    pick float32 there, as on a CPU without AVX-512."""
    from spectune.models import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    if onednn is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn)
    monkeypatch.setattr(hardware, "_has_avx512bf16", lambda: True)
    monkeypatch.setattr(hardware, "_has_amx_bf16", lambda: True)
    assert hardware._kernels_held_below_avx512() is held
    assert hardware.native_bf16() is hardware.fast_bf16() is (not held)
    assert resolve_model_dtype("auto")[0] == ("float32" if held else "bfloat16")


def test_explicit_bf16_without_native_bf16_is_allowed_with_a_note(monkeypatch):
    from spectune.models import hardware

    monkeypatch.setattr(hardware, "native_bf16", lambda: False)
    got, notes = resolve_model_dtype("bfloat16")
    assert got == "bfloat16" and any("emulated" in n and "10x" in n for n in notes)


def test_explicit_bf16_on_avx512_bf16_without_amx_says_it_is_slower(monkeypatch):
    from spectune.models import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "native_bf16", lambda: True)
    monkeypatch.setattr(hardware, "fast_bf16", lambda: False)
    got, notes = resolve_model_dtype("bfloat16")
    assert got == "bfloat16" and any("1.5x as long" in n and "no AMX" in n for n in notes)
    monkeypatch.setattr(hardware, "fast_bf16", lambda: True)
    assert not any("1.5x" in n for n in resolve_model_dtype("bfloat16")[1])


def test_a_dtype_the_cpu_cannot_run_is_refused(monkeypatch):
    from spectune.models import hardware

    monkeypatch.setattr(hardware, "cpu_runs", lambda dtype: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SpectuneError, match=r"model_dtype=float16: .*use model_dtype=float32"):
        resolve_model_dtype("float16")


def test_float16_runs_on_this_torch_cpu():
    """torch 2.x runs float16 matmuls, their backward and SDPA on the CPU: not refused."""
    from spectune.models.hardware import cpu_runs as _cpu_runs

    assert _cpu_runs(torch.float16) and _cpu_runs(torch.bfloat16)


@pytest.mark.parametrize("key,value,match", [
    ("model_dtype", "fp16", r"model_dtype must be one of 'auto', 'float32'"),
    ("model_dtype", "int8", r"model_dtype must be one of"),
    ("attn_implementation", "flash", r"attn_implementation must be one of 'sdpa', 'eager'"),
])  # fmt: skip
def test_bad_values_name_the_setting(tiny_model_dir, key, value, match):
    with pytest.raises(SpectuneError, match=match):
        TuneConfig.from_dict(tiny_run_config(tiny_model_dir, **{key: value}))


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="installed")
def test_flash_attention_without_the_package_is_refused(tiny_model_dir):
    with pytest.raises(SpectuneError, match=r"flash-attn package.*attn_implementation=sdpa"):
        TuneConfig.from_dict(
            tiny_run_config(tiny_model_dir, attn_implementation="flash_attention_2")
        )


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_attention_implementation_reaches_the_model(tiny_model_dir, tmp_path, method, attn):
    built = _built(tiny_model_dir, tmp_path, method, attn_implementation=attn)
    model = built.model.get_base_model() if hasattr(built.model, "get_base_model") else built.model
    assert model.config._attn_implementation == attn


def test_sdpa_and_eager_agree(tiny_model_dir, tmp_path, smol_tokenizer):
    ids = torch.tensor([smol_tokenizer("The cat sat on the mat.")["input_ids"]])
    out = {}
    for attn in ("sdpa", "eager"):
        model = _built(tiny_model_dir, tmp_path, "full", attn_implementation=attn).model.eval()
        with torch.no_grad():
            out[attn] = model(ids).logits
    torch.testing.assert_close(out["sdpa"], out["eager"], rtol=1e-4, atol=1e-4)


def test_judging_cache_keys_on_the_dtype(tiny_model_dir, tmp_path):
    results, files = {}, {}
    for dtype in ("float32", "bfloat16"):
        config = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, model_dtype=dtype))
        heldout = checks.load_run_data(config).heldout
        before = set(judge_cache.cache_dir().glob("*.json"))
        results[dtype] = judging.judge_base_model(tiny_model_dir, load_tokenizer(tiny_model_dir),
                                                  heldout, config, progress=False)  # fmt: skip
        files[dtype] = set(judge_cache.cache_dir().glob("*.json")) - before
    assert results["float32"]["model"] == "base model, float32"
    assert results["bfloat16"]["model"] == "base model, bfloat16"
    assert files["bfloat16"] and not (files["bfloat16"] & files["float32"])


def _grads(model, ids) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir, tmp_path, method,
                                                         smol_tokenizer):  # fmt: skip
    built = _built(tiny_model_dir, tmp_path, method)
    model = built.model.train()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    ids = torch.tensor([smol_tokenizer("Name three colours: red, green and blue.")["input_ids"]])
    plain = _grads(model, ids)
    # the recipe's settings (recipe.training_arguments): non-reentrant checkpoints
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert base.is_activation_checkpointing
    checkpointed = _grads(model, ids)
    assert plain.keys() == checkpointed.keys() and plain
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_a_bf16_lora_run_trains_and_records_the_dtype(tiny_model_dir, tmp_path):
    config = TuneConfig.from_dict(tiny_run_config(
        tiny_model_dir, model_dtype="bfloat16", eval={"before": False, "spectra": False,
                                                      "latency_prompts": 0, "max_new_tokens": 2,
                                                      "ppl_chars": 200, "ppl_window": 32,
                                                      "ppl_stride": 16}))  # fmt: skip
    metrics = recipe.tune(config, out=tmp_path / "run", progress=False).metrics
    assert any("loaded in bfloat16" in n for n in metrics.notes)
    assert math.isfinite(metrics.training.final_loss)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "model_dtype: bfloat16" in saved and "attn_implementation: sdpa" in saved
