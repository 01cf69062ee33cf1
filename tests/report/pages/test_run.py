"""The page of a run folder (metrics.json), and the helpers the page tests share: an HTML
parser of the pages, a self-containment check, a planted run folder."""

from __future__ import annotations

import base64
import copy
import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from spectune.errors import SpectuneError
from spectune.report.pages.run import render_run, write_run_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_PLOTS = ["loss_curve.png", "learning_forgetting.png", "alpha_hist.png", "alpha_vs_base.png"]
COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"]


# --------------------------------------------------------------------------- parsing


class Page(HTMLParser):
    """Collects start tags (with attributes), the visible text and every table's cell text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.doctype: str | None = None
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text_parts: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.open_tags: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()
        self.text = "".join(self.text_parts)

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in ("meta", "img", "br", "link", "input", "hr"):
            self.open_tags.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        assert self.open_tags and self.open_tags[-1] == tag, (
            f"</{tag}> closes {self.open_tags[-1:]}"
        )
        self.open_tags.pop()
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self.open_tags and self.open_tags[-1] in ("style", "title"):
            return
        self.text_parts.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for t, attrs in self.tags if t == tag]

    def row(self, label: str) -> list[str]:
        """The cells of the first table row whose first cell is ``label``."""
        for table in self.tables:
            for row in table:
                if row and row[0] == label:
                    return row
        raise AssertionError(f"no table row {label!r}")


def parse(text: str) -> Page:
    page = Page(text)
    assert page.open_tags == [], f"unclosed tags: {page.open_tags}"
    return page


def check_self_contained(text: str, n_images: int) -> Page:
    """Valid HTML5 skeleton, every image an embedded PNG, nothing that points elsewhere."""
    assert text.startswith("<!doctype html>")
    page = parse(text)
    assert page.doctype.lower() == "doctype html"
    assert [t for t, _ in page.tags[:4]] == ["html", "head", "meta", "meta"]
    assert {"charset": "utf-8"} in page.all("meta")
    assert len(page.all("title")) == 1
    imgs = page.all("img")
    assert len(imgs) == n_images
    for img in imgs:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG_SIGNATURE)
        assert img.get("alt")
    for tag in ("script", "link", "iframe", "object", "embed"):
        assert page.all(tag) == []
    assert "http://" not in text and "https://" not in text
    for _, attrs in page.tags:
        if "href" in attrs:
            assert attrs["href"].startswith("#")
        if "src" in attrs:
            assert attrs["src"].startswith("data:image/png;base64,")
    for raw in re.findall(r"<[^>]*>", text):  # every tag as written (text has no bare "<")
        assert not re.search(
            r"\b(src|href|action|srcset)\s*=\s*(?![\"']?(data:image/png;base64,|#))", raw
        ), raw
    return page


# --------------------------------------------------------------------------- fixtures


def save_png(path: Path, color: str = "#4c72b0") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(2.0, 1.5))
    ax = fig.subplots()
    ax.bar([0, 1, 2], [1, 3, 2], color=color)
    ax.set_title(path.stem, fontsize=7)
    fig.savefig(path, format="png", dpi=40)


def metrics(name: str = "lora-r8", **over) -> dict:
    """A synthetic metrics.json (schema version 2) with every section filled in."""

    def judging(acc, n_correct, cats, loss, ppl, ms, first):
        return {
            "accuracy": {
                "accuracy": acc,
                "n": 24,
                "n_correct": n_correct,
                "max_new_tokens": 16,
                "by_category": cats,
            },
            "heldout_loss": {
                "loss": loss,
                "perplexity": 12.18,
                "n_tokens": 100,
                "n_examples": 24,
                "n_truncated": 0,
            },
            "perplexity": {
                "perplexity": ppl,
                "nll": 3.0,
                "n_tokens": 900,
                "n_scored": 899,
                "n_chars": 4000,
                "window": 256,
                "stride": 128,
                "text_sha256": "ab",
                "source": "pydoc",
            },
            "latency": {
                "ms_per_token": ms,
                "ms_first_token": first,
                "ms_per_token_overall": ms,
                "new_tokens": 16,
                "n_prompts": 2,
                "warmup": 1,
                "threads": 2,
            },
            "seconds": {"accuracy": 1.0},
            "model": None,
            "extras": {},
        }

    m = {
        "schema_version": 2,
        "run": {"name": name, "method": "lora", "objective": "sft", "model": "default", "seed": 7,
                "device": "cpu", "threads": 2, "started": "2025-01-01T00:00:00+00:00",
                "versions": {"spectune": "0.1.0", "torch": "2.13.0"}},
        "config": {"method": "lora", "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05}},
        "settings": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05},
        "data": {"source": "spectune task set", "n_train": 96, "n_eval": 24,
                 "tokenize": {"n_examples": 96, "n_kept": 95, "n_truncated": 3, "n_dropped": 1,
                              "max_length": 256}},
        "before": judging(0.125, 3, {"arithmetic": {"n": 16, "n_correct": 1, "accuracy": 0.0625},
                                     "reverse": {"n": 8, "n_correct": 2, "accuracy": 0.25}},
                          2.5, 20.0, 31.25, 80.0),
        "after": judging(0.5, 12, {"arithmetic": {"n": 16, "n_correct": 6, "accuracy": 0.375},
                                   "reverse": {"n": 8, "n_correct": 6, "accuracy": 0.75}},
                         1.23456, 21.5, 33.5, 85.0),
        "learning": {"accuracy_before": 0.125, "accuracy_after": 0.5, "accuracy_gain": 0.375,
                     "heldout_loss_before": 2.5, "heldout_loss_after": 1.23456},
        "forgetting": {"perplexity_before": 20.0, "perplexity_after": 21.5,
                       "perplexity_change": 1.5, "perplexity_ratio": 1.075},
        "cost": {"train_seconds": 42.0, "train_seconds_this_session": 42.0, "steps": 12,
                 "tokens": 5000, "tokens_per_second": 119.04,
                 "peak_rss_bytes": 12 * 2**20, "peak_rss_exact": True, "trainable": 1234567,
                 "total": 135000000, "trainable_percent": 0.9145, "adapter_bytes": 3 * 2**20,
                 "ms_per_token": 33.5, "ms_per_token_before": 31.25},
        "training": {"first_loss": 3.14159, "final_loss": 0.98765, "global_step": 12, "epochs": 1.0},
        "spectra": {"n_layers": 60, "n_analyzed": 58, "alpha": 3.21, "alpha_weighted": 1.5,
                    "log_norm": 0.5, "stable_rank": 2.0, "base_alpha": 4.56, "rank90": None,
                    "status_counts": {"success": 58, "failed": 2},
                    "warning_counts": {"too few eigenvalues for a reliable fit": 60}},
        "method_extras": {},
        "objective_extras": {},
        "notes": ["lora_dropout is ignored & kept for <compatibility>"],
    }  # fmt: skip
    for key, value in over.items():
        m[key] = value
    return m


def predictions(n: int = 25) -> str:
    rows = []
    for i in range(n):
        rows.append({"category": "arithmetic", "instruction": f"What is {i} + {i}?",
                     "reference": str(2 * i), "before": "no idea", "correct_before": False,
                     "after": str(2 * i) if i % 2 == 0 else "7", "correct_after": i % 2 == 0})  # fmt: skip
    return "".join(json.dumps(r) + "\n" for r in rows)


def make_run(folder: Path, m: dict | None = None, *, plots=RUN_PLOTS, full: bool = True) -> Path:
    """A run folder: metrics.json, and with ``full`` the optional files too."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(
        json.dumps(metrics() if m is None else m), encoding="utf-8"
    )
    for i, name in enumerate(plots):
        save_png(folder / "plots" / name, COLORS[i % len(COLORS)])
    if full:
        (folder / "config.yaml").write_text(
            "# spectune tune\nmethod: lora\nr: 8\n", encoding="utf-8"
        )
        (folder / "predictions.jsonl").write_text(predictions(), encoding="utf-8")
        (folder / "spectra").mkdir(exist_ok=True)
        with (folder / "spectra" / "details.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["longname", "alpha", "base_alpha", "status", "warning"])
            for i in range(14):
                w.writerow([f"model.layers.{i}.q_proj.lora_BA", 2.0 + i / 4, 4.0, "success", ""])
            w.writerow(["model.layers.0.v_proj.lora_BA", "", "", "failed", "too few eigenvalues"])
        (folder / "train_log.csv").write_text("step,loss\n1,3.14\n", encoding="utf-8")
    return folder


def files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


# --------------------------------------------------------------------------- run page


def test_run_page_is_self_contained_html(tmp_path):
    folder = make_run(tmp_path / "run", plots=RUN_PLOTS + ["frog_layer_importance.png"])
    page = check_self_contained(render_run(folder), n_images=5)
    assert "lora-r8" in page.text and "lora on default" in page.text
    captions = [t for t, _ in page.tags if t == "figcaption"]
    assert len(captions) == 5
    # the known plots come in reading order
    order = re.findall(r"plots/(\w+)\.png", page.text)
    assert order == ["loss_curve", "learning_forgetting", "alpha_hist", "alpha_vs_base",
                     "frog_layer_importance"]  # fmt: skip


def test_run_page_numbers_are_formatted(tmp_path):
    page = parse(render_run(make_run(tmp_path / "run")))
    assert page.row("held-out accuracy") == ["held-out accuracy", "12.5% (3/24)", "50.0% (12/24)",
                                             "+37.5 points"]  # fmt: skip
    assert page.row("held-out loss (nats/token)")[1:] == ["2.500", "1.235", "-1.265"]
    assert page.row("perplexity on general text")[1:] == ["20.00", "21.50", "+1.50 (\u00d71.075)"]
    assert page.row("generation latency (ms/token)")[1:3] == ["31.2 ms", "33.5 ms"]
    assert page.row("train time")[1] == "42.0 s (12 steps, 1.00 epochs)"
    assert page.row("throughput")[1] == "119.0 tokens/s"
    assert page.row("peak RSS")[1] == "12.0 MiB"
    assert page.row("trainable parameters")[1] == "1,234,567 of 135,000,000 (0.914%)"
    assert page.row("adapter size")[1] == "3.00 MiB"
    assert page.row("training loss (first \u2192 final)")[1] == "3.142 \u2192 0.988"
    assert page.row("reverse") == ["reverse", "8", "25.0% (2/8)", "75.0% (6/8)", "+50.0 points"]
    assert page.row("mean alpha: adapter")[1] == "3.210"
    assert page.row("mean alpha: base model")[1] == "4.560"
    assert page.row("matrices analyzed")[1] == "58 of 60"
    assert "too few eigenvalues for a reliable fit: 60" in page.row("warnings")[1]
    assert "Held-out accuracy 12.5% \u2192 50.0% (+37.5 points)" in page.text
    assert "95 kept, 3 truncated at 256 tokens, 1 dropped" in page.text


def test_run_page_predictions_notes_config(tmp_path):
    page = parse(render_run(make_run(tmp_path / "run")))
    table = next(t for t in page.tables if t[0][:3] == ["#", "category", "instruction"])
    assert table[0] == ["#", "category", "instruction", "reference", "before", "after"]
    assert len(table) == 1 + 20  # the first 20 of 25
    assert table[1] == ["1", "arithmetic", "What is 0 + 0?", "0", "\u2717 no idea", "\u2713 0"]
    assert table[2][5] == "\u2717 7"
    assert "First 20 of 25 held-out questions; right before: 0, after: 13" in page.text
    assert "lora_dropout is ignored & kept for <compatibility>" in page.text  # escaped, as text
    pre = render_run(tmp_path / "run").split("<pre>", 1)[1].split("</pre>", 1)[0]
    assert pre == "# spectune tune\nmethod: lora\nr: 8\n"
    # spectra/details.csv: 14 fitted rows -> the 5 lowest and the 5 highest alphas
    table = next(t for t in page.tables if t[0][:2] == ["matrix", "alpha"])
    assert [r[1] for r in table[1:]] == ["2.000", "2.250", "2.500", "2.750", "3.000",
                                         "4.250", "4.500", "4.750", "5.000", "5.250"]  # fmt: skip


def test_run_page_without_before_hides_the_before_column(tmp_path):
    m = metrics(before=None)
    m["learning"].update(accuracy_before=None, accuracy_gain=None, heldout_loss_before=None)
    m["forgetting"].update(perplexity_before=None, perplexity_change=None, perplexity_ratio=None)
    folder = make_run(tmp_path / "run", m, plots=[])
    rows = [json.loads(line) for line in predictions().splitlines()]
    for r in rows:
        del r["before"], r["correct_before"]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = check_self_contained(render_run(folder), n_images=0)
    assert page.row("held-out accuracy") == ["held-out accuracy", "-", "50.0% (12/24)", "-"]
    assert page.row("perplexity on general text")[1:] == ["-", "21.50", "-"]
    table = next(t for t in page.tables if t[0][:3] == ["#", "category", "instruction"])
    assert table[0] == ["#", "category", "instruction", "reference", "after"]


def test_run_name_and_folder_strings_are_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    m = metrics(evil)
    m["run"]["model"] = '"><img src=x onerror=alert(2)>'
    m["after"]["accuracy"]["by_category"] = {evil: {"n": 1, "n_correct": 1, "accuracy": 1.0}}
    folder = make_run(tmp_path / "run", m, plots=["<b>.png"])
    (folder / "predictions.jsonl").write_text(
        json.dumps({"instruction": evil, "after": evil}) + "\n"
    )
    (folder / "config.yaml").write_text(f"name: {evil}\n")
    text = render_run(folder)
    page = check_self_contained(text, n_images=1)
    assert page.all("script") == []
    assert [a["src"][:5] for a in page.all("img")] == ["data:"]  # the model name made no <img>
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert evil in page.text  # shown as text
    assert page.text.count(evil) >= 5  # headline, category, instruction, answer, config
    assert '"><img src=x onerror=alert(2)>' in page.text
    title = text.split("<title>", 1)[1].split("</title>", 1)[0]
    assert "<" not in title and "&lt;script&gt;" in title


def test_run_page_tolerates_missing_and_null_values(tmp_path):
    m = metrics(before=None, spectra=None, notes=[])
    m["training"] = dict.fromkeys(m["training"])
    m["after"]["latency"] = None
    m["cost"] = dict.fromkeys(m["cost"])
    m["after"]["accuracy"]["by_category"] = {}
    folder = make_run(tmp_path / "run", m, plots=[], full=False)
    text = render_run(folder)
    page = check_self_contained(text, n_images=0)
    assert page.row("train time")[1] == "-"
    assert page.row("peak RSS")[1] == "-"
    assert page.row("generation latency (ms/token)")[1:] == ["-", "-", "-"]
    # sections without data are left out; the config comes from metrics.json
    assert re.findall(r"<h2>([^<]*)</h2>", text) == ["What happened", "Resolved config"]
    assert '"lora_alpha": 16' in page.text


@pytest.mark.parametrize("content", [{}, {"run": None, "after": "garbage", "cost": [1, 2]}])
def test_a_damaged_metrics_file_is_a_clear_error(tmp_path, content):
    folder = make_run(tmp_path / "run", content, plots=[], full=False)
    with pytest.raises(SpectuneError, match=r"metrics.json: metrics of schema version 1 .* are "
                       r"incomplete or damaged .* re-run the run"):  # fmt: skip
        render_run(folder)
    assert not (folder / "report.html").exists()


def test_any_damaged_value_renders_or_is_a_clear_error(tmp_path):
    """Every key of the first two levels of metrics.json replaced by null, a string, a list,
    an empty dict and NaN: the page renders, or the load fails with a SpectuneError that
    names the file (never another exception)."""
    base = metrics()
    keys = [(k,) for k in base] + [
        (k, k2) for k, v in base.items() if isinstance(v, dict) for k2 in v
    ]
    folder = tmp_path / "run"
    folder.mkdir()
    rendered = refused = 0
    for key in keys:
        for junk in (None, "junk", [1], {}, float("nan")):
            m = copy.deepcopy(base)
            parent = m if len(key) == 1 else m[key[0]]
            parent[key[-1]] = junk
            (folder / "metrics.json").write_text(json.dumps(m), encoding="utf-8")
            try:
                text = render_run(folder)
            except SpectuneError as exc:
                assert "metrics.json" in str(exc), key
                refused += 1
                continue
            assert text.endswith("</html>\n"), key
            rendered += 1
    assert rendered > 100 and refused > 10


def test_metrics_from_a_newer_schema_say_which_version_wrote_them(tmp_path):
    m = metrics()
    m["schema_version"] = 99
    m["run"]["versions"]["spectune"] = "7.0.0"
    folder = make_run(tmp_path / "run", m, plots=[], full=False)
    with pytest.raises(SpectuneError, match=r"schema version 99 \(written by spectune 7.0.0\); "
                       r"this spectune reads versions 1 to 2"):  # fmt: skip
        render_run(folder)


def test_run_page_reports_unreadable_optional_files(tmp_path):
    folder = make_run(tmp_path / "run", metrics(spectra=None))
    (folder / "plots" / "alpha_hist.png").write_bytes(b"not a png at all")
    with (folder / "predictions.jsonl").open("a") as fh:
        fh.write("{broken\n")
    (folder / "spectra" / "summary.json").write_text("{nope")
    page = check_self_contained(render_run(folder), n_images=3)
    problems = page.text.split("Some files could not be used:", 1)[1]
    assert "plots/alpha_hist.png: not a PNG file" in problems
    assert "predictions.jsonl: 1 line(s) are not JSON objects" in problems
    assert "spectra/summary.json: not valid JSON" in problems


def test_missing_metrics_json_raises(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    with pytest.raises(SpectuneError, match="metrics.json"):
        render_run(folder)
    with pytest.raises(SpectuneError, match="metrics.json"):
        write_run_report(folder)
    with pytest.raises(SpectuneError, match="no such folder"):
        render_run(tmp_path / "nowhere")
    (folder / "metrics.json").write_text("{half")
    with pytest.raises(SpectuneError, match="metrics.json"):
        write_run_report(folder)
    assert files(folder) == {"metrics.json"}  # nothing written
