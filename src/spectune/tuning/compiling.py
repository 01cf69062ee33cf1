"""``train.torch_compile``: the decoder compiled with ``torch.compile`` (inductor) for training.

spectune's losses call the model's decoder and output head themselves (the head only where a
label is: :func:`spectune.models.forward.labelled_nll`), so transformers' own
``torch_compile`` (which compiles the wrapper the Trainer calls) would never run; spectune
compiles the decoder module in place instead (``nn.Module.compile(dynamic=True)``: batch
lengths vary) for the training phase only, and undoes it afterwards, so judging and
generation run eagerly as before.

What a user sees:

- the compile time apart from the step time (``cost.compile_seconds``: the first step's time
  beyond the median step, where the compiling happens), and a note with both;
- a model that compiles in pieces (graph breaks: a method's layer dynamo cannot trace) or
  falls back to eager code (the recompile limit) gets a note naming the count, since its steps
  may be no faster; a compile that fails is an error naming the setting, never a silent eager
  run;
- refused before training: a CPU run without a C++ compiler (inductor's CPU code needs one),
  a GPU run without Triton, a model without a decoder spectune can find.

Measured (``bench/compile_step.py``; README "torch.compile"): on a 2-core CPU a compiled LoRA
step is somewhat faster but the compile itself takes minutes, so it pays off only for long
runs; it is off by default.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from spectune.errors import SpectuneError
from spectune.models.forward import decoder_and_head

SETTING = "train.torch_compile"


@dataclass
class Compiled:
    """What compiling did in one training phase."""

    enabled: bool = False
    #: the first step's time beyond the median step (None: off, or fewer than 2 steps)
    seconds: float | None = None
    graph_breaks: int = 0
    #: frames dynamo gave up on after too many recompiles (they ran eagerly)
    eager_fallbacks: int = 0
    notes: list[str] = field(default_factory=list)

    def finish(self, step_seconds: list[float]) -> None:
        """Compile time from the steps' times; notes on what compiled and what did not."""
        if not self.enabled:
            return
        if len(step_seconds) >= 2:
            typical = statistics.median(step_seconds[1:])
            self.seconds = max(0.0, step_seconds[0] - typical)
            self.notes.append(
                f"{SETTING}: compiling took about {self.seconds:.0f} s (the first step's time "
                f"beyond the median step of {typical:.2f} s); the train time includes it"
            )
        if self.graph_breaks or self.eager_fallbacks:
            self.notes.append(
                f"{SETTING}: the decoder compiled in pieces ({self.graph_breaks} graph breaks, "
                f"{self.eager_fallbacks} frames left eager after too many recompiles): its "
                "steps may be no faster than eager ones; compare with a run without it"
            )


def check_compile_possible(device: str) -> None:
    """Refuse ``train.torch_compile`` where inductor cannot build code: a CPU without a C++
    compiler, a CUDA device without Triton."""
    if device.startswith("cuda"):
        from torch.utils._triton import has_triton

        if not has_triton():
            raise SpectuneError(
                f"{SETTING}: torch.compile's GPU code needs Triton, which is not installed "
                "(pip install triton), or set train.torch_compile=false"
            )
        return
    compilers = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
    if not any(c and shutil.which(c) for c in compilers):
        raise SpectuneError(
            f"{SETTING}: torch.compile's CPU code needs a C++ compiler (g++ or clang++ on "
            "PATH, or CXX) and none was found: install one, or set train.torch_compile=false"
        )


class _LimitHits(logging.Handler):
    """Counts dynamo's "hit config.recompile_limit" warnings: a frame it stopped compiling
    (it runs eagerly from then on)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.hits = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "hit config." in str(record.msg):
            self.hits += 1


def _from_compiler(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("torch._dynamo", "torch._inductor"))


@contextmanager
def compiling(model: Any, enabled: bool, device: str) -> Iterator[Compiled]:
    """The model's decoder compiled while inside (``enabled``); the counts of graph breaks
    and eager fallbacks taken on the way out (:meth:`Compiled.finish` adds the time).

    Raises:
        SpectuneError: the checks of :func:`check_compile_possible`; a model without a
            decoder; a compile that fails (naming the setting and the compiler's error).
    """
    state = Compiled(enabled=enabled)
    if not enabled:
        yield state
        return
    check_compile_possible(device)
    parts = decoder_and_head(model)
    if parts is None:
        raise SpectuneError(
            f"{SETTING}: this model has no decoder spectune can compile (no get_decoder / "
            "get_output_embeddings): set train.torch_compile=false"
        )
    from torch._dynamo.utils import counters

    decoder = parts[0]
    breaks = sum(counters["graph_break"].values())
    limits = _LimitHits()
    logger = logging.getLogger("torch._dynamo.convert_frame")
    logger.addHandler(limits)
    decoder.compile(dynamic=True)
    try:
        yield state
    except Exception as exc:
        if _from_compiler(exc):
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise SpectuneError(
                f"{SETTING}: torch.compile failed on this model and method "
                f"({type(exc).__name__}: {first}); set train.torch_compile=false"
            ) from exc
        raise
    finally:
        decoder._compiled_call_impl = None  # eager again: judging and generation as before
        logger.removeHandler(limits)
        state.graph_breaks = sum(counters["graph_break"].values()) - breaks
        state.eager_fallbacks = limits.hits


__all__ = ["SETTING", "Compiled", "check_compile_possible", "compiling"]
