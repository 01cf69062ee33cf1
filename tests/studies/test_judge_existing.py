"""``spectune judge`` (:func:`spectune.studies.judge_existing.judge_model`) on the tiny model:
a spectune run judged again gives its own numbers exactly; a LoRA adapter trained by plain peft
code is judged, rendered, tabled and advised on; a merged model alone; bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from spectune.errors import SpectuneError
from spectune.results.metrics import RunMetrics
from spectune.studies.judge_existing import judge_model
from spectune.tuning.config import TuneConfig
from spectune.tuning.recipe import tune
from tests.conftest import save_tiny_llama, tiny_run_config

#: tiny_run_config's data and eval settings as key=value overrides (what a user would type)
SMALL = [
    "data.n_train=48", "data.n_eval=8", "data.max_length=96", "eval.max_new_tokens=4",
    "eval.batch_size=8", "eval.ppl_chars=400", "eval.ppl_window=64", "eval.ppl_stride=32",
    "eval.latency_tokens=3", "eval.latency_prompts=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir) -> tuple[Path, RunMetrics]:
    """A finished tiny LoRA run (its judge cache where the suite's autouse fixture puts it)."""
    with pytest.MonkeyPatch.context() as mp:
        judge_dir = tmp_path_factory.getbasetemp() / "judge-cache"
        mp.setattr("spectune.judging.cache.cache_dir", lambda: judge_dir)
        out = tmp_path_factory.mktemp("judge-existing") / "run"
        config = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, "lora"))
        return out, tune(config, out=out, progress=False).metrics


