"""What a fine-tuning method is: the :class:`Method` protocol every registered method follows.

A method turns a base model into a trainable one and knows how to save, load and merge what
it trained. The recipe (:mod:`spectune.tuning.recipe`) calls only the hooks below, never a
method's name, so a new method is one module that subclasses :class:`Method` and calls
:func:`spectune.register_method` (see :mod:`spectune.tuning.methods`).

============================  ===============================================================
hook                          what it does (default)
============================  ===============================================================
``sections``                  config sections the method reads, name -> dataclass
                              (``{"lora": LoraSection}``); validated with the rest of the config
``uses_target_modules``       whether ``target_modules`` / ``exclude_modules`` matter (True)
``trains_everything``         whether it trains every parameter: the reference the
                              parameter-efficient methods are judged against (False)
``trains_new_tokens``         whether it trains the embedding rows of tokens added to the
                              vocabulary (``ctx.new_tokens``, ``data.end_of_turn=token``;
                              False: such a run is refused)
``shardable``                 whether FSDP may shard the model (False: a run with FSDP is
                              refused, saying ``unshardable``: why not); DDP needs nothing
``settings``                  table column -> dotted config key, the method's headline
                              settings in results tables (``{"r": "lora.r"}``)
``check(config)``             cross-field checks when the config is validated (none)
``load_base(ctx)``            the base model (``AutoModelForCausalLM`` in ``model_dtype``)
``build(ctx, model)``         make it trainable -> :class:`Built` (required)
``count_parameters(model)``   (trainable, total) (4-bit weights counted as weights)
``save(built, folder)``       write the adapter (default: the trainable tensors as
                              safetensors + ``spectune_adapter.json``)
``load(ctx, base, folder)``   put a saved adapter on a base model (default: the reverse)
``merge(built, ctx, folder)`` a plain model with the update in its weights (default: the
                              trained model itself: its weights are the update)
``spectra(built, ctx, folder)``  what the spectral engine reads: a :class:`SpectraInput`
                              (default: every weight matrix against the base, W - W_base);
                              during training (``eval.spectra_every_steps``) ``folder`` is
                              written by ``save`` only when the source returned points into it
``callbacks(config)``         extra ``transformers.TrainerCallback`` objects (none)
``save_checkpoint`` /         own checkpoint format inside the Trainer (False: the Trainer's)
``load_checkpoint``
``extras(built)``             method-specific results for ``metrics.json`` (none)
``figures(built)``            method-specific figures, name -> matplotlib Figure (none)
``match_budget(ctx, n)``      config overrides that make the method train about ``n``
                              parameters (for matched-budget comparisons; None: not possible)
``trainable_count(ctx, m)``   parameters it trains on ``m``, a meta-device model (shapes
                              only; default: :meth:`~Method.build` on a copy of it, counted)
``memory_terms(ctx, m)``      what it adds to the memory estimate: a :class:`MemoryTerms`
                              (default: its trainable count, nothing else; None: no estimate)
``plan(ctx)``                 what it would train on ``ctx.model_dir``, to show
                              (``spectune methods NAME --model M``): a :class:`MethodPlan`
                              (default: its targets and trainable count, from the shapes)
============================  ===============================================================

The shared helpers below (:func:`load_float_base`, :func:`count_parameters`,
:func:`meta_model`...) are what the built-in methods are made of; out-of-tree methods may use
them too.

This module is imported with the package (the registry), which stays free of torch,
transformers and peft at import: they are imported inside the helpers that use them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune.errors import SpectuneError

if TYPE_CHECKING:
    from torch import nn

    from spectune.tuning.config import TuneConfig

#: file of the default adapter format (:meth:`Method.save`)
TRAINABLE_CONFIG = "spectune_adapter.json"
TRAINABLE_WEIGHTS = "adapter_model.safetensors"
TRAINABLE_FORMAT = "spectune-trainable"


@dataclass
class BuildContext:
    """What a method gets to build a run's model.

    Attributes:
        config: the run config.
        model_dir: the resolved base model folder.
        workdir: a folder of the run the method may keep files in across resumes (e.g. an
            initial adapter); it exists.
        progress: show progress bars.
        new_tokens: ids added to the vocabulary for the run (``data.end_of_turn=token``): the
            model's embeddings already hold them; the method trains their rows.
        train_data: the run's training features and collator (a ``TrainData``), for a method
            whose initialisation reads data (``lora.init=eva``); None outside a run.
    """

    config: TuneConfig
    model_dir: Path
    workdir: Path
    progress: bool = True
    new_tokens: tuple[int, ...] = ()
    train_data: Any = None


@dataclass
class Built:
    """A model ready to train, and what the method wants to remember about it.

    Attributes:
        model: the model (a ``PeftModel`` for the peft methods).
        tokenizer: its tokenizer.
        trainable: trainable parameter count.
        total: all parameters (4-bit weights counted as their number of weights).
        targets: module names that got an adapter (empty for full fine-tuning).
        notes: things the user should know about how the model was built.
        state: method-private data (FROG keeps its plan here).
    """

    model: Any
    tokenizer: Any = None
    trainable: int = 0
    total: int = 0
    targets: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    state: Any = None

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else float("nan")


@dataclass
class SpectraInput:
    """What the spectral engine analyzes for a run (see :func:`spectune.watch.analyze`).

    Attributes:
        source: a PEFT adapter folder (``peft=True``: one row per LoRA pair, Delta W = s B A),
            a mapping ``"<module>.weight" -> delta tensor``, or a model (``delta=True``:
            W - W_base of every matrix).
        peft: analyze LoRA pairs.
        delta: analyze W - W_base.
        update: the source is a mapping of updates Delta W (a sparse fine-tune: FROG, SHiRA),
            analyzed as they are; the tuned matrices (for intruder dimensions) are
            W_base + Delta W.
    """

    source: Any
    peft: bool = False
    delta: bool = False
    update: bool = False


@dataclass
class MemoryTerms:
    """What a method adds to a run's memory estimate; :func:`spectune.tuning.scale.memory.
    estimate_memory` adds them up with the model's shape (its docstring has the formula).

    Attributes:
        trainable: parameters the method trains.
        in_place: they are the model's own weights (full fine-tuning): they train in the
            weights' dtype and no adapter is added (False: float32 adapter tensors).
        buffers: bytes of fixed tensors kept beside them (sparse methods' indices).
        dtype: what the base's float weights and the activations are in; None:
            ``model_dtype``'s.
        weights: bytes of the base weights when not parameters x bytes(dtype) (a 4-bit
            base); None: that product.
        weights_label: how that format is shown (``"4-bit"``); None: the dtype.
        frozen_base: the base Linear weights take no gradient, so their inputs are kept for
            the adapters alone (the LoRA family: 6 h instead of 8 h per layer and token).
        adapted: matrices that carry an adapter saving ``saved_per_matrix`` elements per token.
        saved_per_matrix: elements an adapted matrix saves per token (LoRA: r, its A's output).
        dropout: float32 elements per block and token the adapters' dropout adds, and those
            it does not add in the first block.
    """

    trainable: int
    in_place: bool = False
    buffers: int = 0
    dtype: str | None = None
    weights: int | None = None
    weights_label: str | None = None
    frozen_base: bool = False
    adapted: int = 0
    saved_per_matrix: int = 0
    dropout: tuple[int, int] = (0, 0)


@dataclass
class MethodPlan:
    """What a method would train on a model, to show (``spectune methods NAME --model M``):
    computed here, printed and written by the CLI.

    Attributes:
        headline: the first line printed.
        table: a pandas DataFrame, one row per trained matrix or target (None: no table).
        columns: the table's columns printed (all of them are written).
        rows_shown: how many rows are printed; the rest are in ``table_file``.
        files: file name -> content written under ``--out``: a DataFrame (CSV), a dict
            (JSON) or a matplotlib Figure (PNG), in the order printed.
        table_file: the file of ``files`` that holds the whole table.
    """

    headline: str
    table: Any = None
    columns: list[str] = field(default_factory=list)
    rows_shown: int = 8
    files: dict[str, Any] = field(default_factory=dict)
    table_file: str | None = None


class Method:
    """A fine-tuning method; subclass, override :meth:`build` (at least), and register an
    instance with :func:`spectune.register_method`.

    Class attributes:
        description: one line for ``spectune.methods()`` and ``--help``.
        sections: config sections the method reads (name -> dataclass). Two methods that
            share a section (the LoRA family shares ``lora``) must declare the same class.
        uses_target_modules: whether ``target_modules`` / ``exclude_modules`` matter.
        trains_everything: whether it trains every parameter (full fine-tuning: the
            reference that studies' questions compare the other methods with).
        trains_new_tokens: whether :meth:`build` trains the embedding (and output) rows of
            ``ctx.new_tokens``, and :meth:`save` keeps them.
        settings: results-table column -> dotted config key.
        shardable: whether FSDP may shard the model: its trainable tensors are plain dense
            parameters that FSDP can flatten and gather, and it keeps no state of its own
            outside them (False, the safe default: a run with FSDP is refused).
        unshardable: why not, for the refusal ("bitsandbytes 4-bit weights...").
    """

    name: str = ""
    description: str = ""
    sections: Mapping[str, type] = {}
    uses_target_modules: bool = True
    trains_everything: bool = False
    trains_new_tokens: bool = False
    settings: Mapping[str, str] = {}
    shardable: bool = False
    unshardable: str = "spectune has not checked it with FSDP (Method.shardable is False)"

    # -- config --------------------------------------------------------------------------

    def check(self, config: TuneConfig) -> None:
        """Cross-field checks of a config that uses this method (raise SpectuneError)."""

    # -- building ------------------------------------------------------------------------

    def load_base(self, ctx: BuildContext) -> tuple[nn.Module, list[str]]:
        """The base model to train (in ``model_dtype``, with ``attn_implementation``), and
        notes about how it was loaded (the dtype picked)."""
        dtype, notes = resolve_model_dtype(ctx.config.model_dtype)
        model = load_float_base(
            ctx.model_dir, dtype=dtype, attn_implementation=ctx.config.attn_implementation
        )
        return model, notes

    def build(self, ctx: BuildContext, model: nn.Module) -> Built:
        """Make ``model`` trainable the method's way (``tokenizer``, counts filled in later)."""
        raise NotImplementedError(f"method {self.name!r} does not define build()")

    def count_parameters(self, model: nn.Module) -> tuple[int, int]:
        """(trainable, total) parameters."""
        return count_parameters(model)

    def match_budget(self, ctx: BuildContext, n_params: int) -> list[str] | None:
        """``key=value`` overrides that make this method train about ``n_params`` parameters
        on the config's targets; [] when its own settings already do, None when it cannot."""
        return None

    # -- what it would train (memory estimate, matched budgets, spectune methods) ---------

    def trainable_count(self, ctx: BuildContext, model: nn.Module) -> int | None:
        """Parameters this method trains on ``model`` (a meta-device model of
        ``ctx.model_dir``: shapes only) under ``ctx.config``.

        Default: :meth:`build` on a copy of ``model``, counted by :meth:`count_parameters`;
        None when the build needs the weights (it raises RuntimeError or NotImplementedError
        on the meta device).
        """
        try:
            built = self.build(ctx, copy.deepcopy(model))
        except RuntimeError:  # NotImplementedError too: torch's "cannot ... meta tensors"
            return None
        return self.count_parameters(built.model)[0]

    def memory_terms(self, ctx: BuildContext, model: nn.Module) -> MemoryTerms | None:
        """What this method adds to the memory estimate on ``model`` (a meta-device model);
        None: no estimate. Default: :meth:`trainable_count`, trained as float32 tensors."""
        trainable = self.trainable_count(ctx, model)
        return None if trainable is None else MemoryTerms(trainable)

    def plan(self, ctx: BuildContext) -> MethodPlan:
        """What this method would train on ``ctx.model_dir`` under ``ctx.config``.

        Default: from the shapes (no weights read), its target modules and trainable count,
        or a line saying it cannot tell without the weights.
        """
        import pandas as pd

        model = meta_model(ctx.model_dir)
        total = count_parameters(model)[1]
        trainable = self.trainable_count(ctx, model)
        where = f"{self.name} on {ctx.model_dir.name}"
        if trainable is None:
            return MethodPlan(
                f"{where}: no plan (the method cannot count what it trains without the weights)"
            )
        headline = (
            f"{where}: {trainable:,} of {total:,} parameters trainable "
            f"({100.0 * trainable / total:.4g}%)"
        )
        if not self.uses_target_modules:
            return MethodPlan(f"{headline}; target_modules does not apply")
        modules = dict(model.named_modules())
        rows = [
            {"name": n, "shape": "x".join(str(d) for d in modules[n].weight.shape)}
            for n in target_modules(ctx, model)
        ]
        table = pd.DataFrame(rows, columns=["name", "shape"])
        return MethodPlan(
            f"{headline}, {len(table)} target modules",
            table,
            columns=["name", "shape"],
            files={"targets.csv": table},
            table_file="targets.csv",
        )

    # -- training ------------------------------------------------------------------------

    def callbacks(self, config: TuneConfig) -> list[Any]:
        """Extra Trainer callbacks."""
        return []

    def save_checkpoint(self, model: nn.Module, folder: Path) -> bool:
        """Write the trained state into a Trainer checkpoint folder; False: let the Trainer."""
        return False

    def load_checkpoint(self, model: nn.Module, folder: Path) -> bool:
        """Restore a checkpoint written by :meth:`save_checkpoint`; False: let the Trainer."""
        return False

    # -- after training ------------------------------------------------------------------

    def save(self, built: Built, folder: Path) -> None:
        """Write the adapter into ``folder`` (a fresh temporary folder, published atomically).

        Default: every trainable tensor in ``adapter_model.safetensors`` and the list of them
        in ``spectune_adapter.json`` (:meth:`load` reads it back onto a base model).
        """
        save_trainable(built.model, folder, method=self.name)

    def load(self, ctx: BuildContext, base: nn.Module, folder: Path) -> nn.Module:
        """Put the adapter saved in ``folder`` on ``base`` (a model from :meth:`load_base`)."""
        return load_trainable(base, folder)

    def merge(self, built: Built, ctx: BuildContext, folder: Path) -> nn.Module:
        """A plain transformers model with the update in its weights (may change
        ``built.model``: called last)."""
        return built.model

    def spectra(self, built: Built, ctx: BuildContext, folder: Path) -> SpectraInput:
        """What the spectral engine reads (default: W - W_base of every matrix)."""
        return SpectraInput(built.model, delta=True)

    def extras(self, built: Built) -> dict[str, Any]:
        """Method-specific results (JSON-able) for ``metrics.json``."""
        return {}

    def figures(self, built: Built) -> dict[str, Any]:
        """Method-specific figures: file name -> matplotlib Figure."""
        return {}

    def __repr__(self) -> str:
        return f"<method {self.name or type(self).__name__}: {self.description}>"


class PeftMethod(Method):
    """A method whose model is a ``peft.PeftModel``: the adapter is peft's own folder
    (``save_pretrained``), loads with ``PeftModel.from_pretrained`` and merges with
    ``merge_and_unload()``; its spectra are the LoRA pairs (override for other tuners)."""

    def save(self, built: Built, folder: Path) -> None:
        built.model.save_pretrained(folder)

    def load(self, ctx: BuildContext, base: nn.Module, folder: Path) -> nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(base, folder)

    def merge(self, built: Built, ctx: BuildContext, folder: Path) -> nn.Module:
        return built.model.merge_and_unload()

    def spectra(self, built: Built, ctx: BuildContext, folder: Path) -> SpectraInput:
        return SpectraInput(folder, peft=True)


# --------------------------------------------------------------------------- shared helpers


#: ``model_dtype`` settings: what the base weights load in
MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16")
#: ``attn_implementation`` settings (passed to ``from_pretrained``)
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def resolve_model_dtype(name: str) -> tuple[str, list[str]]:
    """The dtype the base weights load in for ``model_dtype=name``, and notes saying so
    (none for float32, the default).

    ``auto``: bfloat16 where it makes a step faster (a bf16 GPU, a CPU with AMX:
    :func:`spectune.models.hardware.fast_bf16`), float32 elsewhere, including CPUs with
    AVX512-BF16 alone, where a bf16 step took 1.51x as long (``bench/dtype_step.py``).
    An explicit ``bfloat16`` where it is slower gets a note saying by how much (emulated: about
    10x); ``float16`` on a CPU is refused where torch cannot run it.

    Raises:
        SpectuneError: an unknown name, or a dtype this machine cannot compute in.
    """
    import torch

    from spectune import _check as check
    from spectune.models import hardware

    check.choice("model_dtype", name, MODEL_DTYPES)
    gpu = torch.cuda.is_available()
    if name == "auto":
        if hardware.fast_bf16():
            why = "a bf16 GPU" if gpu else "a CPU with AMX"
            return "bfloat16", [f"base weights loaded in bfloat16 (model_dtype=auto: {why})"]
        why = (
            "a CPU with AVX512-BF16 but no AMX, where a bf16 step is about 1.5x as long"
            if hardware.native_bf16()
            else "no native bf16 here, emulated bf16 is about 10x slower"
        )
        return "float32", [
            f"base weights loaded in float32 (model_dtype=auto: {why}; "
            "model_dtype=bfloat16 halves the base's memory)"
        ]
    if name == "float32":
        return name, []  # the default: nothing to say
    notes = [f"base weights loaded in {name} (model_dtype={name}); adapters train in float32"]
    if name == "bfloat16" and not hardware.native_bf16():
        notes.append(
            "model_dtype=bfloat16 runs emulated here (no bf16 GPU or AVX512-BF16 "
            "CPU): about 10x slower than model_dtype=float32 (or auto)"
        )
    elif name == "bfloat16" and not hardware.fast_bf16():
        notes.append(
            "model_dtype=bfloat16 on a CPU with AVX512-BF16 but no AMX: a step takes "
            "about 1.5x as long as with float32 (it halves the base's memory)"
        )
    if name in ("float16", "bfloat16") and not gpu and not hardware.cpu_runs(getattr(torch, name)):
        raise SpectuneError(
            f"model_dtype={name}: torch {torch.__version__} cannot run {name} matmuls on this "
            "CPU; use model_dtype=float32 (or auto)"
        )
    return name, notes


def load_float_base(
    model_dir: Path, dtype: str = "float32", *, attn_implementation: str | None = None
) -> nn.Module:
    """The base causal LM in ``dtype`` (float32 by default: CPU training).

    Args:
        model_dir: the model folder.
        dtype: a resolved dtype name (:func:`resolve_model_dtype`): float32, bfloat16, float16.
        attn_implementation: ``sdpa``, ``eager``, ``flash_attention_2``; None: transformers'
            default.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from spectune.models.hardware import check_attn_implementation

    kwargs: dict[str, Any] = {}
    if attn_implementation is not None:
        check_attn_implementation(attn_implementation)
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype), **kwargs)


def meta_model(model_dir: Path) -> nn.Module:
    """The model's architecture on the meta device (shapes only, no weights read)."""
    import torch
    from transformers import AutoModelForCausalLM

    from spectune.models.loading import read_model_config

    config = read_model_config(model_dir)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; a bitsandbytes 4-bit weight counts its weights, not its
    packed bytes."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        shape = getattr(getattr(p, "quant_state", None), "shape", None)
        if shape is not None:  # Params4bit: numel() is the packed uint8 count
            n = int(shape[0]) * int(shape[1]) if len(shape) == 2 else int(shape.numel())
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def target_modules(ctx_or_config: Any, model: nn.Module) -> list[str]:
    """Names of the modules the config's ``target_modules`` / ``exclude_modules`` select."""
    from spectune.models.targets import match_modules  # torch: kept out of package import

    config = getattr(ctx_or_config, "config", ctx_or_config)
    return match_modules(model, config.target_modules, config.exclude_modules)


def save_trainable(model: nn.Module, folder: Path, *, method: str) -> None:
    """The default adapter format: every trainable tensor (names as in ``named_parameters``)
    in ``adapter_model.safetensors``, the names, shapes and method in ``spectune_adapter.json``."""
    from safetensors.torch import save_file

    from spectune import __version__

    tensors = {
        n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad
    }
    if not tensors:
        raise SpectuneError(f"method {method!r}: the model has no trainable tensor to save")
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / TRAINABLE_WEIGHTS), metadata={"format": TRAINABLE_FORMAT})
    meta = {
        "format": TRAINABLE_FORMAT,
        "method": method,
        "spectune_version": __version__,
        "tensors": {n: list(t.shape) for n, t in tensors.items()},
    }
    (folder / TRAINABLE_CONFIG).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def load_trainable(model: nn.Module, folder: Path) -> nn.Module:
    """Copy the tensors saved by :func:`save_trainable` into ``model`` (checked by name and
    shape before anything is changed)."""
    import torch
    from safetensors.torch import load_file

    meta_path, weights = folder / TRAINABLE_CONFIG, folder / TRAINABLE_WEIGHTS
    if not meta_path.is_file() or not weights.is_file():
        raise SpectuneError(
            f"{folder} is not a spectune adapter folder ({TRAINABLE_CONFIG} and "
            f"{TRAINABLE_WEIGHTS} expected)"
        )
    tensors = load_file(str(weights))
    params = dict(model.named_parameters())
    for name, t in tensors.items():
        if name not in params:
            raise SpectuneError(f"{weights}: tensor {name} has no parameter in this model")
        if tuple(params[name].shape) != tuple(t.shape):
            raise SpectuneError(
                f"{weights}: tensor {name} has shape {tuple(t.shape)}, the model's "
                f"{tuple(params[name].shape)}"
            )
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t.to(params[name].dtype))
    return model


__all__ = [
    "BuildContext",
    "Built",
    "MemoryTerms",
    "Method",
    "MethodPlan",
    "PeftMethod",
    "SpectraInput",
    "ATTN_IMPLEMENTATIONS",
    "MODEL_DTYPES",
    "count_parameters",
    "load_float_base",
    "load_trainable",
    "meta_model",
    "resolve_model_dtype",
    "save_trainable",
    "target_modules",
]
