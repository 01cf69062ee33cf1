"""One self-contained HTML page of a results folder: a run, or a comparison of runs.

The page is a view of the files the folder already holds (``metrics.json`` is the canonical
artifact, the page only formats it): nothing is recomputed.

- A **run folder** (written by :func:`spectune.tune.recipe.tune`): ``metrics.json``
  (required), ``config.yaml``, ``predictions.jsonl``, ``spectra/summary.json``,
  ``spectra/details.csv``, ``plots/*.png``.
- A **spectra folder** (``spectune analyze --out``, ``spectune compare --out``, a run's
  ``spectra/``): ``details.csv`` and ``summary.json`` (an analysis), ``compare.csv``,
  ``compare.json`` and ``flow.csv`` (two models compared), figures; the *watch sections*
  (fits, overparameterized layers, intruder dimensions, scale collapse, correlation flow)
  read them, each shown only when its file or column is there.
- A **comparison folder** (a sweep, a study, a search or the demo): ``results.csv``
  (required; one row per run, the columns of :func:`spectune.tune.recipe.flat_metrics`,
  perhaps a ``status`` column), ``comparison.json`` (kind, title, grid, base_config,
  total_seconds, notes; a search's objectives and Pareto set), ``plots/*.png`` and
  ``runs/<name>/``, each a run folder.

The page stands alone: CSS inline, every image a ``data:image/png;base64,`` URI, no script,
no external URL. Every string read from the folder is HTML-escaped. A missing optional file
or value never stops the rendering: a value shows as ``-``, a section without data is left
out, and files that could not be read are listed at the top of the page. Only files that
resolve inside the folder are read: a symbolic link pointing outside it is left out (and
listed), so a report never embeds a file from elsewhere.

:func:`render_run` / :func:`render_comparison` return the text; :func:`write_run_report` /
:func:`write_comparison_report` write ``report.html`` into the folder atomically, and nothing
else; they never replace a ``report.html`` that spectune did not write (a page without
spectune's generator tag, or a link).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune._io import write_text
from spectune.errors import SpectuneError

if TYPE_CHECKING:
    from spectune.results.metrics import RunMetrics

REPORT = "report.html"
RUN_FILE = "metrics.json"
COMPARISON_FILE = "results.csv"
#: rows of predictions.jsonl shown on a run page
N_PREDICTIONS = 20
#: longest instruction / answer shown in the predictions table (characters)
MAX_CELL_CHARS = 400
DASH = "-"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

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

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 color:#1f2328;background:#fff;margin:0 auto;max-width:1180px;padding:1.2em 1.6em 3em}
h1{font-size:1.6em;margin:.2em 0 .1em}h2{font-size:1.25em;margin:1.6em 0 .5em;
 border-bottom:1px solid #d0d7de;padding-bottom:.2em}h3{font-size:1.05em;margin:1.1em 0 .4em}
.sub{color:#57606a;margin:.1em 0 .8em}.lede{font-size:1.05em;margin:.6em 0 1em}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:.28em .6em;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}tbody tr:nth-child(even){background:#fafbfc}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.best{background:#dafbe1;font-weight:700}tr.failed td{color:#8c959f}
td.text{max-width:28em;white-space:pre-wrap;word-break:break-word}
.wide{overflow-x:auto;max-width:100%}
table.results{font-size:.84em}table.results td{white-space:nowrap}table.results th,table.results td{padding:.25em .45em}
.pair{display:flex;flex-wrap:wrap;gap:0 1.5em;align-items:flex-start}.ok{color:#1a7f37;font-weight:700}.bad{color:#cf222e;font-weight:700}
.muted{color:#57606a;font-size:.9em}.file{color:#8c959f;font-size:.85em}
.problems{background:#fff8c5;border:1px solid #d4a72c;padding:.5em 1em;border-radius:6px}
figure{margin:0;border:1px solid #d0d7de;border-radius:6px;padding:.5em;background:#fff}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:.88em;color:#57606a;margin-top:.3em}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(470px,1fr));gap:1em}
.explain{color:#3d444d;max-width:62em}
pre{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:.8em;
 overflow-x:auto;font-size:.85em;line-height:1.35}
details.run{border:1px solid #d0d7de;border-radius:6px;padding:.4em .9em;margin:.6em 0}
details.run>summary{cursor:pointer;font-weight:600}
ul.notes li{margin:.2em 0}
"""


# --------------------------------------------------------------------------- escaping


class _Html(str):
    """A string that is already HTML (built here, with every folder string escaped)."""


def _esc(value: Any) -> str:
    """``value`` as escaped HTML text (``&``, ``<``, ``>`` and both quotes)."""
    return value if isinstance(value, _Html) else html.escape(str(value), quote=True)


def _join(parts: Iterable[str]) -> _Html:
    return _Html("".join(parts))


def _tag(name: str, content: Any, cls: str | None = None, **attrs: str) -> _Html:
    """``<name class=..>content</name>``; ``content`` is escaped unless it is :class:`_Html`."""
    attr = f' class="{_esc(cls)}"' if cls else ""
    attr += "".join(f' {k}="{_esc(v)}"' for k, v in attrs.items())
    return _Html(f"<{name}{attr}>{_esc(content)}</{name}>")


# --------------------------------------------------------------------------- numbers


def _num(value: Any) -> float | None:
    """A finite float, or None for None, booleans, non-numbers, NaN and infinities."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _fixed(value: Any, decimals: int, suffix: str = "", *, sign: bool = False) -> str:
    x = _num(value)
    if x is None:
        return DASH
    return f"{x:{'+' if sign else ''}.{decimals}f}{suffix}"


def _pct(fraction: Any) -> str:
    """0.125 -> "12.5%"."""
    x = _num(fraction)
    return DASH if x is None else f"{100 * x:.1f}%"


def _points(fraction: Any) -> str:
    """A change of a fraction in percentage points: 0.25 -> "+25.0 points"."""
    x = _num(fraction)
    return DASH if x is None else f"{100 * x:+.1f} points"


def _share(percent: Any) -> str:
    """A value already in percent; small shares keep three significant digits (0.0123%)."""
    x = _num(percent)
    if x is None:
        return DASH
    return f"{x:.1f}%" if abs(x) >= 1 or x == 0 else f"{x:.3g}%"


def _count(value: Any) -> str:
    x = _num(value)
    return DASH if x is None else f"{round(x):,}"


def _mib(n_bytes: Any) -> str:
    x = _num(n_bytes)
    return DASH if x is None else _mib_value(x / 2**20)


def _with_unit(value: Any, unit: str) -> str:
    """Two decimals below 10, one above (thousands separated), then the unit."""
    x = _num(value)
    if x is None:
        return DASH
    return f"{x:.2f} {unit}" if abs(x) < 10 else f"{x:,.1f} {unit}"


def _mib_value(mib: Any) -> str:
    return _with_unit(mib, "MiB")


def _seconds(value: Any) -> str:
    x = _num(value)
    if x is None:
        return DASH
    return f"{x:.1f} s" if x < 120 else f"{x:,.0f} s ({x / 60:.1f} min)"


def _ms(value: Any) -> str:
    return _with_unit(value, "ms")


def _general(value: Any) -> str:
    """A number in its shortest sensible form (integers without decimals), else the text."""
    x = _num(value)
    if x is None:
        return DASH if value is None or str(value).strip() in ("", "nan", "None") else str(value)
    if x.is_integer() and abs(x) < 1e15:
        return f"{int(x):,}" if abs(x) >= 10000 else str(int(x))
    return f"{x:.4g}"


def _get(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]...``, or None as soon as a level is missing or not a dict."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a dict, else an empty one (a damaged section reads as missing)."""
    return value if isinstance(value, dict) else {}


