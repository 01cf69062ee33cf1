"""Validation during training on a tiny random Llama: the split, the loss, early stopping, the
best checkpoint, the spectra watch, resume, the config checks; and the accuracy intervals of
the comparison table."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from spectune.data.instructions import split_validation
from spectune.errors import SpectuneError
from spectune.results.metrics import RunMetrics
from spectune.tuning import checks, recipe
from spectune.tuning.config import TuneConfig
from spectune.tuning.recipe import tune
from tests.conftest import tiny_run_config
from tests.tuning.test_tune import _killing


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _peft_model(model_dir: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter).eval()


def _batches(features: list, collator, size: int):
    for start in range(0, len(features), size):
        chunk = features[start : start + size]
        yield len(chunk), collator(chunk)


# --------------------------------------------------------------------------- data


def write_fruit_files(folder: Path) -> dict[str, Path]:
    """A file whose validation split (data.n_validation=8, seed 0: planted with
    split_validation) answers "banana ..." where every training example answers "apple ...":
    training on apples makes the validation loss rise. A held-out file of 4 questions."""
    n_rows, n_val = 40, 8
    _, val_idx = split_validation(list(range(n_rows)), n_val, 0)
    rows = [{"instruction": f"Name a fruit ({i}).", "category": "fruit",
             "response": " ".join(["banana" if i in val_idx else "apple"] * 6)}
            for i in range(n_rows)]  # fmt: skip
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    held = [{"instruction": f"Name a fruit (h{i}).", "response": "apple"} for i in range(4)]
    (folder / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    return {"train": folder / "train.jsonl", "eval": folder / "heldout.jsonl",
            "val_idx": val_idx}  # fmt: skip


@pytest.fixture(scope="module")
def fruit_files(tmp_path_factory) -> dict[str, Path]:
    return write_fruit_files(tmp_path_factory.mktemp("fruit"))


def _fruit_config(model_dir: Path, files: dict, method: str = "lora", **train) -> dict:
    data = tiny_run_config(model_dir, method, eval__spectra=False, eval__latency_prompts=0)
    data["data"] = {"train": str(files["train"]), "eval": str(files["eval"]), "n_validation": 8,
                    "max_length": 64}  # fmt: skip
    data["train"].pop("save_steps")  # follows eval_steps with load_best_model_at_end
    data["train"].update(eval_steps=1, lr_scheduler_type="constant", keep_checkpoints=True,
                         **train)  # fmt: skip
    return data


def test_the_validation_split_is_carved_from_training_disjoint_and_seeded(tiny_model_dir):
    plain = TuneConfig.from_dict(tiny_run_config(tiny_model_dir))
    config = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, data__n_validation=8))
    full, data = checks.load_run_data(plain), checks.load_run_data(config)
    assert (len(data.train), len(data.validation), len(data.heldout)) == (40, 8, 8)
    key = lambda ex: (ex.instruction, ex.context, ex.response)  # noqa: E731
    train, val, held = ({key(ex) for ex in part} for part in (data.train, data.validation,
                                                              data.heldout))  # fmt: skip
    assert len(val) == 8 and not val & train and not val & held and not train & held
    # the same 48 training records, 8 of them moved to validation in their own order
    rest, carved = split_validation(full.train, 8, config.seed)
    assert data.train == rest and data.validation == carved
    assert data.validation == [ex for ex in full.train if key(ex) in val]
    assert data.info["n_train"] == 40 and data.info["n_validation"] == 8
    # the same split for the same seed; another seed, another split
    assert checks.load_run_data(config).validation == data.validation
    other = checks.load_run_data(TuneConfig.from_dict(
        tiny_run_config(tiny_model_dir, seed=1, data__n_validation=8)))  # fmt: skip
    assert {key(ex) for ex in other.validation} != val


def test_the_study_carves_its_validation_split_with_the_same_function(tiny_model_dir, tmp_path):
    from spectune.studies.study import StudySpec, _write_validation_split
    from spectune.tuning.objectives.sft import load_instruction_data

    base = tiny_run_config(tiny_model_dir)
    spec = StudySpec(methods=["lora"], validation=8, lr_seed=3)
    split = _write_validation_split(base, spec, tmp_path)
    train = load_instruction_data(TuneConfig.from_dict({**base, "seed": 3})).train
    _, expected = split_validation(train, 8, 3)
    lines = Path(split["eval"]).read_text().splitlines()
    assert [json.loads(x)["instruction"] for x in lines] == [ex.instruction for ex in expected]


# --------------------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    ("data", "train", "eval_", "message"),
    [({}, {"eval_strategy": "steps"}, {}, r"train.eval_strategy: steps evaluates a validation "
      r"split, and there is none: set data.n_validation"),
     ({"n_validation": 8}, {"eval_strategy": "no"}, {}, r"data.n_validation carves 8 training "
      r"examples out that train.eval_strategy: no never evaluates"),
     ({"n_validation": 8}, {"eval_steps": 0}, {}, r"train.eval_steps must be >= 1, got 0"),
     ({"n_validation": 8}, {"eval_steps": 0.5}, {}, r"train.eval_steps must be an integer"),
     ({}, {"early_stopping_patience": 2}, {}, r"train.early_stopping_patience needs a "
      r"validation split to watch: set data.n_validation"),
     ({}, {"load_best_model_at_end": True}, {}, r"train.load_best_model_at_end needs a "
      r"validation split"),
     ({"n_validation": 8}, {"early_stopping_patience": 0}, {},
      r"train.early_stopping_patience must be >= 1"),
     ({"n_validation": 8}, {"early_stopping_threshold": 0.1}, {},
      r"train.early_stopping_threshold is read only with train.early_stopping_patience"),
     ({"n_validation": 8}, {"early_stopping_patience": 1, "early_stopping_threshold": -1}, {},
      r"train.early_stopping_threshold must be >= 0"),
     ({"n_validation": 8}, {"load_best_model_at_end": True, "save_steps": 2}, {},
      r"train.save_steps \(2\) must equal train.eval_steps \(1\)"),
     ({"n_validation": 8}, {"load_best_model_at_end": True, "save_strategy": "epoch"}, {},
      r"train.save_strategy \(epoch\) must be train.eval_strategy \(steps\)"),
     ({"n_validation": 8}, {"metric_for_best_model": "accuracy"}, {},
      r"measures the objective's loss only; use 'loss'"),
     ({"n_validation": 8}, {"greater_is_better": True}, {}, r"a lower validation loss is better"),
     ({"n_validation": 8}, {"save_strategy": "best"}, {}, r"train.save_strategy must be one of"),
     ({"n_validation": 48}, {}, {}, r"data.n_validation \(48\) must be below data.n_train \(48\)"),
     ({"n_validation": -1}, {}, {}, r"data.n_validation must be >= 0"),
     ({}, {}, {"spectra_every_steps": 0}, r"eval.spectra_every_steps must be >= 1, got 0")],
)  # fmt: skip
def test_bad_validation_settings_are_refused_before_the_run_folder(
    tiny_model_dir, tmp_path, data, train, eval_, message
):
    raw = tiny_run_config(tiny_model_dir)
    raw["data"].update(data)
    raw["train"].update({"eval_steps": 1, **train} if data.get("n_validation") else train)
    raw["eval"].update(eval_)
    with pytest.raises(SpectuneError, match=message):
        TuneConfig.from_dict(raw)


def test_a_validation_split_larger_than_a_data_file_fails_before_the_folder(
    tiny_model_dir, tmp_path, fruit_files
):
    raw = _fruit_config(tiny_model_dir, fruit_files)
    raw["data"]["n_validation"] = 40  # the file holds 40 training examples
    out = tmp_path / "run"
    with pytest.raises(SpectuneError, match=r"data.n_validation \(40\) must be at least 1 and "
                       r"below the 40 training examples"):  # fmt: skip
        tune(TuneConfig.from_dict(raw), out=out, progress=False)
    assert not out.exists()


def test_validation_defaults_follow_transformers_and_are_written_out(tiny_model_dir):
    raw = tiny_run_config(tiny_model_dir, data__n_validation=8)
    raw["train"].pop("save_steps")
    raw["train"].update(logging_steps=3, load_best_model_at_end=True)
    config = TuneConfig.from_dict(raw)
    args = config.training_arguments()
    assert (args["eval_strategy"], args["eval_steps"], args["save_strategy"], args["save_steps"],
            args["metric_for_best_model"]) == ("steps", 3, "steps", 3, "loss")  # fmt: skip
    again = TuneConfig.from_dict(config.to_dict())  # the resolved config reads back the same
    assert again.to_dict() == config.to_dict()
    built = recipe.training_arguments(config, Path("/tmp/x"), progress=False)
    assert built.eval_strategy == "steps" and built.eval_steps == 3 and built.save_steps == 3
    assert built.load_best_model_at_end and built.greater_is_better is False
    # no validation: nothing added (older configs and caches unchanged)
    plain = TuneConfig.from_dict(tiny_run_config(tiny_model_dir)).training_arguments()
    assert not {"eval_strategy", "eval_steps", "metric_for_best_model"} & set(plain)


# --------------------------------------------------------------------------- the loss


@pytest.fixture(scope="module")
def lora_watched(tiny_model_dir, tmp_path_factory):
    """LoRA, 4 steps: validation (8 examples, batches of 3) and spectra every 2 steps,
    checkpoints kept (every 2 steps)."""
    raw = tiny_run_config(tiny_model_dir, data__n_validation=8, eval__spectra_every_steps=2)
    raw["train"].update(eval_steps=2, per_device_eval_batch_size=3, keep_checkpoints=True)
    config = TuneConfig.from_dict(raw)
    out = tmp_path_factory.mktemp("watched") / "lora"
    return config, tune(config, out=out, progress=False)


def test_validation_loss_is_the_objectives_loss_on_the_split_at_that_step(
    lora_watched, tiny_model_dir, smol_tokenizer
):
    """Each logged validation loss equals the model's own loss on the split, computed here from
    the checkpoint of that step: batches of 3, 3 and 2 in the split's order, weighted 3:3:2."""
    from spectune.data.instructions import InstructionCollator, tokenize_examples
    from spectune.models.tokenizer import pad_token_id

    config, result = lora_watched
    out = result.out
    rows = _csv(out / "validation_log.csv")
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert all(int(r["examples"]) == 8 for r in rows)
    data = checks.load_run_data(config)
    features, _ = tokenize_examples(data.validation, smol_tokenizer, max_length=96)
    collate = InstructionCollator(pad_token_id(smol_tokenizer))
    for row, adapter in zip(rows, (out / "checkpoints" / "checkpoint-2", out / "adapter"),
                            strict=True):  # fmt: skip
        model = _peft_model(tiny_model_dir, adapter)
        total = 0.0
        with torch.no_grad():
            for size, batch in _batches(features, collate, 3):
                total += size * float(model(**batch).loss)
        assert float(row["validation_loss"]) == pytest.approx(total / 8, rel=1e-5)
    v = result.metrics.validation
    assert [p.step for p in v.curve] == [2, 4] and v.n_examples == 8
    assert v.curve[1].loss == pytest.approx(float(rows[1]["validation_loss"]))
    assert v.adapter_step == 4 and not v.restored_best and not v.stopped_early
    assert v.best_loss == min(p.loss for p in v.curve)
    assert result.metrics.row()["validation_loss"] == v.curve[1].loss  # the adapter's step
    # the validation batches are not counted as trained tokens
    assert result.metrics.cost.tokens < 4 * 4 * 96


