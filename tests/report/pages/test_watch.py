"""The watch sections of the reports (fits, overparameterized layers, intruder dimensions,
scale collapse, correlation flow): present with the right numbers for planted inputs, absent
without their data, every string escaped."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from spectune.errors import SpectuneError
from spectune.report.files import spectral_figures, write_comparison_results, write_results
from spectune.report.pages.comparison import render_comparison
from spectune.report.pages.run import render_run
from spectune.report.pages.spectra import render_spectra, write_spectra_report
from spectune.watch import analyze, summarize
from spectune.watch.compare import compare_models
from spectune.watch.rows import OVERFIT_ADAPTER
from spectune.watch.tpl import ALPHA_AT_BOUND, LAMBDA_AT_BOUND

from .test_comparison import make_comparison
from .test_run import check_self_contained, make_run, parse

WATCH_TITLES = ["Fits: power law or truncated power law", "Overparameterized layers (alpha > 6)",
                "Intruder dimensions", "Scale collapse", "Correlation flow"]  # fmt: skip
EVIL = "<script>alert(1)</script>"


def stack(n: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """As tests/watch/test_compare.py: n up_proj matrices along depth."""
    g = torch.Generator().manual_seed(seed)
    return {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(48, 24, generator=g,
                                                                dtype=torch.float64)
            for i in range(n)}  # fmt: skip


def planted_collapse(out: Path, *, plots: bool = True) -> Path:
    """A comparison folder: layer 5 of b is a's times 0.3, every other layer a's times 1.1."""
    a = stack()
    b = {k: v * (0.3 if "layers.5." in k else 1.1) for k, v in a.items()}
    c = compare_models(analyze(a, progress=False), analyze(b, progress=False),
                       labels=("base", "tuned"))  # fmt: skip
    write_comparison_results(c, out, plots=plots)
    return out


def planted_intruder(out: Path) -> pd.DataFrame:
    """A delta analysis with intruder columns: 'layer' has one planted intruder, 'other' none
    (the construction of tests/watch/test_intruders.py)."""
    from tests.watch.test_intruders import base_matrix

    W0, other = base_matrix(), base_matrix(seed=9)
    g = torch.Generator().manual_seed(1)
    u = torch.randn(W0.shape[0], 1, generator=g, dtype=torch.float64)
    v = torch.randn(1, W0.shape[1], generator=g, dtype=torch.float64)
    tuned = {"layer.weight": W0 + 30.0 * (u / u.norm()) @ (v / v.norm()), "other.weight": other}
    d = analyze(tuned, base={"layer.weight": W0, "other.weight": other}, delta=True,
                intruders=True, progress=False)  # fmt: skip
    write_results(d, summarize(d), out, plots=False)
    from spectune.report.files import save_figures

    save_figures(spectral_figures(d), out)
    return d


def headings(page) -> list[str]:
    """The section headings (h2-h4) of a page from :func:`rendered`, as text."""
    import html
    import re

    return [html.unescape(h) for h in re.findall(r"<h[234]>(.*?)</h[234]>", page.raw)]


def table_row(page, header: str | list[str], label: str) -> list[str]:
    """The row ``label`` of the first table whose second column is headed ``header`` (or
    whose headers are the list ``header``)."""
    for table in page.tables:
        if table[0] == header or (len(table[0]) > 1 and table[0][1] == header):
            for row in table[1:]:
                if row[0] == label:
                    return row
    raise AssertionError(f"no row {label!r} in a table with a column {header!r}")


def rendered(text: str):
    """The parsed page (test_run's parser), keeping the raw text for :func:`headings`."""
    page = parse(text)
    page.raw = text
    return page


def write_details(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fields)
        w.writeheader()
        w.writerows(rows)


# --------------------------------------------------------------------------- scale collapse


def test_planted_norm_collapse_is_shown_with_its_numbers(tmp_path):
    folder = planted_collapse(tmp_path / "cmp")
    text = render_spectra(folder)
    page = check_self_contained(text, n_images=2)  # scale_collapse.png, correlation_flow.png
    page.raw = text
    assert headings(page) == ["Scale collapse: tuned against base", "Correlation flow"]
    assert "spectune compare: tuned against base" in page.text
    assert "10 matrices compared; 1 collapsed." in page.text
    row = page.row("model.layers.5.mlp.up_proj")
    # d log10 ||W||^2 of the collapsed layer: 2 log10(0.3) = -1.0458; alpha unchanged
    assert row[1] == row[2] == f"{2 * math.log10(0.3):+.4f}" == "-1.0458"
    assert row[4] == "spectral, frobenius"
    # the others grew by 2 log10(1.1) = +0.0828 and are not collapsed
    other = page.row("model.layers.0.mlp.up_proj")
    assert other[1] == "+0.0828" and other[4] == ""
    mean = (9 * 2 * math.log10(1.1) + 2 * math.log10(0.3)) / 10
    assert f"log10 Frobenius norm\u00b2 {mean:+.4f}" in page.text
    # the flow: one layer type, the same slope in both (scaling leaves alpha alone)
    flow = page.row("up_proj")
    assert flow[1] == "10" and flow[2] == flow[3] and flow[6] == "0"


def test_a_comparison_without_figures_still_shows_the_tables(tmp_path):
    folder = planted_collapse(tmp_path / "cmp", plots=False)
    page = check_self_contained(render_spectra(folder), n_images=0)
    assert "10 matrices compared; 1 collapsed." in page.text


# --------------------------------------------------------------------------- intruders


def test_planted_intruder_is_shown_with_its_numbers(tmp_path):
    d = planted_intruder(tmp_path / "dl")
    assert d.set_index("longname")["num_intruders"].to_dict() == {"layer": 1, "other": 0}
    text = render_spectra(tmp_path / "dl")
    page = rendered(text)
    assert "Intruder dimensions" in headings(page)
    assert "1 intruder dimension in 1 of 2 matrices." in page.text
    sim = d.set_index("longname").loc["layer", "intruder_min_sim"]
    assert sim < 0.5
    assert page.row("layer") == ["layer", "1", f"{sim:.3f}"]
    assert "top 10 singular vectors" in page.text and "below 0.5" in page.text
    check_self_contained(text, n_images=1)  # intruders.png


# --------------------------------------------------------------------------- fits


def test_fits_section_counts_trustworthy_alphas_and_bounds(tmp_path):
    rows = [
        {"longname": "a", "alpha": 1.0, "Lambda": 0.02, "pl_tpl_R": -3.9, "pl_tpl_p": 0.005,
         "better_fit": "truncated_power_law", "status": "success", "warning": ALPHA_AT_BOUND},
        {"longname": "b", "alpha": 2.858, "Lambda": 3.6e-12, "pl_tpl_R": 0.0, "pl_tpl_p": 0.9999,
         "better_fit": "undecided", "status": "success", "warning": LAMBDA_AT_BOUND},
        {"longname": "c", "alpha": 3.25, "Lambda": 0.5, "pl_tpl_R": 2.5, "pl_tpl_p": 0.02,
         "better_fit": "power_law", "status": "success", "warning": ""},
        {"longname": "d", "alpha": "", "Lambda": "", "pl_tpl_R": "", "pl_tpl_p": "",
         "better_fit": "", "status": "failed", "warning": "no tail"},
    ]  # fmt: skip
    folder = tmp_path / "an"
    write_details(folder / "details.csv", rows)
    (folder / "summary.json").write_text(json.dumps({"n_layers": 4, "options": {"fit": "TPL"}}))
    text = render_spectra(folder)
    page = rendered(text)
    assert headings(page)[:2] == ["Summary", "Fits: power law or truncated power law"]
    assert ("Alpha from the TPL fit. The plain alpha is trustworthy on 2 of 3 tested matrices "
            "(1 power law preferred, 1 undecided); the truncated power law fits better on 1. "
            "2 TPL fits at a parameter bound.") in page.text  # fmt: skip
    # flagged rows first (bends or at a bound), then the rest; the failed row has no alpha
    fits = next(t for t in page.tables if t[0][:2] == ["matrix", "alpha"] and "verdict" in t[0])
    assert [r[0] for r in fits[1:]] == ["a", "b", "c"]
    assert fits[1] == ["a", "1.000", "0.02", "-3.900", "0.0050",
                       "tail bends: truncated power law fits better", "alpha at 1"]  # fmt: skip
    assert fits[2][-2:] == ["alpha trustworthy (no significant difference)", "Lambda at 0"]
    assert fits[3][-2:] == ["alpha trustworthy (power law preferred)", ""]


def test_fits_section_from_a_real_tpl_analysis(tmp_path, capsys):
    from safetensors.torch import save_file

    from spectune.cli.main import main

    src = tmp_path / "m"
    src.mkdir()
    save_file({k: v.float() for k, v in stack(6).items()}, str(src / "model.safetensors"))
    out = tmp_path / "out"
    args = ["analyze", str(src), "--fit", "TPL", "--compare-fits", "--report", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    details = pd.read_csv(out / "details.csv")
    text = (out / "report.html").read_text(encoding="utf-8")
    page = rendered(text)
    assert "Fits: power law or truncated power law" in headings(page)
    n_bends = int((details["better_fit"] == "truncated_power_law").sum())
    n_tested = int(
        details["better_fit"].isin(["power_law", "undecided", "truncated_power_law"]).sum()
    )
    assert n_tested == 6
    assert f"trustworthy on {n_tested - n_bends} of {n_tested} tested matrices" in page.text
    n_bound = int(details["warning"].fillna("").str.contains("lower bound").sum())
    assert f"{n_bound} TPL fit{'s' if n_bound != 1 else ''} at a parameter bound" in page.text
    assert (out / "flow.csv").is_file() and "Correlation flow" in headings(page)
    assert "Intruder dimensions" not in headings(page)
    check_self_contained(text, n_images=len(list(out.glob("*.png"))))


# --------------------------------------------------------------------------- overparam


def lora_rows() -> pd.DataFrame:
    return pd.DataFrame({
        "longname": ["model.layers.0.self_attn.q_proj.lora_BA", "model.layers.0.mlp.up_proj.lora_BA",
                     "model.layers.1.self_attn.q_proj.lora_BA"],
        "layer_type": "lora", "alpha": [1.6, 2.5, 1.2], "base_alpha": [7.25, 6.5, 4.0],
        "status": "success", "base_status": "success",
        "warning": [OVERFIT_ADAPTER, "", ""],
    })  # fmt: skip


def test_overparameterized_base_layers_and_the_overfitting_signal(tmp_path):
    d = lora_rows()
    folder = tmp_path / "run"
    make_run(folder)
    d.to_csv(folder / "spectra" / "details.csv", index=False)
    (folder / "spectra" / "summary.json").write_text(json.dumps(summarize(d)))
    page = rendered(render_run(folder))
    assert "Overparameterized layers (alpha > 6)" in headings(page)
    assert ("2 base matrices have alpha > 6 (of 3 analyzed); 1 LoRA adapter has alpha < 2 on "
            "one of them (the overfitting signal).") in page.text  # fmt: skip
    assert table_row(page, "base alpha", "model.layers.0.self_attn.q_proj.lora_BA") == [
        "model.layers.0.self_attn.q_proj.lora_BA", "7.250", "1.600", "yes: alpha < 2"]  # fmt: skip
    assert table_row(page, "base alpha", "model.layers.0.mlp.up_proj.lora_BA")[1:] == [
        "6.500", "2.500", ""]  # fmt: skip
    # layer 1's base alpha is 4: not listed
    assert "model.layers.1.self_attn.q_proj.lora_BA" not in [
        r[0] for t in page.tables if t[0][:2] == ["matrix", "base alpha"] for r in t]  # fmt: skip


def test_a_plain_model_lists_its_own_alpha_above_6(tmp_path):
    d = pd.DataFrame({"longname": ["x", "y", "z"], "alpha": [3.0, 6.5, 9.0],
                      "status": "success", "warning": ["", "under-trained", "under-trained"]})  # fmt: skip
    folder = tmp_path / "an"
    folder.mkdir()
    d.to_csv(folder / "details.csv", index=False)
    (folder / "summary.json").write_text(json.dumps(summarize(d)))
    page = rendered(render_spectra(folder))
    assert "2 of 3 fitted matrices have alpha > 6." in page.text
    assert table_row(page, ["matrix", "alpha", "warning"], "z") == ["z", "9.000", "under-trained"]


# --------------------------------------------------------------------------- the run page


def test_run_page_shows_every_watch_section_of_its_spectra(tmp_path):
    folder = make_run(tmp_path / "run")
    spectra = folder / "spectra"
    planted_collapse(spectra)
    d = planted_intruder(spectra)
    summary = json.loads((spectra / "summary.json").read_text())
    assert summary["num_intruders"] == 1
    text = render_run(folder)
    page = rendered(text)
    titles = headings(page)
    for title in ["Intruder dimensions", "Scale collapse: tuned against base", "Correlation flow"]:
        assert title in titles
    assert "Fits: power law or truncated power law" not in titles
    assert "1 intruder dimension in 1 of 2 matrices." in page.text
    assert "10 matrices compared; 1 collapsed." in page.text
    # the run's 4 plots, and the 3 watch figures of spectra/ (each once)
    check_self_contained(text, n_images=4 + 3)
    assert len(d) == 2


def test_watch_sections_are_absent_without_their_data(tmp_path):
    folder = make_run(tmp_path / "run")  # details.csv with longname, alpha, base_alpha only
    titles = headings(rendered(render_run(folder)))
    assert not [t for t in titles if any(t.startswith(w) for w in WATCH_TITLES)]
    assert "Spectra of the update" in titles
    # a details.csv without watch columns, no summary lists: only the summary
    an = tmp_path / "an"
    an.mkdir()
    pd.DataFrame({"longname": ["a"], "alpha": [3.0], "status": ["success"]}).to_csv(
        an / "details.csv", index=False)  # fmt: skip
    assert headings(rendered(render_spectra(an))) == ["Summary"]


def test_not_a_spectra_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SpectuneError, match="neither details.csv nor compare.csv"):
        render_spectra(tmp_path)
    with pytest.raises(SpectuneError, match="no such folder"):
        write_spectra_report(tmp_path / "nope")
    assert not (tmp_path / "report.html").exists()


# --------------------------------------------------------------------------- escaping


def test_every_watch_string_is_escaped(tmp_path):
    folder = planted_collapse(tmp_path / "cmp", plots=False)
    for name in ("compare.csv", "flow.csv"):
        t = pd.read_csv(folder / name)
        t.loc[t["longname"] == "model.layers.5.mlp.up_proj", "longname"] = EVIL
        t.to_csv(folder / name, index=False)
    info = json.loads((folder / "compare.json").read_text())
    info["labels"] = [EVIL, "tuned & <b>"]
    info["mismatched"] = [f"{EVIL}: only in a"]
    (folder / "compare.json").write_text(json.dumps(info))
    rows = lora_rows()
    rows.loc[0, "longname"] = EVIL
    rows["num_intruders"] = [1, 0, 0]
    rows["better_fit"] = ["truncated_power_law", "power_law", "undecided"]
    rows.to_csv(folder / "details.csv", index=False)
    s = summarize(rows)
    s["source"] = EVIL
    (folder / "summary.json").write_text(json.dumps(s))
    text = render_spectra(folder)
    page = check_self_contained(text, n_images=0)
    assert page.all("script") == [] and page.all("b") == []
    assert EVIL not in text and "&lt;script&gt;" in text
    assert page.text.count(EVIL) >= 6  # title, collapse row, labels, mismatch, overparam, intruders
    assert "tuned & <b>" in page.text


# --------------------------------------------------------------------------- sweep page


def test_comparison_page_lists_the_warning_signs_of_each_run(tmp_path):
    folder = make_comparison(tmp_path / "sweep")
    page = rendered(render_comparison(folder))
    assert "Spectral warning signs per run" not in headings(page)  # no run has spectra/
    spectra = folder / "runs" / "r4" / "spectra"
    spectra.mkdir()
    (spectra / "summary.json").write_text(json.dumps(
        {"num_intruders": 3, "layers_with_intruders": 2, "n_base_overparameterized": 5,
         "n_overfit_adapters": 1, "overfit_adapter_layers": ["model.layers.3.self_attn.o_proj.lora_BA"]}))  # fmt: skip
    (spectra / "compare.json").write_text(json.dumps(
        {"n_collapsed": 1, "collapsed_layers": ["model.layers.7.mlp.down_proj"], "n_flow_bent": 2,
         "flow_bent": ["a", "b"]}))  # fmt: skip
    page = rendered(render_comparison(folder))
    assert "Spectral warning signs per run" in headings(page)
    assert table_row(page, "intruder dimensions (matrices)", "r4") == ["r4", "3 (2)", "5", "1", "1", "2",
                              "collapsed: model.layers.7.mlp.down_proj; bent: a, b; overfitting: "
                              "model.layers.3.self_attn.o_proj.lora_BA"]  # fmt: skip
    signs = next(t for t in page.tables if t[0][:2] == ["run", "intruder dimensions (matrices)"])
    assert len(signs) == 2  # the header and r4: r8 and broken have no spectra/


def test_a_sparse_update_lists_the_base_layers_without_the_lora_signal(tmp_path):
    """FROG / full runs: base alphas alongside, but the alpha < 2 signal is LoRA's only."""
    d = lora_rows().assign(layer_type="linear", warning="",
                           longname=lambda t: t["longname"].str.removesuffix(".lora_BA"))  # fmt: skip
    s = summarize(d)
    assert "n_overfit_adapters" not in s and s["n_base_overparameterized"] == 2
    folder = tmp_path / "an"
    folder.mkdir()
    d.to_csv(folder / "details.csv", index=False)
    (folder / "summary.json").write_text(json.dumps(s))
    page = rendered(render_spectra(folder))
    assert "2 base matrices have alpha > 6 (of 3 analyzed)." in page.text
    assert "LoRA adapter" not in page.text.split("FROG's overparam option")[1]
    assert table_row(page, ["matrix", "base alpha", "alpha of the update"],
                     "model.layers.0.mlp.up_proj") == ["model.layers.0.mlp.up_proj", "6.500", "2.500"]  # fmt: skip
