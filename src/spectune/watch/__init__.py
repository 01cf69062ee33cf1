"""watch: data-free spectral diagnostics of any weights, with WeightWatcher 0.7.7's definitions.

Bottom up: spectra (``esd``: eigenvalues of W^T W, pooled conv kernels, the exact spectrum of
a LoRA update; ``_lapack``: the GIL-free LAPACK calls that let two matrices be solved at once),
fits (``powerlaw``: the power-law alpha; ``tpl``: the truncated power law and the PL-vs-TPL
likelihood ratio), random-matrix theory (``rmt``: Marchenko-Pastur fits, randomized ESDs),
per-layer metrics of one ESD (``metrics``), the rows of a model (``rows``: which matrices,
and each row's numbers), the entry points (``analyze``: analyze, spectrum; ``summary``:
describe, summarize) and comparisons of two models (``compare``: scale collapse, correlation
flow; ``intruders``: intruder dimensions). Matrices come from :mod:`spectune.weights`.
"""

from spectune.watch.analyze import analyze, spectrum
from spectune.watch.compare import compare, compare_summary, correlation_flow
from spectune.watch.esd import eigenvalues, lora_eigenvalues
from spectune.watch.intruders import (
    IntruderResult,
    intruder_dimensions,
    lora_intruder_dimensions,
)
from spectune.watch.powerlaw import PowerLawFit, fit_powerlaw
from spectune.watch.summary import describe, summarize
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
