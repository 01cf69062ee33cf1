"""The GPU-only branches, checked on this CPU-only machine with CUDA's answers stood in: the
bf16 test ignores emulated bf16, models are placed where training runs, GPU timings wait for
the queued kernels."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from spectune.errors import SpectuneError
from spectune.models import forward, hardware
from spectune.tuning.config import TuneConfig
from tests.conftest import tiny_run_config


def test_native_bf16_on_a_gpu_does_not_count_emulation(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # a GPU before Ampere (a T4, a V100): bf16 tensors work, emulated, so torch says True
    # unless emulation is excluded
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation)  # fmt: skip
    assert hardware.native_bf16() is False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert hardware.native_bf16() is True  # Ampere and later


def test_models_go_where_training_runs_and_stay_when_there():
    model = torch.nn.Linear(4, 3)
    assert hardware.compute_device() == "cpu"  # this machine
    assert hardware.to_compute_device(model) is model  # nothing moved on the CPU path


def test_a_model_elsewhere_is_moved_once(monkeypatch):
    monkeypatch.setattr(hardware, "compute_device", lambda: "meta")  # stands in for "cuda"
    moved = hardware.to_compute_device(torch.nn.Linear(4, 3))
    assert {p.device.type for p in moved.parameters()} == {"meta"}
    assert hardware.to_compute_device(moved) is moved


def test_gpu_timestamps_wait_for_the_queued_kernels(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    forward.synchronize(torch.device("cpu"))
    assert calls == []
    forward.synchronize(torch.device("cuda", 1))
    assert calls == [torch.device("cuda", 1)]


@pytest.fixture
def flash_attn_installed(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "flash_attn" else real(name, *a))  # fmt: skip


@pytest.mark.parametrize("method,changes,ok", [
    ("lora", {}, False),  # float32 model: FlashAttention 2 has no float32 kernel
    ("lora", {"model_dtype": "bfloat16"}, True),
    ("lora", {"train__bf16": True}, True),  # autocast
    ("qlora", {"model_dtype": "bfloat16"}, False),  # 4-bit methods keep float32 layers
    ("qlora", {"train__bf16": True}, True),
])  # fmt: skip
def test_flash_attention_needs_half_precision(tiny_model_dir, flash_attn_installed, method,
                                              changes, ok):  # fmt: skip
    data = tiny_run_config(tiny_model_dir, method, attn_implementation="flash_attention_2",
                           **changes)  # fmt: skip
    if ok:
        assert TuneConfig.from_dict(data).attn_implementation == "flash_attention_2"
    else:
        with pytest.raises(SpectuneError, match=r"flash_attention_2 computes in float16/bfloat16"):
            TuneConfig.from_dict(data)
