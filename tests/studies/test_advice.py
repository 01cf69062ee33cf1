"""The advice: hand-built tables with a known right answer, one the data cannot decide, and
``spectune advise`` on a folder of runs."""

from __future__ import annotations

import numpy as np

from spectune.studies.advice import Candidate, Constraints, advise


def fake_metrics(method: str, seed: int, *, acc: float, ppl: float, lr: float = 1e-3,
                 settings: dict | None = None, alpha: float | None = None):  # fmt: skip
    """A RunMetrics as a finished run writes it (numbers chosen by the test)."""
    from spectune.judging.accuracy import AccuracyResult
    from spectune.judging.forgetting import PerplexityResult
    from spectune.judging.loss import LossResult
    from spectune.results.metrics import (
        Cost,
        Forgetting,
        Judging,
        Learning,
        RunInfo,
        RunMetrics,
        SpectraSummary,
        Training,
    )

    def judging(a: float, p: float) -> Judging:
        return Judging(AccuracyResult(a, 100, int(100 * a), {}), LossResult(1.0, 2.7, 10, 10, 0),
                       PerplexityResult(p, float(np.log(p)), 100, 100, 400, 64, 32, "x", "t"))  # fmt: skip

    before, after = judging(0.0, 10.0), judging(acc, ppl)
    return RunMetrics(
        run=RunInfo(name=f"{method}-s{seed}", method=method, seed=seed),
        config={"method": method, "seed": seed, "train": {"learning_rate": lr, "max_steps": 4}},
        data={}, before=before, after=after,
        learning=Learning.compare(before, after), forgetting=Forgetting.compare(before, after),
        cost=Cost(train_seconds=10.0, train_seconds_this_session=10.0, steps=4, tokens=100,
                  tokens_per_second=10.0, peak_rss_bytes=2**30, peak_rss_exact=True,
                  trainable=1000, total=10000, trainable_percent=10.0, adapter_bytes=4000,
                  ms_per_token=5.0),
        training=Training(first_loss=3.0, final_loss=1.0, global_step=4, epochs=0.1),
        spectra=SpectraSummary(alpha=alpha, base_alpha=None if alpha is None else 4.0),
        settings=settings or {},
    )  # fmt: skip


def _scores(rate: float, n: int = 300, seed: int = 0, *, base: np.ndarray | None = None):
    """Per-question gains: right (1) with probability ``rate`` (paired through ``base``)."""
    rng = np.random.default_rng(seed)
    u = rng.random(n) if base is None else base
    return (u < rate).astype(float)


def _table(noise_gap: float = 0.25) -> list[Candidate]:
    # every candidate is judged on the same 300 questions per seed; frog gets its answers
    # right on other questions than the rest (so a small gap to it is noise, not an order)
    u = {s: np.random.default_rng(100 + s).random(300) for s in range(3)}
    v = {s: np.random.default_rng(200 + s).random(300) for s in range(3)}

    def cand(name, rate, forget, secs, ms, gib, trainable):
        base = v if name == "frog" else u
        return Candidate(name, name, {s: _scores(rate, base=base[s]) for s in range(3)},
                         [forget] * 3, secs, ms, gib, trainable)  # fmt: skip

    return [cand("full", 0.55, 0.30, 300.0, 20.0, 6.0, 135_000_000),
            cand("lora", 0.50, 0.04, 100.0, 25.0, 2.0, 2_400_000),
            cand("qlora", 0.48, 0.08, 160.0, 40.0, 1.2, 2_400_000),
            cand("frog", noise_gap, 0.01, 90.0, 20.0, 2.0, 2_400_000)]  # fmt: skip


def test_without_constraints_the_clear_best_is_chosen_with_its_numbers():
    advice = advise(_table())
    assert advice.choice == "full" and advice.decided and not advice.tied
    text = advice.text()
    assert "Recommendation: full" in text and "accuracy gain +5" in text
    assert "full beats frog" in text and "resolved" in text


def test_constraints_exclude_with_the_number_that_broke_them():
    advice = advise(_table(), Constraints(memory_gib=4, max_forgetting=0.05))
    assert advice.excluded["full"].startswith("peak memory 6 GiB > 4 GiB")
    assert "perplexity increase 8.0% > 5%" in advice.excluded["qlora"]
    assert advice.choice == "lora" and advice.decided
    assert "frog" in " ".join(advice.reasons)
    tight = advise(_table(), Constraints(memory_gib=1.5))
    assert tight.choice == "qlora"
    none = advise(_table(), Constraints(max_ms_per_token=10))
    assert none.choice is None and "no candidate meets" in none.reasons[-1]


def test_when_the_data_cannot_decide_it_says_so_and_names_the_tie_break():
    # lora and frog differ by 1 point on 3 x 300 questions: within noise
    table = _table(noise_gap=0.49)
    advice = advise(table, Constraints(memory_gib=4))
    assert not advice.decided and set(advice.tied) | {advice.choice} >= {"lora", "frog"}
    assert advice.choice == "frog"  # tied on accuracy, forgets less
    text = advice.text()
    assert "cannot separate" in text and "within noise" in text and "less forgetting" in text


def test_advise_cli_reads_a_folder_of_runs(tmp_path, capsys):
    """A sweep-like folder with two methods x two seeds written by hand (metrics + predictions)."""
    import json

    from spectune.cli.main import main

    for method, rate, ppl in (("lora", 0.9, 11.0), ("frog", 0.2, 10.1)):
        for seed in (0, 1):
            d = tmp_path / "runs" / f"{method}-s{seed}"
            d.mkdir(parents=True)
            fake_metrics(method, seed, acc=rate, ppl=ppl).save(d)
            u = np.random.default_rng(seed).random(100)
            lines = [json.dumps({"correct_before": False, "correct_after": bool(x < rate)})
                     for x in u]  # fmt: skip
            (d / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["advise", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Recommendation: lora" in out and "lora beats frog" in out
    assert main(["advise", str(tmp_path), "--max-forgetting", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "Recommendation: frog" in out and "perplexity increase 10.0% > 5%" in out
    assert main(["advise", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
