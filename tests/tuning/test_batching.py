"""Padding-free batches: the same loss and gradients as padded ones, the check on the model,
the fallback, and the run that records them."""

from __future__ import annotations

import pytest
import torch

from spectune.data.instructions import IGNORE_INDEX, InstructionCollator
from spectune.errors import SpectuneError
from spectune.models.forward import decoder_and_head, labelled_nll, packing_works
from spectune.tuning.batching import LENGTH_GROUPED, PADDED, PADDING_FREE, choose_batching
from tests.conftest import tiny_llama

PAD = 0


def _features():
    g = torch.Generator().manual_seed(1)
    out = []
    for n, prompt in ((9, 4), (5, 2), (13, 7)):  # uneven lengths: the padded batch pads two
        ids = torch.randint(1, 97, (n,), generator=g).tolist()
        labels = [IGNORE_INDEX] * prompt + ids[prompt:]
        out.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * n})
    return out


def test_the_flattened_batch_is_one_row_with_restarting_positions():
    batch = InstructionCollator(PAD).flattened()(_features())
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].shape == (1, 27)
    assert batch["position_ids"][0].tolist() == [*range(9), *range(5), *range(13)]
    starts = [0, 9, 14]
    assert all(batch["labels"][0, s] == IGNORE_INDEX for s in starts)
    padded = InstructionCollator(PAD)(_features())
    assert padded["input_ids"].shape == (3, 13)  # 39 positions for 27 tokens
    with pytest.raises(SpectuneError, match="padding-free batch takes examples without padding"):
        InstructionCollator(PAD).flattened()([{"input_ids": [1, 2], "labels": [1, 2],
                                                "attention_mask": [1, 0]}])  # fmt: skip


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_gives_the_padded_loss_and_gradients(attn):
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(97)
    model.config._attn_implementation = attn
    model = get_peft_model(model, LoraConfig(r=4, lora_dropout=0.0, target_modules="all-linear",
                                             init_lora_weights="gaussian"))  # fmt: skip
    model.train()
    parts = decoder_and_head(model)
    collator = InstructionCollator(PAD)
    results = []
    for batch in (collator(_features()), collator.flattened()(_features())):
        model.zero_grad()
        nll, n = labelled_nll(parts, batch["input_ids"], batch.get("attention_mask"),
                              batch["labels"], batch.get("position_ids"))  # fmt: skip
        (nll / n).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
        results.append((nll.item(), n, grads))
    (padded, n_p, g_p), (flat, n_f, g_f) = results
    assert n_p == n_f == (9 - 4) + (5 - 2) + (13 - 7)
    assert flat == pytest.approx(padded, rel=1e-5)
    assert g_p.keys() == g_f.keys() and len(g_p) == 2 * 14
    for k in g_p:
        torch.testing.assert_close(g_f[k], g_p[k], rtol=1e-4, atol=1e-6, msg=k)


def test_the_check_on_the_model_and_the_fallback(monkeypatch):
    from spectune.tuning.objectives import get_objective

    model = tiny_llama(97)
    assert packing_works(model)
    assert not model.training  # its mode is restored
    sft, collator = get_objective("sft"), InstructionCollator(PAD)
    assert choose_batching("auto", sft, collator, model) == (PADDING_FREE, "")
    assert choose_batching("padded", sft, collator, model) == (PADDED, "")
    assert choose_batching("length_grouped", sft, collator, model) == (LENGTH_GROUPED, "")
    # a model whose forward drops the position ids mixes the examples: no padding-free
    forward = model.forward
    monkeypatch.setattr(model, "forward",
                        lambda input_ids, **kw: forward(input_ids=input_ids))  # fmt: skip
    assert not packing_works(model)
    assert choose_batching("auto", sft, collator, model) == (PADDED, "")  # as before
    mode, why = choose_batching("padding_free", sft, collator, model)
    assert mode == LENGTH_GROUPED
    assert "padding_free is not possible here: this model's attention" in why
    assert "grouped by length instead (data.batching: padded for random batches)" in why
    # an objective whose loss takes padded batches only
    mode, why = choose_batching("padding_free", get_objective("distill"), collator, tiny_llama(97))
    assert mode == LENGTH_GROUPED and "the distill objective takes padded batches only" in why
    assert choose_batching("auto", get_objective("distill"), collator, model) == (PADDED, "")


def test_a_bad_batching_value_names_the_choices():
    from spectune.tuning.sections import DataConfig

    with pytest.raises(SpectuneError, match="data.batching"):
        DataConfig(batching="packed")


@pytest.mark.parametrize("mode", ["padded", "length_grouped"])
def test_padded_runs_record_their_padding_and_the_same_examples(tiny_model_dir, tmp_path, mode):
    from spectune.tuning.config import TuneConfig
    from spectune.tuning.recipe import tune
    from tests.conftest import tiny_run_config

    data = tiny_run_config(tiny_model_dir)
    data["data"]["batching"] = mode
    m = tune(TuneConfig.from_dict(data), out=tmp_path / mode, progress=False).metrics
    assert m.training.batching == mode
    assert m.cost.positions > m.cost.tokens  # the task set's examples differ in length
    assert 0 < m.cost.padded_fraction == pytest.approx(1 - m.cost.tokens / m.cost.positions)
    data["data"]["batching"] = "padding_free"
    free = tune(TuneConfig.from_dict(data), out=tmp_path / "free", progress=False).metrics
    assert free.training.batching == "padding_free" and free.cost.padded_fraction == 0
    if mode == "padded":  # the same batches in the same order: the same tokens and loss
        assert free.cost.tokens == m.cost.tokens == free.cost.positions < m.cost.positions
        assert free.training.first_loss == pytest.approx(m.training.first_loss, rel=1e-4)


def test_the_check_holds_where_rounding_exceeds_the_float32_tolerance(monkeypatch):
    """A 4-bit base computing in bf16 rounds packed and separate logits apart by more than
    1e-3 though its attention keeps the examples apart (SmolLM2's QLoRA: the check failed and
    the run fell back to length-grouped batches): packed is then compared with how far reading
    the second example after the first moves it. Rounding is stood in for by noise of 0.01 on
    every logit; a model that mixes the examples still fails."""
    model = tiny_llama(97)
    forward = model.forward
    g = torch.Generator().manual_seed(0)

    def rounded(*args, **kw):
        out = forward(*args, **kw)
        out.logits = out.logits + 0.01 * torch.randn(out.logits.shape, generator=g)
        return out

    monkeypatch.setattr(model, "forward", rounded)
    assert packing_works(model)
    monkeypatch.setattr(model, "forward",
                        lambda input_ids, **kw: rounded(input_ids=input_ids))  # fmt: skip
    assert not packing_works(model)
