"""Every tiny architecture of :mod:`tests.archs` from its model folder: tuned (LoRA, a few
steps), judged before and after, its adapter watched. (Its GGUF file is read back in
tests/models/test_gguf_export.py; a tuned run's export in tests/tuning/test_export.py.)"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from spectune.tuning.config import TuneConfig
from spectune.tuning.recipe import tune
from tests import archs
from tests.archs import ARCHS, arch_folder, arch_gguf
from tests.conftest import tiny_run_config


@pytest.fixture(scope="module")
def arch_root(tmp_path_factory) -> Path:
    return archs.arch_root(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_tune_judge_and_watch(arch, arch_root, smol_tokenizer, tmp_path):
    folder = arch_folder(arch_root, arch, smol_tokenizer)
    out = tmp_path / "run"
    config = TuneConfig.from_dict(
        tiny_run_config(folder, "lora", data__n_train=16, data__n_eval=4, train__max_steps=3)
    )
    metrics = tune(config, out=out, progress=False).metrics
    assert metrics.training.global_step == 3
    assert metrics.training.final_loss > 0  # finite: the architecture trains
    written = json.loads((out / "metrics.json").read_text())
    for side in ("before", "after"):
        accuracy = written[side]["accuracy"]
        assert accuracy["n"] == 4 and 0 <= accuracy["n_correct"] <= 4  # every question judged
        assert written[side]["perplexity"]["perplexity"] > 1.0
    learning = written["learning"]
    assert learning["heldout_loss_after"] < learning["heldout_loss_before"]  # it learned
    assert written["forgetting"]["perplexity_after"] > 1.0
    with (out / "spectra" / "details.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * (4 if arch == "phi3" else 7)  # one LoRA pair per linear
    assert all(float(r["alpha"]) > 0 for r in rows if r["status"] == "success")
    assert written["spectra"]["n_analyzed"] == len(rows)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ("llama", "qwen2", "qwen3", "phi3"))
def test_a_gguf_file_is_tuned_judged_and_watched(arch, arch_root, smol_tokenizer, tmp_path):
    """The architecture's GGUF file (spectune's writer, f32) given as ``model:``: dequantized
    into the cache, tuned, judged again by ``spectune judge`` with the same file as MODEL (the
    run's own numbers, exactly), and watched from the file (the blocks' matrices). Gemma 3 is
    tuned from its folder only: read back from a GGUF, SmolLM2's byte-level vocabulary gains
    GemmaTokenizer's ``<mask>`` token, one more than the model's embeddings (a real Gemma
    GGUF carries its own SentencePiece vocabulary, which holds it)."""
    from spectune.cli.main import main
    from spectune.studies.judge_existing import judge_model

    gguf = arch_gguf(arch_root, arch, smol_tokenizer, "f32")
    out = tmp_path / "run"
    config = TuneConfig.from_dict(
        tiny_run_config(gguf, "lora", data__n_train=16, data__n_eval=4, train__max_steps=3)
    )
    metrics = tune(config, out=out, progress=False).metrics
    assert metrics.training.global_step == 3
    assert metrics.learning.heldout_loss_after < metrics.learning.heldout_loss_before
    pins = json.loads((out / "inputs.json").read_text())
    assert pins["inputs"]["model"]["fingerprint"]["kind"] == "gguf"  # the file, not the cache
    judged = judge_model(str(gguf), adapter=out, out=tmp_path / "judged", progress=False).metrics
    for a, b in ((metrics.before, judged.before), (metrics.after, judged.after)):
        assert b.accuracy.accuracy == a.accuracy.accuracy and b.accuracy.n == 4
        assert b.heldout_loss.loss == a.heldout_loss.loss
        assert b.perplexity.perplexity == a.perplexity.perplexity
    assert main(["watch", str(gguf), "--out", str(tmp_path / "w"), "--no-progress"]) == 0
    with (tmp_path / "w" / "details.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) >= 2 * (4 if arch == "phi3" else 7)  # every block matrix (+ embeddings)
    assert all(float(r["alpha"]) > 0 for r in rows if r["status"] == "success")
