"""``spectune methods``: the registered methods and objectives, their config sections, and
what a method would train on a model.

- ``spectune methods``: every method and objective, one line each, and every config section
  they read (fields, defaults, help);
- ``spectune methods NAME``: one method (or objective) and its sections;
- ``spectune methods NAME --model M [key=value ...]``: what the method would train on that
  model under those settings, through its ``plan`` hook (FROG: its per-matrix plan; the others:
  their targets and trainable count), printed, and written under ``--out``.
"""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

HELP = (
    "list the registered methods and objectives with their config sections, or show what a "
    "method would train on a model (FROG: its per-matrix plan)"
)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="'default', a model folder, a .gguf file or a hub id (org/name): show what the "
        "method would train",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="with --model: folder for the plan's files "
        "(new, empty, or an earlier plan's, whose files are replaced)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # NAME, key=value and the options in any order (argparse alone takes no positional after
    # an option): the words are parsed again by _words()
    parser.add_argument(
        "words",
        nargs=argparse.REMAINDER,
        metavar="[NAME [key=value ...]]",
        help="a method or objective (none: list them all), and with --model "
        "settings as for spectune tune (frog.budget=0.02)",
    )
    _options(parser)


def _words(args: argparse.Namespace) -> argparse.Namespace:
    """NAME, key=value items and options from wherever they stand on the command line."""
    parser = argparse.ArgumentParser(prog="spectune methods")
    parser.add_argument("name", nargs="?")
    parser.add_argument("overrides", nargs="*")
    _options(parser)
    got = parser.parse_intermixed_args(args.words)
    for key in ("model", "out"):
        if getattr(got, key) is None:
            setattr(got, key, getattr(args, key))
    got.no_progress = got.no_progress or args.no_progress
    return got


#: width of the listing (help texts are wrapped to it)
WIDTH = 100


def _value(value: Any) -> str:
    """A default as it is typed in ``key=value`` (YAML): null, true, [2.0, 6.0]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def _default(f: Any) -> str:
    if f.default is not MISSING:
        return _value(f.default)
    if f.default_factory is not MISSING:
        return _value(f.default_factory())
    return "(required)"


def _section_lines(name: str, cls: type, readers: list[str]) -> list[str]:
    """A section's fields: ``section.field=default`` and the help text, wrapped."""
    lines = [f"  {name}: (read by {', '.join(readers)})"]
    for f in fields(cls):
        key = f"    {name}.{f.name}={_default(f)}"
        text = f.metadata.get("help", "")
        if len(key) > 37:
            lines.append(key)
            key = ""
        lines.append(
            textwrap.fill(text, WIDTH, initial_indent=f"{key:<38}", subsequent_indent=" " * 38)
            if text
            else key
        )
    return lines


def _listing() -> list[str]:
    from spectune.tuning.methods import METHODS
    from spectune.tuning.objectives import OBJECTIVES

    lines = ["methods (method=NAME):"]
    for name, spec in METHODS.items().items():
        lines.append(f"  {name:<10} {spec.description}")
    lines.append("objectives (objective=NAME):")
    for name, spec in OBJECTIVES.items().items():
        lines.append(f"  {name:<10} {spec.description}")
    lines.append("sections (key=value as SECTION.FIELD=VALUE):")
    for registry in (METHODS, OBJECTIVES):
        for section, cls in registry.sections().items():
            lines += _section_lines(section, cls, registry.readers(section))
    return lines


def _one(name: str) -> list[str]:
    from spectune.tuning.methods import METHODS
    from spectune.tuning.objectives import OBJECTIVES

    registry = OBJECTIVES if name in OBJECTIVES and name not in METHODS else METHODS
    spec = registry.get(name)  # an unknown name lists the registered methods
    lines = [f"{registry.kind} {name}: {spec.description}"]
    if registry is METHODS:
        lines.append(
            f"  target_modules: {'read' if spec.uses_target_modules else 'not read'}; "
            f"FSDP: {'shards it' if spec.shardable else 'refused (' + spec.unshardable + ')'}"
        )
        if spec.settings:
            shown = ", ".join(f"{col} = {key}" for col, key in spec.settings.items())
            lines.append(f"  results-table columns: {shown}")
    sections = getattr(spec, "sections", {}) or {}
    if not sections:
        lines.append("  no config section")
    for section, cls in sections.items():
        lines += _section_lines(section, cls, registry.readers(section))
    return lines


def show_plan(
    name: str, model: str, data: dict[str, Any], *, out: str | None, progress: bool
) -> int:
    """Print (and with ``out`` write) what method ``name`` would train on ``model``.

    Args:
        name: a registered method.
        model: ``'default'`` or a model folder.
        data: raw config settings (as in a YAML file) on top of the defaults.
        out: folder for the plan's files; None: print only.
        progress: progress bars.
    """
    import tempfile

    from spectune._io import atomic_path, check_writable_dir, write_json, write_text
    from spectune.models.loading import resolve_model_dir
    from spectune.results.runfolder import RunFolder
    from spectune.tuning.config import TuneConfig
    from spectune.tuning.methods import get_method
    from spectune.tuning.methods.base import BuildContext

    method = get_method(name)  # an unknown name lists the registered ones
    owner = None
    if out is not None:  # before the model is read: a folder of the user's is refused
        folder_out = check_writable_dir(out, "--out")
        owner = RunFolder(folder_out, f"{name.replace('-', '_')}_plan")
        owner.check(overwrite=True)
    config = TuneConfig.from_dict(
        {**data, "model": model, "method": name}, source=f"spectune methods {name}"
    )
    folder = resolve_model_dir(model)
    with tempfile.TemporaryDirectory(prefix="spectune-plan-") as workdir:
        plan = method.plan(BuildContext(config, folder, Path(workdir), progress=progress))
    if owner is not None and plan.files:
        with owner.replacing():
            owner.own(*plan.files)
            for file, content in plan.files.items():
                path = owner.path / file
                if hasattr(content, "savefig"):
                    with atomic_path(path) as tmp:
                        content.savefig(tmp, format="png", dpi=120)
                elif hasattr(content, "to_csv"):
                    write_text(path, content.to_csv(index=False))
                else:
                    write_json(path, content)
    print(plan.headline)
    table = plan.table
    if table is not None and len(table):
        columns = plan.columns or list(table.columns)
        print(
            table[columns]
            .head(plan.rows_shown)
            .to_string(index=False, float_format=lambda v: f"{v:.4g}")
        )
        more = len(table) - plan.rows_shown
        if more > 0:
            where = (
                f"in {owner.path / plan.table_file}"
                if owner is not None and plan.table_file
                else "(--out writes them all)"
            )
            print(f"... {more} more rows {where}")
    if owner is not None:
        for file in plan.files:
            print(f"wrote {owner.path / file}")
    return 0


def run(args: argparse.Namespace) -> int:
    from spectune.errors import SpectuneError
    from spectune.tuning.config import apply_overrides

    args = _words(args)
    if args.name is None:
        if args.overrides or args.model or args.out:
            raise SpectuneError(
                "spectune methods: name a method for key=value, --model or "
                "--out (spectune methods NAME --model M)"
            )
        print("\n".join(_listing()))
        return 0
    if args.model is None:
        if args.overrides or args.out:
            raise SpectuneError(
                f"spectune methods {args.name}: key=value and --out need "
                "--model (the model to plan on)"
            )
        print("\n".join(_one(args.name)))
        return 0
    data = apply_overrides({}, list(args.overrides))
    return show_plan(args.name, args.model, data, out=args.out, progress=not args.no_progress)
