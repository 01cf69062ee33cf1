"""The run config of ``spectune tune`` / ``sweep``: one validated tree for every method.

A config is a YAML file (see ``configs/``) or a dict with these keys::

    model: default            # 'default' (embedded SmolLM2-135M-Instruct), a local HF folder,
                              # a .gguf file or a hub id org/name[@revision]
    method: lora              # a registered method: spectune.methods()
    objective: sft            # a registered objective: spectune.objectives()
    seed: 0
    output_dir: results/lora
    target_modules: all-linear   # 'all-linear', names/suffixes, or a regex (adapting methods)
    exclude_modules: null
    lora: {r: 8, lora_alpha: 16, lora_dropout: 0.05}   # the method's own section(s)
    data: {train: tasks, ...}    # DataConfig (spectune.tuning.sections)
    eval: {before: true, ...}    # EvalConfig (spectune.tuning.sections)
    train: {learning_rate: 2.0e-4, max_steps: 200, ...}   # transformers.TrainingArguments

Each method and objective declares the sections it reads (``lora``, ``quant``, ``frog``,
``shira``, ``pissa``...: :mod:`spectune.tuning.methods`); a section that the run's method
and objective do not read is an error naming who reads it. The old flat LoRA keys (``r``,
``lora_alpha``, ``lora_dropout`` at the top) are still read into ``lora:``; giving both forms
is an error. Every field is checked when the config is built; an unknown key anywhere is an
error that names it (with the closest valid key), so a typo never silently falls back to a
default. ``key=value`` overrides (:func:`apply_overrides`) address nested fields with dots
(``train.learning_rate=1e-4``, ``frog.budget=0.02``; ``r=16`` still reaches ``lora.r``) and
parse the value as YAML (``target_modules=[q_proj,v_proj]``).

``train`` is passed to ``transformers.TrainingArguments``; its keys are checked against that
class when the run starts. spectune sets ``output_dir`` (``<output_dir>/checkpoints``),
``seed`` and ``use_cpu`` itself: those keys are refused in ``train``. ``train.report_to``
(tensorboard, mlflow, trackio, wandb or none; a name or a list) names the trackers that get the
training curve and what spectune judged (:mod:`spectune.report.tracking`).

Validation during training uses TrainingArguments' own words. ``data.n_validation`` carves
that many training examples out (seeded) as the validation split; it is evaluated with the
objective's loss at ``train.eval_strategy`` (``steps`` when a split is given) every
``train.eval_steps`` (default ``logging_steps``) and at the last step.
``train.load_best_model_at_end: true`` keeps the adapter of the step with the lowest
validation loss (a checkpoint at every evaluation: ``save_steps`` follows ``eval_steps``);
``train.early_stopping_patience`` / ``early_stopping_threshold`` (spectune's keys, the
arguments of transformers' ``EarlyStoppingCallback``) stop a run whose validation loss has
not improved by more than the threshold for that many evaluations. What needs a split without
one, or a best checkpoint that could not be restored, is an error when the config is built.

The ``data:`` and ``eval:`` sections are :mod:`spectune.tuning.sections`; YAML reading
(:func:`yaml_load`, floats as in YAML 1.2), the overrides and :func:`changed_fields` (what a
resumed sweep, study or search compares with the config it started with) are here.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from spectune import _check as check
from spectune.errors import SpectuneError
from spectune.report.tracking import check_settings
from spectune.tuning.methods import METHODS, Method
from spectune.tuning.objectives import OBJECTIVES, Objective
from spectune.tuning.sections import DataConfig, EvalConfig

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
    "keep_checkpoints": False,
}

#: ``train`` keys that are spectune's own, not TrainingArguments fields:
#: keep_checkpoints keeps ``checkpoints/`` after a complete run (it is removed otherwise);
#: early_stopping_patience / early_stopping_threshold go to transformers'
#: ``EarlyStoppingCallback`` (evaluations without an improvement larger than the threshold)
#: logging_dir is TensorBoard's folder (transformers 4's key, dropped in 5: :mod:`spectune.report.tracking`)
#: torch_compile compiles the decoder for training (:mod:`spectune.tuning.compiling`: spectune's
#: losses call the decoder themselves, so transformers' own compile would never run)
SPECTUNE_TRAIN_KEYS = (
    "keep_checkpoints",
    "torch_compile",
    "early_stopping_patience",
    "early_stopping_threshold",
    "logging_dir",
)

#: TrainingArguments keys spectune sets itself (refused in ``train``).
RESERVED_TRAIN_KEYS = ("output_dir", "seed", "use_cpu", "resume_from_checkpoint")

# --------------------------------------------------------------------------- YAML


def _yaml_loader() -> type:
    """A SafeLoader that reads ``1e-4`` as a float (PyYAML's YAML 1.1 wants ``1.0e-4``)."""

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
    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpectuneError(f"{where}{line}: invalid YAML ({problem})") from None


def yaml_dump(data: Any) -> str:
    """YAML text of plain data, keys in the given order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


_SECTIONS = {"data": DataConfig, "eval": EvalConfig}

#: the config's own top-level keys (everything else is a method's or objective's section)
FIELDS = (
    "model",
    "model_dtype",
    "attn_implementation",
    "method",
    "objective",
    "seed",
    "output_dir",
    "target_modules",
    "exclude_modules",
    "data",
    "eval",
    "train",
)

#: the old flat LoRA keys, read into the ``lora:`` section
LEGACY_LORA_KEYS = ("r", "lora_alpha", "lora_dropout")
LEGACY_SECTION = "lora"


def _target_spec(value: Any, label: str) -> str | list[str] | None:
    """``'all-linear'``, a regular expression, or a non-empty list of names / suffixes."""
    if value is None and label == "exclude_modules":
        return None
    if isinstance(value, str):
        if not value:
            raise SpectuneError(
                f"{label} is empty; use 'all-linear', a list of module names "
                "or a regular expression"
            )
        if value.lower() == "all-linear":
            return "all-linear"
        try:
            re.compile(value)
        except re.error as exc:
            raise SpectuneError(
                f"{label} {value!r} is not a valid regular expression ({exc}); pass a list of "
                "module names instead"
            ) from None
        return value
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise SpectuneError(
            f"{label} must be 'all-linear', a regular expression or a non-empty list of "
            f"module names, got {value!r}"
        )
    return list(value)


def _section_data(value: Any) -> dict[str, Any]:
    out = asdict(value) if not isinstance(value, dict) else dict(value)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


@dataclass
class TuneConfig:
    """One fine-tuning run: model, method, objective, their sections, data, judging, training.

    The method's and the objective's settings live in their own sections (``lora:``,
    ``frog:``, ``quant:``...), declared by the registered method or objective
    (:mod:`spectune.tuning.methods`, :mod:`spectune.tuning.objectives`); ``sections``
    holds them, validated (``config.section("lora").r``). A section that the run's method and
    objective do not read is an error that names who reads it.
    """

    model: str = field(
        default="default",
        metadata={
            "help": "'default' (embedded SmolLM2-135M-Instruct), a local HF folder, a .gguf file "
            "(dequantized once into the spectune cache) or a Hugging Face hub id "
            "org/name[@revision] (through its cache; HF_HUB_OFFLINE honoured)."
        },
    )
    model_dtype: str = field(
        default="float32",
        metadata={
            "help": "what the base weights load in: 'float32', 'bfloat16', 'float16', or "
            "'auto' (bfloat16 where it is faster: a bf16 GPU or a CPU with AMX; float32 "
            "elsewhere; the run notes what it picked). Adapters stay float32. 4-bit methods keep "
            "quant.compute_dtype."
        },
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata={
            "help": "attention kernel passed to transformers: 'sdpa', 'eager', or "
            "'flash_attention_2' (needs the flash-attn package and a CUDA GPU)."
        },
    )
    method: str = field(
        default="lora", metadata={"help": "a registered method (spectune.methods())."}
    )
    objective: str = field(
        default="sft", metadata={"help": "a registered training objective (spectune.objectives())."}
    )
    seed: int = field(default=0, metadata={"help": "seed of data, init, noise and training."})
    output_dir: str = field(
        default="results/tune", metadata={"help": "results folder (--out overrides)."}
    )
    target_modules: str | list[str] = field(
        default="all-linear",
        metadata={
            "help": "'all-linear' (every Linear but the output head), module names or "
            "suffixes, or a regex matching whole names (methods that adapt modules)."
        },
    )
    exclude_modules: list[str] | None = field(
        default=None, metadata={"help": "module names or suffixes to leave out."}
    )
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "transformers.TrainingArguments fields (over TRAIN_DEFAULTS)."},
    )
    sections: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "the method's and objective's sections, name -> settings."},
    )

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise SpectuneError(f"model must be 'default' or a folder path, got {self.model!r}")
        method, objective = METHODS.get(self.method), OBJECTIVES.get(self.objective)
        self.seed = check.integer("seed", self.seed, minimum=0)
        check.choice("model_dtype", self.model_dtype, ("auto", "float32", "bfloat16", "float16"))
        check.choice(
            "attn_implementation", self.attn_implementation, ("sdpa", "eager", "flash_attention_2")
        )
        # lazy: models.hardware imports torch, and importing the config (as the study
        # commands do) stays torch-free
        from spectune.models.hardware import check_attn_implementation

        check_attn_implementation(self.attn_implementation)
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise SpectuneError(f"output_dir must be a folder path, got {self.output_dir!r}")
        self.target_modules = _target_spec(self.target_modules, "target_modules")
        if self.exclude_modules is not None:
            self.exclude_modules = _target_spec(
                list(self.exclude_modules)
                if isinstance(self.exclude_modules, (list, tuple))
                else self.exclude_modules,
                "exclude_modules",
            )
            if isinstance(self.exclude_modules, str):
                raise SpectuneError(
                    "exclude_modules must be a list of module names or suffixes, "
                    f"got {self.exclude_modules!r}"
                )
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                check.unknown_keys(name, value, (f.name for f in fields(cls)), "setting")
                setattr(self, name, cls(**value))
            elif not isinstance(value, cls):
                raise SpectuneError(f"{name} must be a mapping of settings, got {value!r}")
        self._resolve_sections(method, objective)
        if not isinstance(self.train, dict):
            raise SpectuneError(f"train must be a mapping of TrainingArguments, got {self.train!r}")
        reserved = sorted(set(self.train) & set(RESERVED_TRAIN_KEYS))
        if reserved:
            raise SpectuneError(
                f"train.{reserved[0]} is set by spectune (output_dir and seed are top-level "
                "keys, resuming is --resume); remove it from the train section"
            )
        self.train = check_settings(self.train)  # report_to, logging_dir
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
        if not isinstance(args["keep_checkpoints"], bool):
            raise SpectuneError(
                f"train.keep_checkpoints must be true or false, got {args['keep_checkpoints']!r}"
            )
        if not isinstance(args.get("torch_compile", False), bool):
            raise SpectuneError(
                f"train.torch_compile must be true or false, got {args['torch_compile']!r}"
            )
        for key in ("torch_compile_backend", "torch_compile_mode"):
            if args.get(key) is not None:
                raise SpectuneError(
                    f"train.{key}: spectune compiles the decoder itself with inductor's default "
                    "mode (train.torch_compile: true); remove train." + key
                )
        self._check_validation(args)
        autocast = bool(args.get("bf16") or args.get("fp16"))
        if (
            self.attn_implementation == "flash_attention_2"
            and self.model_dtype == "float32"
            and not autocast
        ):
            raise SpectuneError(
                "attn_implementation=flash_attention_2 computes in float16/bfloat16 only, but "
                "model_dtype=float32 runs the model in float32; set model_dtype=bfloat16 (or "
                "auto) or train.bf16=true"
            )
        method.check(self)
        objective.check(self)

    def _resolve_sections(self, method: Method, objective: Objective) -> None:
        """Build the method's and the objective's sections from their data; a section that
        neither reads is an error naming who reads it."""
        if not isinstance(self.sections, dict):
            raise SpectuneError(f"sections must be a mapping, got {self.sections!r}")
        used = {**objective.sections, **method.sections}
        for name, value in self.sections.items():
            if name not in used and value not in (None, {}):
                readers = METHODS.readers(name) + OBJECTIVES.readers(name)
                who = (
                    f"method(s)/objective(s) {', '.join(readers)}"
                    if readers
                    else "no registered method or objective"
                )
                raise SpectuneError(
                    f"the {name}: section is read by {who}, but this run's method is "
                    f"{self.method!r} and its objective {self.objective!r}; remove the section "
                    f"or set method/objective to one that reads it"
                )
        resolved: dict[str, Any] = {}
        for name, cls in used.items():
            value = self.sections.get(name)
            if value is None:
                value = {}
            if isinstance(value, dict):
                shared = sorted(set(value) & set(FIELDS))
                if shared:
                    raise SpectuneError(
                        f"{name}.{shared[0]} is a top-level key of the config (shared by every "
                        f"method); move it out of the {name}: section"
                    )
                check.unknown_keys(name, value, (f.name for f in fields(cls)), "setting")
                try:
                    value = cls(**value)
                except TypeError as exc:
                    raise SpectuneError(f"{name}: {exc}") from None
            elif not isinstance(value, cls):
                raise SpectuneError(f"{name} must be a mapping of settings, got {value!r}")
            resolved[name] = value
        self.sections = resolved

    def _check_validation(self, args: dict[str, Any]) -> None:
        """The validation settings (data.n_validation, train.eval_*, best checkpoint, early
        stopping) agree with each other (``args``: :meth:`training_arguments`)."""
        n_val = self.data.n_validation
        strategy = check.choice(
            "train.eval_strategy", args.get("eval_strategy", "no"), ("no", "steps", "epoch")
        )
        if strategy != "no" and not n_val:
            raise SpectuneError(
                f"train.eval_strategy: {strategy} evaluates a validation split, and there is "
                "none: set data.n_validation (training examples carved out for it, e.g. 64)"
            )
        if n_val and strategy == "no":
            raise SpectuneError(
                f"data.n_validation carves {n_val} training examples out that train.eval_strategy"
                ": no never evaluates; set train.eval_strategy: steps (or data.n_validation: 0)"
            )
        if strategy == "steps":
            check.integer("train.eval_steps", args["eval_steps"], minimum=1)
        if "per_device_eval_batch_size" in args:
            check.integer(
                "train.per_device_eval_batch_size", args["per_device_eval_batch_size"], minimum=1
            )
        best = args.get("load_best_model_at_end", False)
        if not isinstance(best, bool):
            raise SpectuneError(f"train.load_best_model_at_end must be true or false, got {best!r}")
        patience = args.get("early_stopping_patience")
        threshold = args.get("early_stopping_threshold")
        for key, on in (
            ("load_best_model_at_end", best),
            ("early_stopping_patience", patience is not None),
        ):
            if on and not n_val:
                raise SpectuneError(
                    f"train.{key} needs a validation split to watch: set data.n_validation "
                    "(training examples carved out for it, e.g. 64)"
                )
        if patience is not None:
            check.integer("train.early_stopping_patience", patience, minimum=1)
        if threshold is not None:
            if patience is None:
                raise SpectuneError(
                    "train.early_stopping_threshold is read only with "
                    "train.early_stopping_patience; set both or neither"
                )
            check.number("train.early_stopping_threshold", threshold, nonnegative=True)
        metric = args.get("metric_for_best_model")
        if metric not in (None, "loss", "eval_loss"):
            raise SpectuneError(
                f"train.metric_for_best_model: spectune's validation measures the objective's "
                f"loss only; use 'loss' (or leave it out), got {metric!r}"
            )
        if args.get("greater_is_better"):
            raise SpectuneError(
                "train.greater_is_better: a lower validation loss is better; remove the key"
            )
        save = check.choice(
            "train.save_strategy", args.get("save_strategy", "steps"), ("steps", "epoch")
        )
        if best and save != strategy:
            raise SpectuneError(
                f"train.load_best_model_at_end restores a checkpoint of an evaluated step: "
                f"train.save_strategy ({save}) must be train.eval_strategy ({strategy}); remove "
                "train.save_strategy (it then follows eval_strategy)"
            )
        if best and strategy == "steps" and args["save_steps"] != args["eval_steps"]:
            raise SpectuneError(
                f"train.load_best_model_at_end restores the checkpoint of the best evaluated "
                f"step: train.save_steps ({args['save_steps']}) must equal train.eval_steps "
                f"({args['eval_steps']}); remove train.save_steps (it then follows eval_steps)"
            )

    # -- views ----------------------------------------------------------------------------

    def section(self, name: str) -> Any:
        """The validated settings of section ``name`` (``config.section("lora").r``).

        Raises:
            SpectuneError: neither the run's method nor its objective reads that section.
        """
        try:
            return self.sections[name]
        except KeyError:
            raise SpectuneError(
                f"method {self.method!r} and objective {self.objective!r} read no {name}: "
                f"section (they read: {', '.join(self.sections) or 'none'})"
            ) from None

    def get(self, dotted: str) -> Any:
        """A setting by its dotted key (``"lora.r"``, ``"train.learning_rate"``, ``"seed"``);
        None when the run has no such setting."""
        node: Any = self.to_dict()
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def checkpointing(self) -> bool:
        """Whether the training recomputes activations (``gradient_checkpointing``, called
        ``activation_checkpointing`` from transformers 5.x)."""
        args = self.training_arguments()
        return bool(args.get("gradient_checkpointing") or args.get("activation_checkpointing"))

    def training_arguments(self) -> dict[str, Any]:
        """TRAIN_DEFAULTS updated with ``train`` (without the keys spectune adds), and the
        validation defaults: with ``data.n_validation``, ``eval_strategy: steps`` and
        ``eval_steps`` = ``logging_steps``; with a best checkpoint or early stopping,
        ``metric_for_best_model: loss``; with a best checkpoint, ``save_strategy`` and
        ``save_steps`` those of the evaluation (a checkpoint at every evaluation). Keys the
        config gives are kept (and checked)."""
        args = {**TRAIN_DEFAULTS, **self.train}
        given = self.train
        if self.data.n_validation and "eval_strategy" not in given:
            args["eval_strategy"] = "steps"
        strategy = args.get("eval_strategy", "no")
        if strategy == "steps" and args.get("eval_steps") is None:
            args["eval_steps"] = args["logging_steps"]
        best = args.get("load_best_model_at_end") is True
        if (best or args.get("early_stopping_patience") is not None) and strategy != "no":
            if args.get("metric_for_best_model") is None:
                args["metric_for_best_model"] = "loss"
        if best and strategy in ("steps", "epoch"):
            if "save_strategy" not in given:
                args["save_strategy"] = strategy
            if strategy == "steps" and "save_steps" not in given:
                args["save_steps"] = args["eval_steps"]
        return args

    def trainer_arguments(self) -> dict[str, Any]:
        """:meth:`training_arguments` without spectune's own keys: what goes to
        ``transformers.TrainingArguments``."""
        args = self.training_arguments()
        return {k: v for k, v in args.items() if k not in SPECTUNE_TRAIN_KEYS}

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (every default written out); sections are
        top-level keys, as in the YAML file."""
        out: dict[str, Any] = {}
        for name in FIELDS:
            value = getattr(self, name)
            out[name] = asdict(value) if name in _SECTIONS else copy.deepcopy(value)
            if name == "exclude_modules":
                for sec, data in self.sections.items():
                    out[sec] = _section_data(data)
        out["train"] = self.training_arguments()
        return out

    def relevant(self) -> dict[str, Any]:
        """The settings that change what this run trains (for naming and de-duplication): the
        sections of its method and objective only, the targets only where the method uses
        them."""
        d = self.to_dict()
        d.pop("output_dir")
        if not METHODS.get(self.method).uses_target_modules:
            d.pop("target_modules")
            d.pop("exclude_modules")
        return d

    def replace(self, **changes: Any) -> TuneConfig:
        """A validated copy with top-level fields changed (the caller's config is untouched)."""
        data = self.to_dict()
        data.update(changes)
        return TuneConfig.from_dict(data, source="config")

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, source: str = "config", foreign_sections: str = "error"
    ) -> TuneConfig:
        """Build from plain data (as read from YAML); unknown keys are errors.

        Args:
            data: the config; sections are top-level keys (``lora:``, ``frog:``...). The old
                flat LoRA keys (``r``, ``lora_alpha``, ``lora_dropout``) are read into the
                ``lora:`` section; giving both forms is an error.
            source: what the data came from (a file name), for messages.
            foreign_sections: ``"error"``: a section (or flat LoRA key) the run's method and
                objective do not read is an error naming both; ``"drop"``: it is left out
                (sweeps, whose base config serves several methods, and configs saved by
                older versions, which wrote every section).

        Raises:
            SpectuneError: an unknown key (with the closest valid one) or a bad value.
        """
        if not isinstance(data, dict):
            raise SpectuneError(
                f"{source}: a run config must be a mapping, got {type(data).__name__}"
            )
        check.choice("foreign_sections", foreign_sections, ("error", "drop"))
        known_sections = {**METHODS.sections(), **OBJECTIVES.sections()}
        known = [*FIELDS, *LEGACY_LORA_KEYS, *known_sections]
        check.unknown_keys(source, data, known, "config")
        data = copy.deepcopy(data)
        flat = {k: data.pop(k) for k in LEGACY_LORA_KEYS if k in data}
        if flat:
            if data.get(LEGACY_SECTION):
                raise SpectuneError(
                    f"{source}: LoRA settings are given both flat ({', '.join(flat)}) and in the "
                    f"{LEGACY_SECTION}: section; keep one form (the section: "
                    f"{LEGACY_SECTION}: {{{', '.join(f'{k}: ...' for k in flat)}}})"
                )
            data[LEGACY_SECTION] = flat
        sections = {k: data.pop(k) for k in list(data) if k in known_sections}
        try:
            method = METHODS.get(data.get("method", "lora"))
            objective = OBJECTIVES.get(data.get("objective", "sft"))
            used = {**objective.sections, **method.sections}
            if foreign_sections == "drop":
                sections = {k: v for k, v in sections.items() if k in used}
            elif flat and LEGACY_SECTION not in used:
                raise SpectuneError(
                    f"{', '.join(flat)}: LoRA settings (the {LEGACY_SECTION}: section, read by "
                    f"{', '.join(METHODS.readers(LEGACY_SECTION))}), but method "
                    f"{method.name!r} does not read them; remove them"
                )
            return cls(**data, sections=sections)
        except SpectuneError as exc:
            raise SpectuneError(f"{source}: {exc}") from None

    @classmethod
    def help(cls) -> dict[str, str]:
        """Dotted key -> help text, for the CLI and the docs (every registered section)."""
        out = {}
        for f in fields(cls):
            if f.name == "sections":
                continue
            if f.name in _SECTIONS:
                for sub in fields(_SECTIONS[f.name]):
                    out[f"{f.name}.{sub.name}"] = sub.metadata["help"]
            else:
                out[f.name] = f.metadata["help"]
        for name, sec in {**METHODS.sections(), **OBJECTIVES.sections()}.items():
            for sub in fields(sec):
                out[f"{name}.{sub.name}"] = sub.metadata.get("help", "")
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
        SpectuneError: an item without ``=``, a key under a value that is not a mapping, or
            a value with a YAML anchor or alias.
    """
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpectuneError(
                f"override {item!r} is not key=value (e.g. r=16 or train.learning_rate=1e-4)"
            )
        if key in LEGACY_LORA_KEYS and not any(k in out for k in LEGACY_LORA_KEYS):
            key = f"{LEGACY_SECTION}.{key}"  # r=16 reaches lora.r unless the file is flat
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
        if _has_alias(value):
            shown = item if len(item) <= 60 else f"{item[:40]}... ({len(item)} characters)"
            raise SpectuneError(
                f"override {shown!r}: YAML anchors and aliases (&name, *name) are not allowed "
                "in a command-line value; write the value out (or put it in the config file)"
            )
        node[leaf] = parse_value(value)
    return out


def _has_alias(text: str) -> bool:
    """Whether YAML ``text`` holds an anchor or an alias (refused in overrides: an alias bomb
    expands a few hundred characters into billions of nodes). Malformed YAML: False (parsing
    it says what is wrong)."""
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                return True
    except yaml.YAMLError:
        return False
    return False


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
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | None = None,
    *,
    foreign_sections: str = "error",
) -> TuneConfig:
    """Read a YAML run config, apply ``key=value`` overrides, validate.

    Relative data paths in the file are taken relative to the current directory (as the
    command line is), not to the config file.

    Args:
        path: the YAML file, or None for the defaults.
        overrides: ``key=value`` items.
        foreign_sections: see :meth:`TuneConfig.from_dict` (``"drop"`` for a config saved
            in a results folder by an older version).

    Returns:
        The validated :class:`TuneConfig`.
    """
    data = read_config_data(path) if path is not None else {}
    data = apply_overrides(data, list(overrides or []))
    return TuneConfig.from_dict(
        data, source=str(path) if path else "config", foreign_sections=foreign_sections
    )


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two raw configs."""
    a, b = _flat(old), _flat(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


__all__ = [
    "FIELDS",
    "LEGACY_LORA_KEYS",
    "SPECTUNE_TRAIN_KEYS",
    "TRAIN_DEFAULTS",
    "TuneConfig",
    "apply_overrides",
    "changed_fields",
    "load_config",
    "parse_value",
    "read_config_data",
    "yaml_dump",
    "yaml_load",
]
