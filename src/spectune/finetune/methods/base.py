"""What a fine-tuning method is: the :class:`Method` protocol every registered method follows.

A method turns a base model into a trainable one and knows how to save, load and merge what
it trained. The recipe (:mod:`spectune.finetune.recipe`) calls only the hooks below, never a
method's name, so a new method is one module that subclasses :class:`Method` and calls
:func:`spectune.register_method` (see :mod:`spectune.finetune.methods`).

============================  ===============================================================
hook                          what it does (default)
============================  ===============================================================
``sections``                  config sections the method reads, name -> dataclass
                              (``{"lora": LoraSection}``); validated with the rest of the config
``uses_target_modules``       whether ``target_modules`` / ``exclude_modules`` matter (True)
``settings``                  table column -> dotted config key, the method's headline
                              settings in results tables (``{"r": "lora.r"}``)
``check(config)``             cross-field checks when the config is validated (none)
``load_base(ctx)``            the base model (float32 ``AutoModelForCausalLM``)
``build(ctx, model)``         make it trainable -> :class:`Built` (required)
``count_parameters(model)``   (trainable, total) (4-bit weights counted as weights)
``save(built, folder)``       write the adapter (default: the trainable tensors as
                              safetensors + ``spectune_adapter.json``)
``load(ctx, base, folder)``   put a saved adapter on a base model (default: the reverse)
``merge(built, ctx, folder)`` a plain model with the update in its weights (default: the
                              trained model itself: its weights are the update)
``spectra(built, ctx, folder)``  what the spectral engine reads: a :class:`SpectraInput`
                              (default: every weight matrix against the base, W - W_base)
``callbacks(config)``         extra ``transformers.TrainerCallback`` objects (none)
``save_checkpoint`` /         own checkpoint format inside the Trainer (False: the Trainer's)
``load_checkpoint``
``extras(built)``             method-specific results for ``metrics.json`` (none)
``figures(built)``            method-specific figures, name -> matplotlib Figure (none)
``match_budget(ctx, n)``      config overrides that make the method train about ``n``
                              parameters (for matched-budget comparisons; None: not possible)
============================  ===============================================================

The shared helpers below (:func:`load_float_base`, :func:`count_parameters`,
:func:`meta_model`...) are what the built-in methods are made of; out-of-tree methods may use
them too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune.errors import SpectuneError

if TYPE_CHECKING:
    from torch import nn

    from spectune.finetune.config import TuneConfig

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
    """

    config: TuneConfig
    model_dir: Path
    workdir: Path
    progress: bool = True


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
    """What the spectral engine analyzes for a run (see :func:`spectune.spectral.analyze`).

    Attributes:
        source: a PEFT adapter folder (``peft=True``: one row per LoRA pair, Delta W = s B A),
            a mapping ``"<module>.weight" -> delta tensor``, or a model (``delta=True``:
            W - W_base of every matrix).
        peft: analyze LoRA pairs.
        delta: analyze W - W_base.
    """

    source: Any
    peft: bool = False
    delta: bool = False


class Method:
    """A fine-tuning method; subclass, override :meth:`build` (at least), and register an
    instance with :func:`spectune.register_method`.

    Class attributes:
        description: one line for ``spectune.methods()`` and ``--help``.
        sections: config sections the method reads (name -> dataclass). Two methods that
            share a section (the LoRA family shares ``lora``) must declare the same class.
        uses_target_modules: whether ``target_modules`` / ``exclude_modules`` matter.
        settings: results-table column -> dotted config key.
    """

    name: str = ""
    description: str = ""
    sections: Mapping[str, type] = {}
    uses_target_modules: bool = True
    settings: Mapping[str, str] = {}

    # -- config --------------------------------------------------------------------------

    def check(self, config: TuneConfig) -> None:
        """Cross-field checks of a config that uses this method (raise SpectuneError)."""

    # -- building ------------------------------------------------------------------------

    def load_base(self, ctx: BuildContext) -> tuple[nn.Module, list[str]]:
        """The base model to train, and notes about how it was loaded."""
        return load_float_base(ctx.model_dir), []

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


# --------------------------------------------------------------------------- shared helpers


def load_float_base(model_dir: Path) -> nn.Module:
    """The base causal LM in float32 (CPU training)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def load_tokenizer(model_dir: Path) -> Any:
    """The model's tokenizer, with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def meta_model(model_dir: Path) -> nn.Module:
    """The model's architecture on the meta device (shapes only, no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
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
    from spectune.frog.model import match_modules

    config = getattr(ctx_or_config, "config", ctx_or_config)
    return match_modules(model, config.target_modules, config.exclude_modules)


def save_trainable(model: nn.Module, folder: Path, *, method: str) -> None:
    """The default adapter format: every trainable tensor (names as in ``named_parameters``)
    in ``adapter_model.safetensors``, the names, shapes and method in ``spectune_adapter.json``."""
    from safetensors.torch import save_file

    from spectune import __version__

    tensors = {n: p.detach().to("cpu").contiguous()
               for n, p in model.named_parameters() if p.requires_grad}  # fmt: skip
    if not tensors:
        raise SpectuneError(f"method {method!r}: the model has no trainable tensor to save")
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / TRAINABLE_WEIGHTS), metadata={"format": TRAINABLE_FORMAT})
    meta = {"format": TRAINABLE_FORMAT, "method": method, "spectune_version": __version__,
            "tensors": {n: list(t.shape) for n, t in tensors.items()}}  # fmt: skip
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
    "Method",
    "SpectraInput",
    "count_parameters",
    "load_float_base",
    "load_tokenizer",
    "load_trainable",
    "meta_model",
    "save_trainable",
    "target_modules",
]
