"""Study variants: their syntax and refusals, matched budgets on the tiny model's shapes, the
search over rates x searched settings x search seeds with its criterion, and the study flow
with variants (fake run functions: no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from spectune.errors import SpectuneError
from spectune.studies.advice import load_candidates
from spectune.studies.questions import (
    QUESTIONS,
    Answer,
    Evidence,
    Finding,
    Question,
    register_question,
)
from spectune.studies.rate_search import search_points
from spectune.studies.study import StudyResult, study
from spectune.studies.variants import candidate_configs, split_study_config, study_plan
from tests.conftest import tiny_run_config
from tests.studies.test_advice import fake_metrics

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]


def _config(model_dir: Path, **block) -> dict:
    data = tiny_run_config(model_dir)
    data["lora"]["r"] = 8
    data["target_modules"] = "all-linear"
    data["data"]["n_eval"] = 20
    data["eval"]["latency_prompts"] = 0
    data["study"] = {"seeds": 1, "lr_search": {"validation": 8}, **block}
    return data


def test_variants_syntax_and_refusals_name_the_key(tiny_model_dir):
    def refused(match: str, **block) -> None:
        with pytest.raises(SpectuneError, match=match):
            split_study_config(_config(tiny_model_dir, **block))

    refused("exactly one of study.methods", methods=["lora"], variants={"a": {"method": "lora"}})
    refused("exactly one of study.methods")
    refused(r"study.variants.a.method: unknown method 'nope' \(registered: .*lora",
            variants={"a": {"method": "nope"}})  # fmt: skip
    refused("'a/b' is not a variant name", variants={"a/b": {"method": "lora"}})
    refused("study.variants.a must be a mapping with a method", variants={"a": {"lora.r": 2}})
    # an override the config refuses: the config's own message after the variant's key
    refused(r"study.variants.a: lora: unknown setting key\(s\) \['nope'\]",
            variants={"a": {"method": "lora", "lora.nope": 1}})  # fmt: skip
    refused(r"study.variants.a.search: lora.r must be >= 1, got 0",
            variants={"a": {"method": "lora", "search": {"lora.r": [2, 0]}}})  # fmt: skip
    refused("study.variants.a.train.learning_rate: the study sets .* use study.lr_grid",
            variants={"a": {"method": "lora", "train.learning_rate": 1e-3}})  # fmt: skip
    refused("study.variants.a.lora.r: study.grid varies lora.r",
            variants={"a": {"method": "lora", "lora.r": 2}}, grid={"lora.r": [2, 4]})  # fmt: skip
    refused(r"study.lr_grid.b: no variant 'b' in the study \(variants: a\)",
            variants={"a": {"method": "lora"}}, lr_grid={"b": [1e-3]})  # fmt: skip
    refused("study.lr_search.criterion must be one of accuracy, loss, got 'f1'",
            methods=["lora"], lr_search={"criterion": "f1"})  # fmt: skip
    refused("study.lr_search.seeds lists seed 1 more than once",
            methods=["lora"], lr_search={"seeds": [1, 1]})  # fmt: skip
    refused(r"study.question: unknown question 'nope'", methods=["lora"], question="nope")

    _, spec = split_study_config(_config(
        tiny_model_dir,
        variants={"r2": {"method": "lora", "lora.r": 2}, "full": {"method": "full"},
                  "r8": {"method": "lora", "search": {"lora.lora_dropout": [0.0, 0.1]}}},
        lr_grid={"full": [1e-4, 1e-5]}, lr_search={"seed": 5, "criterion": "loss"},
    ))  # fmt: skip
    assert [(v.name, v.method) for v in spec.variants] == [("r2", "lora"), ("full", "full"),
                                                           ("r8", "lora")]  # fmt: skip
    assert spec.methods == ["lora", "full"] and spec.variant("r2").overrides == {"lora.r": 2}
    assert spec.variant("r8").search == {"lora.lora_dropout": [0.0, 0.1]}
    assert spec.lr_grid == {"r2": [1e-2], "full": [1e-5, 1e-4], "r8": [1e-2]}
    assert spec.lr_seeds == [5] and spec.criterion == "loss"  # no seeds: the split's seed
    # the plain form is variants named after their methods
    _, plain = split_study_config(_config(tiny_model_dir, methods=["lora", "full"],
                                          lr_search={"seeds": 2}))  # fmt: skip
    assert [(v.name, v.method, v.overrides) for v in plain.variants] == [
        ("lora", "lora", {}), ("full", "full", {})]  # fmt: skip
    assert plain.lr_seeds == [0, 1] and plain.criterion == "accuracy"


def test_an_attention_only_variant_gets_the_rank_that_matches_all_linear_r8(tiny_model_dir):
    """The tiny model (hidden 64, MLP 128, 4 heads of 16, 2 KV heads, 2 blocks): per rank and
    block, q 64+64, k 64+32, v 64+32, o 64+64 (448) and gate/up/down 3 x (64+128) (576), so
    all-linear r=8 trains 8 x 2 x 1024 = 16384; attention-only needs 16384 / 896 = 18.3 ->
    r=18, MLP-only 16384 / 1152 = 14.2 -> r=14."""
    base, spec = split_study_config(_config(
        tiny_model_dir, variants={"attn": {"method": "lora", "target_modules": ATTENTION},
                                  "mlp": {"method": "lora", "target_modules": MLP},
                                  "all": {"method": "lora"}},
        match_budget=True,
    ))  # fmt: skip
    cands = candidate_configs(base, spec)
    assert [(c.name, c.variant, c.config.get("lora.r")) for c in cands] == [
        ("attn", "attn", 18), ("mlp", "mlp", 14), ("all", "all", 8)]  # fmt: skip
    assert cands[0].config.target_modules == ATTENTION
    plan = study_plan(spec, cands)
    assert plan.trainable == {"attn": 18 * 896, "mlp": 14 * 1152, "all": 16384}
    assert plan.configs["attn"].get("lora.r") == 18 and plan.match_budget
    # unmatched: each keeps the base rank
    base, spec = split_study_config(_config(
        tiny_model_dir, variants={"attn": {"method": "lora", "target_modules": ATTENTION}},
        match_budget=False))  # fmt: skip
    (c,) = candidate_configs(base, spec)
    assert c.config.get("lora.r") == 8 and study_plan(spec, [c]).trainable == {"attn": 8 * 896}


def test_search_seeds_and_criterion_pick_the_best_mean_point():
    """Hand-made scores over 2 rates x 2 inits x 2 seeds. By accuracy, (1e-2, b) has the best
    mean (0.55) though (1e-3, a) has the best single run (0.7 at seed 0); by loss (1e-3, b)
    has the lowest mean (0.9). (1e-2, a) fails at seed 1: it does not count at all, though its
    seed 0 scores best of all."""
    table = {  # (rate, init) -> per seed (accuracy, loss)
        (1e-3, "a"): [(0.70, 1.5), (0.30, 1.5)],  # mean 0.50, 1.5
        (1e-3, "b"): [(0.40, 0.8), (0.40, 1.0)],  # mean 0.40, 0.9
        (1e-2, "a"): [(0.99, 0.1), None],  # failed at seed 1
        (1e-2, "b"): [(0.50, 1.2), (0.60, 1.4)],  # mean 0.55, 1.3
    }
    calls = []

    def run(point, seed):
        calls.append((point["learning_rate"], point["lora.init"], seed))
        got = table[point["learning_rate"], point["lora.init"]][seed]
        if got is None:
            raise RuntimeError("loss is NaN")
        return got

    acc = search_points("lora", "lora", [1e-2, 1e-3], {"lora.init": ["a", "b"]}, [0, 1], run)
    assert calls[:4] == [(1e-3, "a", 0), (1e-3, "a", 1), (1e-3, "b", 0), (1e-3, "b", 1)]
    assert acc.chosen_point == {"learning_rate": 1e-2, "lora.init": "b"} and acc.chosen == 1e-2
    assert acc.points[2] == {"learning_rate": 1e-2, "lora.init": "a"}
    assert acc.curves[1][2] is None and acc.curves[0][2] == (0.99, 0.1)
    assert acc.errors == {"0.01-inita-s1": "loss is NaN"}
    # per rate, its best setting's mean: 1e-3 -> a (0.50), 1e-2 -> b (0.55)
    assert acc.rates == [1e-3, 1e-2]
    assert acc.scores[0] == pytest.approx((0.5, 1.5)) and acc.scores[1] == pytest.approx(
        (0.55, 1.3)
    )
    assert acc.at_edge == "largest"
    loss = search_points("lora", "lora", [1e-3, 1e-2], {"lora.init": ["a", "b"]}, [0, 1], run,
                         criterion="loss")  # fmt: skip
    assert loss.chosen_point == {"learning_rate": 1e-3, "lora.init": "b"}
    assert loss.evidence()["chosen"] == {"learning_rate": 1e-3, "lora.init": "b"}
    assert loss.evidence()["criterion"] == "loss" and set(loss.evidence()["curves"]) == {0, 1}
    # one seed: seed 0 alone decides, (1e-2, a) counts and wins
    one = search_points("lora", "lora", [1e-3, 1e-2], {"lora.init": ["a", "b"]}, [0], run)
    assert one.chosen_point == {"learning_rate": 1e-2, "lora.init": "a"}


def _fake_run(calls: list, fail: set[str] = frozenset()):
    """Writes what a finished run writes; ``calls`` counts the runs it trains (a resumed
    finished run is read back, as spectune tune --resume does). Validation loss is lowest at
    lr 1e-2 and dropout 0.1 (mean over seeds); seed 1 adds 0.2. Accuracy peaks at lr 1e-3
    (not the loss's)."""

    def run(config, *, out, resume=False, progress=True):
        from spectune.judging.loss import LossResult
        from spectune.results.metrics import Learning, RunMetrics

        out = Path(out)
        if resume and (out / "metrics.json").is_file():
            return SimpleNamespace(out=out, metrics=RunMetrics.load(out))
        calls.append((out.parent.name, out.name, config))
        if any(f in out.name for f in fail):
            raise RuntimeError(f"planted failure of {out.name}")
        lr = config.get("train.learning_rate")
        dropout = config.get("lora.lora_dropout") if config.method != "full" else 0.0
        loss = abs(math.log10(lr) + 2) + abs(dropout - 0.1) + 0.2 * config.seed + 0.5
        acc = 0.6 - 0.1 * abs(math.log10(lr) + 3)
        m = fake_metrics(config.method, config.seed, acc=acc, ppl=10.5, lr=lr, alpha=3.0)
        m.after.heldout_loss = LossResult(loss, math.exp(loss), 10, 10, 0)
        m.learning = Learning.compare(m.before, m.after)
        out.mkdir(parents=True, exist_ok=True)
        m.save(out)
        u = np.random.default_rng(config.seed).random(config.data.n_eval)
        (out / "predictions.jsonl").write_text("".join(
            json.dumps({"correct_before": False, "correct_after": bool(x < acc)}) + "\n"
            for x in u))  # fmt: skip
        return SimpleNamespace(out=out, metrics=m)

    return run


def test_a_study_of_variants_searches_their_settings_and_records_rows(tiny_model_dir, tmp_path):
    data = _config(
        tiny_model_dir,
        variants={
            "lo": {"method": "lora", "lora.r": 2, "train.max_steps": 7,
                   "search": {"lora.lora_dropout": [0.0, 0.1]}},
            "hi": {"method": "lora"},
            "full": {"method": "full"},
        },
        seeds=2, lr_grid={"lo": [1e-3, 1e-2], "full": [1e-4]},
        lr_search={"validation": 8, "seeds": [0, 1], "criterion": "loss"},
        match_budget=False,
    )  # fmt: skip
    calls: list = []
    out = tmp_path / "study"
    result = study(data=data, out=out, progress=False, run_fn=_fake_run(calls))
    search = [(folder, name) for folder, name, _ in calls if folder == "lr_search"]
    assert [n for _, n in search] == [
        f"lo-lr{r}-lora_dropout{d}-s{s}" for r in ("0.001", "0.01") for d in ("0", "0.1")
        for s in (0, 1)]  # fmt: skip
    # lr_search.steps omitted: the variant's own max_steps; the search seed is the run's seed
    first = calls[0][2]
    assert first.get("train.max_steps") == 7 and first.seed == 0 and calls[1][2].seed == 1
    assert first.data.n_eval == 8  # the validation split, not the held-out questions
    (lo,) = [s for s in result.lr_search if s["variant"] == "lo"]
    assert lo["chosen_point"] == {"learning_rate": 0.01, "lora.lora_dropout": 0.1}
    assert lo["criterion"] == "loss" and lo["seeds"] == [0, 1] and len(lo["points"]) == 4
    assert lo["curves"]["1"][3] == pytest.approx([0.5, 0.7])  # JSON keys: the seed as text
    (hi,) = [s for s in result.lr_search if s["variant"] == "hi"]
    assert hi["chosen"] == 1e-2 and hi["curves"] == {}  # one rate: no search
    # the real runs use the chosen point; full's rate is its one rate
    runs = {name: config for folder, name, config in calls if folder == "runs"}
    assert list(runs) == ["lo-s0", "lo-s1", "hi-s0", "hi-s1", "full-s0", "full-s1"]
    assert runs["lo-s1"].get("lora.lora_dropout") == 0.1 and runs["lo-s1"].seed == 1
    assert runs["lo-s1"].get("lora.r") == 2 and runs["hi-s0"].get("lora.r") == 8
    assert runs["full-s0"].get("train.learning_rate") == 1e-4
    row = result.runs[1]
    assert (row["variant"], row["candidate"], row["seed"], row["method"]) == ("lo", "lo", 1, "lora")
    assert row["learning_rate"] == 0.01 and row["lora.lora_dropout"] == 0.1
    assert row["heldout_loss_after"] == pytest.approx(0.7)  # 0 + 0 + 0.2 + 0.5
    assert [s["variant"] for s in result.summaries] == ["lo", "hi", "full"]
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert {"variant", "candidate", "seed", "learning_rate", "heldout_loss_after",
            "lora.lora_dropout"} <= set(header)  # fmt: skip
    assert any("by the lowest validation loss, mean over search seeds 0, 1" in n
               and "lo 0.01 (lora.lora_dropout=0.1), hi 0.01, full 0.0001" in n
               for n in result.notes)  # fmt: skip
    # spectune advise on the folder: one candidate per variant, named after it
    cands = {c.name: c for c in load_candidates(out)}
    assert sorted(cands) == ["full", "hi", "lo"] and cands["lo"].runs == 2
    saved = StudyResult.load(out)
    assert saved.schema_version == 2 and [v["name"] for v in saved.variants] == ["lo", "hi", "full"]
    assert saved.variants[0]["search"] == {"lora.lora_dropout": [0.0, 0.1]}


def test_an_old_study_json_still_loads(tmp_path):
    """A schema-1 study.json (no variants, no answer, lr_search without points)."""
    old = {"title": "t", "methods": ["lora"], "seeds": [0],
           "lr_search": [{"method": "lora", "rates": [0.001], "scores": [None], "chosen": 0.001,
                          "errors": {}}],
           "runs": [], "summaries": [], "differences": [], "effects": {}, "correlations": [],
           "advice": None, "notes": [], "failed_runs": {}, "total_seconds": 1.0,
           "schema_version": 1, "layer_correlations": []}  # fmt: skip
    (tmp_path / "study.json").write_text(json.dumps(old))
    r = StudyResult.load(tmp_path)
    assert r.schema_version == 1 and r.variants == [] and r.answer is None
    assert r.lr_search[0]["chosen"] == 0.001


class _LoQuestion(Question):
    """A test question: is lo's chosen rate above hi's one rate? It needs two rates for lo."""

    title = "test: lo's best rate against hi's"
    source = "the test"

    def __init__(self) -> None:
        self.answers: list[Evidence] = []
        self.plans: list = []
        self.tag = "first"
        self.fail = False

    def check(self, plan) -> None:
        self.plans.append(plan)
        if len(plan.lr_grid["lo"]) < 2:
            raise SpectuneError(
                f"study.lr_grid.lo: test-lo needs two rates for lo, got {plan.lr_grid['lo']}"
            )

    def answer(self, evidence: Evidence) -> Answer:
        self.answers.append(evidence)
        if self.fail:
            raise ZeroDivisionError("planted in answer()")
        lo = evidence.searches["lo"]["chosen"]["learning_rate"]
        hi = evidence.searches["hi"]["chosen"]["learning_rate"]
        finding = Finding("lo's rate / hi's", "about 1x", self.source, f"{lo / hi:g}x",
                          "agrees" if lo == hi else "differs", f"one search ({self.tag})",
                          {"ratio": lo / hi})  # fmt: skip
        table = [{"variant": s["variant"], "learning_rate": s["learning_rate"]}
                 for s in evidence.summaries]  # fmt: skip
        return Answer("test-lo", f"{self.title} ({self.tag})", [finding], table, ["a note"])


@pytest.fixture
def lo_question():
    q = _LoQuestion()
    register_question("test-lo", q)
    yield q
    QUESTIONS.unregister("test-lo")


def test_a_question_refuses_its_plan_answers_and_is_answered_again_on_resume(
    tiny_model_dir, tmp_path, lo_question
):
    def config(lo_rates):
        return _config(tiny_model_dir, question="test-lo", seeds=2,
                       variants={"lo": {"method": "lora", "lora.r": 2}, "hi": {"method": "lora"}},
                       lr_grid={"lo": lo_rates, "hi": [1e-3]}, match_budget=False)  # fmt: skip

    out = tmp_path / "study"
    calls: list = []
    with pytest.raises(SpectuneError, match=r"study.lr_grid.lo: test-lo needs two rates"):
        study(data=config([1e-2]), out=out, progress=False, run_fn=_fake_run(calls))
    assert not out.exists() and calls == []  # refused before the folder and any run
    plan = lo_question.plans[0]
    assert plan.trainable == {"lo": 2 * 2048, "hi": 8 * 2048} and plan.seeds == [0, 1]
    assert plan.configs["lo"].get("lora.r") == 2 and plan.criterion == "accuracy"

    data = config([1e-3, 1e-2])
    result = study(data=data, out=out, progress=False, run_fn=_fake_run(calls))
    assert len(calls) == 2 + 4  # lo's two search runs, 2 variants x 2 seeds
    (evidence,) = lo_question.answers
    assert evidence.searches["lo"]["chosen"] == {"learning_rate": 1e-3}  # accuracy peaks there
    assert evidence.searches["lo"]["curves"][0][1][0] == pytest.approx(0.5)
    assert evidence.groups == {"lo": ["lo-s0", "lo-s1"], "hi": ["hi-s0", "hi-s1"]}
    assert [r["variant"] for r in evidence.rows] == ["lo", "lo", "hi", "hi"]
    assert result.answer["findings"][0]["verdict"] == "agrees"
    saved = json.loads((out / "study.json").read_text())
    assert Answer.from_dict(saved["answer"]).findings[0].figures == {"ratio": 1.0}
    md = (out / "study.md").read_text()
    assert "| lo's rate / hi's | about 1x (the test) | 1x | agrees |" in md
    assert "| lo | 0.001 |" in md and "- a note" in md
    html = (out / "report.html").read_text()
    assert (
        "Findings" in html and "lo&#x27;s rate / hi&#x27;s" in html and "one search (first)" in html
    )

    # a finished study resumed: the answer again from the runs, no run trained again
    lo_question.tag = "second"
    again = study(data=data, out=out, resume=True, progress=False, run_fn=_fake_run(calls))
    assert len(calls) == 6 and len(lo_question.answers) == 2
    assert again.answer["title"].endswith("(second)")
    assert json.loads((out / "study.json").read_text())["answer"]["title"].endswith("(second)")

    # a question that raises in answer(): the study and its runs are kept, the error is a note
    lo_question.fail = True
    broken = study(data=data, out=out, resume=True, progress=False, run_fn=_fake_run(calls))
    assert len(calls) == 6 and broken.answer is None
    saved = json.loads((out / "study.json").read_text())
    assert saved["answer"] is None and len(saved["runs"]) == 4
    assert any("question test-lo: no answer" in n and "planted in answer()" in n
               for n in saved["notes"])  # fmt: skip
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