def _peft_adapter(model_dir: Path, folder: Path, tokenizer, *, steps: int = 3) -> Path:
    """A LoRA adapter trained by plain peft code: LoraConfig + get_peft_model, a few Adam steps
    by hand on one question of the task set, save_pretrained."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    batch = tokenizer(["Question: 12 + 30 = ? Answer: 42"], return_tensors="pt")
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- a spectune run


def test_judging_a_spectune_run_gives_its_own_numbers_exactly(tiny_run, tmp_path):
    run, m = tiny_run
    j = judge_model(str(m.run.model_dir), adapter=run, out=tmp_path / "judged", progress=False)
    got = j.metrics
    for a, b in ((m.before, got.before), (m.after, got.after)):
        assert b.accuracy.accuracy == a.accuracy.accuracy
        assert b.accuracy.n == a.accuracy.n == 8
        assert b.heldout_loss.loss == a.heldout_loss.loss
        assert b.perplexity.perplexity == a.perplexity.perplexity
    assert got.learning.heldout_loss_after < got.learning.heldout_loss_before  # it learned
    assert got.forgetting == m.forgetting
    # every answer before and after, and its verdict, is the run's own
    assert (tmp_path / "judged" / "predictions.jsonl").read_text() == (
        run / "predictions.jsonl"
    ).read_text()
    # the adapter's spectra beside the base's: the run's analysis again
    assert got.spectra.n_layers == m.spectra.n_layers == 14
    assert got.spectra.alpha == m.spectra.alpha and got.spectra.base_alpha == m.spectra.base_alpha
    assert got.spectra.num_intruders == m.spectra.num_intruders
    # the run's method, settings and training cost are its own; the latency is measured now
    assert got.run.method == "lora" and got.settings == m.settings
    assert got.cost.trainable == m.cost.trainable and got.cost.steps == 4
    assert got.cost.ms_per_token is not None and got.cost.ms_per_token > 0
    assert got.method_extras["judged"]["adapter"] == str(run / "adapter")
    marker = json.loads((tmp_path / "judged" / "run.json").read_text())
    assert marker["kind"] == "judge" and marker["status"] == "complete"
    assert {"metrics.json", "before.json", "predictions.jsonl", "spectra", "report.html",
            "config.yaml", "plots"} <= set(marker["files"])  # fmt: skip
    assert RunMetrics.load(tmp_path / "judged").after.accuracy.accuracy == m.after.accuracy.accuracy
    before = json.loads((tmp_path / "judged" / "before.json").read_text())
    assert before["heldout_loss"]["loss"] == m.learning.heldout_loss_before
    assert (tmp_path / "judged" / "spectra" / "details.csv").is_file()
    assert (tmp_path / "judged" / "plots" / "learning_forgetting.png").is_file()
    assert not (tmp_path / "judged" / "plots" / "loss_curve.png").exists()  # nothing trained


@pytest.mark.parametrize("method", ["frog", pytest.param("qlora", marks=pytest.mark.slow)])
def test_other_methods_runs_are_judged_by_their_own_method(method, tiny_model_dir, tmp_path):
    """FROG's sparse update (its own adapter format) and QLoRA's 4-bit base: loaded by the
    run's method, judged to the run's numbers."""
    config = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, method))
    m = tune(config, out=tmp_path / "run", progress=False).metrics
    got = judge_model(str(tiny_model_dir), adapter=tmp_path / "run", out=tmp_path / "j",
                      progress=False).metrics  # fmt: skip
    assert got.run.method == method
    assert got.after.heldout_loss.loss == m.after.heldout_loss.loss
    assert got.after.perplexity.perplexity == m.after.perplexity.perplexity
    assert got.after.accuracy.accuracy == m.after.accuracy.accuracy
    assert got.spectra.n_layers == m.spectra.n_layers and got.spectra.alpha == m.spectra.alpha


def test_a_complete_judge_folder_needs_overwrite_and_a_tune_run_is_not_taken(tiny_run, tmp_path):
    run, m = tiny_run
    kw = dict(adapter=run / "adapter", progress=False, overrides=["eval.spectra=false"])
    out = tmp_path / "j"
    first = judge_model(m.run.model_dir, out=out, **kw).metrics
    assert first.after.heldout_loss.loss == m.after.heldout_loss.loss  # run/adapter: the run
    with pytest.raises(SpectuneError, match="already holds a complete run"):
        judge_model(m.run.model_dir, out=out, **kw)
    again = judge_model(m.run.model_dir, out=out, overwrite=True, **kw).metrics
    assert again.after.perplexity.perplexity == first.after.perplexity.perplexity
    with pytest.raises(SpectuneError, match="holds a spectune tune run, not a judge run"):
        judge_model(m.run.model_dir, out=run, progress=False)
    assert json.loads((run / "run.json").read_text())["kind"] == "tune"


# --------------------------------------------------------------------------- a peft adapter


def test_a_plain_peft_adapter_is_judged_tabled_and_advised_on(
    tiny_model_dir, smol_tokenizer, tmp_path
):
    from spectune.judging.forgetting import perplexity
    from spectune.results.table import csv_text
    from spectune.studies.advice import load_candidates

    mine = _peft_adapter(tiny_model_dir, tmp_path / "mine", smol_tokenizer)
    out = tmp_path / "study" / "runs" / "mine"
    m = judge_model(str(tiny_model_dir), adapter=mine, out=out, overrides=SMALL,
                    progress=False).metrics  # fmt: skip
    assert m.run.method == "peft-lora"
    # r (in + out) per adapted matrix: q_proj 64 -> 64, v_proj 64 -> 32, in 2 blocks
    assert m.cost.trainable == 2 * 4 * ((64 + 64) + (64 + 32))
    assert m.cost.steps == 0 and m.cost.train_seconds == 0.0
    assert m.before is not None and m.learning.heldout_loss_after != m.learning.heldout_loss_before
    assert m.spectra.n_layers == 4 and m.spectra.base_alpha is not None
    # the perplexity is the adapter's, as plain peft computes it on the same text
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, mine).eval()
    with torch.no_grad():
        ppl = perplexity(tuned, smol_tokenizer, n_chars=400, window=64, stride=32)
    assert m.forgetting.perplexity_after == pytest.approx(ppl.perplexity, rel=1e-6)
    # the sweep table's row, and advise over a folder of such runs
    row = m.row()
    assert row["method"] == "peft-lora" and row["perplexity_after"] == m.forgetting.perplexity_after
    assert "peft-lora" in csv_text([row])
    (cand,) = load_candidates(tmp_path / "study")
    assert cand.method == "peft-lora"
    # a merged model judged alone: the same model, so the same perplexity (rounding apart)
    merged = tmp_path / "merged"
    tuned.merge_and_unload().save_pretrained(merged)
    smol_tokenizer.save_pretrained(merged)
    alone = judge_model(str(merged), out=tmp_path / "alone", overrides=SMALL, progress=False)
    a = alone.metrics
    assert a.before is None and a.learning.accuracy_before is None and a.run.method == "model"
    assert a.after.perplexity.perplexity == pytest.approx(ppl.perplexity, rel=1e-4)
    assert a.after.heldout_loss.loss == pytest.approx(m.after.heldout_loss.loss, rel=1e-4)
    assert a.spectra is None and not (tmp_path / "alone" / "before.json").exists()


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A tiny Llama of another width (hidden 32) with the same tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-llama-32")
    save_tiny_llama(folder, len(smol_tokenizer), hidden=32)
    smol_tokenizer.save_pretrained(folder)
    return folder


def test_an_adapter_of_another_base_is_one_error_naming_both(
    tiny_model_dir, other_model_dir, smol_tokenizer, tmp_path
):
    adapter = _peft_adapter(other_model_dir, tmp_path / "a", smol_tokenizer, steps=1)
    out = tmp_path / "out"
    with pytest.raises(SpectuneError) as exc:
        judge_model(str(tiny_model_dir), adapter=adapter, out=out, progress=False)
    text = str(exc.value)
    assert str(other_model_dir) in text and str(tiny_model_dir) in text
    assert "another architecture (hidden_size 32 vs 64" in text
    assert not out.exists()
    # its base named by a hub id that is not here: the shapes still say no
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "someone/tiny-32"
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(SpectuneError, match=r"reads 32 features, MODEL's .*q_proj has 64"):
        judge_model(str(tiny_model_dir), adapter=adapter, out=out, progress=False)
    # names both known and different: refused before any weight is read
    named = tmp_path / "named"
    shutil.copytree(tiny_model_dir, named)
    config = json.loads((named / "config.json").read_text())
    (named / "config.json").write_text(json.dumps({**config, "_name_or_path": "Org/tiny-64"}))
    with pytest.raises(SpectuneError, match="names base 'tiny-32', MODEL is 'tiny-64'"):
        judge_model(str(named), adapter=adapter, out=out, progress=False)


def test_bad_adapter_model_and_output_folders(tiny_model_dir, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(SpectuneError, match="neither a peft adapter folder"):
        judge_model(str(tiny_model_dir), adapter=plain, out=tmp_path / "o", progress=False)
    with pytest.raises(SpectuneError, match="no such folder"):
        judge_model(str(tiny_model_dir), adapter=tmp_path / "nope", out=tmp_path / "o")
    (plain / "adapter_config.json").write_text(json.dumps({"r": 4}))
    with pytest.raises(SpectuneError, match="has no peft_type"):
        judge_model(str(tiny_model_dir), adapter=plain, out=tmp_path / "o", progress=False)
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "model.safetensors").write_bytes(b"x")
    with pytest.raises(SpectuneError, match="has no config.json"):
        judge_model(str(merged), out=tmp_path / "o", progress=False)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(SpectuneError, match="holds no spectune run"):
        judge_model(str(tiny_model_dir), out=theirs, overrides=SMALL, progress=False)
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]
    assert (theirs / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "o").exists()
