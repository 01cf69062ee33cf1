"""Training settings that depend on the hardware: bitsandbytes' paged optimizers on a CPU (QLoRA's
``paged_adamw_32bit``), data loader workers and pinned memory."""

from __future__ import annotations

import csv
import warnings

import torch

from spectune.models import hardware
from spectune.tuning import recipe
from spectune.tuning.config import TuneConfig, load_config
from tests.conftest import tiny_run_config

QUICK_EVAL = {"before": False, "spectra": False, "latency_prompts": 0, "max_new_tokens": 2,
              "ppl_chars": 200, "ppl_window": 32, "ppl_stride": 16}  # fmt: skip


def _run(model_dir, out, method="lora", **train):
    data = tiny_run_config(model_dir, method, eval=QUICK_EVAL)
    data["train"].update(max_steps=3, **train)
    return recipe.tune(TuneConfig.from_dict(data), out=out, progress=False).metrics


def _log(out) -> list[dict[str, str]]:
    with (out / "train_log.csv").open() as fh:
        return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in csv.DictReader(fh)]


def _adam_steps(opt_cls, shape, steps=3, **kwargs):
    """A parameter after ``steps`` seeded updates of ``opt_cls``, and the optimizer."""
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(shape, generator=gen))
    opt = opt_cls([p], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, **kwargs)
    for _ in range(steps):
        p.grad = torch.randn(shape, generator=gen)
        opt.step()
    return p.detach().clone(), opt


def test_bitsandbytes_paged_adamw_on_the_cpu_is_its_unpaged_adamw():
    """What the note promises: bitsandbytes keeps the paged optimizers' state in ordinary CPU
    tensors (nothing paged) and computes AdamW's update (32-bit: torch's to float rounding;
    8-bit: within its blockwise quantization)."""
    import bitsandbytes as bnb

    start, _ = _adam_steps(torch.optim.AdamW, (64, 128), steps=0)
    ref, _ = _adam_steps(torch.optim.AdamW, (64, 128))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got32, opt32 = _adam_steps(bnb.optim.PagedAdamW32bit, (64, 128))
        got8, opt8 = _adam_steps(bnb.optim.PagedAdamW8bit, (64, 128))
        unpaged8, _ = _adam_steps(bnb.optim.AdamW8bit, (64, 128))
    assert torch.allclose(got32, ref, atol=1e-6)
    assert torch.equal(got8, unpaged8)
    state32 = opt32.state[opt32.param_groups[0]["params"][0]]
    assert state32["state1"].dtype == torch.float32 and not opt32.page_mng.paged_tensors
    state8 = opt8.state[opt8.param_groups[0]["params"][0]]
    assert state8["state1"].dtype == torch.uint8  # 8192 >= bitsandbytes' 4096 for 8-bit state
    assert not opt8.page_mng.paged_tensors
    update = ref - start  # 3 steps of lr 1e-2: the 8-bit update is within 2% of it (L2)
    assert float((got8 - ref).norm() / update.norm()) < 0.02


def test_paged_optimizer_notes_say_unpaged_on_cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (note,) = hardware.training_notes({"optim": "paged_adamw_32bit"})
    assert note.startswith("train.optim=paged_adamw_32bit: paging needs CUDA") and "unpaged" in note
    assert hardware.training_notes({"optim": "adamw_torch"}) == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hardware.training_notes({"optim": "paged_adamw_8bit"}) == []  # CUDA keeps paging


def test_qlora_configs_use_qloras_paged_optimizer():
    for name in ("qlora", "qdora"):
        config = load_config(f"configs/{name}.yaml")
        assert config.training_arguments()["optim"] == "paged_adamw_32bit"


def test_paged_8bit_qlora_run_trains_as_the_unpaged_optimizer_and_notes_it(tiny_model_dir,
                                                                           tmp_path):  # fmt: skip
    paged = _run(tiny_model_dir, tmp_path / "paged", "qlora", optim="paged_adamw_8bit")
    plain = _run(tiny_model_dir, tmp_path / "plain", "qlora", optim="adamw_8bit")
    assert [n for n in paged.notes if "paging needs CUDA" in n] == [
        "train.optim=paged_adamw_8bit: paging needs CUDA; on this CPU bitsandbytes runs the "
        "same optimizer unpaged (same update, its state in ordinary memory)"
    ]
    assert not [n for n in plain.notes if "paging" in n]
    assert _log(tmp_path / "paged") == _log(tmp_path / "plain")  # the same steps, bit for bit
    assert paged.training.global_step == 3


def test_pin_memory_is_off_without_a_gpu_and_workers_pass_through(tiny_model_dir, tmp_path):
    """Pinned host memory only speeds up copies to a GPU: on the CPU path (use_cpu)
    transformers turns it off even when asked (torch would warn and ignore it)."""
    assert not torch.cuda.is_available()  # this test describes the CPU path
    data = tiny_run_config(tiny_model_dir)
    data["train"].update(dataloader_pin_memory=True, dataloader_num_workers=2)
    args = recipe.training_arguments(TuneConfig.from_dict(data), tmp_path, progress=False)
    assert args.use_cpu and args.dataloader_pin_memory is False
    assert args.dataloader_num_workers == 2


def test_data_loader_workers_give_the_same_losses_and_token_count(tiny_model_dir, tmp_path):
    """Batches collated in 2 worker processes: the same batches (the sampler is seeded in the
    main process), so the same loss curve; tokens are counted where training happens."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. torch's pin_memory-without-GPU
        warnings.filterwarnings("ignore", message=".*autograd kernel was not registered.*")
        two = _run(tiny_model_dir, tmp_path / "w2", dataloader_num_workers=2)
    zero = _run(tiny_model_dir, tmp_path / "w0")
    assert _log(tmp_path / "w2") == _log(tmp_path / "w0")
    assert zero.cost.tokens == two.cost.tokens > 3 * 4 * 20  # 3 steps x 4 examples
