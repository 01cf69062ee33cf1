"""plan_frog / apply_frog / save_frog / load_frog / merge_frog on a tiny random Llama."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from spectune.errors import SpectuneError
from spectune.tuning.methods.frog import (
    FrogConfig,
    allocate,
    apply_frog,
    frobenius_importance,
    frog_modules,
    load_frog,
    merge_frog,
    plan_frog,
    relevance,
    save_frog,
    set_frog_step,
    total_trainable,
)
from spectune.tuning.methods.frog.layer import name_seed
from spectune.tuning.methods.frog.model import CONFIG_NAME, WEIGHTS_NAME, find_targets

LINEAR_KINDS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _weights(model, names):
    return {n: model.get_submodule(n).weight.detach().clone() for n in names}


def test_all_linear_targets_exclude_the_head(tiny_llama):
    names = find_targets(tiny_llama, FrogConfig())
    assert len(names) == 14 and "lm_head" not in names
    assert [n.rsplit(".", 1)[-1] for n in names[:7]] == LINEAR_KINDS
    assert find_targets(tiny_llama, FrogConfig(target_modules=["q_proj", "v_proj"])) == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ]
    regex = FrogConfig(target_modules=r".*layers\.1\.mlp\..*_proj", exclude_modules=["up_proj"])
    assert find_targets(tiny_llama, regex) == [
        "model.layers.1.mlp.gate_proj",
        "model.layers.1.mlp.down_proj",
    ]


def test_per_matrix_plan_budget_and_top_scores(tiny_llama):
    config = FrogConfig(budget=0.05)
    plan = plan_frog(tiny_llama, config)
    t = plan.table
    names = list(t["name"])
    W = _weights(tiny_llama, names)
    sizes = np.array([W[n].numel() for n in names])
    assert plan.total_weights == sizes.sum() == 18432
    assert plan.total_trainable == total_trainable(0.05, 18432) == 922
    assert int(t["trainable"].sum()) == 922
    norms = np.array([float(torch.linalg.matrix_norm(W[n].double())) for n in names])
    np.testing.assert_allclose(t["frobenius"], norms, rtol=1e-10)
    np.testing.assert_allclose(t["importance"], frobenius_importance(norms), rtol=1e-10)
    assert t["trainable"].tolist() == allocate(922, norms / norms.sum(), sizes).tolist()
    np.testing.assert_allclose(t["percent"], 100 * t["trainable"] / sizes)
    assert t["layer"].tolist() == [0] * 7 + [1] * 7
    assert t["shape"][0] == "32x32" and t["shape"][1] == "16x32"
    for n, k in zip(names, t["trainable"], strict=True):
        S = relevance(W[n]).reshape(-1)
        idx = plan.indices[n]
        assert idx.numel() == k and torch.equal(idx, idx.sort().values)
        # the selected entries are the k largest scores (ties have probability zero)
        assert float(S[idx].min()) >= float(S.sort(descending=True).values[k - 1])
        row = t[t["name"] == n].iloc[0]
        assert row["score_sum"] == pytest.approx(float(S[idx].double().sum()), rel=1e-6)


def test_global_plan_equals_brute_force_top_k(tiny_llama):
    plan = plan_frog(tiny_llama, FrogConfig(budget=0.03, selection="global"))
    names = list(plan.table["name"])
    W = _weights(tiny_llama, names)
    scores = torch.cat([relevance(W[n]).reshape(-1) for n in names])  # all S at once: reference
    k = total_trainable(0.03, scores.numel())
    top = torch.topk(scores, k).indices.sort().values
    offsets = np.cumsum([0] + [W[n].numel() for n in names])
    got = torch.cat([plan.indices[n] + int(offsets[i]) for i, n in enumerate(names)])
    assert torch.equal(got.sort().values, top)
    t = plan.table
    assert int(t["trainable"].sum()) == k
    sums = np.array(
        [
            float(
                scores[offsets[i] : offsets[i + 1]][
                    got[(got >= offsets[i]) & (got < offsets[i + 1])] - offsets[i]
                ]
                .double()
                .sum()
            )
            for i in range(len(names))
        ]
    )
    np.testing.assert_allclose(t["score_sum"], sums, rtol=1e-6)
    np.testing.assert_allclose(t["importance"], sums / sums.sum(), rtol=1e-6)


def test_global_streaming_with_many_prunes(make_llama):
    """A budget much smaller than a matrix forces many cut-backs of the candidate set."""
    model = make_llama(seed=3)
    plan = plan_frog(model, FrogConfig(budget=0.002, selection="global"))
    names = list(plan.table["name"])
    scores = [relevance(model.get_submodule(n).weight).reshape(-1) for n in names]
    k = plan.total_trainable
    threshold = torch.cat(scores).sort(descending=True).values[k - 1]
    for n, s in zip(names, scores, strict=True):
        assert torch.equal(plan.indices[n], torch.nonzero(s >= threshold).reshape(-1))


def test_apply_trains_only_deltas_and_one_step_changes_only_selected(tiny_llama, tokens):
    base = copy.deepcopy(tiny_llama)
    plan = plan_frog(tiny_llama, FrogConfig(budget=0.05))
    model = apply_frog(tiny_llama, plan)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.endswith(".delta") for n, _ in trainable) and len(trainable) == 14
    assert sum(p.numel() for _, p in trainable) == plan.total_trainable
    # starts exactly at the pretrained model
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, base(tokens).logits, rtol=0, atol=0)
    model.train()
    opt = torch.optim.AdamW([p for _, p in trainable], lr=1e-2)
    model(tokens, labels=tokens).loss.backward()
    opt.step()
    state = opt.state_dict()["state"]
    assert sum(v.numel() for s in state.values() for v in s.values() if v.ndim) == 2 * 922
    merged = merge_frog(model)
    base_sd, merged_sd = base.state_dict(), merged.state_dict()
    assert base_sd.keys() == merged_sd.keys()
    for key, before in base_sd.items():
        diff = torch.nonzero((merged_sd[key] != before).reshape(-1)).reshape(-1)
        module = key.removesuffix(".weight")
        if module in plan.indices:
            assert torch.equal(diff, plan.indices[module]), key
        else:
            assert diff.numel() == 0, key


def test_merge_equals_frog_forward_and_save_pretrained(tiny_llama, tokens, tmp_path):
    plan = plan_frog(tiny_llama, FrogConfig(budget=0.1, init_scale=0.5, seed=4))
    model = apply_frog(tiny_llama, plan)
    model.eval()
    with torch.no_grad():
        frog_logits = model(tokens).logits
    merged = merge_frog(model)
    assert not frog_modules(merged) and not hasattr(merged, "frog_config")
    assert all(type(m) is nn.Linear for m in merged.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        assert torch.equal(merged(tokens).logits, frog_logits)
    merged.save_pretrained(tmp_path / "merged")
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, frog_logits)


def test_init_scale_gives_seeded_scaled_relevance_noise(tiny_llama):
    plan = plan_frog(tiny_llama, FrogConfig(budget=0.05, init_scale=0.3, seed=11))
    again = plan_frog(tiny_llama, FrogConfig(budget=0.05, init_scale=0.3, seed=11))
    name = "model.layers.1.mlp.up_proj"
    S = relevance(tiny_llama.get_submodule(name).weight).reshape(-1)[plan.indices[name]]
    gen = torch.Generator().manual_seed(name_seed(11, name, "init"))
    eps = torch.randn(S.shape, generator=gen)
    torch.testing.assert_close(plan.init_values[name], 0.3 * S * eps, rtol=1e-6, atol=0)
    assert torch.equal(plan.init_values[name], again.init_values[name])
    assert not plan_frog(tiny_llama, FrogConfig(budget=0.05)).init_values  # 0: no init values


def test_save_load_round_trip_exact_and_file_holds_only_indices_values(
    tiny_llama, tokens, tmp_path, make_llama
):
    model = apply_frog(tiny_llama, FrogConfig(budget=0.05, init_scale=1.0))
    model.eval()
    with torch.no_grad():
        expected = model(tokens).logits
    out = save_frog(model, tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == [WEIGHTS_NAME, CONFIG_NAME]
    from safetensors import safe_open

    with safe_open(str(out / WEIGHTS_NAME), "pt") as fh:
        keys = sorted(fh.keys())
        tensors = {k: fh.get_tensor(k) for k in keys}
        header_len = int.from_bytes((out / WEIGHTS_NAME).read_bytes()[:8], "little")
    assert len(keys) == 28
    assert all(k.endswith((".frog_indices", ".frog_values")) for k in keys)
    assert all(t.dtype == torch.int32 for k, t in tensors.items() if k.endswith("indices"))
    assert all(t.dtype == torch.float32 for k, t in tensors.items() if k.endswith("values"))
    # 4 bytes index + 4 bytes value per trainable weight, plus the JSON header
    assert (out / WEIGHTS_NAME).stat().st_size == 8 + header_len + 922 * (4 + 4)
    meta = json.loads((out / CONFIG_NAME).read_text())
    assert meta["total_trainable"] == 922 and meta["config"]["budget"] == 0.05

    fresh = make_llama()  # same seed: the same base weights
    loaded = load_frog(fresh, out)
    assert not any(p.requires_grad for p in loaded.parameters())
    for name, layer in frog_modules(model).items():
        other = loaded.get_submodule(name)
        assert torch.equal(other.indices, layer.indices)
        assert torch.equal(other.delta, layer.delta)
    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, expected)
    # trainable reload continues training
    again = load_frog(make_llama(), out, is_trainable=True)
    assert sum(p.numel() for p in again.parameters() if p.requires_grad) == 922


def test_save_overwrites_atomically_and_keeps_other_files(tiny_llama, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "README.md").write_text("notes")
    model = apply_frog(tiny_llama, FrogConfig(budget=0.05))
    save_frog(model, folder)
    save_frog(model, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", WEIGHTS_NAME, CONFIG_NAME]


def test_load_onto_other_shapes_names_the_tensor(tiny_llama, tmp_path, make_llama):
    save_frog(apply_frog(tiny_llama, FrogConfig(budget=0.05)), tmp_path / "a")
    wider = make_llama(hidden=48)
    with pytest.raises(SpectuneError) as info:
        load_frog(wider, tmp_path / "a")
    msg = str(info.value)
    assert "model.layers.0.self_attn.q_proj.frog_indices" in msg and "(32, 32)" in msg
    assert "(48, 48)" in msg
    assert not frog_modules(wider)  # nothing was changed
    shallow = make_llama(layers=1)
    with pytest.raises(SpectuneError, match=r"model\.layers\.1\..*does not have"):
        load_frog(shallow, tmp_path / "a")


def test_load_warns_on_other_weights_of_the_same_shape(tiny_llama, tmp_path, make_llama):
    save_frog(apply_frog(tiny_llama, FrogConfig(budget=0.05)), tmp_path / "a")
    with pytest.warns(UserWarning, match="right base model"):
        load_frog(make_llama(seed=9), tmp_path / "a")


def test_load_rejects_broken_adapters(tiny_llama, tmp_path, make_llama):
    out = save_frog(apply_frog(tiny_llama, FrogConfig(budget=0.05)), tmp_path / "a")
    with pytest.raises(SpectuneError, match="does not exist"):
        load_frog(make_llama(), tmp_path / "missing")
    meta = json.loads((out / CONFIG_NAME).read_text())
    meta["config"]["budgett"] = 0.1
    (out / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(SpectuneError, match="unknown FROG config key"):
        load_frog(make_llama(), out)
    del meta["config"]["budgett"]
    meta["weights_file_bytes"] += 1
    (out / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(SpectuneError, match="different saves"):
        load_frog(make_llama(), out)
    (out / WEIGHTS_NAME).unlink()
    with pytest.raises(SpectuneError, match="missing"):
        load_frog(make_llama(), out)


def test_load_rejects_out_of_range_indices(tiny_llama, tmp_path, make_llama):
    from safetensors.torch import load_file, save_file

    out = save_frog(apply_frog(tiny_llama, FrogConfig(budget=0.05)), tmp_path / "a")
    tensors = load_file(str(out / WEIGHTS_NAME))
    key = "model.layers.0.self_attn.k_proj.frog_indices"
    tensors[key][-1] = 16 * 32  # one past the end of a 16 x 32 matrix
    save_file(tensors, str(out / WEIGHTS_NAME))
    meta = json.loads((out / CONFIG_NAME).read_text())
    meta["weights_file_bytes"] = (out / WEIGHTS_NAME).stat().st_size
    (out / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(SpectuneError, match=key + ".*outside"):
        load_frog(make_llama(), out)


def test_bad_targets(tiny_llama):
    with pytest.raises(SpectuneError) as info:
        plan_frog(tiny_llama, FrogConfig(target_modules=["qkv_proj"]))
    msg = str(info.value)
    assert "target_modules" in msg and "model.layers.*.self_attn.q_proj" in msg
    assert "lm_head" in msg
    with pytest.raises(SpectuneError, match=r"not nn.Linear: model.embed_tokens \(Embedding\)"):
        plan_frog(tiny_llama, FrogConfig(target_modules=["embed_tokens"]))
    with pytest.raises(SpectuneError, match="not nn.Linear"):
        plan_frog(tiny_llama, FrogConfig(target_modules=["mlp"]))


def test_tied_head_is_rejected(make_llama):
    model = make_llama(tie=True)
    with pytest.raises(SpectuneError, match="lm_head.weight is tied to model.embed_tokens.weight"):
        plan_frog(model, FrogConfig(target_modules=["lm_head"]))


def test_nan_weights_name_the_tensor(tiny_llama):
    with torch.no_grad():
        tiny_llama.model.layers[1].mlp.down_proj.weight[3, 4] = math.nan
    with pytest.raises(SpectuneError, match=r"model.layers.1.mlp.down_proj.weight holds 1 NaN"):
        plan_frog(tiny_llama, FrogConfig())


def test_plan_must_fit_the_model(tiny_llama, make_llama):
    plan = plan_frog(tiny_llama, FrogConfig(budget=0.05))
    with pytest.raises(SpectuneError, match="shape"):
        apply_frog(make_llama(hidden=48), plan)
    model = apply_frog(tiny_llama, plan)
    with pytest.raises(SpectuneError, match="already has FROG"):
        apply_frog(model, plan)
    with pytest.raises(SpectuneError, match="already"):
        plan_frog(model, FrogConfig())


def test_budget_rounding_to_zero(tiny_llama):
    with pytest.raises(SpectuneError, match="rounds to 0"):
        plan_frog(tiny_llama, FrogConfig(budget=1e-6))


def test_model_level_noise_train_vs_eval(tiny_llama, tokens, make_llama):
    base = make_llama()
    model = apply_frog(tiny_llama, FrogConfig(budget=0.05, noise_scale=0.05, seed=2))
    layer = model.get_submodule("model.layers.0.mlp.up_proj")
    assert layer.noise_scores.dtype == torch.float32
    assert torch.equal(
        layer.noise_scores.reshape(-1)[layer.indices], torch.zeros(layer.num_trainable)
    )
    with torch.no_grad():
        ref = base(tokens).logits
        model.eval()
        assert torch.equal(model(tokens).logits, ref)
        model.train()
        noisy = model(tokens).logits
        noisy2 = model(tokens).logits
    assert not torch.allclose(noisy, ref) and not torch.allclose(noisy, noisy2)
    twin = apply_frog(make_llama(), FrogConfig(budget=0.05, noise_scale=0.05, seed=2)).train()
    with torch.no_grad():
        assert torch.equal(twin(tokens).logits, noisy)
    half = plan_frog(
        make_llama(), FrogConfig(budget=0.05, noise_scale=0.05, score_dtype="bfloat16")
    )
    assert all(s.dtype == torch.bfloat16 for s in half.noise_scores.values())


def test_alpha_importance_with_precomputed_alphas(tiny_llama):
    names = find_targets(tiny_llama, FrogConfig())
    alphas = {n: 2.0 + 0.3 * i for i, n in enumerate(names)}  # 2.0 .. 5.9
    plan = plan_frog(tiny_llama, FrogConfig(budget=0.05, importance="alpha"), alphas=alphas)
    t = plan.table
    w = t["frobenius"].to_numpy() * np.array([alphas[n] for n in names])
    np.testing.assert_allclose(t["importance"], w / w.sum(), rtol=1e-10)
    np.testing.assert_allclose(t["alpha"], [alphas[n] for n in names])
    assert t["trainable"].tolist() == allocate(922, w / w.sum(), t["size"]).tolist()
    flat = plan_frog(
        tiny_llama, FrogConfig(budget=0.05, importance="alpha", alpha_power=0.0), alphas=alphas
    )
    np.testing.assert_allclose(flat.table["importance"], frobenius_importance(t["frobenius"]))
    with pytest.raises(SpectuneError, match="must be a number"):
        plan_frog(tiny_llama, FrogConfig(importance="alpha"), alphas=dict.fromkeys(names, "x"))


def test_alpha_importance_computed_lazily_by_the_spectral_engine(tiny_llama):
    pytest.importorskip("spectune.watch.powerlaw")
    from spectune.watch.esd import eigenvalues
    from spectune.watch.powerlaw import fit_powerlaw

    names = find_targets(tiny_llama, FrogConfig())
    by_hand = {}
    for n in names:
        by_hand[n] = float(
            fit_powerlaw(eigenvalues(tiny_llama.get_submodule(n).weight.detach())).alpha
        )
    lazy = plan_frog(tiny_llama, FrogConfig(budget=0.05, importance="alpha"))
    given = plan_frog(tiny_llama, FrogConfig(budget=0.05, importance="alpha"), alphas=by_hand)
    np.testing.assert_allclose(lazy.table["alpha"], given.table["alpha"])
    assert lazy.table["trainable"].tolist() == given.table["trainable"].tolist()


def test_plan_to_dict_is_json(tiny_llama):
    plan = plan_frog(tiny_llama, FrogConfig(budget=0.05))
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["summary"]["total_trainable"] == 922
    assert data["matrices"][0]["name"] == "model.layers.0.self_attn.q_proj"
    assert data["matrices"][0]["layer"] == 0
    assert "922/18432" in repr(plan)


def test_noise_survives_save_and_trainable_load(tiny_llama, tokens, tmp_path, make_llama):
    config = FrogConfig(budget=0.05, noise_scale=0.05, noise_decay_steps=10, seed=5)
    model = apply_frog(tiny_llama, config)
    set_frog_step(model, 3)
    model.train()
    with torch.no_grad():
        noisy = model(tokens).logits
    save_frog(model, tmp_path / "a")
    resumed = load_frog(make_llama(), tmp_path / "a", is_trainable=True)  # recomputes S
    for name, layer in frog_modules(model).items():
        torch.testing.assert_close(resumed.get_submodule(name).noise_scores, layer.noise_scores)
    set_frog_step(resumed, 3)
    resumed.train()
    with torch.no_grad():
        torch.testing.assert_close(resumed(tokens).logits, noisy, rtol=1e-5, atol=1e-5)
    inference = load_frog(make_llama(), tmp_path / "a")  # not trainable: no S, no noise
    assert all(m.noise_scores is None for m in frog_modules(inference).values())


def test_stored_weight_holds_w_plus_delta_and_base_is_exact(tiny_llama):
    original = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    model = apply_frog(tiny_llama, FrogConfig(budget=0.05, init_scale=1.0))
    for name, layer in frog_modules(model).items():
        W = original[name + ".weight"]
        assert torch.equal(layer.base_weight(), W)
        expected = W.reshape(-1).index_add(0, layer.indices, layer.delta.detach()).view(W.shape)
        assert torch.equal(layer.weight, expected)