def _clip(text: Any, limit: int = MAX_CELL_CHARS) -> str:
    s = DASH if text is None else str(text)
    return s if len(s) <= limit else s[: limit - 1] + "\u2026"


# --------------------------------------------------------------------------- reading


class _Reader:
    """Reads a folder's optional files, collecting what could not be read as problems."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[str] = []
        self._real_root = _real(root)

    def inside(self, path: Path) -> bool:
        """Whether ``path`` resolves inside the folder; if not, it is listed as a problem."""
        if _within(path, self._real_root):
            return True
        self._problem(path, "a link to a file outside the folder; left out")
        return False

    def rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    def _problem(self, path: Path, what: str) -> None:
        self.problems.append(f"{self.rel(path)}: {what}")

    def text(self, path: Path) -> str | None:
        if not path.is_file() or not self.inside(path):
            return None
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            self._problem(path, f"could not be read ({exc.strerror or exc})")
            return None

    def json(self, path: Path) -> Any:
        text = self.text(path)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            self._problem(path, f"not valid JSON ({exc})")
            return None

    def jsonl(self, path: Path) -> list[dict[str, Any]] | None:
        text = self.text(path)
        if text is None:
            return None
        rows, bad = [], 0
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad += 1
        if bad:
            self._problem(path, f"{bad} line(s) are not JSON objects and were left out")
        return rows

    def csv(self, path: Path) -> tuple[list[str], list[dict[str, str]]] | None:
        text = self.text(path)
        if text is None:
            return None
        try:
            reader = csv.DictReader(text.splitlines())
            rows = [dict(r) for r in reader]
            return [str(f) for f in (reader.fieldnames or [])], rows
        except csv.Error as exc:
            self._problem(path, f"not valid CSV ({exc})")
            return None

    def png(self, path: Path) -> bytes | None:
        if not self.inside(path):
            return None
        try:
            data = path.read_bytes()
        except OSError as exc:
            self._problem(path, f"could not be read ({exc.strerror or exc})")
            return None
        if not data.startswith(PNG_SIGNATURE):
            self._problem(path, "not a PNG file; left out")
            return None
        return data


def _real(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a link loop
        return path.absolute()


def _within(path: Path, real_root: Path) -> bool:
    """Whether ``path`` (links followed) is ``real_root`` or below it."""
    try:
        return path.resolve(strict=False).is_relative_to(real_root)
    except (OSError, RuntimeError):
        return False


def _required(folder: str | os.PathLike[str], name: str, what: str) -> Path:
    folder = Path(folder)
    if not (folder / name).is_file():
        where = "no such folder" if not folder.is_dir() else f"no {name} in it"
        raise SpectuneError(f"cannot render {folder}: {where}; {what}")
    if not _within(folder / name, _real(folder)):
        raise SpectuneError(f"cannot render {folder}: its {name} is a link to a file outside "
                            "the folder; a report reads only the folder's own files")  # fmt: skip
    return folder


def _metrics(folder: Path) -> RunMetrics:
    """The run's typed metrics (a required file: bad content raises, naming the version)."""
    from spectune.results.metrics import RunMetrics

    return RunMetrics.load(folder)


# --------------------------------------------------------------------------- building blocks


def _cls(*names: str) -> str:
    """`` class="a b"`` for the non-empty names, or nothing."""
    joined = " ".join(n for n in names if n)
    return f' class="{_esc(joined)}"' if joined else ""


def _table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], *, numeric: Iterable[int] = (),
           row_classes: Sequence[str] | None = None,
           cell_classes: dict[tuple[int, int], str] | None = None,
           cls: str = "") -> _Html:  # fmt: skip
    """A table; columns whose index is in ``numeric`` are right-aligned.

    Cells are escaped unless they are :class:`_Html`; ``row_classes`` (one per row),
    ``cell_classes`` (by (row, column)) and ``cls`` (the table's) add CSS classes.
    """
    num = set(numeric)
    cell_classes = cell_classes or {}
    head = "".join(
        f"<th{_cls('num' if i in num else '')}>{_esc(h)}</th>" for i, h in enumerate(headers)
    )
    body = []
    for r, row in enumerate(rows):
        cells = "".join(
            f"<td{_cls('num' if c in num else '', cell_classes.get((r, c), ''))}>{_esc(cell)}</td>"
            for c, cell in enumerate(row)
        )
        body.append(f"<tr{_cls(row_classes[r] if row_classes else '')}>{cells}</tr>")
    return _Html(f'<div class="wide"><table{_cls(cls)}><thead><tr>{head}</tr></thead>'
                 f"<tbody>{''.join(body)}</tbody></table></div>")  # fmt: skip


def _figure(reader: _Reader, path: Path, caption: str) -> _Html:
    data = reader.png(path)
    if data is None:
        return _Html("")
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return _Html(f'<figure><img src="{uri}" alt="{_esc(caption)}">'
                 f"<figcaption>{_esc(caption)} "
                 f'<span class="file">{_esc(reader.rel(path))}</span></figcaption></figure>')  # fmt: skip


def _caption(name: str) -> str:
    """A caption from a file name: ``accuracy_vs_r.png`` -> "Accuracy vs r"."""
    stem = Path(name).stem.replace("_", " ").replace("-", " ").strip()
    return stem[:1].upper() + stem[1:] if stem else name


def _pngs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png"),
                  key=lambda p: p.name)  # fmt: skip


def _plots(reader: _Reader, folder: Path, *, known: dict[str, str] | None = None,
           exclude: Iterable[str] = ()) -> _Html:  # fmt: skip
    """The PNG files of ``folder`` but ``exclude``: ``known`` ones first in its order, the rest
    sorted."""
    skip = set(exclude)
    files = [p for p in _pngs(folder) if p.name not in skip]
    order = list(known or {})
    files.sort(key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))
    figures = [_figure(reader, p, (known or {}).get(p.name) or _caption(p.name)) for p in files]
    figures = [f for f in figures if f]
    return _Html(f'<div class="plots">{"".join(figures)}</div>') if figures else _Html("")


def _section(title: str, body: str, level: int = 2) -> _Html:
    return _Html(f"<section>{_tag(f'h{level}', title)}{body}</section>") if body else _Html("")


