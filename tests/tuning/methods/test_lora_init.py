"""``lora.init``: each initialisation starts where its paper says (checked against a hand
computation on the same weights and training batches), trains, and saves an adapter that plain
peft loads on the original base with the trained model's outputs; bad inits are refused."""

from __future__ import annotations

import json

import pytest
import torch

from spectune.errors import SpectuneError
from spectune.tuning import recipe
from spectune.tuning.config import TuneConfig
from spectune.tuning.methods import get_method
from spectune.tuning.methods.base import BuildContext, load_float_base
from spectune.tuning.methods.lora_init import training_batches
from spectune.tuning.objectives.base import TrainData
from tests.conftest import tiny_run_config

LAYER = "model.layers.0.self_attn.q_proj"  # in 64, out 64


def _config(model_dir, method="lora", **lora):
    data = tiny_run_config(model_dir, method, data__n_train=16, train__max_steps=3)
    data["lora"] = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, **lora}
    return TuneConfig.from_dict(data)


def _built(model_dir, tmp_path, method="lora", **lora):
    """A run set up and built (not trained): its model at step 0."""
    run = recipe.setup(_config(model_dir, method, **lora), out=tmp_path / "run", progress=False)
    recipe.prepare_training(run)
    recipe.build(run)
    return run


def _pair(model, name=LAYER):
    """(s B A, A, B) of one adapted layer, and its base weight as the model holds it."""
    layer = model.get_submodule(f"base_model.model.{name}")
    a, b = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    return layer.scaling["default"] * b @ a, a, b, layer.base_layer.weight.detach()


def _base_weight(model_dir, name=LAYER):
    return load_float_base(model_dir).get_submodule(name).weight.detach()


