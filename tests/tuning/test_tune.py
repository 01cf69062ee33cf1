"""The tune recipe end to end on a tiny random Llama: files, numbers, interop, resume, errors."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from spectune.errors import SpectuneError
from spectune.tuning.config import TuneConfig
from spectune.tuning.recipe import tune
from tests.conftest import tiny_run_config


def _run(model_dir, out, method="lora", **changes):
    config = TuneConfig.from_dict(tiny_run_config(model_dir, method, **changes))
    return tune(config, out=out, progress=False)


def _log(out: Path) -> list[dict[str, str]]:
    with (out / "train_log.csv").open() as fh:
        return list(csv.DictReader(fh))


class KillAt(TrainerCallback):
    """Interrupts training at the end of step ``at_step``."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt


def _killing(real, *, at_step: int):
    """recipe.callbacks plus one that interrupts training at the end of ``at_step``."""

    def callbacks(run):
        return [*real(run), KillAt(at_step)]

    return callbacks


def _lora_count(r: int, hidden: int = 64, kv: int = 32, mlp: int = 128, blocks: int = 2) -> int:
    """LoRA parameters on every linear of the tiny Llama, by hand: r (in + out) per matrix."""
    per_block = (
        (hidden + hidden)
        + (hidden + kv) * 2
        + (hidden + hidden)
        + (hidden + mlp) * 2
        + (mlp + hidden)
    )
    return blocks * r * per_block