def _page(title: str, body: str, problems: Sequence[str]) -> str:
    from spectune import __version__

    notice = ""
    if problems:
        items = "".join(f"<li>{_esc(p)}</li>" for p in problems)
        notice = f'<div class="problems"><strong>Some files could not be used:</strong><ul>{items}</ul></div>'
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="spectune {_esc(__version__)}">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"{notice}{body}\n"
        f'<p class="muted">Written by spectune {_esc(__version__)} from the files in this '
        "folder.</p>\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------- run page parts


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
        "acc0": _num(learn.accuracy_before), "acc1": _num(learn.accuracy_after),
        "loss0": _num(learn.heldout_loss_before), "loss1": _num(learn.heldout_loss_after),
        "ppl0": _num(forget.perplexity_before), "ppl1": _num(forget.perplexity_after),
        "ms0": _first(cost.ms_per_token_before, lat0 and lat0.ms_per_token),
        "ms1": _num(cost.ms_per_token),
        "gain": _first(learn.accuracy_gain, _diff(learn.accuracy_before, learn.accuracy_after)),
        "dppl": _num(forget.perplexity_change),
        "ratio": _num(forget.perplexity_ratio),
    }  # fmt: skip


def _lede(m: RunMetrics) -> str:
    """One sentence: what the run learned and what it forgot."""
    j = _judging(m)
    parts = []
    if _num(j["acc1"]) is not None:
        acc = f"held-out accuracy {_pct(j['acc0'])} \u2192 {_pct(j['acc1'])}"
        parts.append(acc + (f" ({_points(j['gain'])})" if _num(j["gain"]) is not None else ""))
    if _num(j["ppl1"]) is not None:
        ppl = f"perplexity on general text {_fixed(j['ppl0'], 2)} \u2192 {_fixed(j['ppl1'], 2)}"
        parts.append(ppl + (f" ({_fixed(j['dppl'], 2, sign=True)})"
                            if _num(j["dppl"]) is not None else ""))  # fmt: skip
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
        ["held-out accuracy", _acc_cell(j["acc0"], acc0) + _ci(ci0),
         _acc_cell(j["acc1"], after.accuracy) + _ci(ci1), _points(j["gain"])],
        ["held-out loss (nats/token)", _fixed(j["loss0"], 3), _fixed(j["loss1"], 3),
         _fixed(_diff(j["loss0"], j["loss1"]), 3, sign=True)],
        ["perplexity on general text", _fixed(j["ppl0"], 2), _fixed(j["ppl1"], 2), dppl],
        ["generation latency (ms/token)", _ms(j["ms0"]), _ms(j["ms1"]),
         _fixed(_diff(j["ms0"], j["ms1"]), 2, sign=True)],
        ["time to first token", _ms(ttf0), _ms(ttf1), DASH],
    ]  # fmt: skip
    # the objective's own judged numbers (e.g. agreement with a teacher, ranking accuracy)
    extras0 = {} if before is None else before.extras
    for key, value in after.extras.items():
        if _num(value) is not None:
            b = extras0.get(key)
            rows.append([f"{m.run.objective}: {str(key).replace('_', ' ')}", _fixed(b, 4),
                         _fixed(value, 4), _fixed(_diff(b, value), 4, sign=True)])  # fmt: skip
    return _table(["measure", "before (base)", "after", "change"], rows, numeric=(1, 2, 3))


def _cost_table(m: RunMetrics) -> _Html:
    """What the run cost: time, throughput, memory, parameters, adapter size, loss."""
    cost, training = m.cost, m.training
    steps, epochs = _num(cost.steps), _num(training.epochs)
    extra = ", ".join(filter(None, [f"{round(steps):,} steps" if steps is not None else "",
                                    f"{epochs:.2f} epochs" if epochs is not None else ""]))  # fmt: skip
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
        ["peak RSS", rss],
        ["trainable parameters", trainable],
        ["adapter size", _mib(cost.adapter_bytes)],
        ["training loss (first \u2192 final)", loss],
    ]
    return _table(["cost", "value"], rows, numeric=(1,))


def _key_numbers(m: RunMetrics) -> _Html:
    """The before/after table and the cost table, side by side where the page is wide."""
    return _Html(f'<div class="pair">{_what_happened(m)}{_cost_table(m)}</div>')


def _data_line(m: RunMetrics) -> _Html:
    data = m.data
    if not isinstance(data, dict):
        return _Html("")
    tok = _dict(data.get("tokenize"))
    val = (f", {_count(data.get('n_validation'))} validation" if data.get("n_validation")
           else "")  # fmt: skip
    text = (f"Data: {data.get('source', DASH)}: {_count(data.get('n_train'))} training{val} and "
            f"{_count(data.get('n_eval'))} held-out examples")  # fmt: skip
    if tok:
        text += (f"; tokenized: {_count(tok.get('n_kept'))} kept, "
                 f"{_count(tok.get('n_truncated'))} truncated at "
                 f"{_count(tok.get('max_length'))} tokens, {_count(tok.get('n_dropped'))} dropped")  # fmt: skip
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
        every = (f"every {v.every_steps} steps and at the last" if v.every_steps
                 else f"every {v.strategy}")  # fmt: skip
        rows += [
            ["validation examples", f"{_count(v.n_examples)} (carved from the training data, "
             "seeded; disjoint from training and held-out)"],
            ["evaluated", f"{every}: {_count(len(v.curve))} evaluations, {_seconds(v.seconds)}"],
            ["validation loss (first \u2192 last)",
             f"{_fixed(v.curve[0].loss if v.curve else None, 4)} \u2192 "
             f"{_fixed(v.curve[-1].loss if v.curve else None, 4)}"],
            ["best step", f"{_count(v.best_step)} (validation loss {_fixed(v.best_loss, 4)})"],
            ["saved adapter", f"step {_count(v.adapter_step)}" + (
                " (the best checkpoint, restored)" if v.restored_best else "")],
            ["early stopping", DASH if v.early_stopping_patience is None else
             f"patience {v.early_stopping_patience}, threshold "
             f"{_general(v.early_stopping_threshold)}: "
             + ("stopped early" if v.stopped_early else "ran to the end")],
        ]  # fmt: skip
    pts = m.spectra_curve
    if pts:
        last = pts[-1]
        rows.append(["spectra during training",
                     f"{len(pts)} analyses (steps {pts[0].step} to {last.step}); last: mean "
                     f"alpha {_fixed(last.mean_alpha, 3)}, {_pct(last.frac_alpha_below_2)} of "
                     f"{_count(last.n_fitted)} fitted layers below 2; "
                     f"{_seconds(sum(p.seconds or 0.0 for p in pts))}"])  # fmt: skip
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
        rows.append([name, _count(_first(_get(ca, "n"), _get(cb, "n"))),
                     _acc_cell(_get(cb, "accuracy"), cb), _acc_cell(_get(ca, "accuracy"), ca),
                     _points(_diff(_get(cb, "accuracy"), _get(ca, "accuracy")))])  # fmt: skip
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
    table = [[str(i), _clip(r.get("category"), 60), _clip(r.get("instruction")),
              _clip(r.get("reference")), *(_answer(r, k) for k in keys)]
             for i, r in enumerate(rows[:N_PREDICTIONS], 1)]  # fmt: skip
    right = ", ".join(f"{k}: {sum(r.get(f'correct_{k}') is True for r in rows)}" for k in keys)
    summary = (f"First {len(table)} of {len(rows)} held-out questions; right {right} "
               "(\u2713 right, \u2717 wrong).")  # fmt: skip
    text_cols = {(r, c): "text" for r in range(len(table)) for c in range(2, len(headers))}
    return _join([_tag("p", summary, "muted"),
                  _table(headers, table, numeric=(0,), cell_classes=text_cols)])  # fmt: skip


