"""PEFT adapters: pairing by module name, scaling parity with peft, factors and deltas."""

from __future__ import annotations

import json
import math
import shutil
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from spectune.errors import SpectuneError
from spectune.weights import LoraPair, lora_scaling, open_source, read_lora_config

from .conftest import ADAPTER_SETTINGS, live_lora_layers, make_peft, make_tiny_llama, save_peft


def test_adapter_folder_pairs_match_live_peft(adapter):
    """Every live LoRA layer gives exactly one pair, with peft's own r and scaling."""
    peft_model, folder, setting = adapter
    live = live_lora_layers(peft_model)
    with open_source(folder) as src:
        assert src.kind == "peft" and src.peft and src.path == folder
        assert src.weights_format == "safetensors"
        pairs = src.lora_pairs()
        assert {(p.module, p.adapter_name) for p in pairs} == set(live)
        cfg = ADAPTER_SETTINGS[setting]
        for pair in pairs:
            layer = live[(pair.module, pair.adapter_name)]
            assert pair.scaling == pytest.approx(layer.scaling["default"], rel=1e-12)
            assert pair.r == layer.r["default"]
            assert pair.lora_alpha == layer.lora_alpha["default"]
            assert pair.use_rslora == bool(cfg.get("use_rslora", False))
            base = layer.get_base_layer().weight
            assert pair.base_shape == tuple(base.shape)
            assert pair.shape == tuple(base.shape)
            if cfg.get("use_dora"):
                assert pair.magnitude_name is not None
                assert pair.magnitude_name.endswith("lora_magnitude_vector")
            else:
                assert pair.magnitude_name is None


def test_scaling_values_hand_checked(patterns_adapter):
    """The "patterns" setting, by hand: r=4, alpha=8 unless a pattern applies (first key wins)."""
    _, folder = patterns_adapter
    with open_source(folder) as src:
        got = {p.module: (p.r, p.lora_alpha, p.scaling) for p in src.lora_pairs()}
    assert got["model.layers.0.self_attn.q_proj"] == (4, 8.0, 2.0)
    assert got["model.layers.1.self_attn.q_proj"] == (2, 8.0, 4.0)  # rank_pattern
    assert got["model.layers.0.self_attn.v_proj"] == (4, 3.0, 0.75)  # alpha_pattern
    assert got["model.layers.0.mlp.up_proj"] == (6, 8.0, 8 / 6)  # regex rank_pattern
    assert got["model.layers.1.mlp.up_proj"] == (4, 8.0, 2.0)
    assert got["model.layers.0.mlp.down_proj"] == (6, 12.5, 12.5 / 6)  # both patterns
    assert got["model.layers.1.mlp.down_proj"] == (4, 12.5, 12.5 / 4)
    assert len(got) == 12


def test_rslora_scaling_is_alpha_over_sqrt_r(adapters):
    _, folder = adapters("rslora")
    with open_source(folder) as src:
        got = {p.module: (p.r, p.scaling) for p in src.lora_pairs()}
    assert got["model.layers.0.self_attn.q_proj"] == (8, pytest.approx(16 / math.sqrt(8)))
    assert got["model.layers.1.mlp.gate_proj"] == (2, pytest.approx(16 / math.sqrt(2)))
    assert lora_scaling(8, 16, True) == pytest.approx(16 / math.sqrt(8))
    assert lora_scaling(8, 16, False) == 2.0


