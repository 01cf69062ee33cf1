"""More than one process: a run launched by ``torchrun`` or ``accelerate launch``.

The launcher starts one process per device and tells each its place in the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); the transformers Trainer then trains with
DistributedDataParallel. Everything around the training is this module's:

- :func:`world`: this process's rank and the number of processes, from the environment;
  one process (no launcher, or ``--nproc_per_node 1``) is a world of size 1, and every helper
  below is then a plain call.
- :func:`session`: joins the process group (gloo on the CPU, NCCL on GPUs) and leaves it
  cleanly; it also opens spectune's own *control* group (gloo, :data:`WAIT_TIMEOUT_S`), which
  carries the agreements below. Rank 0 alone judges the base and the tuned model, which can
  take longer than the training group's ``train.ddp_timeout``; the other ranks wait for it on
  the control group, whose deadline is long enough for that.
- :func:`on_every_rank`: a step every rank runs (checks, data, building the model); a
  failure on any rank becomes the same one-line error on every rank, so no rank is left
  waiting in a collective that the failed one never joins.
- :func:`on_main`: a step rank 0 runs alone (the results folder, judging, the report); the
  others wait for its result, or its error, which they raise too.
- :func:`agree`, :func:`total`, :func:`largest`, :func:`barrier`: the collectives those are
  made of.

One results folder, written by rank 0 only (see :mod:`spectune.tuning.recipe`); every
rank must reach it, because each writes its random-number state into the Trainer's
checkpoints and reads it back on ``--resume``: on several machines, a shared file system.

The CLI imports this module at start-up, for every command (:func:`error_line`,
:func:`write_line`), so torch is imported only inside the functions that join or talk to the
process group.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from spectune.errors import SpectuneError

T = TypeVar("T")

#: how long a rank waits on the control group (for rank 0's judging, its report...)
WAIT_TIMEOUT_S = 24 * 3600
#: the training group's timeout when the config sets no ``train.ddp_timeout`` (the Trainer's)
DEFAULT_TIMEOUT_S = 1800
#: how long the ranks wait for each other when they leave the group
GOODBYE_TIMEOUT_S = 300


@dataclass(frozen=True)
class World:
    """This process's place among the launched processes.

    Attributes:
        rank: 0 .. size - 1; rank 0 owns the results folder.
        size: the number of processes (``WORLD_SIZE``).
        local_rank: the rank on this machine (its GPU).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise SpectuneError(
            f"environment variable {name}={text!r} is not a whole number; launch spectune "
            "with torchrun or accelerate launch, which set it"
        ) from None