def _count_rows(s: dict[str, Any]) -> list[list[str]]:
    """The fit statuses and warnings of a spectra summary, counted, as table rows."""
    rows = []
    for key, label in (("status_counts", "status"), ("warning_counts", "warnings")):
        counts = s.get(key)
        if isinstance(counts, dict):
            text = ", ".join(f"{k}: {_general(v)}" for k, v in sorted(counts.items(), key=str))
            rows.append([label, text or "none"])
    return rows


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
            rows.append(["intruder dimensions (layers with any)",
                         f"{_count(s.get('num_intruders'))} "
                         f"({_count(s.get('layers_with_intruders'))})"])  # fmt: skip
        rows += _count_rows(s)
        parts.append(_table(["spectra (means over fitted matrices)", "value"], rows, numeric=(1,)))
        parts.append(_tag("p", "Alpha is the power-law exponent of the tail of each matrix's "
                          "eigenvalue spectrum; 2 to 6 is the usual range of well-trained layers.",
                          "muted"))  # fmt: skip
    details = reader.csv(folder / "spectra" / "details.csv")
    if details and details[1]:
        parts.append(_extremes(details[1]))
    return _join(parts)


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
    table = [[r.get("longname") or r.get("name") or DASH, _fixed(r.get("alpha"), 3)]
             + ([_fixed(r.get("base_alpha"), 3)] if has_base else [])
             + [r.get("status") or DASH, r.get("warning") or ""] for r in pick]  # fmt: skip
    what = "every fitted matrix" if pick is fitted else f"the {k} lowest and {k} highest alphas"
    note = _tag("p", f"From {where} ({len(rows)} matrices): {what}.", "muted")
    return _join([note, _table(headers, table, numeric=(1, 2) if has_base else (1,))])


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
    items = [("objective", run.objective), ("seed", run.seed), ("device", run.device),
             ("threads", run.threads), ("started", run.started)]  # fmt: skip
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


# --------------------------------------------------------------------------- watch sections
#
# Views of a spectra folder: details.csv / summary.json (analyze), compare.csv /
# compare.json / flow.csv (a comparison of two models), flow.csv alone (one model's flow),
# and the figures the sections embed. Each section is empty when its file or column is.

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
    note = _tag("p", f"First {MAX_WATCH_ROWS} of {len(rows)} {what}; {len(rows) - MAX_WATCH_ROWS} "
                "more in the CSV file.", "muted")  # fmt: skip
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
    from spectune.watch.tpl import ALPHA_AT_BOUND, LAMBDA_AT_BOUND  # (imports the engine)

    fit = str(options.get("fit") or ("TPL" if has_tpl else "PL"))
    verdicts = {"power_law": "alpha trustworthy (power law preferred)",
                "undecided": "alpha trustworthy (no significant difference)",
                "truncated_power_law": "tail bends: truncated power law fits better"}  # fmt: skip

    def bound(r: dict[str, str]) -> str:
        w = str(r.get("warning") or "")
        return ", ".join(t for t, s in (("alpha at 1", ALPHA_AT_BOUND), ("Lambda at 0", LAMBDA_AT_BOUND))
                         if s in w)  # fmt: skip

    tested = [r for r in rows if (r.get("better_fit") or "") in verdicts]
    bends = [r for r in tested if r["better_fit"] == "truncated_power_law"]
    at_bound = [r for r in rows if bound(r)]
    parts = [_explain(
        "Alpha is read from a fit of the tail of each matrix's eigenvalue spectrum. A power law "
        "(PL) is a straight line on a log-log plot; a truncated power law (TPL) bends down at "
        "large eigenvalues by exp(-Lambda x). The log-likelihood ratio R compares the two on the "
        "same tail: R < 0 with p < 0.05 says the TPL fits significantly better, so the tail bends "
        "and the plain alpha describes it less well; where the PL is preferred or the test is "
        "undecided, the plain alpha is trustworthy. A TPL fit whose alpha ends at its lower bound "
        "1 (the cutoff Lambda carries the whole tail) or whose Lambda is negligible (no "
        "truncation: a plain power law) sits at a parameter bound: read its numbers with care."
    )]  # fmt: skip
    line = [f"Alpha from the {fit} fit."]
    if has_test:
        n_pl = sum(r["better_fit"] == "power_law" for r in tested)
        line.append(f"The plain alpha is trustworthy on {len(tested) - len(bends)} of "
                    f"{len(tested)} tested matrices ({n_pl} power law preferred, "
                    f"{len(tested) - len(bends) - n_pl} undecided); the truncated power law fits "
                    f"better on {len(bends)}.")  # fmt: skip
    if has_tpl:
        line.append(f"{len(at_bound)} TPL fit{'s' if len(at_bound) != 1 else ''} at a "
                    "parameter bound.")  # fmt: skip
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
            cells += [_fixed(r.get("pl_tpl_R"), 3), _fixed(r.get("pl_tpl_p"), 4),
                      verdicts.get(r.get("better_fit") or "", DASH)]  # fmt: skip
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
    parts = [_explain(
        "WeightWatcher and the FROG paper read alpha > 6 as an overparameterized (under-trained) "
        "layer: its eigenvalue spectrum has a thin tail, little correlation was learned, and it "
        "has capacity to spare. The overfitting signal of WeightWatcher's blog is a LoRA adapter "
        "whose own alpha drops below 2 on such a base layer: a very heavy-tailed update on a "
        "layer that was not strongly trained. FROG's overparam option moves budget away from "
        "(or towards) these layers."
    )]  # fmt: skip
    if isinstance(base_list, list) and (base_list or overfit):
        n = _num(summary.get("n_base_overparameterized"))
        n = len(base_list) if n is None else round(n)
        line = (f"{n} base {'matrix has' if n == 1 else 'matrices have'} alpha > 6 (of "
                f"{_count(summary.get('n_layers'))} analyzed)")  # fmt: skip
        if lora:
            line += (f"; {len(overfit)} LoRA adapter{' has' if len(overfit) == 1 else 's have'} "
                     "alpha < 2 on one of them (the overfitting signal)")  # fmt: skip
        parts.append(_tag("p", line + "."))
        names = list(dict.fromkeys([*map(str, base_list), *overfit]))
        names, note = _capped(names, "matrices")
        headers = ["matrix", "base alpha", "alpha of the update"]
        headers += ["overfitting signal"] if lora else []
        table = [[n, _fixed(_get(by_name, n, "base_alpha"), 3), _fixed(_get(by_name, n, "alpha"), 3)]
                 + ([_Html('<span class="bad">yes: alpha &lt; 2</span>') if n in overfit else ""]
                    if lora else []) for n in names]  # fmt: skip
        return _join([*parts, _table(headers, table, numeric=(1, 2)), note])
    if isinstance(plain, list) and plain and not isinstance(base_list, list):
        parts.append(_tag("p", f"{len(plain)} of {_count(summary.get('n_analyzed'))} fitted "
                          "matrices have alpha > 6."))  # fmt: skip
        names, note = _capped([str(n) for n in plain], "matrices")
        table = [[n, _fixed(_get(by_name, n, "alpha"), 3), _get(by_name, n, "warning") or ""]
                 for n in names]  # fmt: skip
        return _join([*parts, _table(["matrix", "alpha", "warning"], table, numeric=(1,)), note])
    return _Html("")


