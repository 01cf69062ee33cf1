"""The page of one run folder (written by :func:`spectune.tuning.recipe.tune`).

A run folder holds ``metrics.json`` (required: :class:`~spectune.results.metrics.RunMetrics`,
the page only formats it), and, when present, ``config.yaml``, ``predictions.jsonl``,
``spectra/`` (a spectra folder: its summary, extremes and watch sections are shown) and
``plots/*.png``. The parts of a run's page (the lede, the before/after and cost tables, the
notes) are reused by the comparison page's section per run.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from spectune.report.pages.blocks import (
    DASH,
    _clip,
    _count,
    _dict,
    _esc,
    _fixed,
    _general,
    _get,
    _Html,
    _join,
    _metrics,
    _mib,
    _ms,
    _num,
    _page,
    _pct,
    _plots,
    _points,
    _Reader,
    _required,
    _seconds,
    _section,
    _share,
    _table,
    _tag,
    _write_report,
)
from spectune.report.pages.watch import _count_rows, _extremes, _watch_sections
from spectune.results.metrics import RunMetrics

RUN_FILE = "metrics.json"
#: rows of predictions.jsonl shown on a run page
N_PREDICTIONS = 20

#: the run's plots in reading order, with their captions (other PNG files follow, sorted)
RUN_PLOTS = {
    "loss_curve.png": "Training loss by optimizer step",
    "learning_forgetting.png": "Learning (held-out accuracy) and forgetting (perplexity on "
    "general text), before and after",
    "alpha_hist.png": "Power-law alpha of the adapter's matrices",
    "alpha_vs_base.png": "Adapter alpha against the base matrix's alpha",
    "validation_curve.png": "Training and validation loss by optimizer step",
    "spectra_vs_validation.png": "Adapter spectra during training (mean alpha, layers with "
    "alpha < 2) against the validation loss",
    "frog_layer_importance.png": "FROG: trainable weights per layer",
}


def _acc_cell(fraction: Any, acc: Any) -> str:
    """ "12.5% (3/24)" from the fraction and the counts (an AccuracyResult or a category's
    dict)."""
    text = _pct(fraction)
    counts = acc if isinstance(acc, dict) else getattr(acc, "__dict__", None)
    n, k = _num(_get(counts, "n")), _num(_get(counts, "n_correct"))
    if text != DASH and n is not None and k is not None:
        text += f" ({round(k)}/{round(n)})"
    return text


def _ci(interval: Any) -> str:
    """ " [28.1, 53.1]" (percent) from an accuracy interval, "" without one."""
    low, high = _num(getattr(interval, "low", None)), _num(getattr(interval, "high", None))
    return "" if low is None or high is None else f" [{100 * low:.1f}, {100 * high:.1f}]"


def _first(*values: Any) -> float | None:
    """The first of ``values`` that is a finite number."""
    return next((x for x in map(_num, values) if x is not None), None)


def _diff(before: Any, after: Any) -> float | None:
    b, a = _num(before), _num(after)
    return None if a is None or b is None else a - b


def _judging(m: RunMetrics) -> dict[str, Any]:
    """The before/after numbers of a run."""
    learn, forget, cost = m.learning, m.forgetting, m.cost
    lat0 = None if m.before is None or m.before.latency is None else m.before.latency
    return {
        "acc0": _num(learn.accuracy_before),
        "acc1": _num(learn.accuracy_after),
        "loss0": _num(learn.heldout_loss_before),
        "loss1": _num(learn.heldout_loss_after),
        "ppl0": _num(forget.perplexity_before),
        "ppl1": _num(forget.perplexity_after),
        "ms0": _first(cost.ms_per_token_before, lat0 and lat0.ms_per_token),
        "ms1": _num(cost.ms_per_token),
        "gain": _first(learn.accuracy_gain, _diff(learn.accuracy_before, learn.accuracy_after)),
        "dppl": _num(forget.perplexity_change),
        "ratio": _num(forget.perplexity_ratio),
    }


def _lede(m: RunMetrics) -> str:
    """One sentence: what the run learned and what it forgot."""
    j = _judging(m)
    parts = []
    if _num(j["acc1"]) is not None:
        acc = f"held-out accuracy {_pct(j['acc0'])} \u2192 {_pct(j['acc1'])}"
        parts.append(acc + (f" ({_points(j['gain'])})" if _num(j["gain"]) is not None else ""))
    if _num(j["ppl1"]) is not None:
        ppl = f"perplexity on general text {_fixed(j['ppl0'], 2)} \u2192 {_fixed(j['ppl1'], 2)}"
        parts.append(
            ppl + (f" ({_fixed(j['dppl'], 2, sign=True)})" if _num(j["dppl"]) is not None else "")
        )
    secs = m.cost.train_seconds
    if _num(secs) is not None:
        parts.append(f"{_seconds(secs)} of training")
    if not parts:
        return ""
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:]


def _what_happened(m: RunMetrics) -> _Html:
    """Before / after / change of accuracy, held-out loss, perplexity and latency."""
    j = _judging(m)
    before, after = m.before, m.after
    acc0 = None if before is None else before.accuracy
    ttf0 = None if before is None or before.latency is None else before.latency.ms_first_token
    ttf1 = None if after.latency is None else after.latency.ms_first_token
    ratio = _num(j["ratio"])
    dppl = _fixed(j["dppl"], 2, sign=True) + (f" (\u00d7{ratio:.3f})" if ratio is not None else "")
    ci0, ci1 = m.learning.accuracy_before_interval, m.learning.accuracy_after_interval
    rows = [
        [
            "held-out accuracy",
            _acc_cell(j["acc0"], acc0) + _ci(ci0),
            _acc_cell(j["acc1"], after.accuracy) + _ci(ci1),
            _points(j["gain"]),
        ],
        [
            "held-out loss (nats/token)",
            _fixed(j["loss0"], 3),
            _fixed(j["loss1"], 3),
            _fixed(_diff(j["loss0"], j["loss1"]), 3, sign=True),
        ],
        ["perplexity on general text", _fixed(j["ppl0"], 2), _fixed(j["ppl1"], 2), dppl],
        *_ce_row(m),
        [
            "generation latency (ms/token)",
            _ms(j["ms0"]),
            _ms(j["ms1"]),
            _fixed(_diff(j["ms0"], j["ms1"]), 2, sign=True),
        ],
        ["time to first token", _ms(ttf0), _ms(ttf1), DASH],
    ]
    # the objective's own judged numbers (e.g. agreement with a teacher, ranking accuracy)
    extras0 = {} if before is None else before.extras
    for key, value in after.extras.items():
        if _num(value) is not None:
            b = extras0.get(key)
            rows.append(
                [
                    f"{m.run.objective}: {str(key).replace('_', ' ')}",
                    _fixed(b, 4),
                    _fixed(value, 4),
                    _fixed(_diff(b, value), 4, sign=True),
                ]
            )
    return _table(["measure", "before (base)", "after", "change"], rows, numeric=(1, 2, 3))


def _ce_row(m: RunMetrics) -> list[list[str]]:
    """peft's forgetting (general-text cross-entropy, after minus before), when measured."""
    f = m.forgetting
    if _num(f.general_ce_after) is None:
        return []
    return [
        [
            "general-text cross-entropy (nats/token; change: peft's forgetting)",
            _fixed(f.general_ce_before, 4),
            _fixed(f.general_ce_after, 4),
            _fixed(f.forgetting_ce, 4, sign=True),
        ]
    ]