def _layer_inputs(model_dir, batches, name=LAYER):
    """The inputs of the base model's layer ``name`` on ``batches``, one (tokens, in) matrix
    per forward call."""
    base = load_float_base(model_dir).eval()
    seen: list[torch.Tensor] = []
    handle = base.get_submodule(name).register_forward_hook(
        lambda m, args, out: seen.append(args[0].detach())
    )
    with torch.no_grad():
        for b in batches:
            base(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    handle.remove()
    return seen


def _same_rows(a, v):
    """Singular values of A V^T: all 1 when the rows of A and V span the same subspace."""
    a = torch.linalg.qr(a.T.double())[0].T  # orthonormal rows
    return torch.linalg.svdvals(a @ v.T.double())


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(ids).logits.float()


def _train_save_reload(run, smol_tokenizer):
    """Train the built run, save it; the adapter in plain peft on a fresh original base."""
    from peft import PeftModel

    recipe.train(run)
    recipe.save(run)
    ids = torch.tensor([smol_tokenizer("The cat sat on the mat.")["input_ids"]])
    plain = PeftModel.from_pretrained(load_float_base(run.model_dir), run.out / "adapter")
    torch.testing.assert_close(
        _logits(plain, ids), _logits(run.built.model, ids), rtol=1e-4, atol=1e-4
    )
    return json.loads((run.out / "adapter" / "adapter_config.json").read_text())


# --------------------------------------------------------------------------- each init


def test_the_batches_are_the_runs_own_training_features(tiny_model_dir, tmp_path, smol_tokenizer):
    run = _built(tiny_model_dir, tmp_path, init="gaussian", init_batches=2)
    batches = training_batches(run.context, "eva")
    assert len(batches) == 2 and [len(b["input_ids"]) for b in batches] == [4, 4]
    first = run.train_data.dataset[0]["input_ids"]
    assert batches[0]["input_ids"][0, : len(first)].tolist() == list(first)
    # gaussian: B = 0, A ~ N(0, 1/r)
    _, a, b, _ = _pair(run.built.model)
    assert not b.any() and abs(float(a.std()) - 1 / 4) < 0.03
    assert _train_save_reload(run, smol_tokenizer)["init_lora_weights"] == "gaussian"


@pytest.mark.slow
def test_pissa_starts_at_the_top_r_svd_part_of_w(tiny_model_dir, tmp_path, smol_tokenizer):
    run = _built(tiny_model_dir, tmp_path, init="pissa")
    sba, _, _, residual = _pair(run.built.model)
    w = _base_weight(tiny_model_dir)
    u, s, vh = torch.linalg.svd(w.double())
    torch.testing.assert_close(
        sba.double(), u[:, :4] @ torch.diag(s[:4]) @ vh[:4], atol=1e-4, rtol=0
    )
    torch.testing.assert_close(residual + sba, w, atol=1e-5, rtol=0)
    cfg = _train_save_reload(run, smol_tokenizer)
    assert cfg["r"] == 8 and cfg["init_lora_weights"] is True  # plain rank-2r LoRA


@pytest.mark.slow
def test_orthogonal_starts_with_b_a_zero_from_orthogonal_halves(
    tiny_model_dir, tmp_path, smol_tokenizer
):
    run = _built(tiny_model_dir, tmp_path, init="orthogonal")
    sba, a, b, base = _pair(run.built.model)
    assert a.abs().min() > 0 and b.abs().max() > 0.01
    assert sba.abs().max() < 1e-6  # B A = 0: the halves of one orthogonal matrix
    assert torch.linalg.matrix_rank(a) == 2  # A = (G Q_1)^T has rank r / 2
    torch.testing.assert_close(base, _base_weight(tiny_model_dir))  # W untouched
    cfg = _train_save_reload(run, smol_tokenizer)
    assert cfg["r"] == 4 and cfg["init_lora_weights"] == "orthogonal"


@pytest.mark.slow
def test_eva_a_rows_are_the_top_singular_vectors_of_the_layer_inputs(
    tiny_model_dir, tmp_path, smol_tokenizer
):
    run = _built(tiny_model_dir, tmp_path, init="eva", init_batches=1)
    _, a, b, base = _pair(run.built.model)
    assert not b.any()
    torch.testing.assert_close(base, _base_weight(tiny_model_dir))
    # by hand: PCA of the layer's inputs at the labelled tokens of the same batch
    (batch,) = training_batches(run.context, "eva")
    (x,) = _layer_inputs(tiny_model_dir, [batch])
    x = x[(batch["labels"] != -100) & batch["attention_mask"].bool()].double()
    vh = torch.linalg.svd(x - x.mean(0), full_matrices=False)[2]
    assert _same_rows(a, vh[:4]).min() > 0.99
    assert _same_rows(a, vh[4:8]).max() < 0.2  # not the next directions
    cfg = _train_save_reload(run, smol_tokenizer)
    assert cfg["r"] == 4 and not cfg["rank_pattern"]  # rho 1: every target keeps rank r


@pytest.mark.slow
def test_corda_starts_at_the_principal_part_of_w_times_the_input_covariance(
    tiny_model_dir, tmp_path, smol_tokenizer
):
    run = _built(tiny_model_dir, tmp_path, init="corda", init_batches=2)
    sba, _, _, residual = _pair(run.built.model)
    w = _base_weight(tiny_model_dir).double()
    torch.testing.assert_close(residual.double() + sba.double(), w, atol=1e-5, rtol=0)
    # by hand: C from each example's own tokens (scaled by its largest input), damped by 1%
    rows = [
        {"input_ids": ids[m.bool()][None], "attention_mask": m[m.bool()][None]}
        for b in training_batches(run.context, "corda")
        for ids, m in zip(b["input_ids"], b["attention_mask"], strict=True)
    ]
    c = sum(
        (x[0] / x[0].max().abs()).double().T @ (x[0] / x[0].max().abs()).double()
        for x in _layer_inputs(tiny_model_dir, rows)
    )
    c = c + torch.eye(64, dtype=c.dtype) * c.diagonal().mean() * 0.01
    u, s, vh = torch.linalg.svd(w @ c)
    want = u[:, :4] @ torch.diag(s[:4]) @ vh[:4] @ torch.linalg.inv(c)
    torch.testing.assert_close(sba.double(), want, atol=1e-3, rtol=1e-3)
    cfg = _train_save_reload(run, smol_tokenizer)
    assert cfg["r"] == 8 and cfg["init_lora_weights"] is True


@pytest.mark.slow
def test_lora_ga_a_rows_are_the_top_singular_vectors_of_the_gradient(
    tiny_model_dir, tmp_path, smol_tokenizer
):
    run = _built(tiny_model_dir, tmp_path, init="lora_ga", init_batches=2)
    sba, a, _, residual = _pair(run.built.model)
    w = _base_weight(tiny_model_dir)
    torch.testing.assert_close(residual + sba, w, atol=1e-5, rtol=0)
    # by hand: the mean gradient of the loss on the same batches, its top right vectors
    base = load_float_base(tiny_model_dir).train()
    weight = base.get_submodule(LAYER).weight
    for p in base.parameters():
        p.requires_grad_(p is weight)
    batches = training_batches(run.context, "lora_ga")
    for b in batches:
        base(**b).loss.backward()
    vh = torch.linalg.svd(weight.grad.double() / len(batches))[2]
    assert _same_rows(a, vh[:4]).min() > 0.99
    cfg = _train_save_reload(run, smol_tokenizer)
    assert cfg["r"] == 8 and cfg["init_lora_weights"] is True


@pytest.mark.slow
def test_olora_and_the_pissa_method_keep_their_behaviour(tiny_model_dir, tmp_path, smol_tokenizer):
    """method=pissa is lora with lora.init=pissa: the same start, bit for bit."""
    pissa = _built(tiny_model_dir, tmp_path / "p", "pissa")
    lora = _built(tiny_model_dir, tmp_path / "l", init="pissa")
    torch.testing.assert_close(_pair(pissa.built.model)[0], _pair(lora.built.model)[0])
    run = _built(tiny_model_dir, tmp_path / "o", "olora")
    sba, _, _, residual = _pair(run.built.model)
    torch.testing.assert_close(residual + sba, _base_weight(tiny_model_dir), atol=1e-5, rtol=0)
    assert sba.abs().max() > 0.01 and not get_method("olora").shardable
    assert _train_save_reload(run, smol_tokenizer)["r"] == 8


# --------------------------------------------------------------------------- bad input


def test_an_init_peft_does_not_provide_is_refused_listing_those_it_does(tiny_model_dir):
    from importlib.metadata import version

    with pytest.raises(SpectuneError) as err:
        _config(tiny_model_dir, init="lora_gb")
    msg = str(err.value)
    assert "lora.init='lora_gb'" in msg and f"peft {version('peft')}" in msg
    assert "eva" in msg and "corda" in msg and "pissa_niter_<n>" in msg
    assert _config(tiny_model_dir, init="pissa_niter_4").section("lora").init == "pissa_niter_4"
    with pytest.raises(
        SpectuneError, match=r"lora.init=loftq: spectune does not offer it \(.*CUDA"
    ):
        _config(tiny_model_dir, "qlora", init="loftq")


@pytest.mark.parametrize(
    ("method", "lora", "words"),
    [
        ("lora", {"init": "eva", "init_batches": 0}, "lora.init_batches=0 gives it none"),
        ("lora", {"init": "orthogonal", "r": 3}, "even lora.r"),
        ("dora", {"init": "pissa"}, "DoRA's magnitudes"),
        ("pissa", {"init": "eva"}, "method pissa fixes its initialisation"),
        ("qlora", {"init": "pissa"}, "4-bit here"),
        ("qdora", {"init": "orthogonal"}, "uint8"),
    ],
)
def test_combinations_peft_refuses_are_refused_at_config_time(tiny_model_dir, method, lora, words):
    with pytest.raises(SpectuneError, match="lora.init") as err:
        _config(tiny_model_dir, method, **lora)
    assert words in str(err.value)


def test_a_data_driven_init_without_training_data_is_refused(tiny_model_dir, tmp_path):
    config = _config(tiny_model_dir, init="eva")
    method = get_method("lora")
    with pytest.raises(SpectuneError, match=r"lora.init=eva is fed from the run's training data"):
        recipe.build_model(method, BuildContext(config, tiny_model_dir, tmp_path, False))
    no_tokens = TrainData([{"x": 1}], lambda f: {"prompt_ids": torch.zeros(1, 3)})
    ctx = BuildContext(config, tiny_model_dir, tmp_path, False, train_data=no_tokens)
    with pytest.raises(SpectuneError, match=r"lora.init=eva: objective 'sft' makes training"):
        recipe.build_model(method, ctx)