def _intruders(reader: _Reader, folder: Path, rows: list[dict[str, str]],
               options: dict[str, Any]) -> _Html:  # fmt: skip
    """Intruder dimensions per matrix and in total."""
    counted = [r for r in rows if _num(r.get("num_intruders")) is not None]
    if not counted:
        return _Html("")
    k = options.get("intruder_top_k") or 10
    eps = options.get("intruder_threshold") or 0.5
    total = sum(round(_num(r["num_intruders"]) or 0) for r in counted)
    hit = sorted((r for r in counted if (_num(r["num_intruders"]) or 0) > 0),
                 key=lambda r: (-(_num(r["num_intruders"]) or 0), str(r.get("longname"))))  # fmt: skip
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
        ),  # fmt: skip
    ]
    if hit:
        hit, note = _capped(hit, "matrices with intruders")
        table = [[r.get("longname") or DASH, _count(r.get("num_intruders")),
                  _fixed(r.get("intruder_min_sim"), 3)] for r in hit]  # fmt: skip
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
    parts = [_explain(
        f"Scale collapse (Martin and Mahoney on distillation; the FROG paper's WeightWatcher "
        f"section): per matrix, the change from {a} to {b} of log10 of the largest eigenvalue "
        "(the squared spectral norm) and of log10 of the squared Frobenius norm. A matrix has "
        "collapsed when either change falls below the typical change of all matrices by more "
        f"than {_general(z) if z is not None else 'z'} robust standard deviations and by at "
        f"least {_general(drop) if drop is not None else 'min_drop'} log10 units (0.1 is a 21% "
        "drop of the squared norm): relative to the rest, so a uniformly rescaled model has no "
        "collapsed matrix. A fine-tune that adds a small update moves these by little; a large "
        "negative change says the layer lost scale."
    )]  # fmt: skip
    collapsed = [r for r in rows if _truthy(r.get("collapsed"))]
    line = (f"{len(rows)} matrices compared; {len(collapsed)} collapsed. Mean change: log10 "
            f"spectral norm\u00b2 {_fixed(info.get('mean_d_log_spectral_norm'), 4, sign=True)}, "
            f"log10 Frobenius norm\u00b2 {_fixed(info.get('mean_d_log_norm'), 4, sign=True)}, "
            f"alpha {_fixed(info.get('mean_d_alpha'), 3, sign=True)}.")  # fmt: skip
    parts.append(_tag("p", line))
    drops = sorted((r for r in rows if not _truthy(r.get("collapsed"))
                    and _num(r.get("d_log_spectral_norm")) is not None),
                   key=lambda r: _num(r["d_log_spectral_norm"]))  # fmt: skip
    shown, note = _capped(collapsed + drops[: max(0, 10 - len(collapsed))], "matrices")
    table = [[r.get("longname") or DASH, _fixed(r.get("d_log_spectral_norm"), 4, sign=True),
              _fixed(r.get("d_log_norm"), 4, sign=True),
              f"{_fixed(r.get('alpha_a'), 3)} \u2192 {_fixed(r.get('alpha_b'), 3)}",
              _Html(f'<span class="bad">{_esc(r.get("collapse") or "yes")}</span>')
              if _truthy(r.get("collapsed")) else ""] for r in shown]  # fmt: skip
    what = "collapsed matrices, then the largest spectral-norm drops" if collapsed else \
        "the largest spectral-norm drops"  # fmt: skip
    parts += [_tag("p", f"Shown: {what}.", "muted"),
              _table(["matrix", "d log10 spectral norm\u00b2", "d log10 Frobenius norm\u00b2",
                      f"alpha {a} \u2192 {b}", "collapsed"], table, numeric=(1, 2, 3)), note]  # fmt: skip
    mismatched = info.get("mismatched")
    if isinstance(mismatched, list) and mismatched:
        parts.append(_tag("p", f"Not compared ({len(mismatched)}): "
                          f"{_clip('; '.join(map(str, mismatched)))}.", "muted"))  # fmt: skip
    parts.append(_watch_figure(reader, folder, "scale_collapse.png"))
    return _join(parts)


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
    text = ("Correlation flow (Martin and Mahoney): in a well-trained network alpha changes "
            "smoothly with depth within each layer type (q_proj, down_proj...). Per type, a "
            "least-squares line of alpha against the block index is the trend; a matrix whose "
            "residual exceeds z robust standard deviations of its type's residuals breaks the "
            "flow.")  # fmt: skip
    if pair:
        text += (f" With two models, a matrix that breaks {b}'s flow but not {a}'s is where "
                 f"{b} bent it; a change of slope is a trend that {b} tilted.")  # fmt: skip
    parts = [_explain(text)]
    kinds: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        kinds.setdefault(str(r.get("kind") or DASH), []).append(r)
    table = []
    for kind, group in sorted(kinds.items()):
        first = group[0]
        if pair:
            table.append([kind, str(len(group)), _fixed(first.get("slope_a"), 4, sign=True),
                          _fixed(first.get("slope_b"), 4, sign=True),
                          str(sum(_truthy(r.get("breaks_a")) for r in group)),
                          str(sum(_truthy(r.get("breaks_b")) for r in group)),
                          str(sum(_truthy(r.get("bent")) for r in group))])  # fmt: skip
        else:
            alphas = [x for x in (_num(r.get("alpha")) for r in group) if x is not None]
            table.append([kind, str(len(group)), _fixed(first.get("slope"), 4, sign=True),
                          _fixed(sum(alphas) / len(alphas) if alphas else None, 3),
                          str(sum(_truthy(r.get("breaks_flow")) for r in group))])  # fmt: skip
    headers = (["layer type", "matrices", f"slope ({a})", f"slope ({b})", f"break {a}'s flow",
                f"break {b}'s flow", "bent"] if pair
               else ["layer type", "matrices", "slope (alpha per block)", "mean alpha",
                     "break the flow"])  # fmt: skip
    parts.append(_table(headers, table, numeric=range(1, len(headers))))
    if pair:
        odd = [r for r in rows if _truthy(r.get("breaks_a")) or _truthy(r.get("breaks_b"))]
        odd.sort(
            key=lambda r: (
                not _truthy(r.get("bent")),
                str(r.get("kind")),
                _num(r.get("depth")) or 0,
            )
        )
        cells = [[r.get("longname") or DASH, _general(r.get("depth")), _fixed(r.get("alpha_a"), 3),
                  _fixed(r.get("trend_a"), 3), _fixed(r.get("alpha_b"), 3), _fixed(r.get("trend_b"), 3),
                  ", ".join(t for t, c in ((f"breaks {a}'s", "breaks_a"), (f"breaks {b}'s", "breaks_b"),
                                           ("bent", "bent")) if _truthy(r.get(c)))]
                 for r in odd]  # fmt: skip
        heads = ["matrix", "depth", f"alpha {a}", f"trend {a}", f"alpha {b}", f"trend {b}", "flow"]
    else:
        odd = [r for r in rows if _truthy(r.get("breaks_flow"))]
        cells = [[r.get("longname") or DASH, _general(r.get("depth")), _fixed(r.get("alpha"), 3),
                  _fixed(r.get("trend"), 3), _fixed(r.get("residual"), 3, sign=True)] for r in odd]  # fmt: skip
        heads = ["matrix", "depth", "alpha", "trend", "residual"]
    if cells:
        cells, note = _capped(cells, "matrices off their trend")
        parts += [_tag("p", "Matrices that break a flow (bent ones first):" if pair
                       else "Matrices that break the flow:", "muted"),
                  _table(heads, cells, numeric=range(1, len(heads) - (1 if pair else 0))), note]  # fmt: skip
    else:
        parts.append(_tag("p", "No matrix breaks the flow.", "muted"))
    parts.append(_watch_figure(reader, folder, "correlation_flow.png"))
    return _join(parts)