def _score(value: Any, stderr: Any) -> str:
    """ "0.4375 ± 0.0887" (or the value alone)."""
    text = _fixed(value, 4)
    return text + (f" \u00b1 {_fixed(stderr, 4)}" if _num(stderr) is not None else "")


def _harness(m: RunMetrics) -> _Html:
    """The lm-eval task scores before and after (``eval.harness``)."""
    rows = m.harness_rows()
    if not rows:
        return _Html("")
    h = m.after.harness
    table = [
        [
            r["task"],
            r["metric"],
            _count((h.n_samples if h else {}).get(r["task"])),
            _score(r["before"], r["stderr_before"]),
            _score(r["after"], r["stderr_after"]),
            _fixed(r["change"], 4, sign=True),
        ]
        for r in rows
    ]
    shots = "each task's own" if h is None or h.num_fewshot is None else str(h.num_fewshot)
    limit = "all" if h is None or h.limit is None else str(h.limit)
    note = (
        f"lm-evaluation-harness {h.lm_eval if h else ''} on the model in memory: examples per "
        f"task {limit}, few-shot {shots}, chat template "
        f"{'on' if h is None or h.chat_template else 'off'}; \u00b1 lm-eval's standard error."
    )
    return _join(
        [
            _table(
                ["task", "metric", "n", "before (base)", "after", "change"],
                table,
                numeric=(2, 3, 4, 5),
            ),
            _tag("p", note, "muted"),
        ]
    )


