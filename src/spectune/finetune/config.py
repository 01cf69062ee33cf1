"""The run config of ``spectune tune`` / ``sweep``: one validated tree for every method.

A config is a YAML file (see ``configs/``) or a dict with these sections::

    model: default            # 'default' (embedded SmolLM2-135M-Instruct) or a local HF folder
    method: lora              # lora | rslora | dora | qlora | qdora | frog | full
    seed: 0
    output_dir: results/lora
    r: 8                      # LoRA family: rank, scaling numerator, dropout
    lora_alpha: 16
    lora_dropout: 0.05
    target_modules: all-linear   # LoRA and FROG: 'all-linear', names/suffixes, or a regex
    exclude_modules: null
    frog: {budget: 0.01, ...}    # FROG fields (spectune.frog.FrogConfig), target_modules above
    quant: {quant_type: nf4, double_quant: true, compute_dtype: auto}   # qlora / qdora
    data: {train: tasks, ...}    # DataConfig
    eval: {before: true, ...}    # EvalConfig
    train: {learning_rate: 2.0e-4, max_steps: 200, ...}   # transformers.TrainingArguments

Every field is checked when the config is built; an unknown key anywhere is an error that
names it (with the closest valid key), so a typo never silently falls back to a default.
``key=value`` overrides (:func:`apply_overrides`) address nested fields with dots
(``train.learning_rate=1e-4``, ``frog.budget=0.02``) and parse the value as YAML
(``target_modules=[q_proj,v_proj]``).

``train`` is passed to ``transformers.TrainingArguments``; its keys are checked against that
class when the run starts. spectune sets ``output_dir`` (``<output_dir>/checkpoints``),
``seed``, ``report_to`` and ``use_cpu`` itself: those keys are refused in ``train``.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from spectune import _check as check
from spectune.errors import SpectuneError

METHODS = ("lora", "rslora", "dora", "qlora", "qdora", "frog", "full")
#: methods built on peft's LoRA layers
LORA_METHODS = ("lora", "rslora", "dora", "qlora", "qdora")
#: methods whose base model is quantized to 4 bits by bitsandbytes
QUANT_METHODS = ("qlora", "qdora")

#: TrainingArguments defaults of a spectune run (a config's ``train`` section overrides them).
TRAIN_DEFAULTS: dict[str, Any] = {
    "learning_rate": 2e-4,
    "max_steps": 200,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "lr_scheduler_type": "linear",
    "warmup_steps": 10,
    "weight_decay": 0.0,
    "optim": "adamw_torch",
    "logging_steps": 10,
    "save_steps": 50,
    "save_total_limit": 2,
    "bf16": False,
    "dataloader_num_workers": 0,
}

#: TrainingArguments keys spectune sets itself (refused in ``train``).
RESERVED_TRAIN_KEYS = ("output_dir", "seed", "report_to", "use_cpu", "resume_from_checkpoint")

#: FROG fields that are shared with the LoRA methods and so live at the top level.
_FROG_SHARED = ("target_modules", "exclude_modules", "seed")


# --------------------------------------------------------------------------- YAML


def _yaml_loader() -> type:
    """A SafeLoader that reads ``1e-4`` as a float (PyYAML's YAML 1.1 wants ``1.0e-4``)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
            |\.[0-9_]+(?:[eE][-+][0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
            re.X,
        ),
        list("-+0123456789."),
    )
    return Loader


def yaml_load(text: str, where: str) -> Any:
    """Parse YAML text (floats as in YAML 1.2); errors name ``where`` and the line."""
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpectuneError(f"{where}{line}: invalid YAML ({problem})") from None


def yaml_dump(data: Any) -> str:
    """YAML text of plain data, keys in the given order."""
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


# --------------------------------------------------------------------------- sections


@dataclass
class DataConfig:
    """Where the instruction data comes from and how it is cut."""

    train: str = field(
        default="tasks",
        metadata={
            "help": "'tasks' (the bundled task set, generated from the run seed) or a "
            "Dolly .jsonl / Alpaca .json file."
        },
    )
    eval: str | None = field(
        default=None,
        metadata={
            "help": "held-out file (same layouts). None: the task set's held-out split, or "
            "eval_fraction of a train file (seeded split)."
        },
    )
    format: str = field(default="auto", metadata={"help": "'dolly', 'alpaca' or 'auto'."})
    max_length: int = field(
        default=256,
        metadata={"help": "tokens per example; longer ones are cut (and counted)."},
    )
    n_train: int = field(
        default=2000, metadata={"help": "task set only: training examples generated."}
    )
    n_eval: int = field(
        default=200,
        metadata={
            "help": "held-out examples: generated (task set), or the most taken from the "
            "held-out data of a file."
        },
    )
    eval_fraction: float = field(
        default=0.05,
        metadata={"help": "a train file without eval: fraction held out, in (0, 0.5]."},
    )
    system: str | None = field(
        default=None,
        metadata={
            "help": "system message of every prompt; None keeps the chat template's default."
        },
    )

    def __post_init__(self) -> None:
        if not isinstance(self.train, str) or not self.train:
            raise SpectuneError(f"data.train must be 'tasks' or a file path, got {self.train!r}")
        if self.eval is not None and (not isinstance(self.eval, str) or not self.eval):
            raise SpectuneError(f"data.eval must be a file path or null, got {self.eval!r}")
        check.choice("data.format", self.format, ("dolly", "alpaca", "auto"))
        self.max_length = check.integer("data.max_length", self.max_length, minimum=8)
        self.n_train = check.integer("data.n_train", self.n_train, minimum=1)
        self.n_eval = check.integer("data.n_eval", self.n_eval, minimum=1)
        self.eval_fraction = check.number("data.eval_fraction", self.eval_fraction)
        if not 0 < self.eval_fraction <= 0.5:
            raise SpectuneError(
                f"data.eval_fraction must be in (0, 0.5], got {self.eval_fraction!r}"
            )
        if self.system is not None and not isinstance(self.system, str):
            raise SpectuneError(f"data.system must be a string or null, got {self.system!r}")


@dataclass
class EvalConfig:
    """What is measured before and after training."""

    before: bool = field(
        default=True,
        metadata={"help": "also judge the base model (cached per model and settings)."},
    )
    max_new_tokens: int = field(
        default=16, metadata={"help": "longest greedy answer in the accuracy test."}
    )
    batch_size: int = field(default=16, metadata={"help": "prompts per forward pass."})
    ppl_chars: int = field(
        default=8000,
        metadata={"help": "characters of pydoc_data.topics scored for perplexity (forgetting)."},
    )
    ppl_window: int = field(default=256, metadata={"help": "perplexity window (tokens)."})
    ppl_stride: int = field(default=128, metadata={"help": "perplexity stride (tokens)."})
    latency_tokens: int = field(
        default=32, metadata={"help": "tokens generated per prompt for the latency figure."}
    )
    latency_prompts: int = field(
        default=3, metadata={"help": "prompts timed (median); 0 skips the latency figure."}
    )
    spectra: bool = field(
        default=True,
        metadata={"help": "analyze the adapter's (or the weight delta's) spectra vs the base."},
    )
    spectra_precision: str = field(
        default="float32",
        metadata={"help": "'float32' (fast) or 'float64' (WeightWatcher's exact numbers)."},
    )

    def __post_init__(self) -> None:
        for name in ("before", "spectra"):
            if not isinstance(getattr(self, name), bool):
                raise SpectuneError(
                    f"eval.{name} must be true or false, got {getattr(self, name)!r}"
                )
        for name, low in (("max_new_tokens", 1), ("batch_size", 1), ("ppl_chars", 100),
                          ("ppl_window", 2), ("ppl_stride", 1), ("latency_tokens", 2),
                          ("latency_prompts", 0)):  # fmt: skip
            setattr(self, name, check.integer(f"eval.{name}", getattr(self, name), minimum=low))
        if self.ppl_stride >= self.ppl_window:
            raise SpectuneError(
                f"eval.ppl_stride ({self.ppl_stride}) must be below eval.ppl_window "
                f"({self.ppl_window}): the rest of each window is context"
            )
        check.choice("eval.spectra_precision", self.spectra_precision, ("float32", "float64"))


@dataclass
class QuantConfig:
    """bitsandbytes 4-bit settings of qlora / qdora."""

    quant_type: str = field(default="nf4", metadata={"help": "'nf4' (QLoRA) or 'fp4'."})
    double_quant: bool = field(
        default=True, metadata={"help": "quantize the quantization constants too (QLoRA)."}
    )
    compute_dtype: str = field(
        default="auto",
        metadata={
            "help": "dtype of the 4-bit layers' matmuls: 'auto' (bfloat16, QLoRA's choice, "
            "where the hardware runs it natively: a bf16 GPU or a CPU with AVX512-BF16; "
            "float32 elsewhere, where emulated bf16 made a step 10x slower), or 'bfloat16', "
            "'float16', 'float32'."
        },
    )

    def __post_init__(self) -> None:
        check.choice("quant.quant_type", self.quant_type, ("nf4", "fp4"))
        if not isinstance(self.double_quant, bool):
            raise SpectuneError(
                f"quant.double_quant must be true or false, got {self.double_quant!r}"
            )
        check.choice("quant.compute_dtype", self.compute_dtype,
                     ("auto", "bfloat16", "float16", "float32"))  # fmt: skip


_SECTIONS = {"data": DataConfig, "eval": EvalConfig, "quant": QuantConfig}


@dataclass
class TuneConfig:
    """One fine-tuning run: model, method, adapter fields, data, judging, training arguments."""

    model: str = field(
        default="default",
        metadata={"help": "'default' (embedded SmolLM2-135M-Instruct) or a local HF folder."},
    )
    method: str = field(default="lora", metadata={"help": f"one of {', '.join(METHODS)}."})
    seed: int = field(default=0, metadata={"help": "seed of data, init, noise and training."})
    output_dir: str = field(
        default="results/tune", metadata={"help": "results folder (--out overrides)."}
    )
    r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(
        default=16, metadata={"help": "LoRA scaling numerator: alpha/r (rsLoRA: alpha/sqrt(r))."}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input."})
    target_modules: str | list[str] = field(
        default="all-linear",
        metadata={
            "help": "'all-linear' (every Linear but the output head), module names or "
            "suffixes, or a regex matching whole names; LoRA and FROG."
        },
    )
    exclude_modules: list[str] | None = field(
        default=None, metadata={"help": "module names or suffixes to leave out."}
    )
    frog: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "FROG fields (spectune.frog.FrogConfig) but target_modules and seed."},
    )
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    train: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "transformers.TrainingArguments fields (over TRAIN_DEFAULTS)."},
    )

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise SpectuneError(f"model must be 'default' or a folder path, got {self.model!r}")
        self.method = check.choice("method", self.method, METHODS)
        self.seed = check.integer("seed", self.seed, minimum=0)
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise SpectuneError(f"output_dir must be a folder path, got {self.output_dir!r}")
        self.r = check.integer("r", self.r, minimum=1)
        self.lora_alpha = check.number("lora_alpha", self.lora_alpha)
        if self.lora_alpha <= 0:
            raise SpectuneError(f"lora_alpha must be > 0, got {self.lora_alpha!r}")
        if self.lora_alpha.is_integer():
            self.lora_alpha = int(self.lora_alpha)
        self.lora_dropout = check.number("lora_dropout", self.lora_dropout)
        if not 0 <= self.lora_dropout < 1:
            raise SpectuneError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                check.unknown_keys(name, value, (f.name for f in fields(cls)), "setting")
                setattr(self, name, cls(**value))
            elif not isinstance(value, cls):
                raise SpectuneError(f"{name} must be a mapping of settings, got {value!r}")
        if not isinstance(self.frog, dict):
            raise SpectuneError(f"frog must be a mapping of FROG settings, got {self.frog!r}")
        shared = sorted(set(self.frog) & set(_FROG_SHARED))
        if shared:
            raise SpectuneError(
                f"frog.{shared[0]} is set at the top level of the config (shared by all methods); "
                f"move it out of the frog section"
            )
        fc = self.frog_config()  # validates the frog fields and target_modules
        self.target_modules, self.exclude_modules = fc.target_modules, fc.exclude_modules
        if not isinstance(self.train, dict):
            raise SpectuneError(f"train must be a mapping of TrainingArguments, got {self.train!r}")
        reserved = sorted(set(self.train) & set(RESERVED_TRAIN_KEYS))
        if reserved:
            raise SpectuneError(
                f"train.{reserved[0]} is set by spectune (output_dir and seed are top-level "
                "keys, resuming is --resume); remove it from the train section"
            )
        args = self.training_arguments()
        steps = check.integer("train.max_steps", args["max_steps"], minimum=-1)
        if steps == 0:
            raise SpectuneError(
                "train.max_steps must be >= 1 (or -1 to train for train.num_train_epochs)"
            )
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            check.integer(f"train.{key}", args[key], minimum=1)
        lr = check.number("train.learning_rate", args["learning_rate"])
        if lr <= 0:
            raise SpectuneError(f"train.learning_rate must be > 0, got {lr!r}")
        if self.method == "frog" and fc.noise_scale > 0 and self.checkpointing():
            raise SpectuneError(
                "frog.noise_scale > 0 cannot be combined with train.gradient_checkpointing: "
                "the recomputed forward would draw other noise; switch one of them off"
            )

    # -- views ----------------------------------------------------------------------------

    def frog_config(self) -> Any:
        """The :class:`spectune.frog.FrogConfig` of this run (shared fields filled in)."""
        from spectune.frog.config import FrogConfig

        data = {**self.frog, "target_modules": self.target_modules,
                "exclude_modules": self.exclude_modules, "seed": self.seed}  # fmt: skip
        return FrogConfig.from_dict(data, source="frog")

    def checkpointing(self) -> bool:
        """Whether the training recomputes activations (``gradient_checkpointing``, called
        ``activation_checkpointing`` from transformers 5.x)."""
        args = self.training_arguments()
        return bool(args.get("gradient_checkpointing") or args.get("activation_checkpointing"))

    def training_arguments(self) -> dict[str, Any]:
        """TRAIN_DEFAULTS updated with ``train`` (without the keys spectune adds)."""
        return {**TRAIN_DEFAULTS, **self.train}

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (every default written out)."""
        out = asdict(self)
        out["frog"] = {k: v for k, v in self.frog_config().to_dict().items()
                       if k not in _FROG_SHARED}  # fmt: skip
        out["train"] = self.training_arguments()
        return out

    def relevant(self) -> dict[str, Any]:
        """The settings that change what this method trains (for naming and de-duplication):
        LoRA fields only for LoRA methods, FROG fields only for FROG, quant only for 4-bit."""
        d = self.to_dict()
        d.pop("output_dir")
        if self.method not in LORA_METHODS:
            for key in ("r", "lora_alpha", "lora_dropout"):
                d.pop(key)
        if self.method != "frog":
            d.pop("frog")
        if self.method not in QUANT_METHODS:
            d.pop("quant")
        if self.method == "full":
            d.pop("target_modules")
            d.pop("exclude_modules")
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TuneConfig:
        """Build from plain data (as read from YAML); unknown keys are errors."""
        if not isinstance(data, dict):
            raise SpectuneError(
                f"{source}: a run config must be a mapping, got {type(data).__name__}"
            )
        check.unknown_keys(source, data, (f.name for f in fields(cls)), "config")
        try:
            return cls(**copy.deepcopy(data))
        except SpectuneError as exc:
            raise SpectuneError(f"{source}: {exc}") from None

    @classmethod
    def help(cls) -> dict[str, str]:
        """Dotted key -> help text, for the CLI and the docs."""
        out = {}
        for f in fields(cls):
            if f.name in _SECTIONS:
                for sub in fields(_SECTIONS[f.name]):
                    out[f"{f.name}.{sub.name}"] = sub.metadata["help"]
            else:
                out[f.name] = f.metadata["help"]
        return out


# --------------------------------------------------------------------------- loading


def parse_value(text: str) -> Any:
    """A command-line value as YAML: ``16`` -> 16, ``1e-4`` -> 0.0001, ``[q,v]`` -> list,
    ``null`` -> None; anything else stays a string."""
    return yaml_load(text, f"value {text!r}") if text.strip() else text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (dotted keys for nested sections) to raw config data.

    Args:
        data: raw config data (not changed).
        overrides: items like ``"r=16"`` or ``"train.learning_rate=1e-4"``.

    Returns:
        A new dict.

    Raises:
        SpectuneError: an item without ``=``, or a key under a value that is not a mapping.
    """
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpectuneError(
                f"override {item!r} is not key=value (e.g. r=16 or train.learning_rate=1e-4)"
            )
        *parents, leaf = key.split(".")
        node = out
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpectuneError(
                    f"override {item!r}: {'.'.join(parents[: i + 1])} is not a section"
                )
            node = child
        node[leaf] = parse_value(value)
    return out


def read_config_data(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw data of a YAML run config (a mapping), errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SpectuneError(f"config file {path} does not exist; pass a YAML run config")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpectuneError(f"config file {path} cannot be read: {exc}") from None
    data = yaml_load(text, f"config file {path}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpectuneError(
            f"config file {path} must hold a mapping of settings, got {type(data).__name__}"
        )
    return data


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None
) -> TuneConfig:
    """Read a YAML run config, apply ``key=value`` overrides, validate.

    Relative data paths in the file are taken relative to the current directory (as the
    command line is), not to the config file.

    Args:
        path: the YAML file, or None for the defaults.
        overrides: ``key=value`` items.

    Returns:
        The validated :class:`TuneConfig`.
    """
    data = read_config_data(path) if path is not None else {}
    data = apply_overrides(data, list(overrides or []))
    return TuneConfig.from_dict(data, source=str(path) if path else "config")


__all__ = [
    "LORA_METHODS",
    "METHODS",
    "QUANT_METHODS",
    "TRAIN_DEFAULTS",
    "DataConfig",
    "EvalConfig",
    "QuantConfig",
    "TuneConfig",
    "apply_overrides",
    "load_config",
    "parse_value",
    "read_config_data",
    "yaml_dump",
    "yaml_load",
]
