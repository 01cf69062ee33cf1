"""The page of a comparison folder (a sweep, a study, a search or the demo)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from spectune.errors import SpectuneError
from spectune.report.pages.comparison import render_comparison, write_comparison_report

from .test_run import (
    COLORS,
    RUN_PLOTS,
    check_self_contained,
    files,
    make_run,
    metrics,
    save_png,
)

RESULT_COLUMNS = ["name", "method", "r", "lora_alpha", "lora_dropout", "frog_budget", "trainable",
                  "trainable_percent", "train_loss", "accuracy_before", "accuracy_after",
                  "heldout_loss_after", "perplexity_before", "perplexity_after",
                  "perplexity_change", "train_seconds", "tokens_per_second", "peak_rss_mib",
                  "adapter_mib", "ms_per_token", "adapter_alpha", "base_alpha", "extra_score",
                  "status"]  # fmt: skip


def result_row(name: str, acc: float | str, dppl: float | str, status: str = "complete") -> dict:
    row = dict.fromkeys(RESULT_COLUMNS, "")
    row.update(name=name, method="lora", r=8, lora_alpha=16, lora_dropout=0.05, trainable=1234567,
               trainable_percent=0.9145, accuracy_before=0.125, accuracy_after=acc,
               perplexity_before=20.0, perplexity_change=dppl, extra_score=0.5, status=status)  # fmt: skip
    return row


def make_comparison(folder: Path, *, info: bool = True) -> Path:
    """A sweep folder: 3 runs (one failed), 2 top-level plots, run folders with 2 + 1 plots."""
    folder.mkdir(parents=True)
    rows = [result_row("r4", 0.375, 0.25), result_row("r8", 0.625, 1.75),
            result_row("broken", "", "", status="failed: out of memory")]  # fmt: skip
    with (folder / "results.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if info:
        (folder / "comparison.json").write_text(json.dumps({
            "kind": "sweep", "title": "Sweep over r", "grid": {"r": [4, 8]},
            "base_config": {"method": "lora"}, "total_seconds": 300.0,
            "notes": ["one run ran out of memory"]}), encoding="utf-8")  # fmt: skip
    save_png(folder / "plots" / "tradeoff.png", COLORS[0])
    save_png(folder / "plots" / "accuracy_vs_r.png", COLORS[1])
    (folder / "plots" / "readme.txt").write_text("not a plot", encoding="utf-8")
    m4 = metrics("r4")
    m4["learning"].update(accuracy_after=0.375, accuracy_gain=0.25)
    m8 = metrics("r8")
    m8["learning"].update(accuracy_after=0.625, accuracy_gain=0.5)
    make_run(folder / "runs" / "r4", m4, plots=RUN_PLOTS[:2], full=False)
    make_run(folder / "runs" / "r8", m8, plots=RUN_PLOTS[:1], full=False)
    (folder / "runs" / "broken").mkdir()
    return folder


# --------------------------------------------------------------------------- comparison page


def test_comparison_page(tmp_path):
    folder = make_comparison(tmp_path / "sweep")
    text = render_comparison(folder)
    page = check_self_contained(text, n_images=2 + 2 + 1)
    assert page.all("h1") and "Sweep over r" in page.text
    assert "sweep of 3 runs \u00b7 total time 300 s (5.0 min)" in page.text
    results = next(t for t in page.tables if t[0][0] == "run")
    header = results[0]
    assert header[:3] == ["run", "method", "status"]
    assert header[-1] == "extra score"  # extra columns kept
    assert "frog budget" not in header  # no run has a value: left out, and said so
    assert "Columns without a value in any run are left out: frog_budget, train_loss" in page.text
    assert [r[0] for r in results[1:]] == ["r4", "r8", "broken"]
    r8 = dict(zip(header, results[2], strict=True))
    assert r8["accuracy after"] == "62.5%" and r8["perplexity change"] == "+1.75"
    assert r8["trainable params"] == "1,234,567" and r8["trainable %"] == "0.914%"
    broken = dict(zip(header, results[3], strict=True))
    assert broken["accuracy after"] == "-" and broken["status"] == "failed: out of memory"
    # the best accuracy (r8) and the least forgetting (r4) are highlighted, nothing else
    best = re.findall(r'<td class="num best"><span title="best">([^<]*)</span>', text)
    assert best == ["+0.25", "62.5%"]  # r4's perplexity change, r8's accuracy
    assert text.count('title="best"') == 2
    assert '<tr class="failed">' in text
    # top-level plots in sorted order, captioned from the file name
    captions = re.findall(r"<figcaption>([^<]*) <span", text)
    assert captions[:2] == ["Accuracy vs r", "Tradeoff"]
    # one collapsible section per run folder, in results.csv order, linked from the table
    details = page.all("details")
    assert [d["id"] for d in details] == ["run-1", "run-2", "run-3"]
    assert [a["href"] for a in page.all("a")] == ["#run-1", "#run-2", "#run-3"]
    summaries = re.findall(r"<summary>([^<]*)</summary>", text)
    assert summaries[0].startswith("r4 \u00b7 lora \u00b7 accuracy 12.5% \u2192 37.5%")
    assert "failed: out of memory" in summaries[2]
    assert "the run did not finish" in page.text
    assert '{\n  "method": "lora"\n}' in page.text  # base config
    assert "one run ran out of memory" in page.text


def test_comparison_page_without_optional_files(tmp_path):
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "results.csv").write_text("name,accuracy_after\nonly,0.125\n")
    page = check_self_contained(render_comparison(folder), n_images=0)
    assert "spectune comparison: demo" in page.text
    assert page.row("only") == ["only", "12.5%"]
    assert page.all("details") == []


def test_comparison_page_shows_the_base_model_spectra(tmp_path):
    """The demo's base_spectra/ folder: its summary line and every figure, embedded."""
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "results.csv").write_text("name,accuracy_after\nlora,0.5\n")
    spectra = folder / "base_spectra"
    spectra.mkdir()
    (spectra / "summary.json").write_text(json.dumps(
        {"n_layers": 211, "n_analyzed": 210, "alpha": 3.456, "alpha_weighted": 1.5,
         "log_norm": 1.25, "stable_rank": 12.34}))  # fmt: skip
    save_png(spectra / "alpha_hist.png")
    save_png(spectra / "esd_0.png", "#c44e52")
    page = check_self_contained(render_comparison(folder), n_images=2)
    assert "Base model spectra" in page.text
    assert "210 of 211 matrices fitted; mean alpha 3.46, alpha_weighted 1.50" in page.text