def _cost_table(m: RunMetrics) -> _Html:
    """What the run cost: time, throughput, memory, parameters, adapter size, loss."""
    cost, training = m.cost, m.training
    steps, epochs = _num(cost.steps), _num(training.epochs)
    extra = ", ".join(
        filter(
            None,
            [
                f"{round(steps):,} steps" if steps is not None else "",
                f"{epochs:.2f} epochs" if epochs is not None else "",
            ],
        )
    )
    train = _seconds(cost.train_seconds) + (f" ({extra})" if extra else "")
    rss = _mib(cost.peak_rss_bytes)
    if rss != DASH and cost.peak_rss_exact is False:
        rss += " (estimate)"
    trainable, total = _count(cost.trainable), _count(cost.total)
    if trainable != DASH:
        trainable += f" of {total}" if total != DASH else ""
        trainable += f" ({_share(cost.trainable_percent)})"
    loss = f"{_fixed(training.first_loss, 3)} \u2192 {_fixed(training.final_loss, 3)}"
    rows = [
        ["train time", train],
        ["tokens trained", _count(cost.tokens)],
        ["throughput", _fixed(cost.tokens_per_second, 1, " tokens/s")],
        ["padding", _share_of(cost.padded_fraction)],
        ["training compute", _compute(cost)],
        ["peak RSS", rss],
        ["trainable parameters", trainable],
        ["adapter size", _mib(cost.adapter_bytes)],
        ["training loss (first \u2192 final)", loss],
    ]
    if cost.phase_seconds:
        rows.append(["where the time went", _phases(cost.phase_seconds)])
    return _table(["cost", "value"], rows, numeric=(1,))


def _phases(phases: dict[str, float]) -> str:
    """The run's phases, longest first: ``train 37 s, judge_tuned 17 s, ...``."""
    order = sorted(phases.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name.replace('_', ' ')} {seconds:.0f} s" for name, seconds in order)


def _share_of(fraction: float | None) -> str:
    return DASH if fraction is None else f"{100 * fraction:.1f}% of the positions trained"


def _compute(cost: Any) -> str:
    """Achieved training GFLOP/s and its share of the machine's GEMM rate on the same shapes."""
    fps = cost.flops_per_second
    if fps is None:
        return DASH
    text = f"{fps / 1e9:.1f} GFLOP/s"
    if cost.utilisation is not None:
        text += (
            f" ({100 * cost.utilisation:.0f}% of this machine's "
            f"{cost.gemm_flops_per_second / 1e9:.0f} GFLOP/s on the model's products)"
        )
    return text


def _key_numbers(m: RunMetrics) -> _Html:
    """The before/after table and the cost table, side by side where the page is wide."""
    return _Html(f'<div class="pair">{_what_happened(m)}{_cost_table(m)}</div>')


