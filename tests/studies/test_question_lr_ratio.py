"""lr-ratio: the best rate as the vertex of a planted parabola in log(lr), the grid's edge,
the ratio's interval over search seeds and its verdict, and the checks that refuse a plan."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from spectune.errors import SpectuneError
from spectune.studies.questions import Answer, get_question
from spectune.studies.questions.lr_ratio import best_rate, curves_by_seed
from spectune.studies.questions.measures import seed_interval
from tests.studies.question_plans import make_evidence, make_plan, run_config

LORA_GRID = [1e-3, 3e-3, 1e-2]
FULL_GRID = [1e-4, 3e-4, 1e-3]


def parabola(rates: list[float], vertex: float, *, floor: float = 0.6, k: float = 0.3):
    """Validation loss floor + k (log lr - log vertex)^2 at each rate."""
    return [floor + k * (math.log(r) - math.log(vertex)) ** 2 for r in rates]


def search(rates: list[float], vertices: dict[int, float], *, str_keys: bool = False):
    """A variant's search (Evidence.searches) whose curve at seed s has its vertex at
    vertices[s]; accuracy is 1 - loss."""
    curves = {
        (str(s) if str_keys else s): [[1 - v, v] for v in parabola(rates, vx)]
        for s, vx in vertices.items()
    }
    return {"points": [{"learning_rate": r} for r in rates], "curves": curves,
            "chosen": {"learning_rate": rates[1]}, "criterion": "loss"}  # fmt: skip


def ratio_plan(ranks=(1, 8, 64), seeds=(0, 1), **kwargs):
    configs = {f"lora-r{r}": run_config("lora", r=r) for r in ranks}
    configs["full"] = run_config("full")
    grid = {n: FULL_GRID if n == "full" else LORA_GRID for n in configs}
    return make_plan(configs, lr_grid=kwargs.pop("lr_grid", grid), lr_seeds=list(seeds), **kwargs)


def test_the_vertex_of_a_planted_parabola_is_the_best_rate():
    assert best_rate(LORA_GRID, parabola(LORA_GRID, 2e-3)) == (pytest.approx(2e-3, rel=1e-9), "")
    # uneven grid, given unsorted, a failed point and a NaN left out, a wider curve elsewhere
    rates = [1e-2, 1e-4, 5e-4, 2e-3, 3e-2, 6e-2]
    losses = parabola(rates, 1.3e-3, k=0.05)
    losses[4], losses[5] = None, float("nan")
    assert best_rate(rates, losses)[0] == pytest.approx(1.3e-3, rel=1e-9)
    # a plateau between two rates: the vertex is midway (in log) between them
    rates = [1e-3, 1e-2, 1e-1, 1.0]
    assert best_rate(rates, [0.6, 0.5, 0.5, 0.7])[0] == pytest.approx(math.sqrt(1e-3), rel=1e-9)
    # a flat curve has its first lowest point at the edge: it cannot tell
    assert best_rate(LORA_GRID, [0.5, 0.5, 0.5])[0] is None


def test_a_lowest_loss_at_the_grid_edge_is_undetermined_and_says_which_way_to_extend():
    rate, why = best_rate(LORA_GRID, parabola(LORA_GRID, 5e-2))
    assert rate is None
    assert why == "lowest loss at the grid's largest rate 0.01: add 0.0333"
    rate, why = best_rate(FULL_GRID, parabola(FULL_GRID, 1e-5))
    assert rate is None and "smallest rate 0.0001: add 3.33e-05" in why
    rate, why = best_rate(LORA_GRID, [0.6, None, 0.7])
    assert rate is None and why.startswith("only 2 rate(s) finished")


def test_the_ratio_is_paired_by_search_seed_and_agrees_inside_the_band(tmp_path):
    plan = ratio_plan()
    searches = {
        "lora-r1": search(LORA_GRID, {0: 2.0e-3, 1: 2.4e-3}),
        "lora-r8": search(LORA_GRID, {0: 2.0e-3, 1: 3.0e-3}, str_keys=True),  # JSON round trip
        "lora-r64": search(LORA_GRID, {0: 2.2e-3, 1: 2.7e-3}),
        "full": search(FULL_GRID, {0: 2.0e-4, 1: 2.5e-4}),
    }
    answer = get_question("lr-ratio").answer(make_evidence(tmp_path, plan, searches=searches))
    r1, r8, r64, spread = answer.findings
    assert r8.figures["ratios"] == pytest.approx([10.0, 12.0])
    ci = r8.figures["interval"]
    assert ci["estimate"] == pytest.approx(math.sqrt(120))
    assert ci["how"] == "Student t over 2 seeds (on the logs)"
    # by hand: t(0.975, 1 df) = 12.706; sd of (ln 10, ln 12) = ln 1.2 / sqrt 2; n = 2
    half = 12.706204736174707 * (math.log(1.2) / math.sqrt(2)) / math.sqrt(2)
    assert (ci["low"], ci["high"]) == pytest.approx(
        (math.sqrt(120) / math.exp(half), math.sqrt(120) * math.exp(half))
    )
    # two seeds: r=8's [3.4x, 34.8x] reaches past the band's 30x, so not "agrees"; r=1's
    # (10, 9.6) and r=64's (11, 10.8) seeds agree closely enough to lie inside [3x, 30x]
    assert [f.verdict for f in (r1, r8, r64)] == ["agrees", "undetermined", "agrees"]
    assert r1.claim.startswith("LoRA r=1 (lora-r1)") and r1.figures["rank"] == 1
    # spread over ranks: seed 0 2.2/2.0, seed 1 3.0/2.4; both inside [1, 3]
    assert spread.figures["spreads"] == pytest.approx([1.1, 1.25])
    # two seeds: t's interval on the logs, exp(0.159 +- 12.71 x 0.0639) = [0.52, 2.64], reaches
    # below 1, which no max / min can be: clipped there, it lies inside [1, 3]
    sp = spread.figures["interval"]
    assert (sp["low"], sp["high"]) == pytest.approx((1.0, 2.64), abs=0.01)
    assert "clipped at 1" in sp["how"] and spread.verdict == "agrees"
    assert len(answer.table) == 8 and answer.table[0]["best rate"] == pytest.approx(2e-3)
    # the answer survives study.json and renders
    back = Answer.from_dict(json.loads(json.dumps(answer.to_dict())))
    assert back.findings[1].verdict == "undetermined" and "| undetermined |" in back.markdown()


def test_three_search_seeds_give_a_t_interval_on_the_log_ratio_and_a_ratio_near_1_differs(tmp_path):
    plan = ratio_plan(ranks=(8,), seeds=(0, 1, 2))
    lora = {0: 3.0e-4 * 1.4, 1: 3.0e-4 * 1.5, 2: 3.0e-4 * 1.6}
    full = {0: 3.0e-4, 1: 3.0e-4, 2: 3.0e-4}
    searches = {"lora-r8": search([1e-4, 3e-4, 1e-3], lora), "full": search(FULL_GRID, full)}
    answer = get_question("lr-ratio").answer(make_evidence(tmp_path, plan, searches=searches))
    ratio, spread = answer.findings
    logs = np.log([1.4, 1.5, 1.6])
    half = 4.302652729911275 * logs.std(ddof=1) / math.sqrt(3)  # t(0.975, 2 df)
    ci = ratio.figures["interval"]
    assert ci["estimate"] == pytest.approx(math.exp(logs.mean()))
    assert (ci["low"], ci["high"]) == pytest.approx(
        np.exp([logs.mean() - half, logs.mean() + half])
    )
    assert ci["high"] < 3 and ratio.verdict == "differs"
    assert spread.verdict == "undetermined" and "one rank only" in spread.ours


def test_an_edge_in_one_seed_leaves_that_seed_out_and_one_seed_is_undetermined(tmp_path):
    plan = ratio_plan(ranks=(8,))
    searches = {
        "lora-r8": search(LORA_GRID, {0: 2e-3, 1: 5e-2}),  # seed 1 at the top edge
        "full": search(FULL_GRID, {0: 2e-4, 1: 2e-4}),
    }
    answer = get_question("lr-ratio").answer(make_evidence(tmp_path, plan, searches=searches))
    ratio = answer.findings[0]
    assert ratio.figures["seeds"] == [0] and ratio.figures["ratios"] == pytest.approx([10.0])
    assert ratio.verdict == "undetermined" and "one seed (no interval)" in ratio.ours
    assert any("lora-r8, search seed 1: undetermined: lowest loss at the grid's largest rate"
               in n and "study.lr_grid.lora-r8" in n for n in answer.notes)  # fmt: skip
    # full fine-tuning at the edge everywhere: no ratio at all
    searches["full"] = search(FULL_GRID, {0: 1e-2, 1: 1e-2})
    answer = get_question("lr-ratio").answer(make_evidence(tmp_path, plan, searches=searches))
    assert (
        answer.findings[0].verdict == "undetermined" and answer.findings[0].figures["seeds"] == []
    )


def test_other_searched_settings_keep_the_curve_at_the_chosen_value():
    rates = LORA_GRID
    points = [{"learning_rate": r, "lora.init": i} for i in ("default", "pissa") for r in rates]
    losses = parabola(rates, 2e-3) + parabola(rates, 5e-3)
    s = {"points": points, "curves": {0: [[0, v] for v in losses]},
         "chosen": {"learning_rate": 3e-3, "lora.init": "pissa"}}  # fmt: skip
    got_rates, got_losses = curves_by_seed(s)[0]
    assert got_rates == rates and got_losses == pytest.approx(parabola(rates, 5e-3))
    assert best_rate(got_rates, got_losses)[0] == pytest.approx(5e-3)


def test_unequal_alphas_and_rslora_are_noted(tmp_path):
    configs = {"a": run_config("lora", r=1, lora_alpha=1), "b": run_config("rslora", r=64),
               "full": run_config("full")}  # fmt: skip
    plan = make_plan(configs, lr_grid={n: LORA_GRID for n in configs}, lr_seeds=[0])
    answer = get_question("lr-ratio").answer(make_evidence(tmp_path, plan))
    assert any("fixes lora_alpha" in n for n in answer.notes)
    assert "a: no search curve (the search did not run or every run failed)" in answer.notes
    assert answer.findings[0].ours.startswith("undetermined (no seed with both best rates")
    assert "b scale by alpha / sqrt(r), not the published alpha / r" in answer.notes


def test_checks_refuse_a_plan_that_cannot_answer():
    q = get_question("lr-ratio")
    q.check(ratio_plan())  # the preset's shape passes
    grid = {"lora-r8": LORA_GRID, "full": [3e-4]}
    with pytest.raises(SpectuneError, match=r"study.lr_grid.full has 1 rate\(s\) \(0.0003\): a "
                       r"ratio of best rates needs a curve"):  # fmt: skip
        q.check(ratio_plan(ranks=(8,), lr_grid=grid))
    with pytest.raises(SpectuneError, match="and a full fine-tuning variant"):
        q.check(make_plan({"lora": run_config("lora")}, lr_grid={"lora": LORA_GRID}))
    with pytest.raises(SpectuneError, match="criterion is 'accuracy'.*criterion: loss"):
        q.check(ratio_plan(criterion="accuracy"))
    with pytest.raises(SpectuneError, match=r"study.grid \(lora.lora_dropout\)"):
        q.check(ratio_plan(grid={"lora.lora_dropout": [0.0, 0.1]}))
    q.check(ratio_plan(grid={"lora.lora_dropout": [0.0]}))  # one value: one candidate each


def test_seed_interval_is_students_t_and_one_seed_is_a_point():
    ci = seed_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert (ci.estimate, ci.low, ci.high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert ci.how == "Student t over 3 seeds" and ci.runs == 3
    ci = seed_interval([4.0, 1.0], log=True)
    half = 12.706204736174707 * (math.log(4.0) / math.sqrt(2)) / math.sqrt(2)
    assert (ci.estimate, ci.low, ci.high) == pytest.approx(
        (2.0, 2.0 / math.exp(half), 2.0 * math.exp(half))
    )
    assert seed_interval([]) is None and seed_interval([None, float("nan")]) is None
    assert seed_interval([5.0]).how == "one seed (no interval)"
    with pytest.raises(ValueError, match="positive"):
        seed_interval([1.0, -1.0], log=True)


def test_the_three_questions_are_registered_builtins():
    from spectune.studies.questions import QUESTIONS

    assert {"lr-ratio", "targets", "batch"} <= set(QUESTIONS.names())
    assert QUESTIONS.describe()["lr-ratio"] == get_question("lr-ratio").title
