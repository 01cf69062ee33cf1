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
from tests.archs import ARCHS, arch_folder
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
