"""OFT (peft): its trainable count from shapes, budget matching, plain-peft round trip, bad input.

The tiny model's targets (all-linear, 2 blocks): q, k, v, o, gate, up read width 64, down_proj
width 128, so at block size b OFT trains 2 x (6 x 64 + 128) (b - 1) / 2 = 512 (b - 1), and with
n blocks 384 (64 / n - 1) + 128 (128 / n - 1).
"""

from __future__ import annotations

import json

import pytest
import torch

from spectune.errors import SpectuneError
from spectune.tuning import recipe
from spectune.tuning.config import TuneConfig
from spectune.tuning.methods import get_method
from spectune.tuning.methods.base import BuildContext, load_float_base, meta_model
from tests.conftest import tiny_run_config


def _ctx(model_dir, tmp_path, **oft) -> BuildContext:
    data = tiny_run_config(model_dir, "oft")
    data["oft"] = oft
    return BuildContext(TuneConfig.from_dict(data), model_dir, tmp_path, progress=False)


@pytest.mark.parametrize(
    ("oft", "expected"),
    [
        ({}, 512 * 31),  # the default block size, 32
        ({"oft_block_size": 8}, 512 * 7),
        ({"oft_block_size": 0, "n_blocks": 4}, 384 * 15 + 128 * 31),
    ],
)
def test_trainable_count_formula_is_peft_count(oft, expected, tiny_model_dir, tmp_path):
    """in (b - 1) / 2 per target, from the shapes alone, is what peft's OFT trains."""
    ctx = _ctx(tiny_model_dir, tmp_path, **oft)
    method = get_method("oft")
    assert method.trainable_count(ctx, meta_model(tiny_model_dir)) == expected
    built = recipe.build_model(method, ctx)
    peft_count = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    assert peft_count == built.trainable == expected
    trained = [n for n, p in built.model.named_parameters() if p.requires_grad]
    assert len(trained) == 14 and all(".oft_R.default." in n for n in trained)  # one per target


@pytest.mark.parametrize(
    ("n", "overrides", "count"),
    [
        (15_000, ["oft.oft_block_size=32", "oft.n_blocks=0"], 15_872),  # b=16: 7,680
        (10_000, ["oft.oft_block_size=0", "oft.n_blocks=4"], 9_728),  # b=16: 7,680
        (32_768, ["oft.oft_block_size=64", "oft.n_blocks=0"], 32_256),  # LoRA r=4's count
        (1_000, ["oft.oft_block_size=0", "oft.n_blocks=32"], 768),  # b=2: 512
    ],
)
def test_match_budget_picks_the_nearest_feasible_setting(
    n, overrides, count, tiny_model_dir, tmp_path
):
    method = get_method("oft")
    ctx = _ctx(tiny_model_dir, tmp_path)
    assert method.match_budget(ctx, n) == overrides
    data = tiny_run_config(tiny_model_dir, "oft")
    data["oft"] = {k.split(".")[1]: int(v) for k, v in (o.split("=") for o in overrides)}
    matched = BuildContext(TuneConfig.from_dict(data), tiny_model_dir, tmp_path)
    assert method.trainable_count(matched, meta_model(tiny_model_dir)) == count


def test_match_budget_says_when_no_setting_is_close(tiny_model_dir, tmp_path):
    with pytest.raises(
        SpectuneError, match=r"cannot train about 1,000,000 .*oft\.oft_block_size=64, trains 32,256"
    ):
        get_method("oft").match_budget(_ctx(tiny_model_dir, tmp_path), 1_000_000)


def test_adapter_round_trips_through_plain_peft(tiny_model_dir, tmp_path, smol_tokenizer):
    """A short run's adapter, loaded by plain peft on the original base, gives the trained
    model's logits; merge_and_unload gives them too, and its weights minus the base are the
    updates the spectra analyze."""
    from peft import PeftModel

    data = tiny_run_config(tiny_model_dir, "oft", oft__oft_block_size=16)
    data["oft"]["use_cayley_neumann"] = False  # the exact Cayley transform
    run = recipe.setup(TuneConfig.from_dict(data), out=tmp_path / "run", progress=False)
    recipe.prepare_training(run)
    recipe.build(run)
    recipe.train(run)
    recipe.save(run)
    adapter = run.out / "adapter"
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["peft_type"] == "OFT" and saved["oft_block_size"] == 16 and saved["r"] == 0

    ids = torch.tensor([smol_tokenizer("The cat sat on the mat.")["input_ids"]])
    base = load_float_base(tiny_model_dir).eval()
    with torch.no_grad():
        trained = run.built.model.eval()(ids).logits
        plain = PeftModel.from_pretrained(base, adapter).eval()
        assert not torch.allclose(trained, load_float_base(tiny_model_dir)(ids).logits, atol=1e-3)
        torch.testing.assert_close(plain(ids).logits, trained, rtol=1e-4, atol=1e-4)
        merged = plain.merge_and_unload()
        torch.testing.assert_close(merged(ids).logits, trained, rtol=1e-4, atol=1e-4)

    deltas = get_method("oft").spectra(run.built, run.context, adapter).source
    weights, original = dict(merged.named_parameters()), load_float_base(tiny_model_dir)
    assert len(deltas) == 14
    for name, p in original.named_parameters():
        if name in deltas:
            torch.testing.assert_close(deltas[name], weights[name] - p, rtol=1e-4, atol=1e-5)
    assert max(d.abs().max().item() for d in deltas.values()) > 1e-4  # it trained


