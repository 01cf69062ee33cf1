"""The CLI hides library messages a user cannot act on, and --verbose shows them."""

from __future__ import annotations

import logging
import warnings

from spectune._quiet import LOGGERS, quiet_libraries


def _emit() -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries(verbose=False)
        warnings.warn(
            "`is_gradient_checkpointing` is deprecated and will be removed",
            FutureWarning,
            stacklevel=2,
        )
        warnings.warn("Sparse invariant checks are implicitly disabled.", UserWarning, stacklevel=2)
        warnings.warn(
            "your learning rate is very high", UserWarning, stacklevel=2
        )  # the user's business
    return [str(w.message) for w in caught]


def test_library_noise_is_hidden_and_other_warnings_are_not(caplog):
    assert _emit() == ["your learning rate is very high"]
    assert logging.getLogger(LOGGERS[0]).level == logging.ERROR
    with caplog.at_level(logging.WARNING):
        logging.getLogger(LOGGERS[0]).warning("Failed to load CPU gemm_4bit_forward")
    assert "gemm_4bit" not in caplog.text


def test_verbose_installs_nothing():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries(verbose=True)
        warnings.warn("Sparse invariant checks are implicitly disabled.", UserWarning, stacklevel=2)
    assert len(caught) == 1