def _data_line(m: RunMetrics) -> _Html:
    data = m.data
    if not isinstance(data, dict):
        return _Html("")
    tok = _dict(data.get("tokenize"))
    val = f", {_count(data.get('n_validation'))} validation" if data.get("n_validation") else ""
    text = (
        f"Data: {data.get('source', DASH)}: {_count(data.get('n_train'))} training{val} and "
        f"{_count(data.get('n_eval'))} held-out examples"
    )
    if tok:
        text += (
            f"; tokenized: {_count(tok.get('n_kept'))} kept, "
            f"{_count(tok.get('n_truncated'))} truncated at "
            f"{_count(tok.get('max_length'))} tokens, {_count(tok.get('n_dropped'))} dropped"
        )
    if data.get("heldout"):
        text += f"; held out: {data['heldout']}"
    if m.learning.accuracy_after_interval is not None:
        text += (
            "; [low, high] after an accuracy: its 95% bootstrap interval over the held-out "
            f"questions (one run, seed {m.run.seed}: not an interval over seeds)"
        )
    return _tag("p", text + ".", "muted")


def _validation(m: RunMetrics) -> _Html:
    """The validation split, its best step, the adapter's step, early stopping, and the
    spectra watched during training."""
    v, rows = m.validation, []
    if v is not None:
        every = (
            f"every {v.every_steps} steps and at the last"
            if v.every_steps
            else f"every {v.strategy}"
        )
        rows += [
            [
                "validation examples",
                f"{_count(v.n_examples)} (carved from the training data, "
                "seeded; disjoint from training and held-out)",
            ],
            ["evaluated", f"{every}: {_count(len(v.curve))} evaluations, {_seconds(v.seconds)}"],
            [
                "validation loss (first \u2192 last)",
                f"{_fixed(v.curve[0].loss if v.curve else None, 4)} \u2192 "
                f"{_fixed(v.curve[-1].loss if v.curve else None, 4)}",
            ],
            ["best step", f"{_count(v.best_step)} (validation loss {_fixed(v.best_loss, 4)})"],
            [
                "saved adapter",
                f"step {_count(v.adapter_step)}"
                + (" (the best checkpoint, restored)" if v.restored_best else ""),
            ],
            [
                "early stopping",
                DASH
                if v.early_stopping_patience is None
                else f"patience {v.early_stopping_patience}, threshold "
                f"{_general(v.early_stopping_threshold)}: "
                + ("stopped early" if v.stopped_early else "ran to the end"),
            ],
        ]
    pts = m.spectra_curve
    if pts:
        last = pts[-1]
        rows.append(
            [
                "spectra during training",
                f"{len(pts)} analyses (steps {pts[0].step} to {last.step}); last: mean "
                f"alpha {_fixed(last.mean_alpha, 3)}, {_pct(last.frac_alpha_below_2)} of "
                f"{_count(last.n_fitted)} fitted layers below 2; "
                f"{_seconds(sum(p.seconds or 0.0 for p in pts))}",
            ]
        )
    return _table(["validation", "value"], rows) if rows else _Html("")


def _categories(m: RunMetrics) -> _Html:
    b = {} if m.before is None else _dict(m.before.accuracy.by_category)
    a = _dict(m.after.accuracy.by_category)
    names = sorted(set(b) | set(a), key=str)
    if not names:
        return _Html("")
    rows = []
    for name in names:
        cb, ca = b.get(name), a.get(name)
        rows.append(
            [
                name,
                _count(_first(_get(ca, "n"), _get(cb, "n"))),
                _acc_cell(_get(cb, "accuracy"), cb),
                _acc_cell(_get(ca, "accuracy"), ca),
                _points(_diff(_get(cb, "accuracy"), _get(ca, "accuracy"))),
            ]
        )
    return _table(["category", "n", "before", "after", "change"], rows, numeric=(1, 2, 3, 4))


def _mark(correct: Any) -> _Html:
    if correct is True:
        return _Html('<span class="ok" title="right">\u2713</span> ')
    if correct is False:
        return _Html('<span class="bad" title="wrong">\u2717</span> ')
    return _Html("")