def test_factors_give_peft_delta_weight(adapter):
    """load_pair / load_delta reproduce peft's get_delta_weight for linear and embedding."""
    peft_model, folder, _ = adapter
    live = live_lora_layers(peft_model)
    with open_source(folder) as src:
        for pair in src.lora_pairs():
            layer = live[(pair.module, pair.adapter_name)]
            with torch.no_grad():
                expected = layer.get_delta_weight("default")
            b, a = src.load_pair(pair)
            assert b.shape == (pair.shape[0], pair.r) and a.shape == (pair.r, pair.shape[1])
            torch.testing.assert_close(pair.scaling * b @ a, expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(src.load_delta(pair), expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(
                src.load_delta(pair, scaled=False) * pair.scaling, expected, rtol=1e-5, atol=1e-6
            )
            raw_a, raw_b = src.load(pair.name_A), src.load(pair.name_B)
            if pair.layer_type == "embedding":
                assert pair.transposed
                assert raw_a.shape == (pair.r, pair.shape[0])  # lora_embedding_A (r, vocab)
                assert raw_b.shape == (pair.shape[1], pair.r)
            else:
                assert not pair.transposed
                assert raw_a.shape == (pair.r, pair.shape[1]) and raw_b.shape == (
                    pair.shape[0],
                    pair.r,
                )


def test_dora_magnitude_matches_live(adapters):
    peft_model, folder = adapters("dora")
    live = live_lora_layers(peft_model)
    with open_source(folder) as src:
        pairs = src.lora_pairs()
        assert {p.layer_type for p in pairs} == {"linear", "embedding"}
        for pair in pairs:
            magnitude = src.load(pair.magnitude_name)
            layer = live[(pair.module, "default")]
            expected = layer.lora_magnitude_vector["default"].weight.detach()
            assert torch.equal(magnitude, expected)
            assert src.info(pair.magnitude_name).lora == "magnitude"
            assert src.info(pair.magnitude_name).layer_type == "other"


def test_peft_model_source_agrees_with_its_folder(adapter):
    peft_model, folder, _ = adapter
    live_src = open_source(peft_model)
    assert live_src.kind == "peft" and live_src.peft
    assert set(live_src.peft_configs) == {"default"}
    assert live_src.peft_configs["default"]["peft_type"] == "LORA"
    with open_source(folder) as file_src:
        file_pairs = file_src.lora_pairs()
        live_pairs = live_src.lora_pairs()
        strip = lambda p: (p.module, p.r, p.shape, p.scaling, p.adapter_name, p.layer_type)  # noqa: E731
        assert [strip(p) for p in live_pairs] == [strip(p) for p in file_pairs]
        for lp, fp in zip(live_pairs, file_pairs, strict=True):
            assert ".default" in lp.name_A
            assert torch.equal(live_src.load(lp.name_A), file_src.load(fp.name_A))
            assert torch.equal(live_src.load(lp.name_B), file_src.load(fp.name_B))
            # the live source also holds the base weight under the same normalized name
            base = live_src.find_weight(lp.module)
            assert base is not None and base.name.endswith(".base_layer.weight")
            assert base.shape == lp.base_shape


def test_pairs_match_base_model_weights(patterns_adapter, hf_single):
    """Adapter module names find their base matrices in a plain HF folder."""
    _, folder = patterns_adapter
    with open_source(folder) as src, open_source(hf_single) as base:
        for pair in src.lora_pairs():
            info = base.find_weight(pair.module)
            assert info is not None and info.name == pair.module + ".weight"
            assert info.shape == pair.base_shape


def test_adapter_bin_folder(patterns_adapter, tmp_path):
    _, folder = patterns_adapter
    out = tmp_path / "bin_adapter"
    out.mkdir()
    shutil.copy(folder / "adapter_config.json", out)
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    torch.save(state, out / "adapter_model.bin")
    with open_source(folder) as ref, open_source(out) as src:
        assert src.kind == "peft" and src.weights_format == "bin"
        assert src.lora_pairs() == ref.lora_pairs()


def test_multiple_adapters_in_one_peft_model():
    from peft import LoraConfig

    peft_model = make_peft(make_tiny_llama(), r=4, lora_alpha=8, target_modules=["q_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model.add_adapter(
            "second",
            LoraConfig(
                r=2,
                lora_alpha=6,
                use_rslora=True,
                target_modules=["q_proj", "v_proj"],
                init_lora_weights=False,
            ),
        )
    src = open_source(peft_model)
    assert set(src.peft_configs) == {"default", "second"}
    got = {(p.module, p.adapter_name): (p.r, p.scaling) for p in src.lora_pairs()}
    live = live_lora_layers(peft_model)
    assert set(got) == set(live)
    assert len(got) == 2 + 4
    for (module, adapter), (r, scaling) in got.items():
        assert r == live[(module, adapter)].r[adapter]
        assert scaling == live[(module, adapter)].scaling[adapter]
    assert got[("model.layers.0.self_attn.v_proj", "second")] == (
        2,
        pytest.approx(6 / math.sqrt(2)),
    )


def test_live_scaling_follows_set_scale():
    """A module source reports the scaling the layer uses now (peft's set_scale)."""
    peft_model = make_peft(make_tiny_llama(), r=4, lora_alpha=8, target_modules=["q_proj"])
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    layer.set_scale("default", 0.5)
    got = {p.module: p.scaling for p in open_source(peft_model).lora_pairs()}
    assert got["model.layers.0.self_attn.q_proj"] == pytest.approx(1.0)  # 8/4 * 0.5
    assert got["model.layers.1.self_attn.q_proj"] == pytest.approx(2.0)


def test_conv_lora_pairs_flatten_kernels(tmp_path):
    class ConvNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 6, kernel_size=3)
            self.head = torch.nn.Linear(6, 2)

    peft_model = make_peft(ConvNet(), r=2, lora_alpha=4, target_modules=["conv", "head"])
    folder = save_peft(peft_model, tmp_path / "conv_adapter")
    live = live_lora_layers(peft_model)
    with open_source(folder) as src:
        pairs = {p.module: p for p in src.lora_pairs()}
        conv = pairs["conv"]
        assert conv.layer_type == "conv2d"
        assert conv.shape == (6, 27) and conv.base_shape == (6, 3, 3, 3)
        with torch.no_grad():
            expected = live[("conv", "default")].get_delta_weight("default")
        torch.testing.assert_close(src.load_delta(conv), expected, rtol=1e-5, atol=1e-6)
        assert pairs["head"].layer_type == "linear" and pairs["head"].shape == (2, 6)


def test_fan_in_fan_out_pairs_are_transposed(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=16)
    )
    peft_model = make_peft(gpt2, r=2, lora_alpha=2, target_modules=["c_attn"], fan_in_fan_out=True)
    folder = save_peft(peft_model, tmp_path / "gpt2_adapter")
    live = live_lora_layers(peft_model)
    with open_source(folder) as src:
        (pair,) = src.lora_pairs()
        assert pair.module == "transformer.h.0.attn.c_attn" and pair.transposed
        assert pair.shape == (16, 48)  # GPT-2 Conv1D weight is (in, out)
        with torch.no_grad():
            expected = live[(pair.module, "default")].get_delta_weight("default")
        assert expected.shape == (16, 48)
        torch.testing.assert_close(src.load_delta(pair), expected, rtol=1e-5, atol=1e-6)


def test_state_dict_with_lora_config(patterns_adapter):
    peft_model, folder = patterns_adapter
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads((folder / "adapter_config.json").read_text())
    with open_source(folder) as ref:
        expected = ref.lora_pairs()
    for cfg in (config, peft_model.peft_config["default"], folder / "adapter_config.json", folder):
        src = open_source(state, lora_config=cfg)
        assert src.peft and src.kind == "state_dict"
        assert [(p.module, p.r, p.scaling) for p in src.lora_pairs()] == [
            (p.module, p.r, p.scaling) for p in expected
        ]
    with pytest.raises(SpectuneError, match="no LoRA config for adapter"):
        open_source(state, peft=True).lora_pairs()


def test_lone_adapter_file_finds_config_beside_it(patterns_adapter):
    _, folder = patterns_adapter
    src = open_source(folder / "adapter_model.safetensors", peft=True)
    assert src.kind == "safetensors" and src.peft and "default" in src.peft_configs
    assert len(src.lora_pairs()) == 12


def test_lora_pair_row_name():
    pair = LoraPair(
        module="m.q",
        name_A="a",
        name_B="b",
        r=2,
        shape=(4, 3),
        scaling=1.0,
        magnitude_name=None,
        adapter_name="default",
        lora_alpha=2.0,
        use_rslora=False,
        layer_type="linear",
        transposed=False,
        base_shape=(4, 3),
    )
    assert pair.name == "m.q.lora_BA"


# ---------------------------------------------------------------------------------------------
# Bad adapters
# ---------------------------------------------------------------------------------------------


def _copy_adapter(folder, tmp_path, edit):
    """A copy of an adapter whose tensors pass through ``edit(dict) -> dict``."""
    out = tmp_path / "edited"
    out.mkdir()
    shutil.copy(folder / "adapter_config.json", out)
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    save_file(edit(state), str(out / "adapter_model.safetensors"))
    return out


A0 = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B0 = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


def test_lora_a_without_b_names_the_module(patterns_adapter, tmp_path):
    _, folder = patterns_adapter
    out = _copy_adapter(folder, tmp_path, lambda s: {k: v for k, v in s.items() if k != B0})
    with open_source(out) as src, pytest.raises(SpectuneError) as err:
        src.lora_pairs()
    assert "model.layers.0.self_attn.q_proj" in str(err.value) and "no lora_B" in str(err.value)


def test_lora_b_without_a_names_the_module(patterns_adapter, tmp_path):
    _, folder = patterns_adapter
    out = _copy_adapter(folder, tmp_path, lambda s: {k: v for k, v in s.items() if k != A0})
    with open_source(out) as src, pytest.raises(SpectuneError, match="q_proj.*no lora_A"):
        src.lora_pairs()


def test_mismatched_ranks_name_both_tensors(patterns_adapter, tmp_path):
    _, folder = patterns_adapter

    def edit(state):
        state[B0] = torch.randn(state[B0].shape[0], 3)
        return state

    out = _copy_adapter(folder, tmp_path, edit)
    with open_source(out) as src, pytest.raises(SpectuneError) as err:
        src.lora_pairs()
    assert A0 in str(err.value) and B0 in str(err.value)


def test_rank_disagreeing_with_config(patterns_adapter, tmp_path):
    _, folder = patterns_adapter

    def edit(state):
        state[A0] = torch.randn(3, state[A0].shape[1])
        state[B0] = torch.randn(state[B0].shape[0], 3)
        return state

    out = _copy_adapter(folder, tmp_path, edit)
    with open_source(out) as src, pytest.raises(SpectuneError, match="r=4.*rank 3"):
        src.lora_pairs()


def test_missing_and_invalid_adapter_config(patterns_adapter, tmp_path):
    _, folder = patterns_adapter
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    shutil.copy(folder / "adapter_model.safetensors", no_config)
    with pytest.raises(SpectuneError, match="no adapter_config.json"):
        open_source(no_config)

    bad_json = tmp_path / "bad_json"
    shutil.copytree(folder, bad_json)
    (bad_json / "adapter_config.json").write_text("{not json")
    with pytest.raises(SpectuneError, match="adapter_config.json is not valid JSON"):
        open_source(bad_json)

    for field, value, match in [
        ("r", 0, "r must be a positive integer"),
        ("r", "4", "r must be a positive integer"),
        ("lora_alpha", "big", "lora_alpha must be a number"),
        ("use_rslora", "yes", "use_rslora must be true or false"),
        ("rank_pattern", {"q_proj": 1.5}, "rank_pattern entry 'q_proj'"),
        ("alpha_pattern", {"(": 2}, "not a valid regular expression"),
        ("rank_pattern", [1, 2], "rank_pattern must be a mapping"),
    ]:
        bad = tmp_path / f"bad_{field}_{abs(hash(str(value)))}"
        shutil.copytree(folder, bad)
        cfg = json.loads((bad / "adapter_config.json").read_text())
        cfg[field] = value
        (bad / "adapter_config.json").write_text(json.dumps(cfg))
        with pytest.raises(SpectuneError, match=match) as err:
            open_source(bad)
        assert str(bad / "adapter_config.json") in str(err.value)

    not_object = tmp_path / "list_config"
    shutil.copytree(folder, not_object)
    (not_object / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(SpectuneError, match="must hold a JSON object"):
        open_source(not_object)


def test_adapter_folder_without_weights(patterns_adapter, tmp_path):
    _, folder = patterns_adapter
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    shutil.copy(folder / "adapter_config.json", only_config)
    with pytest.raises(SpectuneError, match="no adapter_model.safetensors or adapter_model.bin"):
        open_source(only_config)


def test_non_lora_peft_type_cannot_be_paired(patterns_adapter, tmp_path):
    _, folder = patterns_adapter
    ia3 = tmp_path / "ia3"
    shutil.copytree(folder, ia3)
    cfg = json.loads((ia3 / "adapter_config.json").read_text())
    cfg["peft_type"] = "IA3"
    (ia3 / "adapter_config.json").write_text(json.dumps(cfg))
    with open_source(ia3) as src:
        assert len(src.tensors()) > 0  # still listed
        with pytest.raises(SpectuneError, match="peft_type 'IA3'"):
            src.lora_pairs()


def test_no_lora_tensors_with_peft_true(hf_single):
    with (
        open_source(hf_single, peft=True) as src,
        pytest.raises(SpectuneError, match="no LoRA tensors"),
    ):
        src.lora_pairs()


def test_read_lora_config_rejects_other_objects():
    with pytest.raises(SpectuneError, match="lora_config must be"):
        read_lora_config(42)
    assert read_lora_config({"r": 2, "lora_alpha": 4})["r"] == 2


def test_qlora_base_is_dequantized_and_paired():
    """A LoRA on a bitsandbytes 4-bit base: the base weight loads as floats, the pair is found."""
    bnb = pytest.importorskip("bitsandbytes")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = bnb.nn.Linear4bit(
                64, 32, bias=False, quant_type="nf4", compute_dtype=torch.float32
            )
            self.fc.weight = bnb.nn.Params4bit(
                torch.randn(32, 64), requires_grad=False, quant_type="nf4"
            )
            self.out = torch.nn.Linear(32, 4)

    torch.manual_seed(0)
    net = Net().to("cpu")  # quantizes
    net.is_loaded_in_4bit = True  # what transformers sets; peft then wraps with its bnb layer
    peft_model = make_peft(net, r=2, lora_alpha=4, target_modules=["fc"])
    src = open_source(peft_model)
    (pair,) = src.lora_pairs()
    assert (pair.module, pair.r, pair.scaling, pair.shape) == ("fc", 2, 2.0, (32, 64))
    base = src.find_weight("fc")
    assert base is not None and base.quant == "nf4" and base.shape == (32, 64)
    layer = peft_model.base_model.model.fc
    expected = bnb.functional.dequantize_4bit(
        layer.base_layer.weight.data, layer.base_layer.weight.quant_state
    )
    assert torch.equal(src.load(base.name), expected)
    with torch.no_grad():
        torch.testing.assert_close(src.load_delta(pair), layer.get_delta_weight("default"))


def test_named_adapter_saved_in_a_subfolder(tmp_path):
    """peft saves an adapter not called "default" into <folder>/<name>/; the root says so."""
    from peft import LoraConfig

    peft_model = make_peft(make_tiny_llama(), r=2, lora_alpha=2, target_modules=["q_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model.add_adapter("extra", LoraConfig(r=3, lora_alpha=6, target_modules=["v_proj"]))
        peft_model.save_pretrained(tmp_path / "both", selected_adapters=["extra"])
    assert (tmp_path / "both" / "extra" / "adapter_config.json").is_file()
    with pytest.raises(SpectuneError, match="adapters in sub-folders.*extra"):
        open_source(tmp_path / "both")
    with open_source(tmp_path / "both" / "extra") as src:
        pairs = src.lora_pairs()
    assert [(p.module.split(".")[-1], p.r, p.scaling) for p in pairs] == [("v_proj", 3, 2.0)] * 2