def world() -> World:
    """The world this process belongs to, from the launcher's environment variables."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise SpectuneError(
            f"RANK={rank} and WORLD_SIZE={size} do not fit together (0 <= RANK < WORLD_SIZE); "
            "launch spectune with torchrun or accelerate launch, which set them"
        )
    return World(rank, size, _env_int("LOCAL_RANK", 0))


def active() -> bool:
    """Whether this process is one of several (launched by torchrun / accelerate launch)."""
    return world().size > 1


def is_main() -> bool:
    """Whether this process is rank 0 (always, in one process)."""
    return world().main


class _State:
    control: Any = None  # the control group, once joined
    owned: bool = False  # this module initialized the default process group


_STATE = _State()


def backend_for(requested: str | None = None) -> str:
    """The training group's backend: ``requested`` (``train.ddp_backend``), else NCCL with
    GPUs and gloo on the CPU."""
    if requested:
        return requested
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def join(*, timeout_s: float = DEFAULT_TIMEOUT_S, backend: str | None = None) -> bool:
    """Join the process group of a launched run (and open the control group).

    Args:
        timeout_s: the training group's timeout (``train.ddp_timeout``).
        backend: ``train.ddp_backend``; None picks NCCL with GPUs, gloo on the CPU.

    Returns:
        True when this call initialized the process group (:func:`leave` then ends it).
    """
    if not active():
        return False
    import torch
    import torch.distributed as dist

    made = False
    if not dist.is_initialized():
        backend = backend_for(backend)
        if "nccl" in backend and torch.cuda.is_available():
            torch.cuda.set_device(world().local_rank)
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        made = _STATE.owned = True
    if _STATE.control is None:
        _STATE.control = dist.new_group(backend="gloo", timeout=timedelta(seconds=WAIT_TIMEOUT_S))
    return made


def leave(*, wait: bool = True) -> None:
    """Leave the process group spectune joined; with ``wait``, first wait (a bounded time)
    until every rank got here, so that no rank's last words are cut off by the launcher
    stopping the others when the first one exits."""
    import torch.distributed as dist

    if wait and _STATE.control is not None and dist.is_initialized():
        try:
            dist.monitored_barrier(_STATE.control, timeout=timedelta(seconds=GOODBYE_TIMEOUT_S))
        except RuntimeError:
            pass  # a rank is gone already: nothing left to wait for
    if _STATE.owned and dist.is_initialized():
        dist.destroy_process_group()
    _STATE.control = None
    _STATE.owned = False


@contextmanager
def session(config: Any = None) -> Iterator[World]:
    """Be part of the launched run for the ``with`` block (a no-op in one process).

    The training group's timeout and backend come from ``config`` (``train.ddp_timeout``,
    ``train.ddp_backend``) when given. Nested sessions share the outer one's group.
    """
    if not active():
        yield world()
        return
    args = config.training_arguments() if config is not None else {}
    made = join(
        timeout_s=float(args.get("ddp_timeout") or DEFAULT_TIMEOUT_S),
        backend=args.get("ddp_backend"),
    )
    ok = False
    try:
        yield world()
        ok = True
    finally:
        if made:
            leave(wait=ok)


def _control() -> Any:
    if _STATE.control is None:
        raise RuntimeError("spectune.tuning.scale.distributed: join() the process group first")
    return _STATE.control


def _where() -> str:
    w = world()
    return f"rank {w.rank} of {w.size} (host {socket.gethostname()})"


def agree(error: str | None) -> None:
    """Every rank says whether its step failed; when any did, every rank raises the same
    :class:`SpectuneError` (the error of every rank if they all failed alike, else the first
    failed rank's, naming it).

    Raises:
        SpectuneError: some rank's ``error``.
    """
    if not active():
        if error:
            raise SpectuneError(error)
        return
    import torch.distributed as dist

    errors: list[Any] = [None] * world().size
    dist.all_gather_object(errors, None if not error else (error, _where()), group=_control())
    failed = [e for e in errors if e]
    if not failed:
        return
    texts = {text for text, _ in failed}
    if len(failed) == len(errors) and len(texts) == 1:
        raise SpectuneError(failed[0][0])
    text, where = failed[0]
    more = f" (and {len(failed) - 1} more rank(s))" if len(failed) > 1 else ""
    raise SpectuneError(f"{where}{more}: {text}")


def _problem(exc: BaseException) -> str:
    if isinstance(exc, SpectuneError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def on_every_rank(step: Callable[[], T]) -> T:
    """Run ``step`` on every rank and agree on the outcome.

    A :class:`SpectuneError` (or any other exception) on one rank becomes a
    :class:`SpectuneError` on every rank; the rank that failed with something else than a
    SpectuneError re-raises its own exception (the traceback of a bug stays).
    """
    if not active():
        return step()
    try:
        result = step()
    except Exception as exc:
        try:
            agree(_problem(exc))
        except SpectuneError:
            if isinstance(exc, SpectuneError):
                raise
            raise exc from None
        raise AssertionError("unreachable: agree() raises for a failed rank") from exc
    agree(None)
    return result


def on_main(step: Callable[[], T]) -> T:
    """Run ``step`` on rank 0 alone; the other ranks wait (on the control group) and get its
    result (pickled: keep it small) or raise its error.

    Raises:
        SpectuneError: on the other ranks, when the step failed on rank 0.
    """
    if not active():
        return step()
    import torch.distributed as dist

    box: list[Any] = [None]
    failure: BaseException | None = None
    if is_main():
        try:
            box[0] = ("ok", step())
        except Exception as exc:
            failure = exc
            box[0] = ("error", _problem(exc))
    dist.broadcast_object_list(box, src=0, group=_control())
    status, value = box[0]
    if failure is not None:
        raise failure
    if status == "error":
        raise SpectuneError(value if value.startswith("rank ") else f"rank 0: {value}")
    return value


def total(value: float) -> float:
    """The sum of ``value`` over the ranks (``value`` itself in one process)."""
    return _reduce(value, "sum")


def largest(value: float) -> float:
    """The largest ``value`` of the ranks."""
    return _reduce(value, "max")


def _reduce(value: float, how: str) -> float:
    if not active():
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64)
    op = dist.ReduceOp.SUM if how == "sum" else dist.ReduceOp.MAX
    dist.all_reduce(t, op=op, group=_control())
    return float(t.item())


def barrier() -> None:
    """Wait until every rank got here (nothing in one process)."""
    if active():
        import torch.distributed as dist

        dist.barrier(group=_control())


def say(message: str) -> None:
    """Print a status line on rank 0's stderr only."""
    if is_main():
        write_line(message)


def write_line(text: str, stream: Any = None) -> None:
    """Write ``text`` and its newline to ``stream`` (stderr) in one call, then flush: under
    ``python -u`` (unbuffered, as launchers often run) ``print`` writes the text and the newline
    apart, and the lines of ranks sharing a terminal or a log came out glued together."""
    stream = sys.stderr if stream is None else stream
    stream.write(text if text.endswith("\n") else text + "\n")
    stream.flush()


def error_line(message: str) -> str:
    """The CLI's line for an error: ``spectune: error: MESSAGE``, with ``(rank R of N)``
    before the message when several processes were launched (each prints its own)."""
    try:
        w = world()
    except SpectuneError:  # a bad RANK / WORLD_SIZE: that is the message itself
        w = World()
    where = f"(rank {w.rank} of {w.size}) " if w.size > 1 else ""
    return f"spectune: error: {where}{message}"


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "WAIT_TIMEOUT_S",
    "World",
    "active",
    "agree",
    "backend_for",
    "barrier",
    "error_line",
    "is_main",
    "join",
    "largest",
    "leave",
    "on_every_rank",
    "on_main",
    "say",
    "session",
    "total",
    "world",
    "write_line",
]