def test_spectra_watch_rows_match_method_spectra_at_that_step(lora_watched, tiny_model_dir):
    from spectune.tuning.methods import get_method
    from spectune.tuning.methods.base import BuildContext
    from spectune.watch import analyze

    config, result = lora_watched
    out = result.out
    rows = _csv(out / "spectra_log.csv")
    assert sorted({int(r["step"]) for r in rows}) == [2, 4]
    method = get_method("lora")
    ctx = BuildContext(config, tiny_model_dir, out, progress=False)
    for step, adapter in ((2, out / "checkpoints" / "checkpoint-2"), (4, out / "adapter")):
        what = method.spectra(None, ctx, adapter)
        direct = analyze(what.source, peft=what.peft, precision="float32", progress=False)
        logged = {r["longname"]: r for r in rows if int(r["step"]) == step}
        assert set(logged) == set(direct["longname"]) and len(logged) == 14
        for rec in direct.to_dict(orient="records"):
            assert float(logged[rec["longname"]]["alpha"]) == pytest.approx(rec["alpha"], rel=1e-6)
            assert logged[rec["longname"]]["status"] == rec["status"]
        point = next(p for p in result.metrics.spectra_curve if p.step == step)
        ok = direct[direct["status"] == "success"]["alpha"]
        assert point.n_layers == 14 and point.n_fitted == len(ok)
        assert point.mean_alpha == pytest.approx(float(ok.mean()), rel=1e-6)
        assert point.frac_alpha_below_2 == pytest.approx(float((ok < 2).mean()))


