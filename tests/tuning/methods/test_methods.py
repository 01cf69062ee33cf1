"""Every registered method through the same checks, and the registries themselves.

The shared table (:func:`check_method`) runs a method on the tiny model through the recipe's
phases and checks what every method promises: it trains (the trainable tensors move), its
trainable count is the model's, its results folder is complete, its saved adapter reloads onto
a fresh base with the trained model's outputs, it merges into a plain model with the same
outputs, and an adapter that peft can read loads in plain peft. A new method gets these
checks by being registered: the table is built from the registry.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import spectune as st
from spectune.errors import SpectuneError
from spectune.models.quant import has_4bit_weights
from spectune.tuning import recipe
from spectune.tuning.config import TuneConfig
from spectune.tuning.methods import METHODS, get_method
from spectune.tuning.methods.base import Built, Method, load_float_base
from spectune.tuning.run import Run
from tests.conftest import tiny_run_config

#: a complete run's folder (checkpoints/ is removed once the adapter is written)
RUN_FILES = {"config.yaml", "run.json", "before.json", "train_log.csv", "adapter",
             "metrics.json", "predictions.jsonl", "spectra", "plots", "report.html"}  # fmt: skip


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(ids).logits.float()


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def check_method(name: str, model_dir, tmp_path, tokenizer, **changes) -> Run:
    """The shared checks of one registered method (see the module docstring)."""
    method = get_method(name)
    config = TuneConfig.from_dict(tiny_run_config(model_dir, name, **changes))
    run = recipe.setup(config, out=tmp_path / name, progress=False)
    recipe.judge_base(run)
    recipe.build(run)
    start = _trainable(run.built.model)
    trainable, total = run.built.trainable, run.built.total
    assert 0 < trainable <= total
    if not has_4bit_weights(run.built.model):  # packed 4-bit weights count as their weights
        assert trainable == sum(p.numel() for p in run.built.model.parameters() if p.requires_grad)
    recipe.train(run)
    moved = [n for n, p in _trainable(run.built.model).items() if not torch.equal(p, start[n])]
    assert moved, f"{name}: no trainable tensor changed in training"
    recipe.save(run)
    recipe.judge_tuned(run)
    recipe.watch(run)
    metrics = recipe.report(run)
    out = run.out

    # results folder: complete, marked complete, metrics typed and read back the same
    assert RUN_FILES <= {p.name for p in out.iterdir()} - {"checkpoints"}, name
    assert not (out / "checkpoints").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert st.RunMetrics.load(out).to_dict() == metrics.to_dict()
    assert metrics.run.method == name and metrics.cost.trainable == trainable
    assert metrics.settings == {col: config.get(key) for col, key in method.settings.items()}
    assert metrics.training.global_step == 4 and metrics.training.final_loss is not None
    assert (out / "report.html").read_text().startswith("<!doctype html>")
    assert metrics.spectra is not None and metrics.spectra.n_layers > 0
    # intruder dimensions for every method with a tuned matrix to compare (DoRA's rows: not
    # defined, its magnitudes rescale each column), summed in the metrics
    details = pd.read_csv(out / "spectra" / "details.csv")
    if "dora" not in name:
        assert details["num_intruders"].notna().all(), name
        assert metrics.spectra.num_intruders == int(details["num_intruders"].sum()), name

    # the saved adapter reloads onto a fresh float32 base with the trained model's outputs
    ids = torch.tensor([tokenizer("The cat sat on the mat.")["input_ids"]])
    reloaded = method.load(run.context, load_float_base(model_dir), out / "adapter")
    got = _logits(reloaded, ids)
    if not has_4bit_weights(run.built.model):
        torch.testing.assert_close(got, _logits(run.built.model, ids), rtol=1e-4, atol=1e-4)
    # ... merges into a plain transformers model with the same outputs
    merged = method.merge(run.built, run.context, out / "adapter")
    assert not any(
        "lora_" in n or "frog" in n or "shira" in n for n, _ in merged.named_parameters()
    )
    if has_4bit_weights(merged):
        raise AssertionError(f"{name}: merge left 4-bit weights")
    torch.testing.assert_close(_logits(merged, ids), got, rtol=1e-4, atol=1e-4)
    assert not (out / "checkpoints").exists()  # reloading and merging made none again
    # ... and, where it is a peft adapter (or has a peft copy), loads in plain peft
    for folder in (out / "adapter", out / "adapter" / "peft"):
        if (folder / "adapter_config.json").is_file():
            from peft import PeftModel

            plain = PeftModel.from_pretrained(load_float_base(model_dir), folder)
            torch.testing.assert_close(_logits(plain, ids), got, rtol=1e-4, atol=1e-4)
    return run


#: every registered method: the table grows with the registry
@pytest.mark.parametrize("name", METHODS.names())
def test_every_registered_method_passes_the_shared_checks(
    name, tiny_model_dir, tmp_path, smol_tokenizer
):
    if "quant" in get_method(name).sections:
        pytest.importorskip("bitsandbytes")
    run = check_method(name, tiny_model_dir, tmp_path, smol_tokenizer)
    peft_folder = {"frog": run.out / "adapter" / "peft"}.get(name, run.out / "adapter")
    # every adapting method here is readable by peft, but Spectrum: it trains whole weights
    if get_method(name).uses_target_modules and name != "spectrum":
        assert (peft_folder / "adapter_config.json").is_file(), name


def test_expected_trainable_counts_by_hand(tiny_model_dir, tmp_path):
    """r (in + out) per target for the LoRA family and SHiRA; G x target weights for FROG."""
    per_rank = 2 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 128) * 2 + (128 + 64))
    weights = 2 * (64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3)
    from spectune.tuning.methods.base import BuildContext

    for name, expected in (("lora", 4 * per_rank), ("olora", 4 * per_rank),
                           ("shira", 4 * per_rank), ("frog", round(0.05 * weights)),
                           ("dora", 4 * per_rank + 2 * (64 + 32 + 32 + 64 + 128 + 128 + 64))):  # fmt: skip
        config = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, name))
        ctx = BuildContext(config, tiny_model_dir, tmp_path, progress=False)
        built = recipe.build_model(get_method(name), ctx)
        assert built.trainable == expected, name


def test_pissa_adapter_is_plain_lora_on_the_original_base(tiny_model_dir, tmp_path):
    """PiSSA changes the base weights; the adapter written is converted to a rank-2r LoRA
    adapter of the *unchanged* base, as peft documents."""
    run = check_method("pissa", tiny_model_dir, tmp_path, _tok(tiny_model_dir))
    cfg = json.loads((run.out / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["init_lora_weights"] is True  # 2 r, a plain LoRA init


def _tok(model_dir):
    from spectune.models.tokenizer import load_tokenizer

    return load_tokenizer(model_dir)


# --------------------------------------------------------------------------- out of tree


class NormsAndBiases(Method):
    """Train only the 1-D parameters (norm weights and biases): defined here, not in src/."""

    description = "train only the norm weights and biases"
    uses_target_modules = False

    def build(self, ctx, model):
        for _, p in model.named_parameters():
            p.requires_grad_(p.ndim == 1)
        return Built(model)


@pytest.fixture
def norms_method():
    st.register_method("norms", NormsAndBiases())
    yield "norms"
    st.unregister_method("norms")


def test_out_of_tree_method_runs_through_the_cli(norms_method, tiny_model_dir, tmp_path, capsys):
    from spectune.cli.main import main
    from spectune.tuning.config import yaml_dump

    assert "norms" in st.methods() and st.methods()["norms"].startswith("train only the norm")
    path = tmp_path / "norms.yaml"
    path.write_text(yaml_dump(tiny_run_config(tiny_model_dir, "norms")))
    out = tmp_path / "run"
    assert main(["tune", str(path), "--out", str(out), "--no-progress", "--merge"]) == 0
    assert RUN_FILES | {"merged"} <= {p.name for p in out.iterdir()}
    m = st.RunMetrics.load(out)
    assert m.run.method == "norms"
    assert m.cost.trainable == 2 * 2 * 64 + 64  # 2 norms per block and the final norm
    assert (out / "adapter" / "spectune_adapter.json").is_file()
    assert "learning (held-out accuracy) vs forgetting" in capsys.readouterr().out


def test_out_of_tree_method_gets_a_memory_estimate_and_a_plan(norms_method, tiny_model_dir, capsys):
    """``spectune memory`` and ``spectune methods NAME --model`` count an out-of-tree method by
    building it on the meta model (Method.trainable_count's default)."""
    from spectune.cli.main import main

    norms, tiny = 2 * 2 * 64 + 64, str(tiny_model_dir)
    assert main(["memory", tiny, "--method", "norms", "--batch", "1", "--seq", "8"]) == 0
    out = capsys.readouterr().out
    assert "\nnorms " in out and f"trainable: norms {norms:,}" in out
    assert main(["memory", tiny, "--json", "--batch", "1", "--seq", "8"]) == 0
    estimates = {e["method"]: e for e in json.loads(capsys.readouterr().out)}
    assert estimates["norms"]["trainable"] == norms and estimates["norms"]["adapter"] == 4 * norms
    assert estimates["norms"]["peak"] > estimates["lora"]["overhead"]
    assert main(["methods", "norms", "--model", tiny]) == 0
    assert f"norms on {tiny_model_dir.name}: {norms:,} of" in capsys.readouterr().out


def test_out_of_tree_method_passes_the_shared_checks(norms_method, tiny_model_dir, tmp_path,
                                                     smol_tokenizer):  # fmt: skip
    check_method("norms", tiny_model_dir, tmp_path, smol_tokenizer)


# --------------------------------------------------------------------------- the registries


def test_registry_refuses_bad_registrations(norms_method):
    with pytest.raises(SpectuneError, match=r"method 'norms' is already registered"):
        st.register_method("norms", NormsAndBiases())
    with pytest.raises(SpectuneError, match=r"method 'lora' is already registered"):
        st.register_method("lora", NormsAndBiases())
    with pytest.raises(SpectuneError, match=r"needs an instance of .*Method, got dict"):
        st.register_method("thing", {})
    with pytest.raises(SpectuneError, match=r"must be lower case letters"):
        st.register_method("Bad Name", NormsAndBiases())
    with pytest.raises(SpectuneError, match=r"already registered as 'norms'"):
        st.register_method("norms2", get_method("norms"))

    class Clash(NormsAndBiases):
        sections = {"lora": dict}

    with pytest.raises(SpectuneError, match=r"declares section 'lora' as dict, but .*lora"):
        st.register_method("clash", Clash())

    class Reserved(NormsAndBiases):
        sections = {"train": dict}

    with pytest.raises(SpectuneError, match=r"section name 'train' is taken by the config"):
        st.register_method("reserved", Reserved())
    with pytest.raises(SpectuneError, match=r"method 'nope' is not registered"):
        st.unregister_method("nope")


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(SpectuneError, match=r"unknown method 'qloro' \(did you mean 'qlora'\?\); "
                       r"registered methods: lora, rslora, dora, olora, qlora"):  # fmt: skip
        get_method("qloro")
    with pytest.raises(SpectuneError, match=r"unknown objective 'sfx' \(did you mean 'sft'\?\); "
                       r"registered objectives: sft"):  # fmt: skip
        TuneConfig.from_dict({"objective": "sfx"})
    assert list(st.objectives())[0] == "sft"


def test_no_module_outside_the_registry_compares_method_names():
    """The recipe, sweep, demo, report and CLI know no method by name."""
    import re
    from pathlib import Path

    src = Path(st.__file__).parent
    names = "|".join(METHODS.names())
    pattern = re.compile(
        rf"""(method\s*(==|!=)\s*["']({names})["']|\.method\s+(not\s+)?in\b"""
        rf"""|["']({names})["']\s*(==|!=)|LORA_METHODS|QUANT_METHODS)"""
    )
    offenders = []
    for path in src.rglob("*.py"):
        rel = path.relative_to(src).as_posix()
        if rel.startswith("tune/methods/") or rel == "results/metrics.py":
            continue  # the methods themselves; results.py reads files of the first layout
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{rel}:{i}: {line.strip()}")
    assert offenders == []


def test_no_library_module_imports_the_cli():
    from pathlib import Path

    src = Path(st.__file__).parent
    offenders = [p.relative_to(src).as_posix() for p in src.rglob("*.py")
                 if not p.relative_to(src).as_posix().startswith("cli/")
                 and "spectune.cli" in p.read_text()]  # fmt: skip
    assert offenders == []


def test_the_readme_plugin_example_runs_as_written(
    tiny_model_dir, tmp_path, smol_tokenizer, capsys
):
    """The README's out-of-tree method, executed as written, passes the shared checks and its
    section is validated like the built-in ones."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    block = readme.split("<!-- plugin-example -->", 1)[1].split("```python", 1)[1]
    code = block.split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # registers "norms"
    try:
        assert "norms" in st.methods()
        with pytest.raises(SpectuneError, match=r"norms: unknown setting key\(s\) \['embedings'\]"):
            TuneConfig.from_dict({"method": "norms", "norms": {"embedings": True}})
        run = check_method("norms", tiny_model_dir, tmp_path / "a", smol_tokenizer)
        assert run.metrics.settings == {"embeddings": False}
        assert run.built.trainable == 2 * 2 * 64 + 64
        with_emb = check_method("norms", tiny_model_dir, tmp_path / "b", smol_tokenizer,
                                norms__embeddings=True)  # fmt: skip
        assert with_emb.built.trainable == 2 * 2 * 64 + 64 + len(smol_tokenizer) * 64
        # spectune memory reads its section like the built-in ones
        from spectune.cli.main import main

        argv = [
            "memory",
            str(tiny_model_dir),
            "norms.embeddings=true",
            "--method",
            "norms",
            "--json",
            "--batch",
            "1",
            "--seq",
            "8",
        ]
        assert main(argv) == 0
        [estimate] = json.loads(capsys.readouterr().out)
        assert estimate["trainable"] == with_emb.built.trainable
    finally:
        st.unregister_method("norms")