def test_lora_run_writes_the_whole_folder_with_consistent_numbers(
    tiny_model_dir, tmp_path, smol_tokenizer
):
    out = tmp_path / "lora"
    result = _run(tiny_model_dir, out)
    m = result.metrics
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "run.json", "before.json", "train_log.csv", "adapter",
            "metrics.json", "predictions.jsonl", "spectra", "plots", "report.html"} <= names  # fmt: skip
    marker = json.loads((out / "run.json").read_text())
    assert marker["status"] == "complete" and set(marker["files"]) == names - {".spectune.lock"}
    assert "checkpoints" not in names  # removed once the adapter is written
    assert marker["tree"]["adapter"] == sorted(
        p.relative_to(out / "adapter").as_posix()
        for p in (out / "adapter").rglob("*")
        if p.is_file()
    )
    assert json.loads((out / "metrics.json").read_text())["cost"]["trainable"] == m.cost.trainable
    assert (out / "config.yaml").read_text().startswith("# spectune tune --out")

    # trainable parameters: r (in + out) on all 14 linear layers, by hand
    assert m.cost.trainable == _lora_count(4) == 8192
    assert m.cost.trainable_percent == pytest.approx(100 * 8192 / m.cost.total)
    # the loss log: one row per step (logging_steps=1), steps 1..4, elapsed increasing
    log = _log(out)
    assert [int(r["step"]) for r in log] == [1, 2, 3, 4]
    assert m.training.global_step == 4 == m.cost.steps
    assert m.training.final_loss == pytest.approx(float(log[-1]["loss"]))
    assert all(
        float(a["elapsed_s"]) < float(b["elapsed_s"]) for a, b in zip(log, log[1:], strict=False)
    )
    # 4 steps x 4 examples of the task set: every token counted once
    assert m.cost.tokens > 16 * 20
    assert m.cost.tokens_per_second == pytest.approx(m.cost.tokens / m.cost.train_seconds)
    # padding-free batches (data.batching: auto, the tiny Llama keeps packed examples apart):
    # every position trained is a real token
    assert m.training.batching == "padding_free"
    assert m.cost.positions == m.cost.tokens and m.cost.padded_fraction == 0
    # at least the decoder's forward and its input gradients: 2 x 2 x positions x its
    # products (the tiny Llama's 2 blocks of hidden 64, MLP 128, key/value width 32)
    d, mlp, kv = 64, 128, 32
    block = 2 * d * d + 2 * d * kv + 3 * d * mlp
    assert m.cost.train_flops >= 4 * m.cost.positions * 2 * block
    assert m.cost.utilisation == pytest.approx(
        m.cost.train_flops / m.cost.train_seconds_this_session / m.cost.gemm_flops_per_second
    )
    saved = json.loads((out / "metrics.json").read_text())["cost"]
    assert saved["utilisation"] == pytest.approx(m.cost.utilisation)
    # where the time went: every phase before the report, training's own time inside "train",
    # together within the run's wall time (started to finished, whole seconds)
    phases = m.cost.phase_seconds
    assert list(phases) == ["data", "judge_before", "build", "train", "save", "judge_tuned",
                            "watch"]  # fmt: skip
    assert all(v > 0 for v in phases.values()) and saved["phase_seconds"] == phases
    assert phases["train"] >= m.cost.train_seconds_this_session - 1e-3
    wall = datetime.fromisoformat(marker["finished"]) - datetime.fromisoformat(marker["started"])
    assert sum(phases.values()) <= wall.total_seconds() + 1
    page = (out / "report.html").read_text()
    assert "0.0% of the positions trained" in page and "GFLOP/s on the model" in page
    slowest = max(phases, key=phases.get).replace("_", " ")
    assert f"where the time went</td><td>{slowest} {phases[max(phases, key=phases.get)]:.0f} s" in (
        page.replace('<td class="num">', "<td>")
    )
    assert m.cost.peak_rss_bytes > 50 * 2**20
    files = [p for p in (out / "adapter").rglob("*") if p.is_file()]
    assert m.cost.adapter_bytes == sum(p.stat().st_size for p in files)
    # learning / forgetting are the before/after numbers
    before = json.loads((out / "before.json").read_text())
    assert m.learning.accuracy_before == before["accuracy"]["accuracy"]
    assert m.forgetting.perplexity_before == before["perplexity"]["perplexity"]
    assert m.forgetting.perplexity_ratio == pytest.approx(
        m.after.perplexity.perplexity / before["perplexity"]["perplexity"])  # fmt: skip
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 8 == m.data["n_eval"]
    assert sum(p["correct_after"] for p in preds) == m.after.accuracy.n_correct
    # spectra: one row per LoRA pair with the base matrix's alpha alongside
    import pandas as pd

    details = pd.read_csv(out / "spectra" / "details.csv")
    assert len(details) == 14 and (details["lora_rank"] == 4).all()
    assert details["scaling"].eq(2.0).all()  # lora_alpha / r
    assert "base_alpha" in details and details["longname"].str.endswith(".lora_BA").all()
    assert m.spectra.n_layers == 14
    # intruder dimensions of W + s B A against W, per pair, summed in the summary
    assert "num_intruders" in details and details["num_intruders"].notna().all()
    assert m.spectra.num_intruders == int(details["num_intruders"].sum())
    assert {p.name for p in (out / "plots").iterdir()} >= {
        "loss_curve.png",
        "learning_forgetting.png",
    }
    # the tuned matrices W + s B A against the base's: scale collapse and correlation flow
    _check_base_against_tuned(out, tiny_model_dir, _lora_tuned(out, tiny_model_dir), 14)
    assert m.spectra.n_collapsed == 0 and m.spectra.n_flow_bent == 0
    assert m.row()["n_collapsed"] == 0
    assert {"scale_collapse.png", "correlation_flow.png", "intruders.png"} <= {
        p.name for p in (out / "spectra").iterdir()
    }
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "Scale collapse: tuned against base" in report and "14 matrices compared" in report


def _base_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v.double() for k, v in load_file(model_dir / "model.safetensors").items()}


def _lora_tuned(out: Path, model_dir: Path) -> dict[str, torch.Tensor]:
    """W + s B A of every adapted module, by hand from the adapter file (s = 8 / 4)."""
    from safetensors.torch import load_file

    ad = load_file(out / "adapter" / "adapter_model.safetensors")
    base = _base_weights(model_dir)
    tuned = {}
    for key in ad:
        if key.endswith("lora_A.weight"):
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            B = ad[key.replace("lora_A", "lora_B")].double()
            tuned[module] = base[module + ".weight"] + 2.0 * B @ ad[key].double()
    return tuned


