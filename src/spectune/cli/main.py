"""Entry point of the ``spectune`` command.

Each subcommand lives in its own module ``spectune.cli.<name>`` exposing ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Those modules import only ``argparse`` and
the standard library at top level, so ``spectune --help`` answers without loading torch.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence

# subcommand -> module; the order is the order of ``spectune --help``
COMMANDS: dict[str, str] = {
    "demo": "spectune.cli.demo",
    "tune": "spectune.cli.tune",
    "sweep": "spectune.cli.sweep",
    "augment": "spectune.cli.augment",
    "study": "spectune.cli.study",
    "search": "spectune.cli.search",
    "advise": "spectune.cli.advise",
    "report": "spectune.cli.report",
    "describe": "spectune.cli.describe",
    "analyze": "spectune.cli.analyze",
    "compare": "spectune.cli.compare",
    "frog-plan": "spectune.cli.frog_plan",
    "plan": "spectune.cli.plan",
    "methods": "spectune.cli.methods",
    "model": "spectune.cli.model",
}


#: the subcommands that run as several processes under torchrun / accelerate launch
LAUNCHABLE = ("tune",)

#: OSError numbers that say something about the user's files, not about spectune's code
_ENVIRONMENT_ERRNOS = {
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
    errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG,
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from spectune import __version__

    parser = argparse.ArgumentParser(
        prog="spectune",
        description=(
            "Tune language models parameter-efficiently (LoRA, DoRA, QLoRA, FROG), watch their "
            "weight spectra (WeightWatcher metrics), judge learning against forgetting."
        ),
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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


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
    from spectune.tune.scale.distributed import error_line, write_line

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
