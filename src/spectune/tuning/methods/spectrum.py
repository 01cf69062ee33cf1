"""Spectrum (Hartford et al. 2024): train the matrices whose singular values carry the most
signal, freeze everything else.

Each candidate matrix W (``target_modules``, default all-linear), N x M with N >= M and
singular values s_1 >= ... >= s_M, gets a signal-to-noise ratio from spectune's own spectral
code: the ESD (s_i^2, :func:`spectune.watch.esd.eigenvalues`) is fitted with the
Marchenko-Pastur law (:func:`spectune.watch.rmt.mp_fit`: sigma from the fit of the bulk, edge
(sigma (1 + 1/sqrt(Q)))^2, Q = N/M, plus the Tracy-Widom width), its k spikes are the signal::

    SNR = (s_1 + ... + s_k) / (s_(k+1) + ... + s_M)

The top ``spectrum.fraction`` of the candidates by SNR train their whole weight (within each
module type, ``self_attn.q_proj``, ``mlp.down_proj``..., with ``spectrum.per_type``, or over
all of them): max(1, round(fraction n)) of n. The SNRs are computed from the base weights on
disk, one matrix at a time, and kept in a small JSON file per model folder under the spectune
cache (``spectrum/``), read by the run, ``spectune methods spectrum --model M`` (the table of
SNRs), ``spectune memory`` and ``match_budget`` (the fraction whose selection, taken in SNR
order, is nearest the budget; none within 25%: an error naming the nearest counts).

How it matches Spectrum (its ``spectrum.py`` scan, whose results axolotl's plugin reads):
the same split of the singular values at a Marchenko-Pastur edge set by the matrix's shape
and a noise sigma, the same ratio (sum of the singular values above the edge over the sum of
those below), the same ranking within each module type and top fraction of each trained as
whole matrices. Where it differs: (1) the noise sigma: Spectrum takes the interquartile range
of the singular values / 1.349 and puts the edge at sigma (1 + sqrt(M/N)); that sigma is the
spread of the singular values rather than the entry scale the MP edge needs, so the edge falls
inside the bulk and pure noise scores above 0 (a 1536 x 576 Gaussian: 84% of its singular
values above the edge, SNR 10.6); ours fits the MP density to the whole ESD (as
WeightWatcher) and adds the Tracy-Widom margin, so noise scores about 0. (2) Spectrum divides
the ratio by s_1, which makes it depend on the weights' scale (cW scores 1/c as much); ours is
scale-free. (3) Spectrum keeps int(fraction n) per type (possibly none); ours at least one.
(4) axolotl's plugin also always trains the embeddings and the output head; here only the
selected candidates train (the default all-linear leaves both out).

The adapter is the selected matrices' trained weights (spectune's trainable-tensor format);
loading copies them into a base, merging is the trained model itself, the spectra are
W - W_base of every matrix (the frozen ones are its zero-update rows).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune import _check as check
from spectune._io import write_json
from spectune.errors import SpectuneError
from spectune.tuning.methods import register_method
from spectune.tuning.methods.base import (
    BuildContext,
    Built,
    MemoryTerms,
    Method,
    MethodPlan,
    count_parameters,
    meta_model,
    target_modules,
)

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

#: bumped when the SNR definition changes, so cached SNRs are recomputed
SNR_VERSION = 1
#: a matched budget must be met within this relative distance
BUDGET_TOLERANCE = 0.25


@dataclass
class SpectrumSection:
    """The ``spectrum:`` section."""

    fraction: float = field(
        default=0.25,
        metadata={
            "help": "top fraction of the candidate matrices (by SNR) that trains, in (0, 1]."
        },
    )
    per_type: bool = field(
        default=True,
        metadata={
            "help": "true: the top fraction within each module type (q_proj, ...); false: "
            "over all candidates."
        },
    )

    def __post_init__(self) -> None:
        self.fraction = check.number("spectrum.fraction", self.fraction)
        if not 0 < self.fraction <= 1:
            raise SpectuneError(f"spectrum.fraction must be in (0, 1], got {self.fraction!r}")
        if not isinstance(self.per_type, bool):
            raise SpectuneError(f"spectrum.per_type must be true or false, got {self.per_type!r}")


def snr(evals: np.ndarray, N: int, M: int) -> tuple[float, int]:
    """(SNR, number of MP spikes) of a matrix from its ESD (module docstring)."""
    import numpy as np

    from spectune.watch.rmt import mp_fit

    spikes = mp_fit(evals, N, M)["num_spikes"]
    k = 0 if not math.isfinite(spikes) else int(spikes)
    s = np.sqrt(np.sort(np.asarray(evals, dtype=np.float64))[::-1])
    noise = float(s[k:].sum())
    return (float(s[:k].sum()) / noise if noise > 0 else 0.0), k


def snr_cache_dir() -> Path:
    """Where the SNRs of each model folder are kept."""
    from spectune.models.loading import cache_root

    return cache_root() / "spectrum"


def snr_table(ctx: BuildContext, names: list[str]) -> dict[str, dict[str, Any]]:
    """module -> {snr, spikes, shape} of the base weights of ``names``, cached per model folder
    (keyed by its weight files' names, sizes and times); missing ones computed one at a time."""
    from spectune._progress import track
    from spectune.watch.esd import eigenvalues
    from spectune.weights import open_source

    folder = ctx.model_dir.resolve()
    files = weight_files(folder)
    stamp = [SNR_VERSION, str(folder)] + [[p.name, *_stat(p)] for p in files]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:24]
    path = snr_cache_dir() / f"{folder.name}-{key}.json"
    try:
        table = json.loads(path.read_text(encoding="utf-8"))["snr"]
    except (OSError, ValueError, KeyError):
        table = {}
    missing = [n for n in names if n not in table]
    if missing:
        with open_source(folder) as src:
            for name in track(missing, len(missing), "spectrum SNR", ctx.progress, "matrix"):
                info = src.find_weight(name)
                if info is None or info.ndim != 2:
                    raise SpectuneError(f"spectrum: {folder} has no weight matrix for {name}")
                W = src.load(info.name)
                value, k = snr(eigenvalues(W), max(W.shape), min(W.shape))
                table[name] = {"snr": value, "spikes": k, "shape": list(W.shape)}
        try:
            write_json(path, {"version": SNR_VERSION, "model": str(folder), "snr": table})
        except OSError:  # an unwritable cache: computed again next time
            pass
    return {n: table[n] for n in names}


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder (none: only its config is there)."""
    return sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))


def _stat(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


def ranked(table: dict[str, dict[str, Any]], per_type: bool) -> dict[str, list[str]]:
    """Group (module type, or "all") -> module names by descending SNR (ties: model order)."""
    from spectune.models.targets import layer_of

    groups: dict[str, list[str]] = {}
    for name in table:
        groups.setdefault(layer_of(name)[1] if per_type else "all", []).append(name)
    return {g: sorted(ns, key=lambda n: -table[n]["snr"]) for g, ns in groups.items()}


def select(groups: dict[str, list[str]], fraction: float) -> list[str]:
    """The top max(1, round(fraction n)) names of each group."""
    return [n for ns in groups.values() for n in ns[: max(1, round(fraction * len(ns)))]]


def _size(table: dict[str, dict[str, Any]], names: list[str]) -> int:
    return sum(math.prod(table[n]["shape"]) for n in names)


class SpectrumMethod(Method):
    description = "Spectrum: whole matrices with the top SNR of their singular values train"
    sections = {"spectrum": SpectrumSection}
    settings = {"fraction": "spectrum.fraction", "per_type": "spectrum.per_type"}

    def selection(self, ctx: BuildContext, model: nn.Module) -> tuple[list[str], dict]:
        """(selected module names in model order, SNR table of the candidates)."""
        section = ctx.config.section("spectrum")
        names = target_modules(ctx, model)
        table = snr_table(ctx, names)
        chosen = set(select(ranked(table, section.per_type), section.fraction))
        return [n for n in names if n in chosen], table

    def build(self, ctx: BuildContext, model: nn.Module) -> Built:
        chosen, _ = self.selection(ctx, model)
        model.requires_grad_(False)
        modules = dict(model.named_modules())
        for name in chosen:
            modules[name].weight.requires_grad_(True)
        return Built(model, targets=chosen)

    def trainable_count(self, ctx: BuildContext, model: nn.Module) -> int | None:
        """From the SNRs; in a folder without weights (``spectune memory`` of a config.json)
        from the shapes when ``per_type`` and each type's matrices share one shape (which
        ones train does not change the count), else None."""
        if weight_files(ctx.model_dir):
            chosen, table = self.selection(ctx, model)
            return _size(table, chosen)
        section, modules = ctx.config.section("spectrum"), dict(model.named_modules())
        table = {
            n: {"snr": 0.0, "shape": list(modules[n].weight.shape)}
            for n in target_modules(ctx, model)
        }
        groups = ranked(table, section.per_type)
        if not section.per_type or any(
            len({tuple(table[n]["shape"]) for n in ns}) > 1 for ns in groups.values()
        ):
            return None
        return _size(table, select(groups, section.fraction))

    def memory_terms(self, ctx: BuildContext, model: nn.Module) -> MemoryTerms | None:
        """The selected weights train in place, in their own dtype (as full fine-tuning)."""
        trainable = self.trainable_count(ctx, model)
        return None if trainable is None else MemoryTerms(trainable, in_place=True)

    def match_budget(self, ctx: BuildContext, n_params: int) -> list[str]:
        """The fraction whose selection (taken in SNR order) is nearest ``n_params``.

        Raises:
            SpectuneError: no selection is within BUDGET_TOLERANCE of it (names the nearest).
        """
        section = ctx.config.section("spectrum")
        meta = meta_model(ctx.model_dir)
        table = snr_table(ctx, target_modules(ctx, meta))
        groups = ranked(table, section.per_type)
        options: dict[int, float] = {}
        for ns in groups.values():
            for j in range(1, len(ns) + 1):
                f = float(f"{j / len(ns):.6g}")
                options.setdefault(_size(table, select(groups, f)), f)
        best = min(options, key=lambda size: (abs(size - n_params), size))
        if abs(best - n_params) > BUDGET_TOLERANCE * n_params:
            below = max((s for s in options if s <= n_params), default=None)
            above = min((s for s in options if s >= n_params), default=None)
            near = " and ".join(
                f"{s:,} (spectrum.fraction={options[s]:g})" for s in (below, above) if s
            )
            hint = "" if not section.per_type else "; spectrum.per_type=false has finer steps"
            raise SpectuneError(
                f"spectrum: no set of whole matrices trains {n_params:,} parameters within "
                f"{BUDGET_TOLERANCE:.0%}; the nearest are {near}{hint}"
            )
        return [f"spectrum.fraction={options[best]:g}"]

    def plan(self, ctx: BuildContext) -> MethodPlan:
        """Every candidate with its SNR and spikes, the selected ones first."""
        import pandas as pd

        from spectune.models.targets import layer_of

        model = meta_model(ctx.model_dir)
        chosen, table = self.selection(ctx, model)
        trainable, total = _size(table, chosen), count_parameters(model)[1]
        rows = [
            {"name": n, "type": layer_of(n)[1], "shape": "x".join(map(str, t["shape"])),
             "snr": t["snr"], "spikes": t["spikes"], "selected": n in chosen}
            for n, t in table.items()
        ]  # fmt: skip
        frame = pd.DataFrame(rows).sort_values(["selected", "snr"], ascending=False)
        section = ctx.config.section("spectrum")
        how = "of each module type" if section.per_type else "of all"
        return MethodPlan(
            f"spectrum on {ctx.model_dir.name}: {trainable:,} of {total:,} parameters trainable "
            f"({100.0 * trainable / total:.4g}%), {len(chosen)} of {len(table)} matrices (top "
            f"{section.fraction:g} {how} by SNR)",
            frame,
            columns=["name", "shape", "snr", "spikes", "selected"],
            rows_shown=min(max(8, len(chosen)), 40),
            files={"snr.csv": frame},
            table_file="snr.csv",
        )


register_method("spectrum", SpectrumMethod())

__all__ = ["SpectrumMethod", "SpectrumSection", "ranked", "select", "snr", "snr_table"]
