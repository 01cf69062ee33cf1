"""What every page of a results folder is made of.

- **escaping**: :class:`_Html` (a string that is HTML already) and :func:`_esc`; every string
  read from a folder goes through them;
- **numbers**: the formats of the pages (``12.5%``, ``+25.0 points``, ``1.2 MiB``), ``-`` for
  a missing value;
- **reading**: :class:`_Reader` reads a folder's optional files (text, JSON, JSON lines, CSV,
  PNG) and collects what could not be read; only files that resolve inside the folder are
  read;
- **building blocks**: tables, figures (PNG embedded as ``data:`` URIs), sections, the page
  shell with its inline CSS;
- **writing**: :func:`check_report_path` and :func:`_write_report`, which never replace a
  ``report.html`` that spectune did not write.

The names with a leading underscore are private to :mod:`spectune.report.pages`: the page
modules (:mod:`~spectune.report.pages.run`, :mod:`~spectune.report.pages.comparison`,
:mod:`~spectune.report.pages.spectra`) build on them.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from spectune import __version__
from spectune._io import write_text
from spectune.errors import SpectuneError
from spectune.results.metrics import RunMetrics

#: the page's file name in its folder
REPORT = "report.html"
#: longest text shown in a table cell (characters)
MAX_CELL_CHARS = 400
DASH = "-"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

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
        raise SpectuneError(
            f"cannot render {folder}: its {name} is a link to a file outside "
            "the folder; a report reads only the folder's own files"
        )
    return folder


def _metrics(folder: Path) -> RunMetrics:
    """The run's typed metrics (a required file: bad content raises, naming the version)."""
    return RunMetrics.load(folder)


# --------------------------------------------------------------------------- building blocks


def _cls(*names: str) -> str:
    """`` class="a b"`` for the non-empty names, or nothing."""
    joined = " ".join(n for n in names if n)
    return f' class="{_esc(joined)}"' if joined else ""


def _table(
    headers: Sequence[Any],
    rows: Iterable[Sequence[Any]],
    *,
    numeric: Iterable[int] = (),
    row_classes: Sequence[str] | None = None,
    cell_classes: dict[tuple[int, int], str] | None = None,
    cls: str = "",
) -> _Html:
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
    return _Html(
        f'<div class="wide"><table{_cls(cls)}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _figure(reader: _Reader, path: Path, caption: str) -> _Html:
    data = reader.png(path)
    if data is None:
        return _Html("")
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return _Html(
        f'<figure><img src="{uri}" alt="{_esc(caption)}">'
        f"<figcaption>{_esc(caption)} "
        f'<span class="file">{_esc(reader.rel(path))}</span></figcaption></figure>'
    )


def _caption(name: str) -> str:
    """A caption from a file name: ``accuracy_vs_r.png`` -> "Accuracy vs r"."""
    stem = Path(name).stem.replace("_", " ").replace("-", " ").strip()
    return stem[:1].upper() + stem[1:] if stem else name


def _pngs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png"),
        key=lambda p: p.name,
    )


def _plots(
    reader: _Reader,
    folder: Path,
    *,
    known: dict[str, str] | None = None,
    exclude: Iterable[str] = (),
) -> _Html:
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
    notice = ""
    if problems:
        items = "".join(f"<li>{_esc(p)}</li>" for p in problems)
        notice = (
            '<div class="problems"><strong>Some files could not be used:</strong>'
            f"<ul>{items}</ul></div>"
        )
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


# --------------------------------------------------------------------------- writing


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
        raise SpectuneError(
            f"{path} is a symbolic link; spectune never writes through a link: {fix}"
        )
    if path.is_dir():
        raise SpectuneError(f"{path} is a folder, not a report spectune wrote; {fix}")
    if path.exists():
        try:
            with path.open("rb") as fh:
                head = fh.read(2048).decode("utf-8", errors="replace")
        except OSError as exc:
            raise SpectuneError(f"{path} cannot be read ({exc.strerror}); {fix}") from None
        if _GENERATOR not in head:
            raise SpectuneError(
                f"{path} exists and was not written by spectune; spectune never "
                f"replaces a file it did not write: {fix}"
            )
    return path


def _write_report(
    folder: str | os.PathLike[str], render: Callable[[str | os.PathLike[str]], str]
) -> Path:
    """``render(folder)`` written into ``folder/report.html`` (atomically), checked before and
    after rendering by :func:`check_report_path`."""
    path = check_report_path(folder)
    text = render(folder)
    path = check_report_path(folder)  # again: the page took a moment
    write_text(path, text)
    return path


__all__ = ["REPORT", "check_report_path"]
