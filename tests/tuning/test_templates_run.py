"""``spectune tune`` on a base model without a chat template (a tiny random Llama whose BPE
vocabulary lacks ``<|im_end|>``): ``data.template=chatml`` with the marker matched as text,
and added as a token (LoRA trains its new rows, the adapter reloads with it); a method that
cannot train a new token is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spectune.cli.main import main
from spectune.errors import SpectuneError
from spectune.tuning import recipe
from spectune.tuning.config import TuneConfig, yaml_dump, yaml_load
from tests.conftest import tiny_run_config
from tests.models.conftest import save_base_model


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory) -> Path:
    return save_base_model(tmp_path_factory.mktemp("base-llama"))


def _data_file(folder: Path, n: int) -> Path:
    """Dolly JSONL: ``n`` copies of one question whose answer is 84."""
    row = {"instruction": "Which is the largest number: 84, 60?", "context": "",
           "response": "84", "category": "largest"}  # fmt: skip
    path = folder / "largest.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for _ in range(n)), encoding="utf-8")
    return path


def test_tune_cli_chatml_on_a_base_model_learns_to_stop_at_a_nine_token_marker(
    base_model_dir, tmp_path, capsys
):
    """Full fine-tuning memorizes "84<|im_end|>" (1 + 9 tokens here): the tuned model's answers
    stop at the marker and are judged right, where the base's ran to the limit."""
    data = tiny_run_config(base_model_dir, "full")
    data["data"] = {"train": str(_data_file(tmp_path, 16)), "eval": str(tmp_path / "largest.jsonl"),
                    "n_eval": 4, "max_length": 96, "template": "chatml"}  # fmt: skip
    data["eval"].update(max_new_tokens=16, latency_prompts=0, spectra=False)
    data["train"].update(max_steps=30, learning_rate=3e-3, save_steps=100, logging_steps=10)
    config = tmp_path / "base.yaml"
    config.write_text(yaml_dump(data))
    out = tmp_path / "run"
    assert main(["tune", str(config), "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert yaml_load((out / "config.yaml").read_text(), "saved")["data"]["template"] == "chatml"
    assert metrics["config"]["data"]["end_of_turn"] == "auto"
    assert any("'<|im_end|>' is 9 tokens in this vocabulary: matched as text" in n
               for n in metrics["notes"])  # fmt: skip
    before, after = metrics["before"]["accuracy"], metrics["after"]["accuracy"]
    assert before["n_unterminated"] == 4 and before["warning"]  # recorded, not a note
    assert (after["accuracy"], after["n_unterminated"], after["warning"]) == (1.0, 0, None)
    assert metrics["learning"]["heldout_loss_after"] < metrics["learning"]["heldout_loss_before"]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["after"] for r in rows] == ["84"] * 4
    err = capsys.readouterr().err
    assert "warning:" not in err  # the base's unterminated answers are expected: no warning


def _token_run(base_model_dir: Path, tmp_path: Path, method: str = "lora") -> dict:
    data = tiny_run_config(base_model_dir, method)
    data["data"].update(template="chatml", end_of_turn="token")
    data["eval"].update(latency_prompts=0, compare_base=False, intruders=False)
    return data


def test_token_mode_trains_the_new_row_and_the_adapter_reloads_with_it(base_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    result = recipe.tune(TuneConfig.from_dict(_token_run(base_model_dir, tmp_path)), out=out,
                         progress=False)  # fmt: skip
    assert any("added as token 389" in n for n in result.metrics.notes)
    tokenizer = AutoTokenizer.from_pretrained(out / "adapter")
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 389 and len(tokenizer) == 390
    base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    start = base.get_input_embeddings().weight[:389].mean(dim=0)  # the new row's start
    base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    tuned = PeftModel.from_pretrained(base, out / "adapter").eval()
    with torch.no_grad():
        row = tuned.get_input_embeddings()(torch.tensor([[389]]))[0, 0]
        old = tuned.get_input_embeddings()(torch.tensor([[5]]))[0, 0]
    assert (row - start).abs().max() > 1e-4  # trained
    torch.testing.assert_close(old, base.get_input_embeddings().weight[5])  # the rest is not
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["trainable_token_indices"] == {"embed_tokens": [389]}
    # spectune judge adds the marker again (the same id), fits the base and loads the new row:
    # the run's own numbers
    from spectune.studies.judge_existing import judge_model

    judged = judge_model(str(base_model_dir), adapter=out, out=tmp_path / "judged",
                         progress=False).metrics  # fmt: skip
    for a, b in ((result.metrics.before, judged.before), (result.metrics.after, judged.after)):
        assert b.heldout_loss.loss == a.heldout_loss.loss
        assert b.accuracy.accuracy == a.accuracy.accuracy
        assert b.perplexity.perplexity == a.perplexity.perplexity


def test_a_method_that_cannot_train_a_new_token_is_refused_by_name(base_model_dir, tmp_path):
    data = _token_run(base_model_dir, tmp_path, "frog")
    with pytest.raises(SpectuneError, match=r"method 'frog' cannot train a new token.*"
                       r"data\.end_of_turn=text.*can: lora, rslora, dora, full$"):  # fmt: skip
        recipe.prepare(TuneConfig.from_dict(data), out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_jinja_file_is_pinned_and_a_template_replacing_the_own_is_noted(
    base_model_dir, tiny_model_dir, tmp_path
):
    template = tmp_path / "turns.jinja"
    template.write_text(
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% if m['role'] == "
        "'assistant' %}</turn>{% endif %}\n{% endfor %}{% if add_generation_prompt %}"
        "<assistant>{% endif %}"
    )
    data = tiny_run_config(base_model_dir, "lora", data__template=str(template))
    run = recipe.prepare(TuneConfig.from_dict(data), out=tmp_path / "run", progress=False)
    pinned = run.pins["inputs"]["data.template"]
    assert pinned["path"] == str(template.resolve()) and pinned["fingerprint"]["sha256"]
    assert run.tokenizer.chat_template == template.read_text()
    assert any("'</turn>' is" in n and "matched as text" in n for n in run.notes)
    own = tiny_run_config(tiny_model_dir, "lora", data__template="chatml")
    run = recipe.prepare(TuneConfig.from_dict(own), out=tmp_path / "run2", progress=False)
    assert "data.template=chatml replaces the tokenizer's own chat template" in run.notes
    assert not (tmp_path / "run").exists() and not (tmp_path / "run2").exists()