def _log10_sq(W: torch.Tensor) -> tuple[float, float]:
    """(log10 ||W||_2^2, log10 ||W||_F^2)."""
    return (2 * float(torch.log10(torch.linalg.matrix_norm(W, 2))),
            2 * float(torch.log10(torch.linalg.matrix_norm(W, "fro"))))  # fmt: skip


def _check_base_against_tuned(out: Path, model_dir: Path, tuned: dict, n: int) -> None:
    """spectra/compare.csv's norm changes equal the ones computed by hand (float32 spectra)."""
    import pandas as pd

    table = pd.read_csv(out / "spectra" / "compare.csv").set_index("longname")
    assert len(table) == n and (table["match"] == "matched").all()
    base = _base_weights(model_dir)
    for module, W in tuned.items():
        spec0, frob0 = _log10_sq(base[module + ".weight"])
        spec1, frob1 = _log10_sq(W)
        row = table.loc[module]
        assert row["log_norm_a"] == pytest.approx(frob0, abs=2e-6)
        assert row["d_log_norm"] == pytest.approx(frob1 - frob0, abs=2e-6)
        assert row["d_log_spectral_norm"] == pytest.approx(spec1 - spec0, abs=2e-6)
    summary = json.loads((out / "spectra" / "compare.json").read_text())
    assert summary["labels"] == ["base", "tuned"] and summary["n_matched"] == n
    flow = pd.read_csv(out / "spectra" / "flow.csv")
    assert set(flow["kind"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                 "up_proj", "down_proj"}  # fmt: skip


def test_base_judging_matches_a_direct_evaluation(tiny_model_dir, tmp_path, smol_tokenizer):
    from transformers import AutoModelForCausalLM

    from spectune.judging.forgetting import perplexity

    out = tmp_path / "run"
    _run(tiny_model_dir, out)
    before = json.loads((out / "before.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    direct = perplexity(base, smol_tokenizer, n_chars=400, window=64, stride=32)
    assert before["perplexity"]["perplexity"] == pytest.approx(direct.perplexity, rel=1e-6)
    assert before["perplexity"]["text_sha256"] == direct.text_sha256


@pytest.mark.parametrize("method", ["lora", "dora", "rslora"])
def test_saved_adapter_loads_in_plain_peft_and_merged_model_in_transformers(
    method, tiny_model_dir, tmp_path, smol_tokenizer
):
    """The adapter on disk is the trained one: plain peft reproduces the after-perplexity,
    and the merged folder (plain transformers) gives the same logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from spectune.judging.forgetting import perplexity

    out = tmp_path / method
    config = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, method))
    m = tune(config, out=out, merge=True, progress=False).metrics
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, out / "adapter").eval()
    ppl = perplexity(peft_model, smol_tokenizer, n_chars=400, window=64, stride=32)
    assert ppl.perplexity == pytest.approx(m.after.perplexity.perplexity, rel=1e-5)
    assert ppl.perplexity != pytest.approx(m.before.perplexity.perplexity, rel=1e-4)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32).eval()
    ids = torch.tensor([smol_tokenizer("The cat sat on the mat.")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft_model(ids).logits, rtol=1e-4, atol=1e-4)
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["use_dora"] == (method == "dora")
    assert cfg["use_rslora"] == (method == "rslora")


def test_frog_interrupted_run_resumes_to_the_same_adapter(tiny_model_dir, tmp_path, monkeypatch):
    """Kill a FROG run after step 3 (checkpoint at step 2), resume it: the adapter equals an
    uninterrupted run's, the loss log has steps 1..4, files written before are kept."""
    from safetensors.torch import load_file

    from spectune.tuning import recipe

    straight = tmp_path / "straight"
    _run(tiny_model_dir, straight, "frog")

    out = tmp_path / "killed"
    real = recipe.callbacks
    monkeypatch.setattr(recipe, "callbacks", _killing(real, at_step=3))
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_model_dir, out, "frog")
    monkeypatch.setattr(recipe, "callbacks", real)  # (undo() would drop the cache fixture too)
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    assert (out / "checkpoints" / "checkpoint-2" / "frog_config.json").is_file()
    before = (out / "before.json").read_bytes()
    with pytest.raises(SpectuneError, match="interrupted run .* --resume"):
        _run(tiny_model_dir, out, "frog")
    config = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, "frog"))
    m = tune(config, out=out, resume=True, progress=False).metrics
    assert m.run.resumed is True and m.training.global_step == 4
    log = _log(out)
    assert [int(r["step"]) for r in log] == [1, 2, 3, 4]
    # train time counts the steps before the checkpoint too
    assert m.cost.train_seconds > m.cost.train_seconds_this_session
    assert m.cost.train_seconds >= float(log[-1]["elapsed_s"]) - 1e-3
    assert (out / "before.json").read_bytes() == before
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(out / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)
    assert any(k.endswith("frog_values") and a[k].abs().sum() > 0 for k in a)  # it trained
    # resuming a complete run is a no-op that returns its metrics
    again = tune(config, out=out, resume=True, progress=False)
    assert again.metrics.to_dict() == json.loads((out / "metrics.json").read_text())


