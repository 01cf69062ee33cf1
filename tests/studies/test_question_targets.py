"""targets: target modules classified on a model's shapes, the 5% count check with the nearest
ranks, and the answer's paired differences and verdicts on planted predictions and losses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spectune.errors import SpectuneError
from spectune.studies.questions import get_question
from spectune.studies.questions.targets import classify, module_block, target_kinds
from tests.studies.question_plans import (
    make_evidence,
    make_plan,
    preset_plan,
    run_config,
    run_row,
    write_predictions,
)

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
#: LoRA parameters per rank on the model below (2 blocks, hidden 64, MLP 128, KV width 32):
#: q, o 64+64; k, v 64+32; gate, up, down 64+128
PER_RANK = {"attn": 2 * (128 + 96 + 96 + 128), "mlp": 2 * 3 * 192}


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    """A model folder with only config.json: the targets are resolved on shapes."""
    from transformers import LlamaConfig

    folder = tmp_path_factory.mktemp("shapes")
    LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2).save_pretrained(folder)  # fmt: skip
    return folder


def targets_plan(folder, ranks=(18, 14, 8), targets=(ATTN, MLP, "all-linear"), trainable=None):
    names = ("attn", "mlp", "all")
    configs = {
        n: run_config("lora", model=str(folder), r=r, target_modules=t)
        for n, r, t in zip(names, ranks, targets, strict=True)
    }
    counts = dict(zip(names, (PER_RANK["attn"] * ranks[0], PER_RANK["mlp"] * ranks[1],
                              sum(PER_RANK.values()) * ranks[2]), strict=True))  # fmt: skip
    return make_plan(configs, trainable=trainable or counts, seeds=[0, 1, 2])


def test_modules_are_classified_by_the_block_they_sit_in(shapes_dir):
    assert module_block("model.layers.3.self_attn.q_proj") == "attention"
    assert module_block("transformer.h.0.mlp.c_fc") == "mlp"
    assert module_block("model.layers.0.block_sparse_moe.w1") is None
    linear = [f"l.{i}.self_attn.{m}" for i in (0, 1) for m in ATTN]
    linear += [f"l.{i}.mlp.{m}" for i in (0, 1) for m in MLP]
    assert classify(linear[:2], linear) == "attention-only"
    assert classify(linear[8:], linear) == "MLP-only"
    assert classify(linear, linear) == "all-linear"
    assert classify(linear[:1] + linear[8:], linear) == "mixed"
    plan = targets_plan(shapes_dir)
    assert target_kinds(plan) == {"attn": "attention-only", "mlp": "MLP-only", "all": "all-linear"}
    get_question("targets").check(plan)  # counts 16128, 16128, 16384: within 5%


def test_counts_apart_are_refused_with_the_nearest_ranks(shapes_dir):
    plan = targets_plan(shapes_dir, ranks=(8, 8, 8))
    with pytest.raises(SpectuneError) as err:
        get_question("targets").check(plan)
    msg = str(err.value)
    assert "attn 7,168 (lora.r=8), mlp 9,216 (lora.r=8), all 16,384 (lora.r=8)" in msg
    assert "the nearest ranks to all's 16,384: attn: lora.r=18, mlp: lora.r=14" in msg
    assert "study.match_budget: true" in msg


def test_a_missing_or_doubled_kind_is_refused(shapes_dir):
    plan = targets_plan(shapes_dir, targets=(ATTN, ["q_proj", "down_proj"], "all-linear"))
    with pytest.raises(SpectuneError, match=r"MLP-only has 0: study.variants has attn "
                       r"\(attention-only\), mlp \(mixed\), all \(all-linear\)"):  # fmt: skip
        get_question("targets").check(plan)
    plan = targets_plan(shapes_dir, targets=(ATTN, ["q_proj", "v_proj"], "all-linear"))
    with pytest.raises(SpectuneError, match="attention-only has 2"):
        get_question("targets").check(plan)


def _planted(tmp_path, plan, mlp_loss=(0.505, 0.525, 0.485)):
    """3 seeds x 100 questions: all-linear right on 80, attention-only on 60 of those, MLP-only
    on 79 of them; held-out losses planted per seed."""
    rows = []
    losses = {"all": (0.50, 0.52, 0.48), "attn": (0.70, 0.75, 0.69), "mlp": mlp_loss}
    right = {"all": 80, "attn": 60, "mlp": 79}
    for seed in (0, 1, 2):
        for name in ("attn", "mlp", "all"):
            write_predictions(tmp_path, f"{name}-s{seed}", [i < right[name] for i in range(100)])
            rows.append(run_row(name, seed, accuracy_gain=right[name] / 100,
                                heldout_loss_after=losses[name][seed]))  # fmt: skip
    summaries = [{"name": n, "accuracy_gain": {"estimate": right[n] / 100, "low": 0.5,
                  "high": 0.9}} for n in right]  # fmt: skip
    return make_evidence(tmp_path, plan, rows, summaries=summaries)


def test_answer_on_planted_runs(tmp_path, shapes_dir):
    answer = get_question("targets").answer(_planted(tmp_path, targets_plan(shapes_dir)))
    acc_attn, loss_attn, acc_mlp, loss_mlp = answer.findings
    ci = acc_attn.figures["interval"]
    assert ci["estimate"] == pytest.approx(-0.20) and ci["high"] < 0
    assert "paired bootstrap over 3 seeds and 300 questions" in ci["how"]
    assert acc_attn.verdict == "agrees" and acc_attn.ours.startswith("-20.0 [")
    ratios = [0.70 / 0.50, 0.75 / 0.52, 0.69 / 0.48]
    assert loss_attn.figures["interval"]["low"] > 1 and loss_attn.verdict == "agrees"
    assert loss_attn.figures["interval"]["estimate"] == pytest.approx(
        (ratios[0] * ratios[1] * ratios[2]) ** (1 / 3)
    )
    assert acc_mlp.figures["interval"]["estimate"] == pytest.approx(-0.01)
    assert acc_mlp.verdict == "agrees"  # inside +-3 points
    assert loss_mlp.verdict == "agrees"  # ratios 1.010, 1.0096, 1.0104
    assert [r["targets"] for r in answer.table] == ["attention-only", "MLP-only", "all-linear"]
    assert answer.table[0]["accuracy gain (points)"] == "+60.0 [+50.0, +90.0]"
    assert answer.table[2]["held-out loss"].startswith("0.500 [")
    assert answer.notes[0].startswith(
        "attn - mlp (attention-only - MLP-only), accuracy gain: -19.0"
    )


def test_loss_far_from_all_linear_differs_and_no_predictions_fall_back_to_seeds(
    tmp_path, shapes_dir
):
    ev = _planted(tmp_path, targets_plan(shapes_dir), mlp_loss=(0.60, 0.63, 0.57))
    assert get_question("targets").answer(ev).findings[3].verdict == "differs"
    for p in tmp_path.glob("runs/*/predictions.jsonl"):
        p.unlink()
    gains = {0: 0.58, 1: 0.60, 2: 0.65}
    for r in ev.rows:
        if r["variant"] == "attn":
            r["accuracy_gain"] = gains[r["seed"]]
    ci = get_question("targets").answer(ev).findings[0].figures["interval"]
    diffs = np.array([0.58, 0.60, 0.65]) - 0.80
    half = 4.302652729911275 * diffs.std(ddof=1) / np.sqrt(3)
    assert ci["how"] == "Student t over 3 seeds"
    assert (ci["estimate"], ci["low"], ci["high"]) == pytest.approx(
        (diffs.mean(), diffs.mean() - half, diffs.mean() + half)
    )


CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "studies"


@pytest.mark.parametrize("name", ["lr-ratio", "targets", "batch"])
def test_the_preset_configs_open_with_their_command_and_pass_their_checks(name):
    path = CONFIGS / f"{name}.yaml"
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == f"# spectune study configs/studies/{name}.yaml --out results/studies/{name}"
    plan = preset_plan(path)
    get_question(name).check(plan)
    if name == "targets":  # the counts its header states
        assert plan.trainable == {"attention": 2_419_200, "mlp": 2_471_040, "all-linear": 2_442_240}
        assert [plan.configs[n].section("lora").r for n in plan.configs] == [21, 13, 8]
