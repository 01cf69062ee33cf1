"""Library messages a user cannot act on, kept off the terminal (``--verbose`` shows them).

Each entry names the message and why it is noise for a spectune user; nothing here hides a
warning about the user's own input or results. The filters are installed by the CLI
(:func:`quiet_libraries`), never on import, so a program that uses spectune as a library keeps
its own warning settings.

=====================================================  =========================================
message                                                why it is silenced
=====================================================  =========================================
bitsandbytes "Failed to load CPU gemm_4bit_forward      an optional kernel downloaded from a model
from kernels-community"                                 hub; the built-in CPU path is used
transformers "`is_gradient_checkpointing` is           transformers' own internal call (and
deprecated", "... deprecated and will be removed in    peft's), not spectune's; fixed by them
v6"
torch "`torch.jit.script_method` is deprecated"        raised while importing libraries
torch "Sparse invariant checks are implicitly          peft's SHiRA builds sparse tensors with
disabled"                                              valid indices
torch "an autograd kernel was not registered"          bitsandbytes' 4-bit CPU kernels; the
(bitsandbytes::gemv_4bit)                              gradients are tested to match
bitsandbytes "Paged optimizers are not supported on     the run's notes say so (train.optim
CPU"                                                    paged_*: it runs unpaged)
=====================================================  =========================================
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

#: (category, message regex) of the warnings silenced
WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, r".*is_gradient_checkpointing.*deprecated"),
    (FutureWarning, r".*deprecated and will be removed in v6"),
    (DeprecationWarning, r".*torch\.jit\.script_method.*deprecated"),
    (UserWarning, r"Sparse invariant checks are implicitly disabled"),
    (UserWarning, r".*autograd kernel was not registered.*"),
    (UserWarning, r"Paged optimizers are not supported on CPU"),
)

#: loggers whose warnings are silenced (the messages above that come through logging)
LOGGERS = ("bitsandbytes.backends.cpu.ops",)


def quiet_libraries(verbose: bool = False) -> None:
    """Install the filters (nothing with ``verbose``)."""
    if verbose:
        return
    for category, message in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def logger_at(name: str, level: int) -> Iterator[None]:
    """Logger ``name`` held at ``level`` during the block (a library's messages about a call
    spectune makes on purpose, or a failure it explains itself), its own level restored after."""
    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


__all__ = ["LOGGERS", "WARNINGS", "logger_at", "quiet_libraries"]
