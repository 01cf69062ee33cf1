"""Spectral diagnostics: ESDs (esd), power-law fits (powerlaw), random-matrix theory (rmt),
per-layer metrics (metrics) and the describe/analyze/summarize entry points (analyze)."""

from spectune.spectral.analyze import analyze, describe, spectrum, summarize
from spectune.spectral.esd import eigenvalues, lora_eigenvalues
from spectune.spectral.powerlaw import PowerLawFit, fit_powerlaw

__all__ = [
    "PowerLawFit",
    "analyze",
    "describe",
    "eigenvalues",
    "fit_powerlaw",
    "lora_eigenvalues",
    "spectrum",
    "summarize",
]