def test_resume_with_another_config_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(
        json.dumps(
            {
                "spectune_run": 1,
                "kind": "tune",
                "status": "running",
                "files": ["run.json", "config.yaml"],
            }
        )
    )
    from spectune.tuning.config import yaml_dump

    saved = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, "lora"))
    saved.output_dir = str(out)
    (out / "config.yaml").write_text(yaml_dump(saved.to_dict()))
    other = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, "lora", lora__r=8))
    with pytest.raises(SpectuneError, match=r"--resume: this config differs .*\(in: lora\)"):
        tune(other, out=out, resume=True, progress=False)


def test_frog_and_full_runs_analyze_the_weight_delta(tiny_model_dir, tmp_path):
    import pandas as pd

    frog = _run(tiny_model_dir, tmp_path / "frog", "frog").metrics
    frog_total_weights = 2 * (64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3)
    assert frog.cost.trainable == round(0.05 * frog_total_weights)  # FROG's exact budget
    assert frog.method_extras["total_trainable"] == frog.cost.trainable
    details = pd.read_csv(tmp_path / "frog" / "spectra" / "details.csv")
    assert len(details) == 14 and "base_alpha" in details
    assert (tmp_path / "frog" / "plots" / "frog_layer_importance.png").is_file()
    # the rows are the sparse update itself (the base only alongside), and the comparison's
    # tuned matrices are W_base + the update: both by hand from the adapter file
    from safetensors.torch import load_file

    from spectune.watch.intruders import intruder_dimensions

    ad = load_file(tmp_path / "frog" / "adapter" / "adapter_model.safetensors")
    base = _base_weights(tiny_model_dir)
    tuned = {}
    by_name = details.set_index("longname")
    for key in ad:
        if key.endswith(".frog_indices"):
            module = key.removesuffix(".frog_indices")
            W0 = base[module + ".weight"]
            delta = torch.zeros(W0.numel(), dtype=torch.float64)
            delta[ad[key].long()] = ad[module + ".frog_values"].double()
            delta = delta.reshape(W0.shape)
            assert by_name.loc[module, "log_norm"] == pytest.approx(_log10_sq(delta)[1], abs=2e-6)
            tuned[module] = W0 + delta
            # intruder dimensions of the tuned matrix W_base + the update against W_base
            direct = intruder_dimensions(W0.double(), tuned[module].double())
            assert by_name.loc[module, "num_intruders"] == direct.num_intruders
    _check_base_against_tuned(tmp_path / "frog", tiny_model_dir, tuned, 14)

    full = _run(tiny_model_dir, tmp_path / "full", "full", train__learning_rate=1e-3).metrics
    assert full.cost.trainable == full.cost.total
    details = pd.read_csv(tmp_path / "full" / "spectra" / "details.csv")
    assert "rank90" in details and "base_alpha" in details
    assert len(details) == 15  # 14 linear layers + the (tied) embedding