def test_comparison_escapes_and_tolerates_bad_files(tmp_path):
    folder = make_comparison(tmp_path / "sweep", info=False)
    evil = "<script>alert(1)</script>"
    (folder / "comparison.json").write_text(json.dumps({"title": evil, "grid": [evil]}))
    with (folder / "results.csv").open("a", newline="") as fh:
        csv.writer(fh).writerow([evil] + [""] * (len(RESULT_COLUMNS) - 1))
    (folder / "runs" / "r8" / "metrics.json").write_text("[not, json")
    text = render_comparison(folder)
    page = check_self_contained(text, n_images=5)
    assert page.all("script") == []
    assert page.text.count(evil) >= 3  # title, h1, table (and the grid)
    assert "runs/r8/metrics.json cannot be read as JSON" in page.text


def test_missing_results_csv_raises(tmp_path):
    folder = make_run(tmp_path / "run", full=False)  # a run folder is not a comparison
    with pytest.raises(SpectuneError, match="results.csv"):
        render_comparison(folder)
    with pytest.raises(SpectuneError, match="results.csv"):
        write_comparison_report(folder)
    assert not (folder / "report.html").exists()


def test_write_comparison_report_is_atomic(tmp_path):
    folder = make_comparison(tmp_path / "sweep")
    before = files(folder)
    path = write_comparison_report(folder)
    assert path == folder / "report.html"
    assert files(folder) == before | {"report.html"}
    assert path.read_text(encoding="utf-8") == render_comparison(folder)