def _answer(row: dict[str, Any], key: str) -> _Html:
    """A model's answer with its right/wrong mark."""
    return _join([_mark(row.get(f"correct_{key}")), _esc(_clip(row.get(key)))])


def _predictions(reader: _Reader, path: Path) -> _Html:
    """The first :data:`N_PREDICTIONS` held-out questions with the answers before and after."""
    rows = reader.jsonl(path)
    if not rows:
        return _Html("")
    keys = (["before"] if any("before" in r for r in rows) else []) + ["after"]
    headers = ["#", "category", "instruction", "reference", *keys]
    table = [
        [
            str(i),
            _clip(r.get("category"), 60),
            _clip(r.get("instruction")),
            _clip(r.get("reference")),
            *(_answer(r, k) for k in keys),
        ]
        for i, r in enumerate(rows[:N_PREDICTIONS], 1)
    ]
    right = ", ".join(f"{k}: {sum(r.get(f'correct_{k}') is True for r in rows)}" for k in keys)
    summary = (
        f"First {len(table)} of {len(rows)} held-out questions; right {right} "
        "(\u2713 right, \u2717 wrong)."
    )
    text_cols = {(r, c): "text" for r in range(len(table)) for c in range(2, len(headers))}
    return _join(
        [_tag("p", summary, "muted"), _table(headers, table, numeric=(0,), cell_classes=text_cols)]
    )


def _spectra(reader: _Reader, folder: Path, m: RunMetrics) -> _Html:
    s = asdict(m.spectra) if m.spectra is not None else None
    if not isinstance(s, dict):
        s = reader.json(folder / "spectra" / "summary.json")
    parts: list[str] = []
    if isinstance(s, dict):
        rows = [
            ["matrices analyzed", f"{_count(s.get('n_analyzed'))} of {_count(s.get('n_layers'))}"],
            ["mean alpha: adapter", _fixed(s.get("alpha"), 3)],
            ["mean alpha: base model", _fixed(s.get("base_alpha"), 3)],
            ["mean alpha_weighted", _fixed(s.get("alpha_weighted"), 3)],
            ["mean log_norm", _fixed(s.get("log_norm"), 3)],
            ["mean stable_rank", _fixed(s.get("stable_rank"), 3)],
        ]
        if _num(s.get("rank90")) is not None:
            rows.append(["mean rank90", _fixed(s.get("rank90"), 1)])
        if _num(s.get("num_intruders")) is not None:
            rows.append(
                [
                    "intruder dimensions (layers with any)",
                    f"{_count(s.get('num_intruders'))} ({_count(s.get('layers_with_intruders'))})",
                ]
            )
        rows += _count_rows(s)
        parts.append(_table(["spectra (means over fitted matrices)", "value"], rows, numeric=(1,)))
        parts.append(
            _tag(
                "p",
                "Alpha is the power-law exponent of the tail of each matrix's "
                "eigenvalue spectrum; 2 to 6 is the usual range of well-trained layers.",
                "muted",
            )
        )
    details = reader.csv(folder / "spectra" / "details.csv")
    if details and details[1]:
        parts.append(_extremes(details[1]))
    return _join(parts)


