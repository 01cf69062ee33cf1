"""``spectune export RUN --gguf``: a real tiny LoRA run's merged model as GGUF, loaded back
by transformers' GGUF loader; the folder's ownership rules; what is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from spectune.cli.main import main
from spectune.errors import SpectuneError
from spectune.tuning.config import TuneConfig
from spectune.tuning.export import export_gguf
from spectune.tuning.recipe import tune
from tests.conftest import tiny_run_config


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    config = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, "lora"))
    tune(config, out=out, progress=False)
    return out


def _merged(run: Path, base_dir: Path):
    """The run's adapter merged by plain peft: the reference."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, run / "adapter").merge_and_unload().eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_export_writes_the_merged_model_into_the_run(lora_run, tiny_model_dir, smol_tokenizer):
    from transformers import AutoModelForCausalLM

    path = export_gguf(lora_run, qtype="f32")
    assert path == lora_run / "model-f32.gguf"
    marker = json.loads((lora_run / "run.json").read_text())
    assert "model-f32.gguf" in marker["files"] and marker["status"] == "complete"
    ids = torch.tensor([smol_tokenizer("What is 12 + 30? The answer is 42.").input_ids])
    merged = _logits(_merged(lora_run, tiny_model_dir), ids)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert (merged - _logits(base, ids)).abs().max() > 1e-3  # training changed the model
    back = AutoModelForCausalLM.from_pretrained(
        lora_run, gguf_file=path.name, dtype=torch.float32
    ).eval()
    error = float((_logits(back, ids) - merged).abs().max() / merged.abs().max())
    assert error < 1e-5, error
    assert export_gguf(lora_run, qtype="f32") == path  # its own file: replaced


def test_cli_out_file_and_what_it_never_replaces(lora_run, tmp_path, capsys):
    import gguf

    out = tmp_path / "tiny.gguf"
    assert main(["export", str(lora_run), "--gguf", "--type", "q8_0", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    reader = gguf.GGUFReader(out)
    assert reader.get_field("general.architecture").contents() == "llama"
    assert reader.get_field("general.file_type").contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    assert str(lora_run.resolve()) in reader.get_field("spectune.exported_from").contents()
    assert main(["export", str(lora_run), "--gguf", "--out", str(out)]) == 0  # ours: replaced
    assert gguf.GGUFReader(out).get_field("general.file_type").contents() == 1  # now f16

    foreign = tmp_path / "mine.gguf"
    foreign.write_bytes(b"my own model")
    assert main(["export", str(lora_run), "--gguf", "--out", str(foreign)]) == 2
    assert "not written by spectune export" in capsys.readouterr().err
    assert foreign.read_bytes() == b"my own model"
    link = tmp_path / "link.gguf"
    link.symlink_to(out)
    with pytest.raises(SpectuneError, match="symbolic link"):
        export_gguf(lora_run, out=link)
    assert link.is_symlink()
    (lora_run / "model-f16.gguf").write_bytes(b"a file of yours")  # not written by the run
    with pytest.raises(SpectuneError, match="not written by this run"):
        export_gguf(lora_run, qtype="f16")
    assert (lora_run / "model-f16.gguf").read_bytes() == b"a file of yours"
    (lora_run / "model-f16.gguf").unlink()


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.gguf", ".spectune.lock"))
    return copy


def test_a_run_that_is_not_complete_or_has_no_adapter_is_refused(lora_run, tmp_path):
    copy = _copy(lora_run, tmp_path)
    marker = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**marker, "status": "failed", "error": "x"}))
    with pytest.raises(SpectuneError, match=r"not complete \(status 'failed'\).*--resume"):
        export_gguf(copy)
    (copy / "run.json").write_text(json.dumps(marker))
    shutil.rmtree(copy / "adapter")
    with pytest.raises(SpectuneError, match="neither adapter/ nor merged/"):
        export_gguf(copy)
    with pytest.raises(SpectuneError, match="holds no spectune tune run"):
        export_gguf(tmp_path)
    with pytest.raises(SpectuneError, match=r"--type 'q4_0'"):
        export_gguf(lora_run, qtype="q4_0")
    assert not list(copy.glob("*.gguf"))


def test_a_method_that_cannot_merge_is_named(lora_run, tmp_path, monkeypatch):
    from spectune.tuning.methods import get_method

    def cannot(*args, **kwargs):
        raise NotImplementedError

    monkeypatch.setattr(type(get_method("lora")), "merge", cannot)
    with pytest.raises(SpectuneError, match=r"method 'lora' cannot merge its update"):
        export_gguf(lora_run, out=tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_a_run_with_merged_folder_is_exported_from_it(lora_run, tiny_model_dir, tmp_path):
    """``merged/`` (``tune --merge``) is what gets written: here it is the merged model with
    one weight changed by hand, and the adapter is gone, so only ``merged/`` can explain the
    file's weights."""
    import gguf

    copy = _copy(lora_run, tmp_path)
    merged = _merged(lora_run, tiny_model_dir)
    with torch.no_grad():
        merged.model.norm.weight.fill_(0.5)
    merged.save_pretrained(copy / "merged")
    shutil.copy(tiny_model_dir / "tokenizer.json", copy / "merged")
    shutil.copy(tiny_model_dir / "tokenizer_config.json", copy / "merged")
    shutil.rmtree(copy / "adapter")
    path = export_gguf(copy, qtype="f32", out=tmp_path / "m.gguf")
    tensors = {t.name: t.data for t in gguf.GGUFReader(path).tensors}
    assert (tensors["output_norm.weight"] == 0.5).all()
    q = merged.model.layers[1].self_attn.q_proj.weight.detach().numpy()
    assert sorted(tensors["blk.1.attn_q.weight"].ravel().tolist()) == sorted(q.ravel().tolist())