def _watch_sections(reader: _Reader, folder: Path, labels: tuple[str, str], *,
                    level: int = 2) -> list[_Html]:  # fmt: skip
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
        flagged = [("collapsed", c.get("collapsed_layers")), ("bent", c.get("flow_bent")),
                   ("overfitting", s.get("overfit_adapter_layers"))]  # fmt: skip
        names = "; ".join(f"{what}: {_names_list(n, 3)}" for what, n in flagged if _names_list(n))
        name = _Html(f'<a href="#{anchors[path.name]}">{_esc(path.name)}</a>') \
            if path.name in anchors else path.name  # fmt: skip
        intr = s.get("num_intruders")
        table.append([name,
                      f"{_count(intr)} ({_count(s.get('layers_with_intruders'))})" if _num(intr) is not None else DASH,
                      _count(s.get("n_base_overparameterized")), _count(s.get("n_overfit_adapters")),
                      _count(c.get("n_collapsed")), _count(c.get("n_flow_bent")), _clip(names or "")])  # fmt: skip
    if not table:
        return _Html("")
    headers = ["run", "intruder dimensions (matrices)", "base matrices alpha > 6",
               "adapters alpha < 2 on them", "collapsed matrices", "flow bent", "flagged"]  # fmt: skip
    return _join([
        _explain("Per run, the spectral warning signs of its update against the base model: "
                 "intruder dimensions (new top singular directions), base matrices with alpha > 6 "
                 "(overparameterized) and LoRA adapters whose alpha falls below 2 on them (the "
                 "overfitting signal), matrices whose norms collapsed relative to the rest, and "
                 "matrices where the tuned model bent the base's alpha-along-depth flow. Each "
                 "run's own report (runs/<name>/report.html) explains and lists them."),
        _table(headers, table, numeric=(1, 2, 3, 4, 5), cls="results"),
    ])  # fmt: skip


# --------------------------------------------------------------------------- pages


