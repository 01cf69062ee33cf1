"""FROG end to end on the embedded SmolLM2-135M-Instruct (slow)."""

from __future__ import annotations

import pytest
import torch

from spectune.tuning.methods.frog import (
    FrogConfig,
    apply_frog,
    load_frog,
    merge_frog,
    plan_frog,
    save_frog,
)
from spectune.tuning.methods.frog.model import WEIGHTS_NAME

pytestmark = [pytest.mark.slow, pytest.mark.real_weights]

TEXT = [
    "The capital of France is Paris, a city on the Seine.",
    "Paris is the capital and largest city of France.",
]


def _answer(model, tok) -> str:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_frog_train_save_load_merge_on_smollm2(tmp_path):
    from spectune.models.loading import load_default_model

    model, tok = load_default_model()
    batch = tok(TEXT, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        base_logits = model(**batch).logits

    plan = plan_frog(model, FrogConfig(budget=0.01, seed=0))
    assert len(plan.table) == 210 and plan.total_trainable == 1_061_683
    model = apply_frog(model, plan)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, base_logits)  # init_scale = 0: no change

    params = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in params) == 1_061_683
    opt = torch.optim.AdamW(params, lr=1e-3)
    model.train()
    losses = []
    for _ in range(3):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    state_numel = sum(t.numel() for s in opt.state.values() for t in s.values() if t.ndim)
    assert state_numel == 2 * 1_061_683  # Adam's two moments, only for the deltas

    model.eval()
    with torch.no_grad():
        tuned_logits = model(**batch).logits
    assert not torch.equal(tuned_logits, base_logits)
    out = save_frog(model, tmp_path / "adapter")
    # int32 index + float32 value per trainable weight, plus a small header
    assert (out / WEIGHTS_NAME).stat().st_size < 1_061_683 * 8 + 64_000

    fresh, _ = load_default_model()
    loaded = load_frog(fresh, out)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, tuned_logits)
    merged = merge_frog(loaded)
    with torch.no_grad():
        assert torch.equal(merged(**batch).logits, tuned_logits)
    assert "Paris" in _answer(merged, tok)
    merged.save_pretrained(tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").is_file()
