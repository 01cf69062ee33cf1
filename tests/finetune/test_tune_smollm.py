"""The pipeline on the real embedded model (slow): LoRA learns the task set, forgets a little,
its adapter loads in plain peft, its spectra sit beside the base model's."""

from __future__ import annotations

import json

import pytest
import torch

from spectune.finetune.config import TuneConfig
from spectune.finetune.demo import DEMO_CONFIG
from spectune.finetune.recipe import tune

pytestmark = pytest.mark.slow


def test_lora_on_smollm2_learns_the_task_set(tmp_path):
    """25 LoRA steps (batch 8) on the bundled tasks. Measured on this machine (seed 0): held-out
    accuracy 0% -> about 50%, held-out loss 3.9 -> 0.5, perplexity on general text +10%."""
    from peft import PeftModel

    from spectune.finetune.evaluate import perplexity
    from spectune.finetune.methods import load_float_base, load_tokenizer
    from spectune.models import default_model_dir

    data = json.loads(json.dumps(DEMO_CONFIG))
    data["train"]["max_steps"] = 25
    data["data"]["n_eval"] = 32
    data["eval"]["latency_prompts"] = 1
    m = tune(TuneConfig.from_dict(data), out=tmp_path / "lora", progress=False).metrics
    learn, forget = m.learning, m.forgetting
    assert learn.accuracy_before <= 0.1  # the base model answers at length
    assert learn.accuracy_after >= learn.accuracy_before + 0.2
    assert learn.heldout_loss_after < 0.5 * learn.heldout_loss_before
    assert 0.9 < forget.perplexity_ratio < 1.5  # some forgetting, not a broken model
    assert m.cost.trainable == 2_442_240  # r=8 on all 210 linear layers: 8 x 305,280
    assert m.spectra.n_layers == 210 and m.spectra.base_alpha > 2
    # the adapter on disk reproduces the tuned model's forgetting figure in plain peft
    folder = default_model_dir()
    base = load_float_base(folder)
    tuned = PeftModel.from_pretrained(base, tmp_path / "lora" / "adapter").eval()
    e = m.config["eval"]
    with torch.no_grad():
        ppl = perplexity(tuned, load_tokenizer(folder), n_chars=e["ppl_chars"],
                         window=e["ppl_window"], stride=e["ppl_stride"])  # fmt: skip
    assert ppl.perplexity == pytest.approx(forget.perplexity_after, rel=1e-4)