def test_the_report_shows_the_validation_and_metrics_read_back(lora_watched):
    _, result = lora_watched
    out, m = result.out, result.metrics
    assert {"validation_curve.png", "spectra_vs_validation.png"} <= {
        p.name for p in (out / "plots").iterdir()
    }
    page = (out / "report.html").read_text()
    assert "Validation during training" in page and "every 2 steps and at the last" in page
    marker = json.loads((out / "run.json").read_text())
    assert {"validation_log.csv", "spectra_log.csv"} <= set(marker["files"])
    again = RunMetrics.load(out)
    assert again.validation == m.validation and again.spectra_curve == m.spectra_curve
    assert again.learning == m.learning
    # a metrics file written before validation existed loads, with nothing of it
    old = m.to_dict()
    for key in ("validation", "spectra_curve"):
        old.pop(key)
    for key in ("accuracy_before_interval", "accuracy_after_interval"):
        old["learning"].pop(key)
    legacy = RunMetrics.from_dict(old)
    assert legacy.validation is None and legacy.spectra_curve == []
    assert legacy.learning.accuracy_after_interval is None
    assert legacy.row()["validation_loss"] is None and legacy.row()["accuracy_after_low"] is None


@pytest.mark.parametrize("objective", ["distill", "lipo"])
def test_validation_loss_of_other_objectives_is_their_own_loss(
    objective, tiny_model_dir, tmp_path, smol_tokenizer
):
    """distill (KL to the teacher) and lipo (the list loss): the final validation loss equals
    the objective's compute_loss on its validation features with the saved adapter."""
    from spectune.tuning.objectives import get_objective
    from spectune.tuning.objectives.base import JudgeContext

    extra = {"distill": {"distill": {"shots": 1}}, "lipo": {"lipo": {"list_size": 3}}}[objective]
    raw = tiny_run_config(tiny_model_dir, objective=objective, data__n_train=24,
                          data__n_validation=6, eval__latency_prompts=0, eval__spectra=False,
                          **extra)  # fmt: skip
    raw["train"].update(max_steps=2, eval_steps=2, per_device_eval_batch_size=4)
    config = TuneConfig.from_dict(raw)
    result = tune(config, out=tmp_path / objective, progress=False)
    (point,) = result.metrics.validation.curve
    obj = get_objective(objective)
    data = checks.load_run_data(config)
    ctx = JudgeContext(config, smol_tokenizer, data, tiny_model_dir)
    ctx.state = obj.prepare(ctx)
    val = obj.validation_features(config, data, smol_tokenizer, ctx)
    assert len(val.dataset) >= 6  # every validation record is scored (distill: + rationale rows)
    model = _peft_model(tiny_model_dir, result.out / "adapter")
    stub = SimpleNamespace(objective_state=ctx.state, model_accepts_loss_kwargs=False,
                           args=SimpleNamespace(seed=0), state=SimpleNamespace(global_step=2))  # fmt: skip
    total = 0.0
    with torch.no_grad():
        for size, batch in _batches(list(val.dataset), val.collator, 4):
            total += size * float(obj.compute_loss(stub, model, batch))
    assert point.step == 2 and point.loss == pytest.approx(total / len(val.dataset), rel=1e-5)


