"""FROG -> peft SHiRA export: plain peft loads it and merges it exactly like merge_frog."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from safetensors.torch import load_file

from spectune.errors import SpectuneError
from spectune.tuning.methods.frog import (
    FrogConfig,
    apply_frog,
    frog_modules,
    merge_frog,
    plan_frog,
    save_frog_as_shira,
    shira_export_plan,
)
from spectune.tuning.methods.frog.peft_export import CONFIG_NAME, WEIGHTS_NAME

peft = pytest.importorskip("peft")


def _trained_frog(model, tokens, budget: float = 0.05):
    """FROG with guided noise, three AdamW steps, then a random nudge of every delta."""
    model = apply_frog(model, FrogConfig(budget=budget, noise_scale=0.02, seed=3))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        model(tokens, labels=tokens).loss.backward()
        opt.step()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in params:
            p.add_(0.01 * torch.randn(p.shape, generator=gen).to(p.dtype))
    return model.eval()


def _snapshot(model) -> dict[str, torch.Tensor]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state.update({f"{n}.delta": m.delta.detach().clone() for n, m in frog_modules(model).items()})
    return state


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_export_loads_in_plain_peft_and_merges_like_merge_frog(make_llama, tokens, tmp_path, dtype):
    model = _trained_frog(make_llama().to(dtype), tokens)
    before = _snapshot(model)
    plan = shira_export_plan(model)
    out = save_frog_as_shira(model, tmp_path / "shira")
    # the model is only read
    after = _snapshot(model)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert len(frog_modules(model)) == 14 and not model.training

    # the files: (2, r(N+M)) int32 row-major positions, values aligned with them
    tensors = load_file(out / WEIGHTS_NAME)
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["peft_type"] == "SHIRA" and config["r"] == plan.r and config["inference_mode"]
    assert config["mask_type"] == "frog" and sorted(config["target_modules"]) == sorted(
        frog_modules(model)
    )
    assert len(tensors) == 2 * len(plan.matrices)
    for name, layer in frog_modules(model).items():
        pos = tensors[f"base_model.model.{name}.shira_indices"]
        val = tensors[f"base_model.model.{name}.shira_weight"]
        n_out, n_in = layer.weight.shape
        assert pos.dtype == torch.int32 and tuple(pos.shape) == (2, plan.r * (n_out + n_in))
        flat = pos[0].long() * n_in + pos[1].long()
        assert bool((flat[1:] > flat[:-1]).all())  # row-major, no repeats
        assert torch.isin(layer.indices, flat).all()
        dense = torch.zeros(n_out * n_in, dtype=val.dtype).index_put_((flat,), val)
        assert torch.equal(dense.view(n_out, n_in), layer.delta_weight())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shira = peft.PeftModel.from_pretrained(make_llama().to(dtype), str(out))
    assert not [w for w in caught if "mask" in str(w.message).lower()]
    shira.eval()
    with torch.no_grad():
        unmerged_logits = shira(tokens).logits
    peft_merged = shira.merge_and_unload()
    with torch.no_grad():
        peft_logits = peft_merged(tokens).logits
    frog_merged = merge_frog(model)
    with torch.no_grad():
        frog_logits = frog_merged(tokens).logits
    peft_state = {k: v.detach() for k, v in peft_merged.state_dict().items()}
    frog_state = {k: v.detach() for k, v in frog_merged.state_dict().items()}
    assert _max_diff(peft_state, frog_state) <= 1e-7
    assert all(torch.equal(peft_state[k], frog_state[k]) for k in frog_state)  # bitwise
    assert torch.equal(peft_logits, frog_logits)
    torch.testing.assert_close(unmerged_logits, frog_logits, rtol=0, atol=1e-6)


def test_trainable_reload_trains_the_padding_too(make_llama, tokens, tmp_path):
    model = _trained_frog(make_llama(), tokens)
    plan = shira_export_plan(model)
    out = save_frog_as_shira(model, tmp_path / "shira")
    shira = peft.PeftModel.from_pretrained(make_llama(), str(out), is_trainable=True)
    trainable = sum(p.numel() for p in shira.parameters() if p.requires_grad)
    assert trainable == plan.shira_entries > plan.frog_entries


def test_exported_folder_loads_in_a_fresh_process_without_spectune(make_llama, tokens, tmp_path):
    make_llama().save_pretrained(tmp_path / "base")
    model = _trained_frog(make_llama(), tokens)
    save_frog_as_shira(model, tmp_path / "shira")
    expected = {k: v.detach().clone() for k, v in merge_frog(model).state_dict().items()}
    script = textwrap.dedent(
        """
        import sys
        from peft import PeftModel
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(sys.argv[1])
        merged = PeftModel.from_pretrained(base, sys.argv[2]).merge_and_unload()
        assert not [m for m in sys.modules if m.split(".")[0] == "spectune"], "spectune loaded"
        save_file({k: v.contiguous() for k, v in merged.state_dict().items()}, sys.argv[3])
        """
    )
    args = [str(tmp_path / p) for p in ("base", "shira", "merged.safetensors")]
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    merged = load_file(tmp_path / "merged.safetensors")
    assert merged.keys() <= expected.keys()  # the saved file drops the tied/duplicate entries
    assert all(torch.equal(merged[k], expected[k]) for k in merged)


def test_export_refuses_when_one_r_overflows_a_matrix(make_llama, tmp_path):
    model = apply_frog(make_llama(), FrogConfig(budget=0.9))
    plan = shira_export_plan(model)
    assert not plan.fits and plan.too_big
    row = next(r for r in plan.matrices if r["name"] == plan.too_big[0])
    assert row["shira_entries"] > row["size"]
    with pytest.raises(SpectuneError) as err:
        save_frog_as_shira(model, tmp_path / "shira")
    message = str(err.value)
    assert plan.too_big[0] in message and f"r={plan.r}" in message
    assert f"{row['shira_entries']} > {row['size']}" in message and "save_frog()" in message
    assert not (tmp_path / "shira").exists()


def test_export_plan_overhead_on_a_planted_plan(make_llama, tmp_path):
    model = make_llama()
    plan = plan_frog(model, FrogConfig(target_modules=["q_proj", "k_proj"]))
    gen = torch.Generator().manual_seed(0)
    planted = {  # q_proj (32, 32): N+M = 64; k_proj (16, 32): N+M = 48
        "model.layers.0.self_attn.q_proj": 100,  # ceil(100 / 64) = 2
        "model.layers.0.self_attn.k_proj": 150,  # ceil(150 / 48) = 4  <- sets r
        "model.layers.1.self_attn.q_proj": 0,
        "model.layers.1.self_attn.k_proj": 48,  # 1
    }
    assert set(planted) == set(plan.indices)
    plan.indices = {
        name: torch.randperm(math.prod(plan.shapes[name]), generator=gen)[:k].sort().values
        for name, k in planted.items()
    }
    model = apply_frog(model, plan)
    with torch.no_grad():
        for layer in frog_modules(model).values():
            layer.delta.copy_(torch.randn(layer.delta.shape, generator=gen))

    export = shira_export_plan(model)
    assert export.r == 4 and export.fits
    assert export.frog_entries == 298
    assert export.shira_entries == 2 * 4 * 64 + 2 * 4 * 48 == 896
    assert export.overhead == pytest.approx(896 / 298 - 1)
    assert [r["shira_entries"] for r in export.matrices] == [256, 192, 256, 192]
    assert json.loads(json.dumps(export.to_dict()))["r"] == 4

    tensors = load_file(save_frog_as_shira(model, tmp_path / "shira") / WEIGHTS_NAME)
    empty = "base_model.model.model.layers.1.self_attn.q_proj"
    assert torch.equal(tensors[empty + ".shira_weight"], torch.zeros(256))
    flat = tensors[empty + ".shira_indices"].long()
    assert torch.equal(flat[0] * 32 + flat[1], torch.arange(256))  # the lowest free positions
    name = "model.layers.0.self_attn.k_proj"
    pos = tensors[f"base_model.model.{name}.shira_indices"].long()
    flat = pos[0] * 32 + pos[1]
    free = torch.ones(512, dtype=torch.bool)
    free[plan.indices[name]] = False
    padding = flat[~torch.isin(flat, plan.indices[name])]
    assert torch.equal(padding, torch.nonzero(free).reshape(-1)[:42])


def test_export_into_an_existing_folder_replaces_only_the_adapter(make_llama, tokens, tmp_path):
    out = tmp_path / "shira"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / CONFIG_NAME).write_text("{}")
    model = _trained_frog(make_llama(), tokens)
    assert save_frog_as_shira(model, out) == out
    assert (out / "notes.txt").read_text() == "keep me"
    assert json.loads((out / CONFIG_NAME).read_text())["peft_type"] == "SHIRA"
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME, "notes.txt"])


def test_export_needs_frog_layers(make_llama, tmp_path):
    with pytest.raises(SpectuneError, match="no FROG layers"):
        save_frog_as_shira(make_llama(), tmp_path / "shira")
    with pytest.raises(SpectuneError, match="no FROG layers"):
        shira_export_plan(make_llama())


class _Nested(torch.nn.Module):
    """``proj`` and ``block.proj``: peft's suffix match of 'proj' would pick both."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(8, 8)
        self.block = torch.nn.Module()
        self.block.proj = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.proj(self.proj(x))


def test_ambiguous_names_become_an_exact_regex(tmp_path):
    model = apply_frog(_Nested(), FrogConfig(budget=0.25, target_modules="proj"))
    with torch.no_grad():
        model.proj.delta.normal_()
    out = save_frog_as_shira(model, tmp_path / "shira")
    assert json.loads((out / CONFIG_NAME).read_text())["target_modules"] == "(?:proj)"
    shira = peft.PeftModel.from_pretrained(_Nested(), str(out))
    assert type(shira.base_model.model.block.proj) is torch.nn.Linear
    merged = shira.merge_and_unload()
    assert torch.equal(merged.proj.weight, merge_frog(model).proj.weight)
