"""Spectral diagnostics: ESDs (esd), power-law fits (powerlaw), truncated power-law fits and
the PL-vs-TPL likelihood ratio (tpl), random-matrix theory (rmt), per-layer metrics
(metrics), the describe/analyze/summarize entry points (analyze), comparisons of two models
(compare: scale collapse, correlation flow) and intruder dimensions (intruders)."""

from spectune.watch.analyze import analyze, describe, spectrum, summarize
from spectune.watch.compare import compare, compare_summary, correlation_flow
from spectune.watch.esd import eigenvalues, lora_eigenvalues
from spectune.watch.intruders import (
    IntruderResult,
    intruder_dimensions,
    lora_intruder_dimensions,
)
from spectune.watch.powerlaw import PowerLawFit, fit_powerlaw
from spectune.watch.tpl import (
    FitComparison,
    TruncatedPowerLawFit,
    compare_pl_tpl,
    fit_truncated_powerlaw,
)

__all__ = [
    "FitComparison",
    "IntruderResult",
    "PowerLawFit",
    "TruncatedPowerLawFit",
    "analyze",
    "compare",
    "compare_pl_tpl",
    "compare_summary",
    "correlation_flow",
    "describe",
    "eigenvalues",
    "fit_powerlaw",
    "fit_truncated_powerlaw",
    "intruder_dimensions",
    "lora_eigenvalues",
    "lora_intruder_dimensions",
    "spectrum",
    "summarize",
]
