"""The peers question: plans refused for budgets that do not match; a planted study (per-question
predictions and per-seed forgetting, summarized by the study's own summarize_study) with a
known Pareto front, known resolved and unresolved differences, and a planted init search."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy.stats import t as student_t

from spectune.errors import SpectuneError
from spectune.studies.questions import Evidence, StudyPlan, Variant, get_question
from spectune.studies.summary import summarize_study
from spectune.tuning.config import load_config

N = 100  # questions per seed
SEEDS = (0, 1, 2)
#: variant -> (method, questions right after tuning per seed (from question 0 on; none
#: right before), forgetting per seed)
PLANTED = {
    "lora": ("lora", 60, (0.10, 0.11, 0.12)),  # dominated by oft and shira: resolved
    "oft": ("oft", 70, (0.05, 0.06, 0.05)),  # front
    "shira": ("shira", 69, (0.05, 0.06, 0.055)),  # below oft on means, within noise
    "dora": ("dora", 55, (0.04, 0.04, 0.045)),  # front: forgets least
    "full": ("full", 80, (0.30, 0.32, 0.31)),  # front: learns most
}


def _plan(variants: list[Variant], trainable: dict, match_budget: bool = True) -> StudyPlan:
    return StudyPlan(
        variants=variants,
        configs={v.name: None for v in variants},
        trainable=trainable,
        seeds=list(SEEDS),
        lr_grid={v.name: [1e-3] for v in variants},
        lr_seeds=[0],
        criterion="loss",
        grid={},
        match_budget=match_budget,
    )


def _variants(planted: dict = PLANTED) -> list[Variant]:
    search = {"lora.init": ["default", "pissa"]}
    return [Variant(n, m, search=search if n == "lora" else {}) for n, (m, _, _) in planted.items()]


def test_check_refuses_few_variants_unmatched_budgets_and_far_counts():
    q = get_question("peers")
    two = [Variant("lora", "lora"), Variant("oft", "oft")]
    with pytest.raises(SpectuneError, match="at least 3 variants.*got 2 \\(lora, oft\\)"):
        q.check(_plan(two, {"lora": 100, "oft": 100}))
    three = [*two, Variant("full", "full")]
    with pytest.raises(SpectuneError, match="set study.match_budget: true"):
        q.check(_plan(three, {"lora": 100, "oft": 100, "full": 10**6}, match_budget=False))
    four = [*three, Variant("spectrum", "spectrum")]
    counts = {"lora": 1000, "oft": 1050, "full": 10**6, "spectrum": 1200}
    # the budget is the median count (1,050): spectrum is +14% from it
    with pytest.raises(SpectuneError, match=r"budget \(1,050 trainable parameters, the "
                       r"variants' median\), but spectrum trains 1,200 \(\+14%\)"):  # fmt: skip
        q.check(_plan(four, counts))
    # full trains everything and is excepted; a count not known is not checked
    q.check(_plan(four, {**counts, "spectrum": 1099}))
    q.check(_plan(four, {**counts, "spectrum": None}))


def _write_run(folder: Path, name: str, right: int, seed: int) -> None:
    """predictions.jsonl: questions 0..right-1 right after (shifted by the seed, so the
    variants of one seed share most right answers), none right before."""
    run = folder / "runs" / name
    run.mkdir(parents=True)
    lines = [
        json.dumps({"correct_before": False, "correct_after": (i - seed) % N < right})
        for i in range(N)
    ]
    (run / "predictions.jsonl").write_text("\n".join(lines) + "\n")


def _evidence(
    folder: Path, planted: dict = PLANTED, searches: dict | None = None, configs: dict | None = None
) -> Evidence:
    rows, groups = [], {}
    for variant, (method, right, forgetting) in planted.items():
        for seed in SEEDS:
            name = f"{variant}-s{seed}"
            _write_run(folder, name, right, seed)
            rows.append(
                {
                    "name": name,
                    "variant": variant,
                    "candidate": variant,
                    "method": method,
                    "seed": seed,
                    "status": "complete",
                    "learning_rate": 1e-3,
                    "trainable": 10**6 if method == "full" else 1200 if method == "frog" else 1000,
                    "accuracy_gain": right / N,
                    "forgetting": forgetting[seed],
                    "forgetting_ce": forgetting[seed] / 2,
                }
            )
            groups.setdefault(variant, []).append(name)
    summaries = summarize_study(folder, rows, groups, [])[0]
    plan = _plan(_variants(planted), {n: 1000 for n in planted})
    plan.configs.update(configs or {})
    return Evidence(folder, plan, rows, groups, summaries, searches or {})


def test_planted_front_dominated_and_within_noise(tmp_path):
    answer = get_question("peers").answer(_evidence(tmp_path))
    table = {r["variant"]: r for r in answer.table}
    assert [n for n, r in table.items() if r["front"] == "yes"] == ["oft", "dora", "full"]
    assert answer.notes == []  # budgets matched (full excepted), no Spectrum/FROG pair
    assert table["lora"]["status"] == "dominated by oft, shira"  # both beat it beyond noise
    assert table["shira"]["status"] == "off the front within noise (below oft on means)"
    assert table["full"]["trainable"] == 10**6 and table["lora"]["runs"] == 3
    assert table["oft"]["accuracy_gain"].startswith("+70.0 points [")
    assert table["lora"]["forgetting"].startswith("+11.0% [")
    diffs = answer.findings[0].figures["differences"]
    lora_oft = diffs["lora - oft"]
    assert lora_oft["gain"]["estimate"] == pytest.approx(-0.10)
    assert lora_oft["gain"]["resolved"] and lora_oft["forgetting"]["resolved"]
    assert lora_oft["forgetting"]["estimate"] == pytest.approx((0.05 + 0.05 + 0.07) / 3)
    # paired by seed, Student t: sd of (0.05, 0.05, 0.07) is 0.02 / sqrt(3)
    half = student_t.ppf(0.975, 2) * (0.02 / math.sqrt(3)) / math.sqrt(3)
    assert lora_oft["forgetting"]["low"] == pytest.approx(0.17 / 3 - half)
    assert lora_oft["forgetting"]["how"] == "Student t over 3 seeds"
    oft_shira = diffs["oft - shira"]
    assert oft_shira["gain"]["estimate"] == pytest.approx(0.01)
    assert not oft_shira["gain"]["resolved"] and not oft_shira["forgetting"]["resolved"]
    # each row lists its resolved differences (this - other), both directions alike
    assert "vs oft: accuracy gain -10.0 [" in table["lora"]["resolved"]
    assert "forgetting +5.7 [" in table["lora"]["resolved"]
    assert "vs lora: accuracy gain +10.0 [" in table["oft"]["resolved"]
    assert "vs shira" not in table["oft"]["resolved"]
    oft, peft, init = answer.findings
    assert oft.verdict == "agrees" and oft.ours == "oft: front"
    assert oft.figures["front"] == ["oft", "dora", "full"]
    # SHiRA is below OFT on means but not resolved: the peft comparison is undetermined
    assert peft.verdict == "undetermined" and "shira: off the front within noise" in peft.ours
    assert init.verdict == "undetermined" and "recorded no search point" in init.why


def test_a_dominated_oft_differs(tmp_path):
    planted = {**PLANTED, "oft": ("oft", 50, (0.20, 0.21, 0.22))}
    answer = get_question("peers").answer(_evidence(tmp_path, planted))
    table = {r["variant"]: r for r in answer.table}
    # lora, shira and dora each learn more on the same questions and forget less in every seed
    assert table["oft"]["status"] == "dominated by lora, shira, dora"
    assert answer.findings[0].verdict == "differs"
    assert answer.findings[1].verdict == "differs"


def _search(default: list[list], pissa: list[list], chosen: str) -> dict:
    """Two rates x two inits; curves[seed][point] = [accuracy, loss]."""
    points = [
        {"learning_rate": lr, "lora.init": init}
        for init in ("default", "pissa")
        for lr in (1e-3, 3e-3)
    ]
    curves = {
        str(s): [[0.3, default[0][s]], [0.3, default[1][s]], [0.3, pissa[0][s]], [0.3, pissa[1][s]]]
        for s in SEEDS
    }
    return {
        "points": points,
        "curves": curves,
        "chosen": {"learning_rate": 1e-3, "lora.init": chosen},
        "criterion": "loss",
    }


def test_init_search_against_the_default(tmp_path):
    # validation loss: default best at 3e-3 (1.1 mean), pissa best at 1e-3 (1.0 mean)
    better = _search(
        [[1.3, 1.3, 1.3], [1.1, 1.12, 1.08]], [[1.0, 1.0, 1.0], [1.2, 1.2, 1.2]], "pissa"
    )
    answer = get_question("peers").answer(_evidence(tmp_path, searches={"lora": better}))
    init = answer.findings[2]
    assert init.figures["best"] == {"default": pytest.approx(1.1), "pissa": pytest.approx(1.0)}
    assert init.verdict == "agrees"
    assert "lora chose lora.init=pissa" in init.ours and "0.100 [" in init.ours
    # the default wins in every seed: differs
    worse = _search(
        [[1.0, 1.01, 0.99], [1.2, 1.2, 1.2]], [[1.1, 1.12, 1.11], [1.3, 1.3, 1.3]], "default"
    )
    init = get_question("peers").answer(_evidence(tmp_path / "b", searches={"lora": worse}))
    assert init.findings[2].verdict == "differs"
    # one search seed cannot resolve anything
    one = {**better, "curves": {"0": better["curves"]["0"]}}
    init = get_question("peers").answer(_evidence(tmp_path / "c", searches={"lora": one}))
    assert init.findings[2].verdict == "undetermined" and "one seed" in init.findings[2].ours


def test_mlp_only_lora_counts_among_peft_front_methods(tmp_path):
    planted = {
        **PLANTED,
        "lora-mlp": ("lora", 75, (0.03, 0.03, 0.035)),
        "spectrum": ("spectrum", 60, (0.08, 0.08, 0.09)),
        "frog": ("frog", 60, (0.08, 0.08, 0.08)),
    }  # front: least forgetting
    mlp = load_config(None, ["method=lora", "target_modules=[gate_proj,up_proj,down_proj]"])
    attn = load_config(None, ["method=lora", "target_modules=[q_proj,v_proj]"])
    answer = get_question("peers").answer(
        _evidence(tmp_path, planted, configs={"lora-mlp": mlp, "lora": attn})
    )
    peft = answer.findings[1]
    assert "lora-mlp: front" in peft.ours and "lora:" not in peft.ours
    # shira and oft: dominated by the MLP-only LoRA (more gain, less forgetting, resolved)
    assert peft.verdict == "differs" and "shira: dominated by lora-mlp" in peft.ours
    # Spectrum against FROG, the two spectral selections: same questions right, forgetting 0-0.01
    assert answer.notes == [
        "spectrum - frog (spectral rivals): within noise in both",
        "budgets not matched: frog trained 1,200 parameters, +20% from the budget (1,000, the "
        "median) beyond 10%; read the front with that",
    ]
