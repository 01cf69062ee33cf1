"""The watch sections: views of a spectra folder's files that every page embeds.

A spectra folder holds ``details.csv`` and ``summary.json`` (an analysis), ``compare.csv``,
``compare.json`` and ``flow.csv`` (two models compared: scale collapse and both flows),
``flow.csv`` alone (one model's flow), and the figures the sections embed. The sections are
fits (power law or truncated power law), overparameterized layers (alpha > 6, and the LoRA
overfitting signal), intruder dimensions, scale collapse and correlation flow; each is empty
when its file or column is. The spectra page shows them for ``spectune watch`` /
``spectune compare --out``, the run page for the run's ``spectra/``, the comparison page for
the demo's ``base_spectra/`` and, per run, in one table of warning signs (:func:`_watch_runs`).
The tables of an analysis (:func:`_count_rows`, :func:`_extremes`) are here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spectune.report.pages.blocks import (
    DASH,
    _caption,
    _clip,
    _count,
    _dict,
    _esc,
    _figure,
    _fixed,
    _general,
    _get,
    _Html,
    _join,
    _num,
    _Reader,
    _section,
    _table,
    _tag,
)
from spectune.watch.tpl import ALPHA_AT_BOUND, LAMBDA_AT_BOUND

#: figures embedded by the watch sections (left out of a folder's generic plots)
WATCH_FIGURES = {
    "intruders.png": "Intruder dimensions per matrix",
    "scale_collapse.png": "Change of the log10 squared spectral and Frobenius norms per matrix",
    "correlation_flow.png": "Alpha along depth per layer type, with the fitted trends",
}
#: most rows a watch table shows (the files hold them all)
MAX_WATCH_ROWS = 40


def _truthy(value: Any) -> bool:
    """A CSV cell written from a bool (``True``/``False``), or a bool."""
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def _explain(text: str) -> _Html:
    return _tag("p", text, "explain")


def _names_list(names: Any, limit: int = 4) -> str:
    """``a, b, c`` (the first ``limit`` of a list) and how many more."""
    if not isinstance(names, list) or not names:
        return ""
    shown = ", ".join(str(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _capped(rows: list[Any], what: str) -> tuple[list[Any], _Html]:
    """The first :data:`MAX_WATCH_ROWS` rows and a note naming how many were left out."""
    if len(rows) <= MAX_WATCH_ROWS:
        return rows, _Html("")
    note = _tag(
        "p",
        f"First {MAX_WATCH_ROWS} of {len(rows)} {what}; {len(rows) - MAX_WATCH_ROWS} "
        "more in the CSV file.",
        "muted",
    )
    return rows[:MAX_WATCH_ROWS], note


def _watch_figure(reader: _Reader, folder: Path, name: str) -> _Html:
    path = folder / name
    if not path.is_file():
        return _Html("")
    fig = _figure(reader, path, WATCH_FIGURES.get(name) or _caption(name))
    return _Html(f'<div class="plots">{fig}</div>') if fig else _Html("")


def _fits(rows: list[dict[str, str]], fields: list[str], options: dict[str, Any]) -> _Html:
    """TPL / E_TPL fits and the power law against truncated power law test."""
    has_tpl, has_test = "Lambda" in fields, "better_fit" in fields
    if not (has_tpl or has_test) or not rows:
        return _Html("")
    fit = str(options.get("fit") or ("TPL" if has_tpl else "PL"))
    verdicts = {
        "power_law": "alpha trustworthy (power law preferred)",
        "undecided": "alpha trustworthy (no significant difference)",
        "truncated_power_law": "tail bends: truncated power law fits better",
    }

    def bound(r: dict[str, str]) -> str:
        w = str(r.get("warning") or "")
        return ", ".join(
            t
            for t, s in (("alpha at 1", ALPHA_AT_BOUND), ("Lambda at 0", LAMBDA_AT_BOUND))
            if s in w
        )

    tested = [r for r in rows if (r.get("better_fit") or "") in verdicts]
    bends = [r for r in tested if r["better_fit"] == "truncated_power_law"]
    at_bound = [r for r in rows if bound(r)]
    parts = [
        _explain(
            "Alpha is read from a fit of the tail of each matrix's eigenvalue spectrum. A power "
            "law (PL) is a straight line on a log-log plot; a truncated power law (TPL) bends down "
            "at large eigenvalues by exp(-Lambda x). The log-likelihood ratio R compares the two "
            "on the same tail: R < 0 with p < 0.05 says the TPL fits significantly better, so the "
            "tail bends and the plain alpha describes it less well; where the PL is preferred or "
            "the test is undecided, the plain alpha is trustworthy. A TPL fit whose alpha ends at "
            "its lower bound 1 (the cutoff Lambda carries the whole tail) or whose Lambda is "
            "negligible (no truncation: a plain power law) sits at a parameter bound: read its "
            "numbers with care."
        )
    ]
    line = [f"Alpha from the {fit} fit."]
    if has_test:
        n_pl = sum(r["better_fit"] == "power_law" for r in tested)
        line.append(
            f"The plain alpha is trustworthy on {len(tested) - len(bends)} of "
            f"{len(tested)} tested matrices ({n_pl} power law preferred, "
            f"{len(tested) - len(bends) - n_pl} undecided); the truncated power law fits "
            f"better on {len(bends)}."
        )
    if has_tpl:
        line.append(
            f"{len(at_bound)} TPL fit{'s' if len(at_bound) != 1 else ''} at a parameter bound."
        )
    parts.append(_tag("p", " ".join(line)))
    flagged = [r for r in rows if r.get("better_fit") == "truncated_power_law" or bound(r)]
    marked = {id(r) for r in flagged}
    shown = flagged + [r for r in rows if id(r) not in marked and _num(r.get("alpha")) is not None]
    shown, note = _capped(shown, "matrices (flagged ones first)")
    headers = ["matrix", "alpha"] + (["Lambda"] if has_tpl else [])
    headers += (["R", "p", "verdict"] if has_test else []) + (["at a bound"] if has_tpl else [])
    table = []
    for r in shown:
        cells = [r.get("longname") or r.get("name") or DASH, _fixed(r.get("alpha"), 3)]
        if has_tpl:
            cells.append(_general(r.get("Lambda")))
        if has_test:
            cells += [
                _fixed(r.get("pl_tpl_R"), 3),
                _fixed(r.get("pl_tpl_p"), 4),
                verdicts.get(r.get("better_fit") or "", DASH),
            ]
        if has_tpl:
            cells.append(bound(r) or "")
        table.append(cells)
    numeric = [1, 2, 3, 4] if has_tpl and has_test else [1, 2] if has_tpl else [1, 2, 3]
    return _join([*parts, _table(headers, table, numeric=numeric), note])


def _overparameterized(rows: list[dict[str, str]], summary: dict[str, Any]) -> _Html:
    """Layers with alpha > 6 (the base's, when the rows carry base columns) and the LoRA
    adapters flagged with alpha < 2 on them (lists from summary.json)."""
    base_list = summary.get("base_overparameterized_layers")
    plain = summary.get("overparameterized_layers")
    overfit = summary.get("overfit_adapter_layers")
    overfit = [str(n) for n in overfit] if isinstance(overfit, list) else []
    lora = "n_overfit_adapters" in summary or bool(overfit)  # LoRA rows with base alphas
    by_name = {str(r.get("longname")): r for r in rows}
    parts = [
        _explain(
            "WeightWatcher and the FROG paper read alpha > 6 as an overparameterized "
            "(under-trained) layer: its eigenvalue spectrum has a thin tail, little correlation "
            "was learned, and it has capacity to spare. The overfitting signal of WeightWatcher's "
            "blog is a LoRA adapter whose own alpha drops below 2 on such a base layer: a very "
            "heavy-tailed update on a layer that was not strongly trained. FROG's overparam option "
            "moves budget away from (or towards) these layers."
        )
    ]
    if isinstance(base_list, list) and (base_list or overfit):
        n = _num(summary.get("n_base_overparameterized"))
        n = len(base_list) if n is None else round(n)
        line = (
            f"{n} base {'matrix has' if n == 1 else 'matrices have'} alpha > 6 (of "
            f"{_count(summary.get('n_layers'))} analyzed)"
        )
        if lora:
            line += (
                f"; {len(overfit)} LoRA adapter{' has' if len(overfit) == 1 else 's have'} "
                "alpha < 2 on one of them (the overfitting signal)"
            )
        parts.append(_tag("p", line + "."))
        names = list(dict.fromkeys([*map(str, base_list), *overfit]))
        names, note = _capped(names, "matrices")
        headers = ["matrix", "base alpha", "alpha of the update"]
        headers += ["overfitting signal"] if lora else []
        table = [
            [n, _fixed(_get(by_name, n, "base_alpha"), 3), _fixed(_get(by_name, n, "alpha"), 3)]
            + (
                [_Html('<span class="bad">yes: alpha &lt; 2</span>') if n in overfit else ""]
                if lora
                else []
            )
            for n in names
        ]
        return _join([*parts, _table(headers, table, numeric=(1, 2)), note])
    if isinstance(plain, list) and plain and not isinstance(base_list, list):
        parts.append(
            _tag(
                "p",
                f"{len(plain)} of {_count(summary.get('n_analyzed'))} fitted "
                "matrices have alpha > 6.",
            )
        )
        names, note = _capped([str(n) for n in plain], "matrices")
        table = [
            [n, _fixed(_get(by_name, n, "alpha"), 3), _get(by_name, n, "warning") or ""]
            for n in names
        ]
        return _join([*parts, _table(["matrix", "alpha", "warning"], table, numeric=(1,)), note])
    return _Html("")


def _intruders(
    reader: _Reader, folder: Path, rows: list[dict[str, str]], options: dict[str, Any]
) -> _Html:
    """Intruder dimensions per matrix and in total."""
    counted = [r for r in rows if _num(r.get("num_intruders")) is not None]
    if not counted:
        return _Html("")
    k = options.get("intruder_top_k") or 10
    eps = options.get("intruder_threshold") or 0.5
    total = sum(round(_num(r["num_intruders"]) or 0) for r in counted)
    hit = sorted(
        (r for r in counted if (_num(r["num_intruders"]) or 0) > 0),
        key=lambda r: (-(_num(r["num_intruders"]) or 0), str(r.get("longname"))),
    )
    parts = [
        _explain(
            f"Intruder dimensions (Shuttleworth et al. 2024, \u201cLoRA vs Full Fine-tuning: an "
            f"Illusion of Equivalence\u201d): among the top {_general(k)} singular vectors of each "
            f"tuned matrix, those whose best |cosine| with every singular vector of the base "
            f"matrix is below {_general(eps)}, i.e. directions the fine-tune added that the base "
            "never had. LoRA tends to create them and full fine-tuning much less; they go with "
            "forgetting. None anywhere is the unremarkable result."
        ),
        _tag(
            "p",
            f"{total} intruder dimension{'s' if total != 1 else ''} in {len(hit)} of "
            f"{len(counted)} matrices.",
        ),
    ]
    if hit:
        hit, note = _capped(hit, "matrices with intruders")
        table = [
            [
                r.get("longname") or DASH,
                _count(r.get("num_intruders")),
                _fixed(r.get("intruder_min_sim"), 3),
            ]
            for r in hit
        ]
        parts += [
            _table(["matrix", "intruders", "smallest similarity"], table, numeric=(1, 2)),
            note,
        ]
    parts.append(_watch_figure(reader, folder, "intruders.png"))
    return _join(parts)


def _labels(info: dict[str, Any], default: tuple[str, str] = ("a", "b")) -> tuple[str, str]:
    labels = info.get("labels")
    if isinstance(labels, list) and len(labels) == 2:
        return str(labels[0]), str(labels[1])
    return default


def _collapse(
    reader: _Reader, folder: Path, info: dict[str, Any], labels: tuple[str, str]
) -> _Html:
    """Scale collapse: the change of each matrix's norms from model a to model b."""
    parsed = reader.csv(folder / "compare.csv")
    if not parsed or not parsed[1] or "d_log_spectral_norm" not in parsed[0]:
        return _Html("")
    a, b = labels
    rows = [r for r in parsed[1] if r.get("match") == "matched"]
    z, drop = info.get("z"), info.get("min_drop")
    parts = [
        _explain(
            f"Scale collapse (Martin and Mahoney on distillation; the FROG paper's WeightWatcher "
            f"section): per matrix, the change from {a} to {b} of log10 of the largest eigenvalue "
            "(the squared spectral norm) and of log10 of the squared Frobenius norm. A matrix has "
            "collapsed when either change falls below the typical change of all matrices by more "
            f"than {_general(z) if z is not None else 'z'} robust standard deviations and by at "
            f"least {_general(drop) if drop is not None else 'min_drop'} log10 units (0.1 is a 21% "
            "drop of the squared norm): relative to the rest, so a uniformly rescaled model has no "
            "collapsed matrix. A fine-tune that adds a small update moves these by little; a large "
            "negative change says the layer lost scale."
        )
    ]
    collapsed = [r for r in rows if _truthy(r.get("collapsed"))]
    line = (
        f"{len(rows)} matrices compared; {len(collapsed)} collapsed. Mean change: log10 "
        f"spectral norm\u00b2 {_fixed(info.get('mean_d_log_spectral_norm'), 4, sign=True)}, "
        f"log10 Frobenius norm\u00b2 {_fixed(info.get('mean_d_log_norm'), 4, sign=True)}, "
        f"alpha {_fixed(info.get('mean_d_alpha'), 3, sign=True)}."
    )
    parts.append(_tag("p", line))
    drops = sorted(
        (
            r
            for r in rows
            if not _truthy(r.get("collapsed")) and _num(r.get("d_log_spectral_norm")) is not None
        ),
        key=lambda r: _num(r["d_log_spectral_norm"]),
    )
    shown, note = _capped(collapsed + drops[: max(0, 10 - len(collapsed))], "matrices")
    table = [
        [
            r.get("longname") or DASH,
            _fixed(r.get("d_log_spectral_norm"), 4, sign=True),
            _fixed(r.get("d_log_norm"), 4, sign=True),
            f"{_fixed(r.get('alpha_a'), 3)} \u2192 {_fixed(r.get('alpha_b'), 3)}",
            _Html(f'<span class="bad">{_esc(r.get("collapse") or "yes")}</span>')
            if _truthy(r.get("collapsed"))
            else "",
        ]
        for r in shown
    ]
    what = (
        "collapsed matrices, then the largest spectral-norm drops"
        if collapsed
        else "the largest spectral-norm drops"
    )
    parts += [
        _tag("p", f"Shown: {what}.", "muted"),
        _table(
            [
                "matrix",
                "d log10 spectral norm\u00b2",
                "d log10 Frobenius norm\u00b2",
                f"alpha {a} \u2192 {b}",
                "collapsed",
            ],
            table,
            numeric=(1, 2, 3),
        ),
        note,
    ]
    mismatched = info.get("mismatched")
    if isinstance(mismatched, list) and mismatched:
        parts.append(
            _tag(
                "p",
                f"Not compared ({len(mismatched)}): {_clip('; '.join(map(str, mismatched)))}.",
                "muted",
            )
        )
    parts.append(_watch_figure(reader, folder, "scale_collapse.png"))
    return _join(parts)


def _flow_kinds(rows: list[dict[str, str]], pair: bool, labels: tuple[str, str]) -> _Html:
    """The flow's table per layer type: its slope(s) and how many matrices break it."""
    a, b = labels
    kinds: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        kinds.setdefault(str(r.get("kind") or DASH), []).append(r)
    table = []
    for kind, group in sorted(kinds.items()):
        first = group[0]
        if pair:
            table.append(
                [
                    kind,
                    str(len(group)),
                    _fixed(first.get("slope_a"), 4, sign=True),
                    _fixed(first.get("slope_b"), 4, sign=True),
                    str(sum(_truthy(r.get("breaks_a")) for r in group)),
                    str(sum(_truthy(r.get("breaks_b")) for r in group)),
                    str(sum(_truthy(r.get("bent")) for r in group)),
                ]
            )
        else:
            alphas = [x for x in (_num(r.get("alpha")) for r in group) if x is not None]
            table.append(
                [
                    kind,
                    str(len(group)),
                    _fixed(first.get("slope"), 4, sign=True),
                    _fixed(sum(alphas) / len(alphas) if alphas else None, 3),
                    str(sum(_truthy(r.get("breaks_flow")) for r in group)),
                ]
            )
    headers = (
        [
            "layer type",
            "matrices",
            f"slope ({a})",
            f"slope ({b})",
            f"break {a}'s flow",
            f"break {b}'s flow",
            "bent",
        ]
        if pair
        else ["layer type", "matrices", "slope (alpha per block)", "mean alpha", "break the flow"]
    )
    return _table(headers, table, numeric=range(1, len(headers)))


def _flow_breaks(rows: list[dict[str, str]], pair: bool, labels: tuple[str, str]) -> list[str]:
    """The matrices off their type's trend (with two models, the bent ones first), or a line
    saying there are none."""
    a, b = labels
    if pair:
        odd = [r for r in rows if _truthy(r.get("breaks_a")) or _truthy(r.get("breaks_b"))]
        odd.sort(
            key=lambda r: (
                not _truthy(r.get("bent")),
                str(r.get("kind")),
                _num(r.get("depth")) or 0,
            )
        )
        cells = [
            [
                r.get("longname") or DASH,
                _general(r.get("depth")),
                _fixed(r.get("alpha_a"), 3),
                _fixed(r.get("trend_a"), 3),
                _fixed(r.get("alpha_b"), 3),
                _fixed(r.get("trend_b"), 3),
                ", ".join(
                    t
                    for t, c in (
                        (f"breaks {a}'s", "breaks_a"),
                        (f"breaks {b}'s", "breaks_b"),
                        ("bent", "bent"),
                    )
                    if _truthy(r.get(c))
                ),
            ]
            for r in odd
        ]
        heads = ["matrix", "depth", f"alpha {a}", f"trend {a}", f"alpha {b}", f"trend {b}", "flow"]
    else:
        odd = [r for r in rows if _truthy(r.get("breaks_flow"))]
        cells = [
            [
                r.get("longname") or DASH,
                _general(r.get("depth")),
                _fixed(r.get("alpha"), 3),
                _fixed(r.get("trend"), 3),
                _fixed(r.get("residual"), 3, sign=True),
            ]
            for r in odd
        ]
        heads = ["matrix", "depth", "alpha", "trend", "residual"]
    if not cells:
        return [_tag("p", "No matrix breaks the flow.", "muted")]
    cells, note = _capped(cells, "matrices off their trend")
    return [
        _tag(
            "p",
            "Matrices that break a flow (bent ones first):"
            if pair
            else "Matrices that break the flow:",
            "muted",
        ),
        _table(heads, cells, numeric=range(1, len(heads) - (1 if pair else 0))),
        note,
    ]


def _flow(reader: _Reader, folder: Path, labels: tuple[str, str]) -> _Html:
    """Correlation flow: alpha along depth per layer type (one model, or two side by side)."""
    parsed = reader.csv(folder / "flow.csv")
    if not parsed or not parsed[1]:
        return _Html("")
    fields, rows = parsed
    pair = "alpha_a" in fields and "alpha_b" in fields
    if not pair and "alpha" not in fields:
        return _Html("")
    a, b = labels
    text = (
        "Correlation flow (Martin and Mahoney): in a well-trained network alpha changes "
        "smoothly with depth within each layer type (q_proj, down_proj...). Per type, a "
        "least-squares line of alpha against the block index is the trend; a matrix whose "
        "residual exceeds z robust standard deviations of its type's residuals breaks the "
        "flow."
    )
    if pair:
        text += (
            f" With two models, a matrix that breaks {b}'s flow but not {a}'s is where "
            f"{b} bent it; a change of slope is a trend that {b} tilted."
        )
    return _join(
        [
            _explain(text),
            _flow_kinds(rows, pair, labels),
            *_flow_breaks(rows, pair, labels),
            _watch_figure(reader, folder, "correlation_flow.png"),
        ]
    )


def _watch_sections(
    reader: _Reader, folder: Path, labels: tuple[str, str], *, level: int = 2
) -> list[_Html]:
    """Every watch section of a spectra folder, each left out when its data is."""
    parsed = reader.csv(folder / "details.csv") if (folder / "details.csv").is_file() else None
    fields, rows = parsed if parsed else ([], [])
    summary = _dict(reader.json(folder / "summary.json"))
    options = _dict(summary.get("options"))
    info = _dict(reader.json(folder / "compare.json"))
    labels = _labels(info, labels)
    a, b = labels
    return [
        _section("Fits: power law or truncated power law", _fits(rows, fields, options), level),
        _section("Overparameterized layers (alpha > 6)", _overparameterized(rows, summary), level),
        _section("Intruder dimensions", _intruders(reader, folder, rows, options), level),
        _section(
            f"Scale collapse: {b} against {a}", _collapse(reader, folder, info, labels), level
        ),
        _section("Correlation flow", _flow(reader, folder, labels), level),
    ]


def _watch_runs(reader: _Reader, run_dirs: list[Path], anchors: dict[str, str]) -> _Html:
    """One row per run of a comparison: its intruders, overparameterized base layers,
    overfitting adapters, collapsed layers and bent flow (runs/<name>/spectra/)."""
    table = []
    for path in run_dirs:
        spectra = path / "spectra"
        s = _dict(reader.json(spectra / "summary.json"))
        c = _dict(reader.json(spectra / "compare.json"))
        if not s and not c:
            continue
        flagged = [
            ("collapsed", c.get("collapsed_layers")),
            ("bent", c.get("flow_bent")),
            ("overfitting", s.get("overfit_adapter_layers")),
        ]
        names = "; ".join(f"{what}: {_names_list(n, 3)}" for what, n in flagged if _names_list(n))
        name = (
            _Html(f'<a href="#{anchors[path.name]}">{_esc(path.name)}</a>')
            if path.name in anchors
            else path.name
        )
        intr = s.get("num_intruders")
        table.append(
            [
                name,
                f"{_count(intr)} ({_count(s.get('layers_with_intruders'))})"
                if _num(intr) is not None
                else DASH,
                _count(s.get("n_base_overparameterized")),
                _count(s.get("n_overfit_adapters")),
                _count(c.get("n_collapsed")),
                _count(c.get("n_flow_bent")),
                _clip(names or ""),
            ]
        )
    if not table:
        return _Html("")
    headers = [
        "run",
        "intruder dimensions (matrices)",
        "base matrices alpha > 6",
        "adapters alpha < 2 on them",
        "collapsed matrices",
        "flow bent",
        "flagged",
    ]
    return _join(
        [
            _explain(
                "Per run, the spectral warning signs of its update against the base model: "
                "intruder dimensions (new top singular directions), base matrices with alpha > 6 "
                "(overparameterized) and LoRA adapters whose alpha falls below 2 on them (the "
                "overfitting signal), matrices whose norms collapsed relative to the rest, and "
                "matrices where the tuned model bent the base's alpha-along-depth flow. Each "
                "run's own report (runs/<name>/report.html) explains and lists them."
            ),
            _table(headers, table, numeric=(1, 2, 3, 4, 5), cls="results"),
        ]
    )


def _count_rows(s: dict[str, Any]) -> list[list[str]]:
    """The fit statuses and warnings of a spectra summary, counted, as table rows."""
    rows = []
    for key, label in (("status_counts", "status"), ("warning_counts", "warnings")):
        counts = s.get(key)
        if isinstance(counts, dict):
            text = ", ".join(f"{k}: {_general(v)}" for k, v in sorted(counts.items(), key=str))
            rows.append([label, text or "none"])
    return rows


def _extremes(rows: list[dict[str, str]], k: int = 5, where: str = "spectra/details.csv") -> _Html:
    """The matrices with the lowest and highest alpha (all of them when there are few)."""
    fitted = sorted(
        (r for r in rows if _num(r.get("alpha")) is not None), key=lambda r: _num(r["alpha"])
    )
    pick = fitted if len(fitted) <= 2 * k else fitted[:k] + fitted[-k:]
    if not pick:
        return _tag("p", f"{where}: {len(rows)} matrices, none with a fitted alpha.", "muted")
    has_base = any("base_alpha" in r for r in rows)
    headers = ["matrix", "alpha"] + (["base alpha"] if has_base else []) + ["status", "warning"]
    table = [
        [r.get("longname") or r.get("name") or DASH, _fixed(r.get("alpha"), 3)]
        + ([_fixed(r.get("base_alpha"), 3)] if has_base else [])
        + [r.get("status") or DASH, r.get("warning") or ""]
        for r in pick
    ]
    what = "every fitted matrix" if pick is fitted else f"the {k} lowest and {k} highest alphas"
    note = _tag("p", f"From {where} ({len(rows)} matrices): {what}.", "muted")
    return _join([note, _table(headers, table, numeric=(1, 2) if has_base else (1,))])


__all__ = ["WATCH_FIGURES"]