def test_qlora_run_on_4bit_base(tiny_model_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    m = _run(tiny_model_dir, tmp_path / "qlora", "qlora").metrics
    assert m.cost.trainable == _lora_count(4)
    assert m.training.final_loss is not None
    assert m.before.model == "base model, float32"
    cfg = json.loads((tmp_path / "qlora" / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4


def test_gradient_check_stops_a_run_without_gradients():
    from spectune.tuning.trainer import GradientCheck

    check = GradientCheck()
    model = torch.nn.Linear(3, 3)
    with pytest.raises(SpectuneError, match="no gradient reached any of the 2 trainable tensors"):
        check.on_pre_optimizer_step(None, None, None, model=model)
    model.weight.grad = torch.ones(3, 3)
    check.checked = False
    check.on_pre_optimizer_step(None, None, None, model=model)  # a gradient: no error


# --------------------------------------------------------------------------- bad input


def test_bad_data_and_targets_name_the_problem(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "response": "b"}\n{"instruction": "c", "response"\n')
    with pytest.raises(SpectuneError, match=r"bad.jsonl, line 2: malformed JSON"):
        _run(tiny_model_dir, tmp_path / "o1", data__train=str(bad))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(SpectuneError, match="holds no examples"):
        _run(tiny_model_dir, tmp_path / "o2", data__train=str(empty))
    with pytest.raises(SpectuneError, match=r"missing.jsonl does not exist"):
        _run(tiny_model_dir, tmp_path / "o3", data__train=str(tmp_path / "missing.jsonl"))
    with pytest.raises(
        SpectuneError, match=r"target_modules=\['qproj'\] matches no module .*self_attn.q_proj"
    ):
        _run(tiny_model_dir, tmp_path / "o4", target_modules=["qproj"])
    for name in ("o1", "o2", "o3", "o4"):  # checked before the results folder is taken
        assert not (tmp_path / name).exists()
    with pytest.raises(
        SpectuneError, match=r"model '/nonexistent' is neither 'default' nor an existing folder"
    ):
        _run("/nonexistent", tmp_path / "o5")
    assert not (tmp_path / "o5").exists()  # nothing written for a run that cannot start


def test_file_dataset_with_seeded_holdout(tiny_model_dir, tmp_path):
    from spectune.data.examples import InstructionExample
    from spectune.tuning.recipe import load_run_data

    path = tmp_path / "d.jsonl"
    rows = [InstructionExample(f"Say {i}.", str(i), category="say").to_dolly() for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, data__train=str(path),
                                                  data__eval_fraction=0.1))  # fmt: skip
    data = load_run_data(config)
    train, heldout, info = data.train, data.heldout, data.info
    assert len(heldout) == 4 and len(train) == 36
    assert {e.instruction for e in train}.isdisjoint({e.instruction for e in heldout})
    again = load_run_data(config).heldout
    assert [e.instruction for e in again] == [e.instruction for e in heldout]  # seeded
    assert info["n_eval"] == 4


@pytest.mark.parametrize("method", ["plain", "lora", "frog"])
def test_head_only_on_labels_loss_equals_the_models_own_loss(
    method, tiny_model_dir, smol_tokenizer, tmp_path
):
    """SpectuneTrainer.compute_loss runs the output head only on labelled positions: same
    loss and same gradients as the model's own causal-LM loss, also with num_items_in_batch."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, TrainingArguments

    from spectune.data.instructions import InstructionCollator, tokenize_examples
    from spectune.data.tasks import generate_task_set
    from spectune.tuning.methods.frog import FrogConfig, apply_frog
    from spectune.tuning.objectives import get_objective
    from spectune.tuning.trainer import SpectuneTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        for name, p in model.named_parameters():  # B = 0 at init: make the adapter act
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    elif method == "frog":
        model = apply_frog(model, FrogConfig(budget=0.05))
    train, _ = generate_task_set(6, 1, seed=3)
    features, _ = tokenize_examples(train, smol_tokenizer, max_length=96)
    batch = InstructionCollator(smol_tokenizer.pad_token_id or smol_tokenizer.eos_token_id)(
        features
    )
    trainer = SpectuneTrainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
        objective=get_objective("sft"),
    )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in params]

    torch.manual_seed(0)
    ours = trainer.compute_loss(model, batch)
    g_ours = grads(ours)
    torch.manual_seed(0)
    ref = model(**batch).loss
    g_ref = grads(ref)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    n_labels = int((batch["labels"][:, 1:] != -100).sum())
    scaled = trainer.compute_loss(model, batch, num_items_in_batch=2 * n_labels)
    assert trainer.model_accepts_loss_kwargs  # Llama's forward takes **kwargs
    assert scaled.item() == pytest.approx(ref.item() / 2, rel=1e-5)


def test_qlora_keeps_unpackable_layers_unquantized_where_the_cpu_repacks(
    tmp_path, smol_tokenizer, monkeypatch
):
    """On a CPU where bitsandbytes repacks 4-bit weights for inference (AVX512-BF16), a layer
    whose input width is not a multiple of 64 (down_proj: 96) would assert in evaluation: it
    stays a plain Linear, with a note; the other layers are 4-bit and training still works."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    from spectune.models import hardware
    from spectune.tuning.methods import get_method, qlora
    from spectune.tuning.methods.base import BuildContext
    from spectune.tuning.recipe import build_model
    from tests.conftest import save_tiny_llama

    folder = save_tiny_llama(tmp_path / "odd", len(smol_tokenizer), hidden=64, mlp=96)
    smol_tokenizer.save_pretrained(folder)
    assert qlora.unpackable_modules(folder) == [f"model.layers.{i}.mlp.down_proj" for i in (0, 1)]
    monkeypatch.setattr(hardware, "cpu_packs_4bit", lambda: True)
    config = TuneConfig.from_dict(tiny_run_config(folder, "qlora"))
    ctx = BuildContext(config, folder, tmp_path, progress=False)
    built = build_model(get_method("qlora"), ctx)
    kept = [n for n in built.notes if "unquantized" in n]
    assert len(kept) == 1 and "kept 2 linear layer(s) unquantized" in kept[0]
    base = built.model.get_base_model()
    assert not isinstance(base.model.layers[0].mlp.down_proj.base_layer, bnb.nn.Linear4bit)
    assert isinstance(base.model.layers[0].mlp.up_proj.base_layer, bnb.nn.Linear4bit)
    m = tune(config, out=tmp_path / "run", progress=False).metrics
    judged = [n for n in m.notes if n.startswith("judging the tuned model: ")]  # random: no EOS
    assert m.notes == built.notes + judged and m.training.final_loss is not None


@pytest.mark.parametrize("native,wanted,dtype,noted", [
    (True, "auto", "bfloat16", False), (False, "auto", "float32", True),
    (False, "bfloat16", "bfloat16", False), (True, "float32", "float32", False),
])  # fmt: skip
def test_4bit_compute_dtype_follows_the_hardware(native, wanted, dtype, noted, monkeypatch):
    from spectune.models import hardware
    from spectune.tuning.methods import qlora

    monkeypatch.setattr(hardware, "native_bf16", lambda: native)
    config = TuneConfig.from_dict({"method": "qlora", "quant": {"compute_dtype": wanted}})
    got, note = qlora.compute_dtype(config)
    assert got == dtype and (note is not None) == noted
    if noted:
        assert "quant.compute_dtype=bfloat16" in note