def _extras(extras: dict[str, Any], title: str) -> _Html:
    """A method's (or objective's) own results as a two-column table: scalars and short
    lists; nested mappings (a config) are shown flattened one level."""
    if not extras:
        return _Html("")
    rows = []
    for key, value in extras.items():
        if isinstance(value, dict):
            text = ", ".join(f"{k}: {_general(v)}" for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            text = ", ".join(_general(v) for v in value[:12]) + (" ..." if len(value) > 12 else "")
        else:
            text = _general(value)
        rows.append([str(key).replace("_", " "), _clip(text)])
    return _table([title, "value"], rows, numeric=(1,))


def _notes(notes: Any) -> _Html:
    if isinstance(notes, str):
        notes = [notes]
    if not isinstance(notes, list) or not notes:
        return _Html("")
    return _Html('<ul class="notes">' + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")


def _config(reader: _Reader, folder: Path, m: RunMetrics) -> _Html:
    text = reader.text(folder / "config.yaml")
    if text is None and m.config:
        text = json.dumps(m.config, indent=2, sort_keys=True, default=str)
    return _tag("pre", text) if text else _Html("")


def _run_meta(m: RunMetrics) -> str:
    run = m.run
    items = [
        ("objective", run.objective),
        ("seed", run.seed),
        ("device", run.device),
        ("threads", run.threads),
        ("started", run.started),
    ]
    items += [(pkg, run.versions.get(pkg)) for pkg in ("spectune", "torch", "transformers", "peft")]
    text = " \u00b7 ".join(f"{k} {v}" for k, v in items if v not in (None, ""))
    if run.resumed:
        text += " \u00b7 resumed from a checkpoint"
    return text


def _names(m: RunMetrics, folder: Path) -> tuple[str, str, str]:
    """(run name, method, model); the folder's name stands in for a missing run name."""
    return str(m.run.name or folder.name), str(m.run.method or ""), str(m.run.model or "")


def _headline(name: str, method: str, model: str) -> str:
    """ "name: method on model", leaving out what is unknown."""
    what = " on ".join(filter(None, [method or ("run" if model else ""), model]))
    return f"{name}: {what}" if what else name


def render_run(folder: str | os.PathLike[str]) -> str:
    """The HTML page of one run folder.

    Args:
        folder: a run folder written by :func:`spectune.tuning.recipe.tune` (``metrics.json``
            is required; config.yaml, predictions.jsonl, spectra/ and plots/ are used when
            present).

    Returns:
        The page: headline, what happened (learning, forgetting, latency, cost), accuracy by
        category, plots, spectra, the watch sections of ``spectra/`` (fits, overparameterized
        layers, intruder dimensions, scale collapse and correlation flow of base against
        tuned, each when its data is there), FROG plan, first predictions, notes, config.

    Raises:
        SpectuneError: ``folder`` has no readable ``metrics.json``.
    """
    folder = _required(folder, RUN_FILE, "a run folder written by `spectune tune` holds one")
    reader = _Reader(folder)
    m = _metrics(folder)
    name, method, model = _names(m, folder)
    lede = _lede(m)
    body = [
        _tag("h1", _headline(name, method, model)),
        _tag("p", _run_meta(m), "sub"),
        _tag("p", lede, "lede") if lede else "",
        _section("What happened", _join([_key_numbers(m), _data_line(m)])),
        _section("Harness tasks", _harness(m)),
        _section("Validation during training", _validation(m)),
        _section("Accuracy by category", _categories(m)),
        _section("Plots", _plots(reader, folder / "plots", known=RUN_PLOTS)),
        _section("Spectra of the update", _spectra(reader, folder, m)),
        *_watch_sections(reader, folder / "spectra", ("base", "tuned")),
        _section(f"Method: {method}", _extras(m.method_extras, f"{method} reports")),
        _section(
            f"Objective: {m.run.objective}",
            _extras(m.objective_extras, f"{m.run.objective} reports"),
        ),
        _section("Predictions", _predictions(reader, folder / "predictions.jsonl")),
        _section("Notes", _notes(m.notes)),
        _section("Resolved config", _config(reader, folder, m)),
    ]
    return _page(f"spectune run {_headline(name, method, model)}", "\n".join(body), reader.problems)


def write_run_report(folder: str | os.PathLike[str]) -> Path:
    """Render :func:`render_run` into ``folder/report.html`` (atomically).

    Returns:
        The path of the report.

    Raises:
        SpectuneError: ``folder`` has no readable ``metrics.json``, or its report.html is not
            a page spectune wrote (:func:`check_report_path`); nothing is written.
    """
    return _write_report(folder, render_run)


__all__ = ["RUN_FILE", "RUN_PLOTS", "render_run", "write_run_report"]
