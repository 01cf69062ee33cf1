"""The README's demo table, guarded (slow): ``spectune demo``'s own settings on the embedded
SmolLM2-135M-Instruct (LoRA, DoRA, QLoRA and FROG at matched budgets, 25 steps of batch 8,
64 held-out questions), and every claim the README makes about that table.

The bands come from three runs of the demo (seeds 0, 1 and 2, ``spectune demo seed=N``) on
this 2-core machine, with padding-free rows (``data.batching: auto``); the README's table is
seed 0. What they measured (seed 0 / 1 / 2):

=========  ====================  =======================  ===================
method     held-out accuracy     perplexity 15.11 ->      ms/token vs LoRA
=========  ====================  =======================  ===================
LoRA       42.2 / 50.0 / 39.1%   15.97 / 16.50 / 16.08    1
DoRA       43.8 / 50.0 / 39.1%   15.97 / 16.51 / 16.09    1.18 / 1.19 / 1.21x
QLoRA      37.5 / 53.1 / 43.8%   21.18 / 22.27 / 21.23    0.91 / 0.96 / 0.99x
FROG       29.7 / 34.4 / 31.2%   15.17 / 15.14 / 15.17    1.32 / 1.41 / 1.34x
=========  ====================  =======================  ===================

So every band below holds with room in all three seeds: accuracy gains 29.7-53.1 points
(asserted: >= 20), FROG's perplexity change +0.2 to +0.4% (asserted: the smallest, < 1%),
LoRA's and DoRA's +5.6 to +9.3% (asserted: 3-15%), QLoRA's +40 to +47% (asserted: the
largest, > 25%: it includes what NF4 costs against the float32 base), FROG 8-16 points
below LoRA (asserted: below). DoRA unmerged generated at 4.5-5.3x LoRA's ms per token while
its weight norms were formed in every forward (padded batches, before issue 24); judged with
them kept (peft's DoRA caching in ``eval_mode``) it is 1.15-1.4x (asserted: < 2.5x, a ratio
measured in the same run).

Seed 0 with AVX2-only kernels (``make test-numerics``: QLoRA then computes in float32, not
bf16), measured with padded batches before issue 24, gave the same accuracies as padded seed 0
did then (40.6 / 42.2 / 35.9 / 29.7%), perplexity ratios 1.058 / 1.058 / 1.401 / 1.004,
adapter alphas 1.55-1.57 and FROG's 2.32, DoRA 3.2x LoRA's ms per token (on a loaded
machine): every band held there too, and held again with padding-free rows (the whole module
passed with those kernels on issue 24's tree).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.real_weights]

#: LoRA r=8 on all 210 linear layers of SmolLM2-135M: 8 x (sum of in + out) = 8 x 305,280
BUDGET = 2_442_240
#: Analyses no claim of the table reads, left out to keep the suite short: intruder dimensions
#: and the base-vs-tuned comparison were 70-80% of the demo's spectra time (two SVDs of every
#: matrix per run: about 150 of the 570 CPU seconds py-spy sampled in one demo). Training,
#: judging and the update's own spectra are the demo's; both analyses are tested on the tiny
#: model (test_tune, test_methods).
SKIPPED_ANALYSES = ["eval.intruders=false", "eval.compare_base=false"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from spectune.studies.demo import demo

    out = tmp_path_factory.mktemp("demo")
    outcomes = demo(out, progress=False, overrides=SKIPPED_ANALYSES)
    assert [o.error for o in outcomes] == [None] * 4, [o.error for o in outcomes]
    return out, {o.method: o.metrics for o in outcomes}


def test_the_demo_runs_the_four_methods_at_matched_budgets(demo_run):
    _, m = demo_run
    assert list(m) == ["lora", "dora", "qlora", "frog"]
    assert m["lora"].cost.trainable == BUDGET
    assert m["qlora"].cost.trainable == BUDGET
    assert m["frog"].cost.trainable == BUDGET  # FROG's G set to LoRA's count
    # DoRA adds one magnitude per output feature of every target: 155,520 on SmolLM2
    assert m["dora"].cost.trainable == BUDGET + 155_520


def test_every_method_learns_from_a_base_that_answers_at_length(demo_run):
    _, m = demo_run
    for name, metrics in m.items():
        learn = metrics.learning
        assert learn.accuracy_before == 0.0, name  # the base model never answers bare
        assert learn.accuracy_after >= 0.20, (name, learn.accuracy_after)
        assert learn.heldout_loss_after < 0.5 * learn.heldout_loss_before, name


def test_frog_forgets_least_and_qlora_pays_for_quantization(demo_run):
    _, m = demo_run
    ratio = {name: metrics.forgetting.perplexity_ratio for name, metrics in m.items()}
    assert min(ratio, key=ratio.get) == "frog" and ratio["frog"] < 1.01, ratio
    for name in ("lora", "dora"):
        assert 1.03 < ratio[name] < 1.15, ratio
    assert max(ratio, key=ratio.get) == "qlora" and ratio["qlora"] > 1.25, ratio
    # FROG learns less than LoRA at the same budget (10-16 points in every seed measured)
    assert m["frog"].learning.accuracy_after < m["lora"].learning.accuracy_after


def test_unmerged_dora_generates_near_loras_speed_with_its_weight_norms_kept(demo_run):
    """Judging keeps DoRA's weight norms (eval_mode: peft's DoRA caching): 1.38x LoRA's ms per
    token (91 against 66, seed 0), where forming them in every forward made it 4.5-5.3x."""
    _, m = demo_run
    assert m["dora"].cost.ms_per_token < 2.5 * m["lora"].cost.ms_per_token


def test_adapter_spectra_beside_the_base_models(demo_run):
    """The README's last column: LoRA-family adapters' mean alpha about 1.55 (below 2, the
    blog's overfitting mark), FROG's sparse delta 2.31-2.33 (seed 0, overparam none / away /
    towards), above the LoRA family's and far below the base model's 6.48."""
    _, m = demo_run
    base = m["lora"].spectra.base_alpha
    assert 6.0 < base < 7.0
    assert all(metrics.spectra.n_layers == 210 for metrics in m.values())
    for name in ("lora", "dora", "qlora"):
        assert 1.2 < m[name].spectra.alpha < 2.0, (name, m[name].spectra.alpha)
    assert 1.9 < m["frog"].spectra.alpha < 3.0 and m["frog"].spectra.alpha > m["lora"].spectra.alpha


def test_the_demo_folder_keeps_no_checkpoints_and_the_lora_adapter_loads_in_peft(demo_run):
    """A finished demo holds no training checkpoints; LoRA's adapter, loaded by plain peft,
    gives the perplexity the run reported."""
    from peft import PeftModel

    from spectune.judging.forgetting import perplexity
    from spectune.models.loading import default_model_dir
    from spectune.models.tokenizer import load_tokenizer
    from spectune.tuning.methods import load_float_base

    out, m = demo_run
    assert not list(out.glob("runs/*/checkpoints"))
    folder = default_model_dir()
    tuned = PeftModel.from_pretrained(load_float_base(folder), out / "runs" / "lora" / "adapter")
    e = m["lora"].config["eval"]
    with torch.no_grad():
        ppl = perplexity(tuned.eval(), load_tokenizer(folder), n_chars=e["ppl_chars"],
                         window=e["ppl_window"], stride=e["ppl_stride"])  # fmt: skip
    assert ppl.perplexity == pytest.approx(m["lora"].forgetting.perplexity_after, rel=1e-4)


def test_judge_reproduces_the_demos_lora_accuracy_and_perplexity_exactly(demo_run, tmp_path):
    """``spectune judge default --adapter RUN`` on the demo's LoRA run: the run's own data and
    eval settings (its config.yaml), the adapter loaded by the run's method, judged again:
    the accuracy, every answer, the held-out loss and the perplexity are the demo's, exactly.
    (The base is judged by the same cached function as the demo's "before"; left out here,
    with the spectra, to keep the suite short: both are compared exactly on the tiny model in
    tests/studies/test_judge_existing.py.)"""
    import json

    from spectune.studies.judge_existing import judge_model

    out, m = demo_run
    run = out / "runs" / "lora"
    judged = tmp_path / "judged"
    j = judge_model("default", adapter=run, out=judged, progress=False,
                    overrides=["eval.before=false", "eval.spectra=false"]).metrics  # fmt: skip
    lora = m["lora"]
    assert j.after.accuracy.n == lora.after.accuracy.n == 64
    assert j.learning.accuracy_after == lora.learning.accuracy_after
    assert j.after.heldout_loss.loss == lora.after.heldout_loss.loss
    assert j.forgetting.perplexity_after == lora.forgetting.perplexity_after
    theirs = [json.loads(x)["after"] for x in (run / "predictions.jsonl").read_text().splitlines()]
    mine = [json.loads(x)["after"] for x in (judged / "predictions.jsonl").read_text().splitlines()]
    assert mine == theirs
