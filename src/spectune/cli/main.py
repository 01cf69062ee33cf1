"""Entry point of the ``spectune`` command.

Each verb lives in its own module ``spectune.cli.<module>`` exposing ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Those modules import only ``argparse`` and
the standard library at top level, so ``spectune --help`` answers without loading torch.

``spectune --help`` lists the verbs under the README's words (:data:`HEADINGS`): tune, watch,
judge and study, show. A renamed verb keeps its old name for one release (:data:`OLD_NAMES`):
the old name parses and runs exactly as the new verb (same output, same exit codes) after one
note on stderr naming the new verb.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from types import ModuleType
from typing import Any

#: verb -> the module that implements it; the order is the order of ``spectune --help``
COMMANDS: dict[str, str] = {
    "tune": "spectune.cli.tune",
    "methods": "spectune.cli.methods",
    "memory": "spectune.cli.memory",
    "augment": "spectune.cli.augment",
    "model": "spectune.cli.model",
    "export": "spectune.cli.export",
    "watch": "spectune.cli.watch",
    "compare": "spectune.cli.compare",
    "describe": "spectune.cli.describe",
    "judge": "spectune.cli.judge",
    "demo": "spectune.cli.demo",
    "sweep": "spectune.cli.sweep",
    "study": "spectune.cli.study",
    "search": "spectune.cli.search",
    "advise": "spectune.cli.advise",
    "report": "spectune.cli.report",
    # an old name with a module of its own, which prints its note (see OLD_NAMES)
    "frog-plan": "spectune.cli.frog_plan",
}

#: the headings of ``spectune --help`` (the README's words) -> their verbs
HEADINGS: dict[str, tuple[str, ...]] = {
    "tune: one fine-tuning run and what it needs":
        ("tune", "methods", "memory", "augment", "model", "export"),
    "watch: spectral diagnostics of any weights": ("watch", "compare", "describe"),
    "judge and study: many runs, learning against forgetting":
        ("judge", "demo", "sweep", "study", "search", "advise"),
    "show: the page of a results folder": ("report",),
}  # fmt: skip

#: old verb -> what to type now; kept for one release. An old name that is not itself in
#: COMMANDS runs its new verb after a note printed here; one that is (frog-plan) keeps its own
#: module, which prints its note
OLD_NAMES: dict[str, str] = {"analyze": "watch", "plan": "memory", "frog-plan": "methods frog"}

#: the subcommands that run as several processes under torchrun / accelerate launch
LAUNCHABLE = ("tune",)

#: OSError numbers that say something about the user's files, not about spectune's code
_ENVIRONMENT_ERRNOS = {
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
    errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG,
}  # fmt: skip

_DESCRIPTION = (
    "Tune language models parameter-efficiently (LoRA, DoRA, QLoRA, FROG), watch their weight "
    "spectra (WeightWatcher metrics), judge learning against forgetting."
)


def old_name_note(old: str) -> str:
    """The line ``spectune OLD ...`` prints on stderr before it runs as its new verb."""
    new = OLD_NAMES[old]
    return (
        f"spectune: note: `spectune {old}` is now `spectune {new}`; "
        "the old name goes in the next release"
    )


def _verb_listing(helps: dict[str, str], width: int) -> str:
    """The verbs under their headings, aligned and wrapped like argparse's own lists."""
    listed = [verb for verbs in HEADINGS.values() for verb in verbs if verb in helps]
    column = max(len(verb) for verb in listed) + 4
    blocks = []
    for heading, verbs in HEADINGS.items():
        lines = [heading]
        for verb in (v for v in verbs if v in helps):
            wrapped = textwrap.wrap(helps[verb], max(width - column, 20)) or [""]
            lines.append(f"  {verb:<{column - 2}}{wrapped[0]}")
            lines.extend(" " * column + line for line in wrapped[1:])
        blocks.append("\n".join(lines))
    renamed = ", ".join(f"{old} -> {new}" for old, new in OLD_NAMES.items())
    blocks.append(textwrap.fill(f"old names, kept until the next release: {renamed}", width))
    return "\n\n".join(blocks)


def build_parser() -> argparse.ArgumentParser:
    from spectune import __version__

    modules = {name: importlib.import_module(module) for name, module in COMMANDS.items()}
    width = shutil.get_terminal_size().columns - 2  # argparse's own width
    helps = {name: module.HELP for name, module in modules.items()}
    parser = argparse.ArgumentParser(
        prog="spectune",
        description=f"{textwrap.fill(_DESCRIPTION, width)}\n\n{_verb_listing(helps, width)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"spectune {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks for errors in your input"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show every library warning (by default those a user cannot act on are hidden)",
    )
    sub = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        help="one of the verbs above; `spectune COMMAND --help` shows its options",
    )
    # no help= below: the verbs are listed under their headings, not under COMMAND
    for name, module in modules.items():
        _add_verb(sub, name, module, module.HELP)
    for old, new in OLD_NAMES.items():
        if old not in COMMANDS and new in COMMANDS:
            text = f"the old name of `spectune {new}`, kept until the next release: "
            _add_verb(sub, old, modules[new], text + modules[new].HELP)
    return parser


def _add_verb(sub: Any, name: str, module: ModuleType, text: str) -> None:
    cmd = sub.add_parser(name, description=text)
    module.add_arguments(cmd)
    cmd.set_defaults(_run=module.run)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get("SPECTUNE_DEBUG") == "1"
    from spectune._quiet import quiet_libraries
    from spectune.errors import SpectuneError
    from spectune.tuning.scale.distributed import error_line, write_line

    if args.command in OLD_NAMES and args.command not in COMMANDS:
        write_line(old_name_note(args.command))
    quiet_libraries(verbose=args.verbose)
    try:
        if args.command not in LAUNCHABLE and int(os.environ.get("WORLD_SIZE") or 1) > 1:
            raise SpectuneError(
                f"spectune {args.command} runs in one process; of the commands only "
                f"{', '.join(sorted(LAUNCHABLE))} can be launched with torchrun or accelerate "
                "launch (several processes)"
            )
        return int(args._run(args) or 0)
    except SpectuneError as exc:
        if debug:
            raise
        write_line(error_line(str(exc)))  # one write per line: ranks' lines do not interleave
        return 2
    except OSError as exc:
        # a file or folder that cannot be written or read for a reason of the user's machine
        # (no permission, a file where a folder is needed, read-only or full disk): one line
        # naming it, unless --debug. Any other OSError (a missing file...) keeps its traceback.
        if debug or exc.filename is None or exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        target = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        write_line(error_line(f"{target}: {exc.strerror or exc} (--debug shows the traceback)"))
        return 2
    except KeyboardInterrupt:
        write_line("spectune: interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