# --------------------------------------------------------------------------- early stopping, best


@pytest.fixture(scope="module")
def stopped(tiny_model_dir, fruit_files, tmp_path_factory):
    """LoRA on the fruit file: early stopping (patience 2), the best checkpoint restored, the
    spectra every step."""
    raw = _fruit_config(tiny_model_dir, fruit_files, max_steps=8, early_stopping_patience=2,
                        load_best_model_at_end=True)  # fmt: skip
    raw["eval"]["spectra_every_steps"] = 1
    config = TuneConfig.from_dict(raw)
    return config, tune(config, out=tmp_path_factory.mktemp("stop") / "lora", progress=False)


def _stop_step(losses: list[float], patience: int, threshold: float = 0.0) -> int | None:
    """transformers' early-stopping rule replayed on a curve (1-based evaluation index)."""
    best, counter = None, 0
    for i, v in enumerate(losses, 1):
        counter = 0 if best is None or (v < best and best - v > threshold) else counter + 1
        best = v if best is None else min(best, v)
        if counter >= patience:
            return i
    return None


def test_early_stopping_stops_at_the_planted_step_and_restores_the_best(stopped):
    """Training on apples makes the banana validation loss rise from the first evaluation:
    with patience 2 the run stops at step 3, and its adapter is step 1's (its checkpoint's
    tensors, not the last step's)."""
    from safetensors.torch import load_file

    _, result = stopped
    m, out = result.metrics, result.out
    v = m.validation
    losses = [p.loss for p in v.curve]
    assert [p.step for p in v.curve] == [1, 2, 3] and losses[0] < losses[1] < losses[2]
    assert m.training.global_step == 3 == _stop_step(losses, 2) and v.stopped_early
    assert (v.best_step, v.adapter_step, v.restored_best) == (1, 1, True)
    assert (v.early_stopping_patience, v.early_stopping_threshold) == (2, 0.0)
    saved = load_file(out / "adapter" / "adapter_model.safetensors")
    best = load_file(out / "checkpoints" / "checkpoint-1" / "adapter_model.safetensors")
    last = load_file(out / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors")
    assert saved.keys() == best.keys()
    for key in saved:
        torch.testing.assert_close(saved[key], best[key], rtol=0, atol=0)
    assert any(not torch.equal(saved[k], last[k]) for k in saved)
    assert m.row()["validation_loss"] == losses[0]  # the validation loss of the adapter's step


def test_early_stopping_threshold_counts_small_improvements_as_none(tiny_model_dir, fruit_files,
                                                                    tmp_path):  # fmt: skip
    """A threshold of 10 nats: no evaluation improves that much, so the patience (2) runs out
    at the third evaluation whatever the curve; the rule replayed on the logged curve agrees."""
    raw = _fruit_config(tiny_model_dir, fruit_files, "lora", max_steps=6, learning_rate=3e-2,
                        early_stopping_patience=2, early_stopping_threshold=10.0)  # fmt: skip
    raw["train"]["save_steps"] = 1
    m = tune(TuneConfig.from_dict(raw), out=tmp_path / "thr", progress=False).metrics
    losses = [p.loss for p in m.validation.curve]
    assert m.training.global_step == 3 == _stop_step(losses, 2, 10.0)
    assert m.validation.stopped_early and not m.validation.restored_best
    assert m.validation.adapter_step == 3  # no best checkpoint asked for: the last step's


def test_frog_best_checkpoint_is_restored_in_its_own_format_and_spectra_watched(
    tiny_model_dir, fruit_files, tmp_path
):
    """FROG keeps its own checkpoint format (indices and values): the restored adapter holds
    the best step's values; its spectra during training (the update's deltas, no saving)
    match Method.spectra of the model rebuilt from that checkpoint."""
    from safetensors.torch import load_file

    from spectune.tuning.methods import get_method
    from spectune.watch import analyze

    raw = _fruit_config(tiny_model_dir, fruit_files, "frog", max_steps=4,
                        load_best_model_at_end=True)  # fmt: skip
    raw["eval"]["spectra_every_steps"] = 1
    config = TuneConfig.from_dict(raw)
    result = tune(config, out=tmp_path / "frog", progress=False)
    v, out = result.metrics.validation, result.out
    assert (
        v.restored_best
        and v.adapter_step == v.best_step == 1 != result.metrics.training.global_step
    )
    best_ckpt = out / "checkpoints" / "checkpoint-1"
    saved = load_file(out / "adapter" / "adapter_model.safetensors")
    best = load_file(best_ckpt / "adapter_model.safetensors")
    last = load_file(out / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors")
    assert saved.keys() == best.keys() and any(k.endswith("frog_values") for k in saved)
    for key in saved:
        torch.testing.assert_close(saved[key], best[key], rtol=0, atol=0)
    assert any(not torch.equal(saved[k], last[k]) for k in saved)
    method = get_method("frog")
    run = recipe.setup(config, out=tmp_path / "rebuilt", progress=False)
    with run.folder:
        built = recipe.build_model(method, run.context)
        assert method.load_checkpoint(built.model, best_ckpt)
        what = method.spectra(built, run.context, tmp_path / "unused")
        direct = analyze(what.source, peft=what.peft, delta=what.delta, precision="float32",
                         progress=False)  # fmt: skip
    assert not (tmp_path / "unused").exists()  # FROG's spectra read the model, not a folder
    logged = {r["longname"]: r for r in _csv(out / "spectra_log.csv") if r["step"] == "1"}
    assert len(logged) == len(direct) > 0
    for rec in direct.to_dict(orient="records"):
        got = logged[rec["longname"]]["alpha"]
        if isinstance(rec["alpha"], float) and math.isfinite(rec["alpha"]):
            assert float(got) == pytest.approx(rec["alpha"], rel=1e-6)


def test_resumed_run_continues_the_curve_and_stops_where_an_uninterrupted_one_does(
    stopped, tmp_path, monkeypatch
):
    """Killed after step 3's update (checkpoint 2 holds a patience count of 1), resumed: the
    validation and spectra logs equal the uninterrupted run's, it stops at step 3 (the count
    is recounted from the log), and restores the same best adapter."""
    from safetensors.torch import load_file

    config, straight = stopped
    out = tmp_path / "killed"
    real = recipe.callbacks
    monkeypatch.setattr(recipe, "callbacks", _killing(real, at_step=3))
    with pytest.raises(KeyboardInterrupt):
        tune(config, out=out, progress=False)
    monkeypatch.setattr(recipe, "callbacks", real)
    assert [int(r["step"]) for r in _csv(out / "validation_log.csv")] == [1, 2]
    m = tune(config, out=out, resume=True, progress=False).metrics
    assert m.run.resumed and m.training.global_step == 3 and m.validation.stopped_early
    a, b = _csv(straight.out / "validation_log.csv"), _csv(out / "validation_log.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b] == ["1", "2", "3"]
    for x, y in zip(a, b, strict=True):
        assert float(x["validation_loss"]) == pytest.approx(float(y["validation_loss"]), rel=1e-5)
    sa, sb = _csv(straight.out / "spectra_log.csv"), _csv(out / "spectra_log.csv")
    assert [(r["step"], r["longname"]) for r in sa] == [(r["step"], r["longname"]) for r in sb]
    for x, y in zip(sa, sb, strict=True):
        assert float(x["alpha"]) == pytest.approx(float(y["alpha"]), rel=1e-4)
    assert m.validation.adapter_step == 1 and m.validation.restored_best
    x = load_file(straight.out / "adapter" / "adapter_model.safetensors")
    y = load_file(out / "adapter" / "adapter_model.safetensors")
    for key in x:
        torch.testing.assert_close(x[key], y[key], rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- 4-bit


@pytest.mark.filterwarnings("ignore:bitsandbytes::gemv_4bit")  # the control's lost gradients
def test_qlora_keeps_its_adapters_gradients_after_a_validation_pass(tiny_model_dir,
                                                                     smol_tokenizer):  # fmt: skip
    """An eval-mode no-grad forward repacks bitsandbytes' 4-bit weights on CPUs with
    AVX512-BF16, after which most adapters get no gradient; the validation pass unpacks them."""
    pytest.importorskip("bitsandbytes")
    from spectune.data.instructions import InstructionCollator, tokenize_examples
    from spectune.models.hardware import cpu_packs_4bit
    from spectune.models.tokenizer import pad_token_id
    from spectune.tuning.methods import get_method
    from spectune.tuning.methods.base import BuildContext
    from spectune.tuning.trainer import validation_loss

    config = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, "qlora"))
    data = checks.load_run_data(config)
    features, _ = tokenize_examples(data.train[:6], smol_tokenizer, max_length=64)
    collate = InstructionCollator(pad_token_id(smol_tokenizer))
    batch = collate(features[:4])

    def grads(model) -> int:
        model.train()
        model.zero_grad()
        model(**batch).loss.backward()
        return sum(p.grad is not None and bool(p.grad.abs().sum() > 0)
                   for p in model.parameters() if p.requires_grad)  # fmt: skip

    def fresh():
        ctx = BuildContext(config, tiny_model_dir, Path("."), False)
        return recipe.build_model(get_method("qlora"), ctx).model

    model = fresh()
    before = grads(model)
    stub = SimpleNamespace(_prepare_inputs=lambda b: b,
                           compute_loss=lambda m, b: m(**b).loss)  # fmt: skip
    loss, n = validation_loss(stub, model, features, collate, 4)
    assert n == 6 and math.isfinite(loss) and model.training
    assert grads(model) == before == 14  # every lora_B (lora_A's are 0 while B is 0)
    if cpu_packs_4bit():  # the hazard is real on this CPU: without unpacking, gradients go
        model = fresh()
        model.eval()
        with torch.no_grad():
            model(**batch)
        assert grads(model) < before


# --------------------------------------------------------------------------- the table


def test_comparison_table_shows_bootstrap_intervals_of_the_stored_answers(
    tiny_model_dir, tmp_path, capsys
):
    """A model trained to answer "apple" gets 8 of 12 mixed held-out questions right: the
    table's interval is stats.bootstrap_mean of predictions.jsonl's correct_after, and a line
    says the table is one seed."""
    from spectune.cli._common import show_comparison
    from spectune.results.stats import bootstrap_mean
    from spectune.studies.sweep import run_comparison

    rows = [{"instruction": f"Name a fruit ({i}).", "response": "apple"} for i in range(40)]
    held = [{"instruction": f"Name a fruit (h{i}).", "response": "apple" if i % 3 else "pear"}
            for i in range(12)]  # fmt: skip
    (tmp_path / "apple.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    raw = tiny_run_config(tiny_model_dir, eval__spectra=False, eval__latency_prompts=0)
    raw["data"] = {"train": str(tmp_path / "apple.jsonl"), "eval": str(tmp_path / "mixed.jsonl"),
                   "max_length": 64, "n_eval": 12}  # fmt: skip
    raw["train"].update(max_steps=8, learning_rate=3e-2)
    config = TuneConfig.from_dict(raw)
    outcomes = run_comparison([("lora", config, {"method": "lora"})], tmp_path / "cmp",
                              kind="demo", title="t", progress=False)  # fmt: skip
    preds = [json.loads(x) for x in
             (tmp_path / "cmp/runs/lora/predictions.jsonl").read_text().splitlines()]  # fmt: skip
    correct = [float(p["correct_after"]) for p in preds]
    assert sum(correct) == 8  # a real spread: 8 right, 4 wrong
    ci = bootstrap_mean(correct)
    assert 0 < ci.low < ci.estimate < ci.high < 1
    m = outcomes[0].metrics
    assert m.learning.accuracy_after_interval == ci
    assert m.learning.accuracy_before_interval == bootstrap_mean(
        [float(p["correct_before"]) for p in preds])  # fmt: skip
    show_comparison(outcomes)
    text = capsys.readouterr().out
    assert f"0.0% -> 66.7% [{100 * ci.low:.1f}, {100 * ci.high:.1f}]" in text
    assert (
        "One seed per run (seed 0): [low, high] is the after-accuracy's 95% bootstrap "
        "interval over the 12 held-out questions, not over seeds"
    ) in " ".join(text.split())
    table = _csv(tmp_path / "cmp" / "results.csv")
    assert float(table[0]["accuracy_after_low"]) == pytest.approx(ci.low)
    assert float(table[0]["accuracy_after_high"]) == pytest.approx(ci.high)
    md = (tmp_path / "cmp" / "results.md").read_text()
    assert "accuracy_after_low" in md.splitlines()[0]