def render_run(folder: str | os.PathLike[str]) -> str:
    """The HTML page of one run folder.

    Args:
        folder: a run folder written by :func:`spectune.tune.recipe.tune` (``metrics.json``
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


#: results.csv columns: (header, formatter); other columns are shown as they are
_COLUMNS: dict[str, tuple[str, Any]] = {
    "name": ("run", str),
    "method": ("method", _general),
    "status": ("status", lambda v: v or DASH),
    "r": ("r", _general),
    "lora_alpha": ("lora alpha", _general),
    "lora_dropout": ("lora dropout", _general),
    "frog_budget": ("frog budget", _general),
    "trainable": ("trainable params", _count),
    "trainable_percent": ("trainable %", _share),
    "train_loss": ("train loss", lambda v: _fixed(v, 3)),
    "accuracy_before": ("accuracy before", _pct),
    "accuracy_after": ("accuracy after", _pct),
    "accuracy_after_low": ("accuracy after, 95% low", _pct),
    "accuracy_after_high": ("accuracy after, 95% high", _pct),
    "validation_loss": ("validation loss", lambda v: _fixed(v, 3)),
    "heldout_loss_after": ("held-out loss after", lambda v: _fixed(v, 3)),
    "perplexity_before": ("perplexity before", lambda v: _fixed(v, 2)),
    "perplexity_after": ("perplexity after", lambda v: _fixed(v, 2)),
    "perplexity_change": ("perplexity change", lambda v: _fixed(v, 2, sign=True)),
    "train_seconds": ("train time (s)", lambda v: _fixed(v, 1)),
    "tokens_per_second": ("tokens/s", lambda v: _fixed(v, 1)),
    "peak_rss_mib": ("peak RSS (MiB)", lambda v: _fixed(v, 1)),
    "adapter_mib": ("adapter (MiB)", lambda v: _fixed(v, 2)),
    "ms_per_token": ("ms/token", lambda v: _fixed(v, 2)),
    "adapter_alpha": ("adapter alpha", lambda v: _fixed(v, 3)),
    "base_alpha": ("base alpha", lambda v: _fixed(v, 3)),
}


def _failed(row: dict[str, str]) -> bool:
    return str(row.get("status") or "").strip().lower().startswith("failed")


def _best(rows: list[dict[str, str]], column: str, pick: Any) -> set[int]:
    """Indices of the rows holding the best value of ``column`` (ties all count)."""
    values = {i: _num(r.get(column)) for i, r in enumerate(rows) if not _failed(r)}
    values = {i: v for i, v in values.items() if v is not None}
    if not values:
        return set()
    best = pick(values.values())
    return {i for i, v in values.items() if v == best}


def _results_table(fields: list[str], rows: list[dict[str, str]], anchors: dict[str, str]) -> _Html:
    """Every run of results.csv; columns no run has a value in are left out (and named)."""
    order = [c for c in _COLUMNS if c in fields]  # name, method, status first
    columns = order + [c for c in fields if c not in order]
    empty = [c for c in columns if c != "name" and all(r.get(c) in ("", None) for r in rows)]
    columns = [c for c in columns if c not in empty]
    headers = [_COLUMNS.get(c, (c.replace("_", " "), None))[0] for c in columns]
    best = {"accuracy_after": _best(rows, "accuracy_after", max),
            "perplexity_change": _best(rows, "perplexity_change", min)}  # fmt: skip
    table, cell_classes = [], {}
    numeric = [i for i, c in enumerate(columns)
               if c not in ("name", "method", "status") and any(_num(r.get(c)) is not None for r in rows)]  # fmt: skip
    for r, row in enumerate(rows):
        cells = []
        for c, col in enumerate(columns):
            value = row.get(col)
            value = None if value in ("", None) else value
            fmt = _COLUMNS.get(col, (None, _general))[1]
            text = fmt(value) if value is not None else DASH
            if col == "name" and value is not None and value in anchors:
                text = _Html(f'<a href="#{anchors[value]}">{_esc(value)}</a>')
            if r in best.get(col, ()):
                cell_classes[(r, c)] = "best"
                text = _Html(f'<span title="best">{_esc(text)}</span>')
            cells.append(text)
        table.append(cells)
    row_classes = ["failed" if _failed(r) else "" for r in rows]
    legend = ("Green: the highest accuracy after tuning and the smallest perplexity change on "
              "general text (the least forgetting). Accuracy is held-out exact match; failed "
              "runs are greyed out.")  # fmt: skip
    if empty:
        legend += f" Columns without a value in any run are left out: {', '.join(empty)}."
    return _join([_table(headers, table, numeric=numeric, row_classes=row_classes,
                         cell_classes=cell_classes, cls="results"), _tag("p", legend, "muted")])  # fmt: skip


def _comparison_head(info: dict[str, Any], folder: Path, n_runs: int) -> tuple[str, _Html]:
    kind = str(info.get("kind") or "comparison")
    title = str(info.get("title") or f"spectune {kind}: {folder.name}")
    sub = [f"{kind} of {n_runs} run{'s' if n_runs != 1 else ''}"]
    if _num(info.get("total_seconds")) is not None:
        sub.append(f"total time {_seconds(info['total_seconds'])}")
    parts = [_tag("h1", title), _tag("p", " \u00b7 ".join(sub), "sub")]
    grid = info.get("grid")
    if isinstance(grid, dict) and grid:
        rows = [
            [k, v if isinstance(v, str) else json.dumps(v, default=str)] for k, v in grid.items()
        ]
        label = "search space" if kind == "search" else "grid"
        parts.append(_table([label, "values"], rows))
    elif grid:
        parts.append(_tag("pre", json.dumps(grid, indent=2, default=str)))
    return title, _join(parts)


def _pareto(info: dict[str, Any], anchors: dict[str, str]) -> _Html:
    """The Pareto set of a search (``comparison.json``'s ``pareto``: one mapping per run, its
    objectives first) as a table, each run linked to its section."""
    front = info.get("pareto")
    if not isinstance(front, list) or not front or not all(isinstance(p, dict) for p in front):
        return _Html("")
    objectives = [o.get("name") for o in info.get("objectives") or [] if isinstance(o, dict)]
    columns: list[str] = ["run"]
    for p in front:
        columns += [k for k in p if k not in columns and k != "trial"]
    rows = []
    for p in front:
        cells = []
        for c in columns:
            value = p.get(c)
            if c == "run" and str(value) in anchors:
                cells.append(_Html(f'<a href="#{anchors[str(value)]}">{_esc(value)}</a>'))
            else:
                cells.append(DASH if value is None else _general(value))
        rows.append(cells)
    ways = ", ".join(f"{o.get('name')} ({o.get('direction')})"
                     for o in info.get("objectives") or [] if isinstance(o, dict))  # fmt: skip
    legend = (f"The runs no other trial beats on every objective ({ways}): no run is at least "
              "as good in all of them and better in one.")  # fmt: skip
    numeric = [i for i, c in enumerate(columns) if c in objectives]
    return _join([_table(columns, rows, numeric=numeric), _tag("p", legend, "muted")])


def _run_section(reader: _Reader, path: Path, anchor: str, row: dict[str, str] | None) -> _Html:
    """A collapsible section of one run of a comparison: key numbers and plots."""
    m: RunMetrics | None = None
    if (path / RUN_FILE).is_file() and reader.inside(path / RUN_FILE):
        try:
            m = _metrics(path)
        except SpectuneError as exc:
            reader.problems.append(str(exc))
    name = path.name
    status = (row or {}).get("status") or ""
    summary = [name]
    if m is not None:
        _, method, _ = _names(m, path)
        j = _judging(m)
        if method:
            summary.append(method)
        if j["acc1"] is not None:
            summary.append(f"accuracy {_pct(j['acc0'])} \u2192 {_pct(j['acc1'])}")
        if j["dppl"] is not None:
            summary.append(f"perplexity change {_fixed(j['dppl'], 2, sign=True)}")
    if status and status != "complete":
        summary.append(status)
    body: list[str] = []
    if m is not None:
        lede = _lede(m)
        body += [_tag("p", lede) if lede else "", _key_numbers(m)]
    else:
        why = f" ({status})" if status else ""
        body.append(_tag("p", f"No readable {reader.rel(path / RUN_FILE)}{why}: the run did not "
                         "finish, so only what it left behind is shown.", "muted"))  # fmt: skip
    body.append(_plots(reader, path / "plots", known=RUN_PLOTS))
    if m is not None:
        body.append(_section("Notes", _notes(m.notes), level=4))
    head = _esc(" \u00b7 ".join(summary))
    return _Html(f'<details class="run" id="{_esc(anchor)}"><summary>{head}</summary>'
                 f"{''.join(body)}</details>")  # fmt: skip


def _base_spectra(reader: _Reader, folder: Path) -> _Html:
    """The base model's spectral summary and figures (the demo's ``base_spectra/``)."""
    if not folder.is_dir():
        return _Html("")
    summary = _dict(reader.json(folder / "summary.json"))
    line = ""
    if summary:
        line = _tag(
            "p",
            f"{_count(summary.get('n_analyzed'))} of {_count(summary.get('n_layers'))} matrices "
            f"fitted; mean alpha {_fixed(summary.get('alpha'), 2)}, alpha_weighted "
            f"{_fixed(summary.get('alpha_weighted'), 2)}, log_norm "
            f"{_fixed(summary.get('log_norm'), 2)}, stable rank "
            f"{_fixed(summary.get('stable_rank'), 1)} (WeightWatcher definitions; "
            "details.csv holds every matrix).",
        )
    return _join([line, _plots(reader, folder, exclude=WATCH_FIGURES),
                  *_watch_sections(reader, folder, ("a", "b"), level=3)])  # fmt: skip


def render_comparison(folder: str | os.PathLike[str]) -> str:
    """The HTML page of a comparison folder (a sweep or the demo).

    Args:
        folder: a folder holding ``results.csv`` (required) and optionally
            ``comparison.json``, ``plots/*.png`` and ``runs/<name>/`` run folders.

    Returns:
        The page: title and grid, the results table (the best accuracy after tuning and the
        smallest perplexity change highlighted), a search's Pareto set, every plot, the
        spectral warning signs of each run (from ``runs/<name>/spectra/``), the base model's
        spectra when the folder has ``base_spectra/`` (the demo), then one collapsible section
        per run with its key numbers and plots.

    Raises:
        SpectuneError: ``folder`` has no ``results.csv``.
    """
    folder = _required(folder, COMPARISON_FILE, "a sweep or demo folder holds one")
    reader = _Reader(folder)
    parsed = reader.csv(folder / COMPARISON_FILE)
    fields, rows = parsed if parsed else ([], [])
    info = reader.json(folder / "comparison.json")
    if info is not None and not isinstance(info, dict):
        reader.problems.append("comparison.json: not a JSON object; left out")
    info = info if isinstance(info, dict) else {}

    runs_dir = folder / "runs"
    run_dirs = (
        sorted((p for p in runs_dir.iterdir() if p.is_dir()), key=lambda p: p.name)
        if runs_dir.is_dir()
        else []
    )
    by_name = {str(r.get("name")): r for r in rows if r.get("name")}
    csv_order = list(by_name)
    run_dirs.sort(
        key=lambda p: (csv_order.index(p.name) if p.name in csv_order else len(csv_order), p.name)
    )
    anchors = {p.name: f"run-{i}" for i, p in enumerate(run_dirs, 1)}

    title, head = _comparison_head(info, folder, len(rows))
    notes = info.get("notes")
    base_config = info.get("base_config")
    body = [
        head,
        _section("Results", _results_table(fields, rows, anchors) if rows else _tag("p", "results.csv holds no runs.")),
        _section("Pareto set", _pareto(info, anchors)),
        _section("Plots", _plots(reader, folder / "plots")),
        _section("Spectral warning signs per run", _watch_runs(reader, run_dirs, anchors)),
        _section("Base model spectra", _base_spectra(reader, folder / "base_spectra")),
        _section("Runs", _join(_run_section(reader, p, anchors[p.name], by_name.get(p.name)) for p in run_dirs)),
        _section("Notes", _notes(notes)),
        _section("Base config", _tag("pre", json.dumps(base_config, indent=2, sort_keys=True, default=str))
                 if base_config else ""),
    ]  # fmt: skip
    return _page(title, "\n".join(body), reader.problems)


#: files of which one makes a folder a spectra folder (``spectune analyze`` / ``compare --out``)
SPECTRA_FILES = ("details.csv", "compare.csv")


def _analysis_summary(s: dict[str, Any], rows: list[dict[str, str]]) -> _Html:
    """The means of an analysis (summary.json) and its lowest / highest alphas."""
    parts: list[str] = []
    if s:
        table = [
            ["matrices analyzed", f"{_count(s.get('n_analyzed'))} of {_count(s.get('n_layers'))}"],
            ["mean alpha", _fixed(s.get("alpha"), 3)],
            ["mean alpha_weighted", _fixed(s.get("alpha_weighted"), 3)],
            ["mean log_norm", _fixed(s.get("log_norm"), 3)],
            ["mean log_spectral_norm", _fixed(s.get("log_spectral_norm"), 3)],
            ["mean stable_rank", _fixed(s.get("stable_rank"), 3)],
            ["matrices with alpha > 6", _count(s.get("n_overparameterized"))],
        ]
        table += _count_rows(s)
        parts.append(_table(["spectra (means over fitted matrices)", "value"], table, numeric=(1,)))
        parts.append(_tag("p", "Alpha is the power-law exponent of the tail of each matrix's "
                          "eigenvalue spectrum (WeightWatcher's definitions); 2 to 6 is the usual "
                          "range of well-trained layers.", "muted"))  # fmt: skip
    if rows:
        parts.append(_extremes(rows, where="details.csv"))
    return _join(parts)


def render_spectra(folder: str | os.PathLike[str]) -> str:
    """The HTML page of a spectra folder: what ``spectune analyze --out`` or
    ``spectune compare --out`` wrote.

    Args:
        folder: a folder holding ``details.csv`` (an analysis: with ``summary.json``,
            ``flow.csv`` and figures when written) and/or ``compare.csv`` (a comparison of two
            models: with ``compare.json``, ``flow.csv`` and figures).

    Returns:
        The page: the summary and lowest / highest alphas, the figures, then the watch
        sections (fits, overparameterized layers, intruder dimensions, scale collapse,
        correlation flow), each when its data is there.

    Raises:
        SpectuneError: ``folder`` has neither details.csv nor compare.csv.
    """
    root = Path(folder)
    if not any((root / f).is_file() for f in SPECTRA_FILES):
        where = (
            "no such folder" if not root.is_dir() else "neither details.csv nor compare.csv in it"
        )
        raise SpectuneError(f"cannot render {root}: {where}; `spectune analyze --out` or "
                            "`spectune compare --out` writes one")  # fmt: skip
    reader = _Reader(root)
    summary = _dict(reader.json(root / "summary.json"))
    info = _dict(reader.json(root / "compare.json"))
    parsed = reader.csv(root / "details.csv") if (root / "details.csv").is_file() else None
    rows = parsed[1] if parsed else []
    if info:
        a, b = _labels(info)
        title, sub = (
            f"spectune compare: {b} against {a}",
            f"{_count(info.get('n_matched'))} matrices matched",
        )
    else:
        source = summary.get("source") or root.name
        title, sub = f"spectune analyze: {source}", f"{_count(summary.get('n_layers'))} matrices"
    body = [
        _tag("h1", title),
        _tag("p", sub, "sub"),
        _section("Summary", _analysis_summary(summary, rows)),
        _section("Plots", _plots(reader, root, exclude=WATCH_FIGURES)),
        *_watch_sections(reader, root, ("a", "b")),
    ]
    return _page(title, "\n".join(body), reader.problems)


#: how a page spectune wrote begins (its generator tag is in its head)
_GENERATOR = '<meta name="generator" content="spectune '


def check_report_path(folder: str | os.PathLike[str]) -> Path:
    """``folder/report.html``, after checking that writing it replaces no file of the user's:
    it must be absent or a page spectune wrote (its generator tag in the first 2 KB), and
    not a symbolic link.

    Raises:
        SpectuneError: a link, a folder, or a file spectune did not write (nothing written).
    """
    path = Path(folder) / REPORT
    fix = "move it out of the folder, then write the report again"
    if path.is_symlink():
        raise SpectuneError(f"{path} is a symbolic link; spectune never writes through a link: "
                            f"{fix}")  # fmt: skip
    if path.is_dir():
        raise SpectuneError(f"{path} is a folder, not a report spectune wrote; {fix}")
    if path.exists():
        try:
            with path.open("rb") as fh:
                head = fh.read(2048).decode("utf-8", errors="replace")
        except OSError as exc:
            raise SpectuneError(f"{path} cannot be read ({exc.strerror}); {fix}") from None
        if _GENERATOR not in head:
            raise SpectuneError(f"{path} exists and was not written by spectune; spectune never "
                                f"replaces a file it did not write: {fix}")  # fmt: skip
    return path


def _write_report(folder: str | os.PathLike[str], render: Any) -> Path:
    path = check_report_path(folder)
    text = render(folder)
    path = check_report_path(folder)  # again: the page took a moment
    write_text(path, text)
    return path


def write_spectra_report(folder: str | os.PathLike[str]) -> Path:
    """Render :func:`render_spectra` into ``folder/report.html`` (atomically).

    Raises:
        SpectuneError: ``folder`` has neither details.csv nor compare.csv, or its report.html
            is not a page spectune wrote (:func:`check_report_path`); nothing is written.
    """
    return _write_report(folder, render_spectra)


def write_run_report(folder: str | os.PathLike[str]) -> Path:
    """Render :func:`render_run` into ``folder/report.html`` (atomically).

    Returns:
        The path of the report.

    Raises:
        SpectuneError: ``folder`` has no readable ``metrics.json``, or its report.html is not
            a page spectune wrote (:func:`check_report_path`); nothing is written.
    """
    return _write_report(folder, render_run)


def write_comparison_report(folder: str | os.PathLike[str]) -> Path:
    """Render :func:`render_comparison` into ``folder/report.html`` (atomically).

    Returns:
        The path of the report.

    Raises:
        SpectuneError: ``folder`` has no ``results.csv``, or its report.html is not a page
            spectune wrote (:func:`check_report_path`); nothing is written.
    """
    return _write_report(folder, render_comparison)


__all__ = [
    "check_report_path",
    "render_comparison",
    "render_run",
    "render_spectra",
    "write_comparison_report",
    "write_run_report",
    "write_spectra_report",
]