@pytest.mark.parametrize(
    ("oft", "message"),
    [
        ({"oft_block_size": 24}, r"oft\.oft_block_size=24 does not divide the input width 64, "
                                 r"128 .*feasible: 2, 4, 8, 16, 32, 64$"),
        ({"oft_block_size": 0, "n_blocks": 3}, r"oft\.n_blocks=3 .*feasible: 2, 4, 8, 16, 32$"),
        ({"oft_block_size": 0, "n_blocks": 64}, r"oft\.n_blocks=64 does not divide the input "
                                                r"width 64 .*into blocks of 2 or more"),
    ],
)  # fmt: skip
def test_infeasible_blocks_are_refused_naming_the_feasible(oft, message, tiny_model_dir, tmp_path):
    ctx = _ctx(tiny_model_dir, tmp_path, **oft)
    method = get_method("oft")
    with pytest.raises(SpectuneError, match=message):
        method.trainable_count(ctx, meta_model(tiny_model_dir))
    with pytest.raises(SpectuneError, match=message):
        method.build(ctx, load_float_base(tiny_model_dir))


@pytest.mark.parametrize(
    ("oft", "message"),
    [
        ({"oft_block_size": 16, "n_blocks": 4}, "set exactly one of oft.oft_block_size and"),
        ({"oft_block_size": 0}, "set exactly one of oft.oft_block_size and"),
        ({"module_dropout": 1.0}, r"oft\.module_dropout must be in \[0, 1\)"),
        ({"eps": 0}, r"oft\.eps must be > 0"),
        ({"coft": "yes"}, "oft.coft must be true or false"),
        ({"oft_block_size": -2}, r"oft\.oft_block_size must be >= 0"),
    ],
)
def test_bad_oft_settings_are_refused(oft, message, tiny_model_dir, tmp_path):
    with pytest.raises(SpectuneError, match=message):
        _ctx(tiny_model_dir, tmp_path, **oft)


def _saved_per_token(model, seqs=(32, 96)) -> float:
    """Bytes autograd keeps for backward per token: the slope between two sequence lengths
    (what is kept per matrix, the rotations, cancels out; each storage counted once)."""
    sizes = []
    for seq in seqs:
        seen: dict[int, int] = {}

        def pack(t, seen=seen):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        ids = torch.arange(seq).unsqueeze(0) + 100
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids).logits.sum()
        sizes.append(sum(seen.values()))
    return (sizes[1] - sizes[0]) / (seqs[1] - seqs[0])


def test_memory_estimate_follows_what_autograd_keeps(tiny_model_dir, tmp_path):
    """OFT keeps per token what LoRA without dropout keeps, less LoRA's r per adapted matrix;
    the estimate says the same, and counts what peft builds."""
    from spectune.tuning.scale.memory import estimate_memory

    oft = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, "oft"))
    lora = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, "lora"))  # r=4, no dropout
    built = {
        c.method: recipe.build_model(
            get_method(c.method), BuildContext(c, tiny_model_dir, tmp_path)
        )
        for c in (oft, lora)
    }
    measured = {m: _saved_per_token(b.model) for m, b in built.items()}
    assert measured["lora"] - measured["oft"] == 4 * 4 * 14  # r float32 elements x 14 targets
    plans = {c.method: estimate_memory(tiny_model_dir, c, batch=1, seq=64) for c in (oft, lora)}
    assert plans["lora"].activations_full - plans["oft"].activations_full == 64 * 4 * 4 * 14
    assert plans["oft"].trainable == built["oft"].trainable == 512 * 31
    assert plans["oft"].buffers == 4 * 5 * 2 * (6 * 64 + 128) * 32  # 5 x the dense blocks


def test_bf16_base_keeps_float32_rotations(tiny_model_dir, tmp_path, smol_tokenizer):
    data = tiny_run_config(tiny_model_dir, "oft", model_dtype="bfloat16")
    ctx = BuildContext(TuneConfig.from_dict(data), tiny_model_dir, tmp_path, progress=False)
    built = recipe.build_model(get_method("oft"), ctx)
    assert {p.dtype for p in built.model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in built.model.parameters() if not p.requires_grad} == {torch.bfloat16}
    ids = torch.tensor([smol_tokenizer("The cat sat.")["input_ids"]])
    assert torch.isfinite(built.model(ids).logits).all()
